"""Generate a model's response to every instruction record, in batches, resumably (book section 7.7).

Prompts are left-padded so every row's last prompt token sits in the same column, and decoded
together with the KV cache; a row ends at ``<|endoftext|>`` or after ``max_new_tokens``. Each
batch's rows are appended to a JSONL file and flushed to disk before the next batch starts, so a
crash loses at most one batch: a rerun with the same settings skips the records already answered.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from gptlab.errors import ConfigError, DataError
from gptlab.fileio import atomic_write_text
from gptlab.generate import generate
from gptlab.model.gpt import GPT
from gptlab.prompts import PromptStyle, get_style
from gptlab.tokenizer import Tokenizer


@dataclass(frozen=True)
class GenerationSettings:
    """Everything that decides a response; stored with every row, and a resume must match it."""

    model: str
    prompt_style: str = "alpaca"
    max_new_tokens: int = 256
    temperature: float = 0.0
    top_k: int | None = None
    top_p: float | None = None
    seed: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Response:
    """One generated response: the text (up to the style's next section), and whether it stopped."""

    text: str
    ended_with_eos: bool
    num_tokens: int


def left_pad(sequences: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(ids, attention_mask)``: each sequence right-aligned in a ``(batch, longest)`` tensor."""
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, seq in enumerate(sequences):
        if seq:
            ids[row, width - len(seq):] = torch.tensor(list(seq), dtype=torch.long)
            mask[row, width - len(seq):] = 1
    return ids, mask


def generate_responses(model: GPT, tokenizer: Tokenizer, prompts: Sequence[str], settings: GenerationSettings,
                       generator: torch.Generator | None = None, style: PromptStyle | None = None,
                       stop_ids: Sequence[int] | None = None) -> list[Response]:
    """The responses to ``prompts``, decoded together in one left-padded batch.

    ``style`` defaults to the registered ``settings.prompt_style``; ``stop_ids`` (default: the
    tokenizer's end-of-text) end a response, and ``ended_with_eos`` says whether one did.
    """
    style = style or get_style(settings.prompt_style)
    stops = list(stop_ids or (tokenizer.eot_id,))
    ids, mask = left_pad([tokenizer.encode(p) or [stops[0]] for p in prompts], stops[0])
    device = model.tok_emb.weight.device
    out = generate(model, ids.to(device), settings.max_new_tokens, temperature=settings.temperature,
                   top_k=settings.top_k, top_p=settings.top_p, eos_id=stops, attention_mask=mask.to(device),
                   generator=generator, vocab_limit=tokenizer.vocab_size)
    responses = []
    for row in out[:, ids.shape[1]:].tolist():
        end = next((i for i, token in enumerate(row) if token in stops), None)
        tokens = row if end is None else row[:end]
        responses.append(Response(style.extract_response(tokenizer.decode(tokens)), end is not None, len(tokens)))
    return responses


def read_answered(path: Path, records: Sequence[dict[str, Any]], settings: GenerationSettings) -> set[int]:
    """Indices already answered in ``path`` with these ``settings``; a half-written last line (a
    crash mid-write) is removed from the file."""
    if not path.is_file():
        return set()
    lines = path.read_text(encoding="utf-8").splitlines()
    rows, complete = [], []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
            complete.append(line)
        except json.JSONDecodeError:
            if number < len(lines):
                raise DataError(f"{path} line {number} is not JSON; repair it or pass a new --out") from None
    if len(complete) < len([line for line in lines if line.strip()]):
        atomic_write_text(path, "".join(line + "\n" for line in complete))
    answered = set()
    for row in rows:
        index = row.get("index")
        if row.get("generation") != settings.to_dict():
            raise ConfigError(f"{path} holds responses generated with other settings ({row.get('generation')}); "
                              "pass a new --out, or the settings it was started with to resume it")
        if not isinstance(index, int) or not 0 <= index < len(records) or \
                records[index].get("instruction") != row.get("instruction"):
            raise DataError(f"{path} holds a response to a record that is not record {index} of this split; "
                            "pass a new --out, or the data and split it was started with to resume it")
        answered.add(index)
    return answered


def respond_to_records(model: GPT, tokenizer: Tokenizer, records: Sequence[dict[str, Any]], out: str | Path,
                       settings: GenerationSettings, batch_size: int = 8, progress: bool = True,
                       style: PromptStyle | None = None, stop_ids: Sequence[int] | None = None) -> Path:
    """Append a row per unanswered record to the JSONL file ``out``: the record, ``index``,
    ``model_response``, ``ended_with_eos``, ``response_tokens`` and the ``generation`` settings.
    ``style`` and ``stop_ids``: see ``generate_responses``."""
    from tqdm.auto import tqdm

    if batch_size < 1:
        raise ConfigError(f"--batch-size must be at least 1, got {batch_size}")
    out = Path(out).expanduser()
    answered = read_answered(out, records, settings)
    todo = [i for i in range(len(records)) if i not in answered]
    generator = None
    if settings.seed is not None:
        torch.manual_seed(settings.seed)
        generator = torch.Generator(device=model.tok_emb.weight.device).manual_seed(settings.seed)
    style = style or get_style(settings.prompt_style)
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "a", encoding="utf-8") as file, \
            tqdm(total=len(records), initial=len(answered), unit="record", disable=None if progress else True) as bar:
        for start in range(0, len(todo), batch_size):
            chunk = todo[start:start + batch_size]
            prompts = [style.prompt(records[i]) for i in chunk]
            responses = generate_responses(model, tokenizer, prompts, settings, generator, style, stop_ids)
            for i, response in zip(chunk, responses):
                row = {**records[i], "index": i, "model_response": response.text,
                       "ended_with_eos": response.ended_with_eos, "response_tokens": response.num_tokens,
                       "generation": settings.to_dict()}
                file.write(json.dumps(row, ensure_ascii=False) + "\n")
            file.flush()
            os.fsync(file.fileno())
            bar.update(len(chunk))
    return out


def read_responses(path: str | Path) -> list[dict[str, Any]]:
    """The rows of a responses JSONL file, each checked to hold ``output`` and ``model_response``."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise DataError(f"responses file not found: {path}; write one with gptlab-respond")
    rows = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise DataError(f"{path} line {number} is not JSON ({err}); expected gptlab-respond's output") from None
        if not isinstance(row, dict) or not all(isinstance(row.get(k), str) for k in ("output", "model_response")):
            raise DataError(f"{path} line {number} has no 'output' and 'model_response' texts; "
                            "expected gptlab-respond's output")
        rows.append(row)
    if not rows:
        raise DataError(f"{path} holds no responses")
    return rows
