"""Instruction data (book chapter 7): Alpaca records as prompt + response token sequences.

Each record becomes the ids of its prompt (in a registered prompt style, or the tokenizer's own
chat template: ``prompt_style=chat_template``) followed by the ids of its response, tokenized
*separately*: the prompt mask (``mask_prompt``) then ends exactly where the response's first token
begins, whatever the tokenizer would merge across the boundary. Batches are the book's
``custom_collate_fn``: the style's end token appended (``<|endoftext|>``, or the chat template's
own, e.g. ``<|im_end|>``), padded to the longest item + 1, targets shifted by one, every padding
target after the first set to -100 (the first one teaches the model to stop), and everything cut
to ``allowed_max_length``.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset

from gptlab.data.loaders import loader_options
from gptlab.data.records import INSTRUCTION_DATA_SHA256, INSTRUCTION_DATA_URL, Record, read_records, split_records
from gptlab.errors import DataError
from gptlab.prompts import PromptStyle, resolve_style
from gptlab.tokenizer import Tokenizer, get_tokenizer

IGNORE_INDEX = -100
SPLITS = ("train", "val", "test")
log = logging.getLogger(__name__)


class Example(NamedTuple):
    """One encoded record: prompt ids followed by response ids, and where the response starts."""

    ids: list[int]
    prompt_length: int


def encode_record(record: Record, style: PromptStyle, tokenizer: Tokenizer) -> Example:
    """``record`` as prompt ids + response ids, each part tokenized on its own (the response's end
    token, ``style.end_id``, is the collate function's to append)."""
    prompt_text, response_text = style.prompt_and_response(record)
    prompt = tokenizer.encode(prompt_text)
    return Example(prompt + tokenizer.encode(response_text), len(prompt))


def collate(batch: Sequence[Example | Sequence[int]], pad_id: int = 50256, ignore_index: int = IGNORE_INDEX,
            allowed_max_length: int | None = None, mask_prompt: bool = False,
            end_id: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The book's ``custom_collate_fn`` (plus ``mask_prompt``): ``(inputs, targets)`` of equal shape.

    Items are ``Example``s or plain id lists (no prompt to mask). ``end_id`` (default ``pad_id``,
    the book's end-of-text) is appended to every item: the token that ends a response. Padding is
    recognised by position, not by value, so a genuine ``pad_id`` inside a text is never ignored.
    """
    examples = [item if isinstance(item, Example) else Example(list(item), 0) for item in batch]
    width = max(len(ex.ids) + 1 for ex in examples)
    inputs = torch.full((len(examples), width), pad_id, dtype=torch.long)
    targets = torch.full((len(examples), width), ignore_index, dtype=torch.long)
    for row, ex in enumerate(examples):
        n = len(ex.ids)
        sequence = torch.tensor([*ex.ids, pad_id if end_id is None else end_id], dtype=torch.long)
        inputs[row, :n] = sequence[:n]
        targets[row, :n] = sequence[1:]  # the last real target is the appended end token
        if mask_prompt and ex.prompt_length > 1:
            targets[row, : ex.prompt_length - 1] = ignore_index  # targets that are prompt tokens
    # The book pads to the longest + 1 and drops the last column: inputs keep the longest item.
    inputs, targets = inputs[:, :-1], targets[:, :-1]
    if allowed_max_length is not None:
        inputs, targets = inputs[:, :allowed_max_length], targets[:, :allowed_max_length]
    return inputs, targets


@dataclass(frozen=True)
class InstructionCollate:
    """``collate`` with its settings bound; a plain object, so worker processes can pickle it."""

    pad_id: int
    allowed_max_length: int | None
    mask_prompt: bool
    end_id: int | None = None

    def __call__(self, batch: Sequence[Example]) -> tuple[torch.Tensor, torch.Tensor]:
        return collate(batch, self.pad_id, IGNORE_INDEX, self.allowed_max_length, self.mask_prompt, self.end_id)


class InstructionDataset(Dataset[Example]):
    """Records encoded once, up front (the book's ``InstructionDataset``)."""

    def __init__(self, records: Sequence[Record], style: PromptStyle, tokenizer: Tokenizer) -> None:
        self.records = list(records)
        self.examples = [encode_record(r, style, tokenizer) for r in self.records]

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, index: int) -> Example:
        return self.examples[index]


def split_instruction_records(records: Sequence[Record], train_ratio: float = 0.85, test_ratio: float = 0.10,
                              shuffle: bool = False, seed: int = 123, has_val_file: bool = False,
                              has_test_file: bool = False) -> dict[str, list[Record]]:
    """The book's split (train, then test, then val); a split that has its own file takes nothing
    from ``records``, and what it would have taken goes to training."""
    if not (has_val_file or has_test_file):
        return split_records(records, train_ratio, test_ratio, shuffle, seed)
    if not (0 < train_ratio < 1 and 0 <= test_ratio < 1 and train_ratio + test_ratio < 1):
        raise DataError(f"split ratios train={train_ratio}, test={test_ratio} must be in (0, 1) and sum below 1")
    records = list(records)
    if shuffle:
        random.Random(seed).shuffle(records)
    n = len(records)
    n_test = 0 if has_test_file else int(n * test_ratio)
    n_val = 0 if has_val_file else n - int(n * train_ratio) - int(n * test_ratio)
    n_train = n - n_test - n_val
    return {"train": records[:n_train], "test": records[n_train:n_train + n_test], "val": records[n_train + n_test:]}


class InstructionDataModule(L.LightningDataModule):
    """Alpaca records for instruction fine-tuning, as batches of ``(inputs, targets)``.

    Args:
        path: the records: a JSON/JSONL file, an ``http(s)://`` URL (verified with ``sha256``) or
            ``hf:NAME``; default the book's ``instruction-data.json``.
        val_path, test_path: optional files for the validation / test split; the main records
            then give their share to training.
        prompt_style: a registered style (``alpaca``, ``phi3``, ``chatml``), or ``chat_template``: the
            tokenizer's own chat template (a GGUF's or a Hugging Face directory's), each response
            ending with its end-of-turn token; a tokenizer without one is a ``ConfigError``.
        mask_prompt: ignore the prompt's tokens in the loss (train on responses only).
        allowed_max_length: cut batches to this many tokens (``null``: no cut); records longer
            than it are counted and reported, and dropped with ``drop_over_long``.
        shuffle: permute the records (with ``seed``) before splitting; training batches are
            shuffled every epoch regardless.
        sample_index: which validation record's prompt ``sample_prompt`` holds.
    """

    def __init__(self, path: str = INSTRUCTION_DATA_URL, sha256: str | None = INSTRUCTION_DATA_SHA256,
                 val_path: str | None = None, test_path: str | None = None, hf_split: str = "train",
                 tokenizer: str = "gpt2", prompt_style: str | PromptStyle = "alpaca", mask_prompt: bool = False,
                 allowed_max_length: int | None = None, drop_over_long: bool = False, batch_size: int = 8,
                 eval_batch_size: int | None = None, train_ratio: float = 0.85, test_ratio: float = 0.10,
                 shuffle: bool = False, seed: int = 123, num_workers: int = 0, drop_last: bool = True,
                 sample_index: int = 0) -> None:
        super().__init__()
        for name, value in (("batch_size", batch_size), ("eval_batch_size", eval_batch_size or 1)):
            if value < 1:
                raise DataError(f"data.{name} must be at least 1, got {value}")
        if allowed_max_length is not None and allowed_max_length < 2:
            raise DataError(f"data.allowed_max_length must be at least 2 (or null for no cut), got {allowed_max_length}")
        if num_workers < 0:
            raise DataError(f"data.num_workers must be 0 or more, got {num_workers}")
        self.save_hyperparameters()  # checkpoints then record the prompt style with the weights
        self.tokenizer: Tokenizer = get_tokenizer(tokenizer)
        self.style = resolve_style(prompt_style, self.tokenizer)
        self.prompt_style = self.style.name
        #: The token every response ends with (``PromptStyle.end_id``).
        self.end_id = self.style.end_id(self.tokenizer)
        self.path, self.sha256, self.val_path, self.test_path = path, sha256, val_path, test_path
        self.hf_split = hf_split
        self.mask_prompt, self.allowed_max_length, self.drop_over_long = mask_prompt, allowed_max_length, drop_over_long
        self.batch_size, self.eval_batch_size = batch_size, eval_batch_size or batch_size
        self.train_ratio, self.test_ratio, self.shuffle, self.seed = train_ratio, test_ratio, shuffle, seed
        self.num_workers, self.drop_last, self.sample_index = num_workers, drop_last, sample_index
        self.datasets: dict[str, InstructionDataset] = {}
        #: Records per split longer than ``allowed_max_length`` (truncated, or dropped).
        self.over_long: dict[str, int] = {}
        #: The prompt of one fixed validation record, for samples printed during training.
        self.sample_prompt: str | None = None

    def _read(self, spec: str, setting: str, sha256: str | None = None) -> list[Record]:
        return read_records(spec, ("instruction", "output"), sha256=sha256, hf_split=self.hf_split, setting=setting)

    def prepare_data(self) -> None:
        """Download the records once (a local file is only checked)."""
        self._read(self.path, "data.path", self.sha256)

    def load_splits(self) -> dict[str, list[Record]]:
        """The train / val / test records, before encoding."""
        splits = split_instruction_records(
            self._read(self.path, "data.path", self.sha256), self.train_ratio, self.test_ratio, self.shuffle,
            self.seed, has_val_file=self.val_path is not None, has_test_file=self.test_path is not None)
        if self.val_path is not None:
            splits["val"] = self._read(self.val_path, "data.val_path")
        if self.test_path is not None:
            splits["test"] = self._read(self.test_path, "data.test_path")
        for name in ("train", "val"):
            if not splits[name]:
                raise DataError(f"the {name} split is empty; use more records or other data.train_ratio/test_ratio")
        return splits

    def setup(self, stage: str | None = None) -> None:
        if self.datasets:
            return
        for name, records in self.load_splits().items():
            dataset = InstructionDataset(records, self.style, self.tokenizer)
            self._check_lengths(name, dataset)
            self.datasets[name] = dataset
        if self.drop_last and len(self.datasets["train"]) < self.batch_size:
            raise DataError(f"the training split has {len(self.datasets['train'])} records, fewer than one batch of "
                            f"data.batch_size={self.batch_size}; use a smaller batch or data.drop_last=false")
        val = self.datasets["val"].records
        if not 0 <= self.sample_index < len(val):
            raise DataError(f"data.sample_index={self.sample_index} is outside the {len(val)} validation records")
        self.sample_prompt = self.style.prompt(val[self.sample_index])

    def _check_lengths(self, name: str, dataset: InstructionDataset) -> None:
        limit = self.allowed_max_length
        long = [i for i, ex in enumerate(dataset.examples) if limit is not None and len(ex.ids) > limit]
        self.over_long[name] = len(long)
        if not long:
            return
        total = len(dataset)
        if self.drop_over_long:
            keep = sorted(set(range(len(dataset))) - set(long))
            dataset.records = [dataset.records[i] for i in keep]
            dataset.examples = [dataset.examples[i] for i in keep]
            action = "dropped"
        else:
            action = "cut (their end, <|endoftext|> included, is never trained)"
        log.warning(
            "%d of %d %s records are longer than data.allowed_max_length=%d tokens and are %s; raise "
            "the model's context_length, shorten the records or set data.drop_over_long=%s",
            len(long), total, name, limit, action,
            "false" if self.drop_over_long else "true")

    def collate_fn(self) -> InstructionCollate:
        return InstructionCollate(self.tokenizer.eot_id, self.allowed_max_length, self.mask_prompt, self.end_id)

    def _loader(self, split: str, train: bool) -> DataLoader:
        if split not in self.datasets:
            raise RuntimeError("call setup() before asking for dataloaders")
        return DataLoader(self.datasets[split], batch_size=self.batch_size if train else self.eval_batch_size,
                          shuffle=train, drop_last=train and self.drop_last, collate_fn=self.collate_fn(),
                          **loader_options(self.trainer, self.num_workers))

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", train=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", train=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", train=False)
