"""Instruction and preference records: read from a file, a URL or a Hugging Face dataset, then split.

Records are plain dicts (Alpaca's ``instruction``, ``input``, ``output``; preference data adds
``chosen`` and ``rejected``). Reading checks that every record has the keys its task needs, so a
wrong file stops with one line naming the record and the missing key, not a ``KeyError`` mid-epoch.
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from gptlab.data.downloads import cache_root, download
from gptlab.errors import DataError

#: The book's chapter 7 data set: 1,100 Alpaca-style records.
INSTRUCTION_DATA_URL = (
    "https://raw.githubusercontent.com/rasbt/LLMs-from-scratch/main/ch07/01_main-chapter-code/instruction-data.json"
)
INSTRUCTION_DATA_SHA256 = "7e09a9af353722ca15c18bc580f093f9c39d3178335a75177319cb1e1d163944"
#: The same records with ``chosen`` and ``rejected`` responses, for preference tuning.
PREFERENCE_DATA_URL = (
    "https://raw.githubusercontent.com/rasbt/LLMs-from-scratch/main/ch07/04_preference-tuning-with-dpo/"
    "instruction-data-with-preference.json"
)
PREFERENCE_DATA_SHA256 = "305315abf14f65fa42c01a0877572f832606571c2a7d49f152ac1d758b16756e"

Record = dict[str, Any]


def read_records(spec: str | Path, required: Sequence[str] = ("instruction", "output"), *,
                 sha256: str | None = None, hf_split: str = "train", setting: str = "data.path") -> list[Record]:
    """The records ``spec`` names, each checked to hold the ``required`` keys.

    - ``http(s)://`` or ``file://`` URL: downloaded once into the cache (verified with ``sha256``);
    - ``hf:NAME`` (or ``hf:NAME:CONFIG``): split ``hf_split`` of a Hugging Face dataset, or a
      directory written by ``save_to_disk``;
    - otherwise a local ``.json`` file (a list of objects) or ``.jsonl`` file (one object a line).
    """
    spec = str(spec).strip()
    if spec.startswith(("http://", "https://", "file://")):
        path = download(spec, sha256, cache_root() / "downloads", local_hint=setting)
        records = _read_file(path)
    elif spec.startswith("hf:"):
        records = _read_hf(spec[3:], hf_split)
    else:
        path = Path(spec).expanduser()
        if not path.is_file():
            raise DataError(f"data file not found: {path}; check {setting}")
        records = _read_file(path)
    return check_records(records, required, spec)


def check_records(records: Any, required: Sequence[str], source: str) -> list[Record]:
    """``records`` as a list of dicts with string values for ``required`` (``input`` defaults to "")."""
    if not isinstance(records, list) or not records:
        raise DataError(f"{source} holds no records; expected a non-empty list of JSON objects")
    checked = []
    for i, record in enumerate(records):
        if not isinstance(record, dict):
            raise DataError(f"{source}: record {i} is a {type(record).__name__}, not a JSON object")
        missing = [key for key in required if not isinstance(record.get(key), str)]
        if missing:
            raise DataError(f"{source}: record {i} has no text for {', '.join(map(repr, missing))}; "
                            f"every record needs {', '.join(required)}")
        checked.append({**record, "input": record.get("input") or ""})
    return checked


def _read_file(path: Path) -> Any:
    text = path.read_text(encoding="utf-8")
    try:
        if path.suffix == ".jsonl":
            return [json.loads(line) for line in text.splitlines() if line.strip()]
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise DataError(f"{path} is not valid {'JSON Lines' if path.suffix == '.jsonl' else 'JSON'}: {err}") from None


def _read_hf(spec: str, split: str) -> list[Record]:
    import datasets

    local = Path(spec).expanduser()
    try:
        if local.is_dir():
            data = datasets.load_from_disk(str(local))
            data = data[split] if isinstance(data, datasets.DatasetDict) else data
        else:
            name, _, config = spec.partition(":")
            data = datasets.load_dataset(name, config or None, split=split)
    except Exception as err:  # noqa: BLE001 - datasets raises many unrelated types offline
        raise DataError(f"could not load Hugging Face dataset {spec!r} split {split!r} ({err}); are you "
                        "offline? save it as JSON and pass data.path=/path/to/records.json") from None
    return [dict(row) for row in data]


def split_records(records: Sequence[Record], train_ratio: float = 0.85, test_ratio: float = 0.10,
                  shuffle: bool = False, seed: int = 123) -> dict[str, list[Record]]:
    """The book's split: the first ``train_ratio`` for training, the next ``test_ratio`` for testing,
    the rest for validation (935 / 110 / 55 of 1,100). ``shuffle`` permutes first, seeded."""
    if not (0 < train_ratio < 1 and 0 <= test_ratio < 1 and train_ratio + test_ratio < 1):
        raise DataError(f"split ratios train={train_ratio}, test={test_ratio} must be in (0, 1) and sum below 1")
    records = list(records)
    if shuffle:
        random.Random(seed).shuffle(records)
    n_train, n_test = int(len(records) * train_ratio), int(len(records) * test_ratio)
    return {"train": records[:n_train], "test": records[n_train:n_train + n_test],
            "val": records[n_train + n_test:]}
