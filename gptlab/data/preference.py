"""Preference pairs for DPO (the book's chapter 7 bonus): a prompt, a chosen and a rejected response.

Records (``instruction``, ``input``, ``chosen``, ``rejected``) are read like instruction data
(``gptlab.data.records``), formatted with the same prompt styles and split the same way, so the
test split of preference tuning is the test split of instruction tuning. The prompt and each
response are tokenized apart, so a response mask starts exactly at the response's first token.
Pairs whose two responses are the same text teach nothing and are dropped (and counted).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_info
from torch.utils.data import DataLoader, Dataset

from gptlab.data.loaders import loader_options
from gptlab.data.records import PREFERENCE_DATA_SHA256, PREFERENCE_DATA_URL, Record, read_records, split_records
from gptlab.data.sources import cache_root
from gptlab.errors import DataError
from gptlab.prompts import PromptStyle, resolve_style
from gptlab.tokenizer import Tokenizer, get_tokenizer

SPLITS = ("train", "val", "test")
PREFERENCE_KEYS = ("instruction", "chosen", "rejected")
#: Names of the precomputed reference log-probabilities (summed over response tokens) in a batch.
REFERENCE_KEYS = ("reference_chosen_logps", "reference_rejected_logps")


@dataclass(frozen=True)
class PreferencePair:
    """Token ids of one pair: the prompt, and each response (without the prompt)."""

    prompt: list[int]
    chosen: list[int]
    rejected: list[int]


def fit_pair(pair: PreferencePair, max_length: int) -> tuple[PreferencePair, bool]:
    """Cut ``pair`` so that prompt + either response fits ``max_length`` tokens; say whether it was cut.

    Responses keep their beginning and prompts their end (where the response header is). When
    both must give way, the longer response keeps up to half the length and the prompt the rest.
    """
    longest = max(len(pair.chosen), len(pair.rejected))
    if len(pair.prompt) + longest <= max_length:
        return pair, False
    prompt_budget = max(1, max_length - min(longest, max_length // 2))
    prompt = pair.prompt[-prompt_budget:]
    room = max_length - len(prompt)
    return PreferencePair(prompt, pair.chosen[:room], pair.rejected[:room]), True


class PreferenceDataset(Dataset[dict[str, Any]]):
    """Tokenized pairs; ``attach_reference`` adds each pair's reference log-probabilities."""

    def __init__(self, pairs: Sequence[PreferencePair]) -> None:
        self.pairs = list(pairs)
        self.reference: dict[str, torch.Tensor] | None = None

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> dict[str, Any]:
        pair = self.pairs[index]
        item: dict[str, Any] = {"index": index, "prompt": pair.prompt, "chosen": pair.chosen,
                                "rejected": pair.rejected}
        if self.reference is not None:
            item.update({key: self.reference[key][index] for key in REFERENCE_KEYS})
        return item

    def fingerprint(self) -> str:
        """A hash of every token id: precomputed reference log-probabilities are keyed by it."""
        digest = hashlib.sha256()
        for pair in self.pairs:
            digest.update(json.dumps([pair.prompt, pair.chosen, pair.rejected]).encode())
        return digest.hexdigest()

    def attach_reference(self, chosen_logps: torch.Tensor, rejected_logps: torch.Tensor) -> None:
        """Store the reference's summed response log-probabilities, one per pair, in pair order."""
        if len(chosen_logps) != len(self) or len(rejected_logps) != len(self):
            raise DataError(f"got reference log-probabilities for {len(chosen_logps)} pairs; "
                            f"the split has {len(self)}")
        self.reference = {REFERENCE_KEYS[0]: chosen_logps.float().cpu(), REFERENCE_KEYS[1]: rejected_logps.float().cpu()}


def _pad(rows: Sequence[list[int]], length: int, value: int) -> torch.Tensor:
    return torch.tensor([row + [value] * (length - len(row)) for row in rows], dtype=torch.long)


