"""Labelled tables as plain functions: read a CSV/TSV/JSONL file, map labels to ids, balance, split.

Every function takes and returns pandas DataFrames with a ``text`` and a ``label`` column, so each
step can be used (and tested) on its own; ``TextClassificationDataModule`` chains them.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from gptlab.errors import ConfigError, DataError

SUFFIX_FORMATS = {".csv": "csv", ".tsv": "tsv", ".tab": "tsv", ".jsonl": "jsonl", ".json": "jsonl"}


def read_table(path: Path, fmt: str = "auto", column_names: Sequence[str] | None = None,
               read_options: dict[str, Any] | None = None) -> Any:
    """A DataFrame from a CSV, TSV or JSONL file (``fmt="auto"`` goes by the suffix).

    ``column_names`` names the columns of a CSV/TSV without a header row; ``read_options`` are
    passed on to ``pandas.read_csv`` / ``read_json``.
    """
    import pandas as pd

    if fmt == "auto":
        fmt = SUFFIX_FORMATS.get(path.suffix.lower(), "")
        if not fmt:
            raise ConfigError(f"cannot tell the format of {path} from its suffix; set data.format to csv, tsv or jsonl")
    if fmt not in ("csv", "tsv", "jsonl"):
        raise ConfigError(f"data.format={fmt!r} is unknown; use auto, csv, tsv or jsonl")
    options = dict(read_options or {})
    try:
        if fmt == "jsonl":
            return pd.read_json(path, lines=True, **options)
        options.setdefault("sep", "\t" if fmt == "tsv" else ",")
        if column_names is not None:
            options.setdefault("header", None)
            options.setdefault("names", list(column_names))
        # pandas' default quoting treats a field that starts with `"` as quoted until the next
        # lone `"`, which may lie on a later line; the book reads the SMS data exactly this way.
        return pd.read_csv(path, **options)
    except (OSError, ValueError) as err:
        raise DataError(f"cannot read {path} as {fmt}: {err}") from err


def labelled_texts(df: Any, text_column: str, label_column: str, where: str) -> Any:
    """``df``'s text and label columns renamed ``text`` / ``label``; rows missing either are dropped."""
    missing = [c for c in (text_column, label_column) if c not in df.columns]
    if missing:
        raise DataError(
            f"{where} has no column(s) {missing}; its columns are {[str(c) for c in df.columns]}; "
            "set data.text_column / data.label_column (or data.column_names for a file without a header)"
        )
    df = df[[text_column, label_column]].rename(columns={text_column: "text", label_column: "label"})
    dropped = int(df.isna().any(axis=1).sum())
    if dropped:
        warnings.warn(f"{where}: dropped {dropped} row(s) without a text or a label", stacklevel=3)
        df = df.dropna()
    if len(df) == 0:
        raise DataError(f"{where} holds no labelled examples")
    df["text"] = df["text"].astype(str)
    return df.reset_index(drop=True)


def infer_label_names(labels: Any) -> list[str]:
    """Label names in id order: ``0 .. max`` for integer labels, else the sorted distinct values."""
    import pandas as pd

    if pd.api.types.is_integer_dtype(labels):
        return [str(i) for i in range(int(labels.max()) + 1)]
    return sorted(set(labels.astype(str)))


def label_ids(labels: Any, names: Sequence[str], where: str, integer_ids: bool = False) -> Any:
    """``labels`` as integer ids: the index of each value in ``names``.

    With ``integer_ids`` integer labels are taken as ids already (when no names were configured).
    """
    import pandas as pd

    names = list(names)
    if integer_ids and pd.api.types.is_integer_dtype(labels):
        ids = labels.astype(int)
    else:
        ids = labels.astype(str).map({name: i for i, name in enumerate(names)})
        if ids.isna().any():
            unknown = sorted(set(labels.astype(str)[ids.isna()]))[:10]
            raise DataError(f"{where} has labels {unknown} outside data.label_names={names}")
    if ((ids < 0) | (ids >= len(names))).any():
        raise DataError(f"{where} has label ids outside 0..{len(names) - 1}; set data.label_names")
    return ids.astype(int)


def balance(df: Any, seed: int) -> Any:
    """Undersample every class to the smallest class's count, as the book's ``create_balanced_dataset``.

    Classes are concatenated in label order; a class already at the minimum is kept as it is, a
    larger one is ``sample(n, random_state=seed)``. For ham/spam this is exactly the book's
    ``pd.concat([df[ham].sample(num_spam, random_state=123), df[spam]])``.
    """
    import pandas as pd

    counts = df["label"].value_counts()
    smallest = int(counts.min())
    parts = []
    for label in sorted(counts.index):
        part = df[df["label"] == label]
        parts.append(part if len(part) == smallest else part.sample(smallest, random_state=seed))
    return pd.concat(parts)


def split_by_ratio(df: Any, train_ratio: float, val_ratio: float, seed: int) -> dict[str, Any]:
    """The book's ``random_split``: shuffle with ``seed``, cut at ``int(n * ratio)``; test gets the rest."""
    df = df.sample(frac=1, random_state=seed).reset_index(drop=True)
    train_end = int(len(df) * train_ratio)
    val_end = train_end + int(len(df) * val_ratio)
    return {"train": df[:train_end], "val": df[train_end:val_end], "test": df[val_end:]}