class PreferenceCollator:
    """Pads a list of pairs into one batch, right-padded with ``pad_id``.

    The batch holds ``chosen_input_ids`` / ``rejected_input_ids`` (prompt + response, both padded
    to one length so they stack into a single forward pass), ``chosen_response_mask`` /
    ``rejected_response_mask`` (true at response tokens only, so prompts and padding never count),
    ``prompt_input_ids`` with ``prompt_attention_mask``, the pairs' ``index`` in their split and,
    once attached, the reference log-probabilities.
    """

    def __init__(self, pad_id: int) -> None:
        self.pad_id = pad_id

    def __call__(self, items: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
        length = max(len(item["prompt"]) + len(item[key]) for item in items for key in ("chosen", "rejected"))
        batch: dict[str, torch.Tensor] = {"index": torch.tensor([item["index"] for item in items])}
        for key in ("chosen", "rejected"):
            rows = [item["prompt"] + item[key] for item in items]
            masks = [[0] * len(item["prompt"]) + [1] * len(item[key]) for item in items]
            batch[f"{key}_input_ids"] = _pad(rows, length, self.pad_id)
            batch[f"{key}_response_mask"] = _pad(masks, length, 0).bool()
        prompt_length = max(len(item["prompt"]) for item in items)
        batch["prompt_input_ids"] = _pad([item["prompt"] for item in items], prompt_length, self.pad_id)
        batch["prompt_attention_mask"] = _pad([[1] * len(item["prompt"]) for item in items], prompt_length, 0)
        if all(REFERENCE_KEYS[0] in item for item in items):
            for key in REFERENCE_KEYS:
                batch[key] = torch.stack([torch.as_tensor(item[key]) for item in items])
        return batch


class PreferenceDataModule(L.LightningDataModule):
    """Preference pairs, tokenized with a prompt style and split as the book splits instruction data.

    Args:
        path: the records: a ``.json``/``.jsonl`` file, an ``http(s)://`` URL (cached, checked
            against ``sha256``) or ``hf:NAME[:CONFIG]`` (split ``hf_split``).
        val_path: validation records from a file of their own; ``path`` then gives train and test
            only (its validation share goes to training).
        prompt_style: a registered style (``gptlab.prompts``: ``alpaca``, ``phi3``, ``chatml``), or
            ``chat_template``: the tokenizer's own chat template; the style the model was
            instruction-tuned with.
        max_length: prompt + response tokens at most (at most the model's context); longer pairs
            are cut by ``fit_pair`` and counted.
        append_eos: end each response with the token instruction tuning ends it with
            (``PromptStyle.end_id``: the tokenizer's end-of-text, or the chat template's own end of
            turn such as ``<|im_end|>``), so the model also learns where a preferred response stops.
        train_ratio, test_ratio, shuffle_split, split_seed: ``split_records`` (book: 0.85 / 0.10,
            no shuffle: 935 / 110 / 55 of 1,100 records).
        cache_dir: where precomputed reference log-probabilities are kept (default: gptlab's cache).
    """

    def __init__(self, path: str = PREFERENCE_DATA_URL, sha256: str | None = PREFERENCE_DATA_SHA256,
                 val_path: str | None = None, hf_split: str = "train", prompt_style: str | PromptStyle = "alpaca",
                 tokenizer: str = "gpt2", max_length: int = 1024, append_eos: bool = True,
                 train_ratio: float = 0.85, test_ratio: float = 0.10, shuffle_split: bool = False,
                 split_seed: int = 123, batch_size: int = 8, eval_batch_size: int | None = None,
                 num_workers: int = 0, shuffle: bool = True, drop_last: bool = False,
                 cache_dir: str | None = None) -> None:
        super().__init__()
        if max_length < 2:
            raise DataError(f"data.max_length must be at least 2 (a prompt and a response token), got {max_length}")
        if batch_size < 1 or (eval_batch_size is not None and eval_batch_size < 1):
            raise DataError("data.batch_size and data.eval_batch_size must be at least 1, "
                            f"got {batch_size} and {eval_batch_size}")
        self.path, self.sha256, self.val_path, self.hf_split = str(path), sha256, val_path, hf_split
        self.tokenizer: Tokenizer = get_tokenizer(tokenizer)
        self.style: PromptStyle = resolve_style(prompt_style, self.tokenizer)
        #: The token every response ends with, when ``append_eos`` (``PromptStyle.end_id``).
        self.end_id = self.style.end_id(self.tokenizer)
        self.max_length, self.append_eos = int(max_length), bool(append_eos)
        self.split_args = {"train_ratio": train_ratio, "test_ratio": test_ratio, "shuffle": shuffle_split,
                           "seed": split_seed}
        self.batch_size, self.eval_batch_size = batch_size, eval_batch_size or batch_size
        self.num_workers, self.shuffle, self.drop_last = num_workers, shuffle, drop_last
        self.cache_dir = cache_dir
        self.collate = PreferenceCollator(self.tokenizer.eot_id)
        self.datasets: dict[str, PreferenceDataset] = {}
        #: Pairs dropped per split because chosen and rejected were the same text.
        self.dropped_identical: dict[str, int] = {}
        #: Pairs cut to ``max_length`` per split.
        self.truncated: dict[str, int] = {}

    def prepare_data(self) -> None:
        """Download the records once (a URL or Hugging Face dataset); a local file needs nothing."""
        self._records()

    def _records(self) -> dict[str, list[Record]]:
        records = read_records(self.path, PREFERENCE_KEYS, sha256=self.sha256, hf_split=self.hf_split)
        if self.val_path is None:
            return split_records(records, **self.split_args)
        splits = split_records(records, **self.split_args)
        val = read_records(self.val_path, PREFERENCE_KEYS, hf_split=self.hf_split, setting="data.val_path")
        return {"train": splits["train"] + splits["val"], "val": val, "test": splits["test"]}

    def setup(self, stage: str | None = None) -> None:
        if self.datasets:
            return
        for split, records in self._records().items():
            kept = [r for r in records if r["chosen"].strip() != r["rejected"].strip()]
            self.dropped_identical[split] = len(records) - len(kept)
            pairs = [self.encode(record) for record in kept]
            self.truncated[split] = sum(cut for _, cut in pairs)
            self.datasets[split] = PreferenceDataset([pair for pair, _ in pairs])
        if not self.datasets["train"]:
            raise DataError(f"{self.path} leaves no training pairs; check data.path and the split ratios")
        if not self.datasets["val"]:
            raise DataError(f"{self.val_path or self.path} leaves no validation pairs; use more records or "
                            "a larger validation share (1 - train_ratio - test_ratio)")
        rank_zero_info(
            "Preference pairs (train/val/test): "
            + " / ".join(str(len(self.datasets[s])) for s in SPLITS)
            + f"; dropped {sum(self.dropped_identical.values())} with identical chosen and rejected texts ("
            + ", ".join(f"{s} {self.dropped_identical[s]}" for s in SPLITS)
            + f"); {sum(self.truncated.values())} cut to data.max_length={self.max_length}"
        )

    def encode(self, record: Record) -> tuple[PreferencePair, bool]:
        """The token ids of one record, fitted to ``max_length``."""
        end = [self.end_id] if self.append_eos else []
        prompt, chosen = self.style.prompt_and_response(record, record["chosen"])
        rejected = self.style.prompt_and_response(record, record["rejected"])[1]
        pair = PreferencePair(self.tokenizer.encode(prompt), self.tokenizer.encode(chosen) + end,
                              self.tokenizer.encode(rejected) + end)
        return fit_pair(pair, self.max_length)

    def reference_cache_dir(self) -> Path:
        """Where precomputed reference log-probabilities of this data are cached."""
        return cache_root(self.cache_dir) / "reference_logps"

    def loader(self, split: str, shuffle: bool = False, batch_size: int | None = None) -> DataLoader:
        """The batches of ``split`` in pair order (unless ``shuffle``), e.g. to precompute reference log-probs."""
        if split not in self.datasets:
            raise RuntimeError("call setup() before asking for dataloaders")
        return DataLoader(self.datasets[split], batch_size=batch_size or self.eval_batch_size, shuffle=shuffle,
                          drop_last=shuffle and self.drop_last, collate_fn=self.collate,
                          **loader_options(self.trainer, self.num_workers))

    def train_dataloader(self) -> DataLoader:
        return self.loader("train", shuffle=self.shuffle, batch_size=self.batch_size)

    def val_dataloader(self) -> DataLoader:
        return self.loader("val")

    def test_dataloader(self) -> DataLoader:
        return self.loader("test")
