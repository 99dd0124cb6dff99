"""Next-token pretraining data (book chapter 2): sliding windows over a tokenized corpus."""

from __future__ import annotations

import mmap
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from gptlab.data.loaders import stateful_loader
from gptlab.data.sources import TextSource, local_text_source, read_text_source
from gptlab.data.token_cache import build_token_cache, open_tokens, read_token_meta
from gptlab.data.trained_tokenizer import TRAIN, TrainedTokenizer, trained_tokenizer
from gptlab.errors import DataError
from gptlab.tokenizer import Tokenizer, get_tokenizer, text_bytes


class SlidingWindowDataset(Dataset[tuple[torch.Tensor, torch.Tensor]]):
    """The book's ``GPTDatasetV1``: input windows of ``max_length`` ids and their next-token targets.

    Window ``k`` starts at ``k * stride``; windows are read on demand, so over a memory-mapped
    token file nothing but the requested windows is ever in memory. A memory map is pickled as
    its file range rather than its contents, so worker processes reopen it instead of copying it.
    """

    def __init__(self, tokens: np.ndarray | Sequence[int] | torch.Tensor, max_length: int, stride: int) -> None:
        if max_length < 1 or stride < 1:
            raise DataError(f"max_length and stride must be at least 1, got {max_length} and {stride}")
        self.tokens = tokens if isinstance(tokens, np.ndarray) else np.asarray(tokens, dtype=np.int64)
        self.max_length = max_length
        self.stride = stride
        self._starts = range(0, len(self.tokens) - max_length, stride)

    def __len__(self) -> int:
        return len(self._starts)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        start = self._starts[index]
        window = torch.from_numpy(np.array(self.tokens[start : start + self.max_length + 1], dtype=np.int64))
        return window[:-1], window[1:]

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        tokens = self.tokens
        if isinstance(tokens, np.memmap) and isinstance(tokens.base, mmap.mmap) and tokens.filename:
            state["tokens"] = ("memmap", tokens.filename, tokens.dtype.str, tokens.offset, tokens.shape)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        tokens = state["tokens"]
        if isinstance(tokens, tuple) and tokens[0] == "memmap":
            _, filename, dtype, offset, shape = tokens
            state["tokens"] = np.memmap(filename, dtype=np.dtype(dtype), mode="r", offset=offset, shape=shape)
        self.__dict__.update(state)


def tokens_text_bytes(tokenizer: Tokenizer, tokens: np.ndarray, chunk: int = 1 << 20) -> int:
    """UTF-8 bytes of the text ``tokens`` stand for (``text_bytes``: separators count none),
    decoded a chunk at a time so a long split is never one string. A chunk boundary inside a
    multi-byte character costs a replacement character (a byte or two of error, on a split of
    millions)."""
    return sum(text_bytes(tokenizer.decode(tokens[start:start + chunk].tolist()))
               for start in range(0, len(tokens), chunk))


class PretrainDataModule(L.LightningDataModule):
    """Windows of a text corpus for next-token prediction, split into training and validation.

    The corpus (``source``, or a local ``path`` that overrides it) is downloaded and tokenized once
    into a cache in ``prepare_data``; ``setup`` memory-maps it and cuts it at
    ``int(train_ratio * num_tokens)``: the first part trains, the rest validates, as in chapter 5.
    With ``tokenizer="train"``, a byte-level BPE of ``vocab_size`` tokens is first learned from the
    training text alone (``gptlab.data.trained_tokenizer``), and the split falls where that text
    ends. ``val_bytes_per_token`` is the validation text's UTF-8 bytes per token, which turns a loss per
    token into bits per byte (``val/bpb``).
    """

    def __init__(
        self,
        source: str = "embedded",
        path: str | None = None,
        sha256: str | None = None,
        tokenizer: str = "gpt2",
        max_length: int = 128,
        stride: int | None = None,
        batch_size: int = 8,
        train_ratio: float = 0.9,
        num_workers: int = 0,
        hf_split: str = "train",
        text_column: str = "text",
        cache_dir: str | None = None,
        shuffle: bool = True,
        drop_last: bool = True,
        vocab_size: int | None = None,
        tokenizer_impl: str = "fast",
    ) -> None:
        super().__init__()
        stride = max_length if stride is None else stride
        if max_length < 1:
            raise DataError(f"data.max_length must be at least 1, got {max_length}")
        if stride < 1:
            raise DataError(f"data.stride must be at least 1 (or null for max_length), got {stride}")
        if not 0.0 < train_ratio < 1.0:
            raise DataError(
                "data.train_ratio (the training share; the rest validates) must lie strictly between 0 and 1, "
                f"got {train_ratio}"
            )
        if batch_size < 1:
            raise DataError(f"data.batch_size must be at least 1, got {batch_size}")
        if num_workers < 0:
            raise DataError(f"data.num_workers must be 0 or more, got {num_workers}")
        self.source = source
        self.path = path
        self.sha256 = sha256
        self.max_length = max_length
        self.stride = stride
        self.batch_size = batch_size
        self.train_ratio = train_ratio
        self.num_workers = num_workers
        self.hf_split = hf_split
        self.text_column = text_column
        self.cache_dir = cache_dir
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.trained_tokenizer: TrainedTokenizer | None = None
        if tokenizer == TRAIN:
            if vocab_size is None:
                raise DataError("data.tokenizer=train learns a vocabulary of data.vocab_size tokens; set data.vocab_size "
                                "(e.g. data.vocab_size=4096)")
            self.trained_tokenizer = trained_tokenizer(self.text_source(), vocab_size, train_ratio, tokenizer_impl,
                                                       cache_dir)
            tokenizer = str(self.trained_tokenizer.directory)
        self.tokenizer: Tokenizer = get_tokenizer(tokenizer)
        self.tokens_path: Path | None = None
        self.num_tokens = 0
        self.train_dataset: SlidingWindowDataset | None = None
        self.val_dataset: SlidingWindowDataset | None = None
        self.val_bytes_per_token: float | None = None

    def text_source(self) -> TextSource:
        """The corpus: ``path`` when set (a local file, directory or glob), else ``source``."""
        if self.path is not None:
            return local_text_source(self.path, setting="data.path")
        return read_text_source(
            self.source,
            sha256=self.sha256,
            hf_split=self.hf_split,
            text_column=self.text_column,
            cache_dir=self.cache_dir,
            setting="data.source",
        )

    def prepare_data(self) -> None:
        """Download and tokenize the corpus into the cache (once per node; a cache hit is quick)."""
        build_token_cache(self.text_source(), self.tokenizer, self.cache_dir)

    def setup(self, stage: str | None = None) -> None:
        """Memory-map the cached tokens and build the training and validation windows."""
        if self.train_dataset is not None:
            return
        # A no-op after prepare_data; builds the cache when setup is called on its own.
        self.tokens_path = build_token_cache(self.text_source(), self.tokenizer, self.cache_dir)
        meta = read_token_meta(self.tokens_path)
        assert meta is not None
        self.num_tokens = int(meta["num_tokens"])
        split = int(self.train_ratio * self.num_tokens)
        if self.trained_tokenizer is not None:  # validation starts where the tokenizer's training text ended
            split = self.trained_tokenizer.train_tokens
        window = self.max_length + 1
        for name, size, fix in (
            ("training", split, "a smaller share for validation"),
            ("validation", self.num_tokens - split, "a larger share for validation"),
        ):
            if size < window:
                raise DataError(
                    f"{name} split has {size} tokens, fewer than one window of max_length+1={window}; "
                    f"use a longer corpus, a smaller data.max_length or {fix} (data.train_ratio)"
                )
        self.train_dataset = SlidingWindowDataset(open_tokens(self.tokens_path, 0, split), self.max_length, self.stride)
        val_tokens = open_tokens(self.tokens_path, split, self.num_tokens)
        self.val_dataset = SlidingWindowDataset(val_tokens, self.max_length, self.stride)
        self.val_bytes_per_token = tokens_text_bytes(self.tokenizer, val_tokens) / len(val_tokens)
        if self.drop_last and len(self.train_dataset) < self.batch_size:
            raise DataError(
                f"training split gives {len(self.train_dataset)} windows, fewer than one batch of "
                f"data.batch_size={self.batch_size} (incomplete batches are dropped); use a longer corpus, "
                "a smaller data.batch_size, a smaller data.stride or data.drop_last=false"
            )

    def _loader(self, dataset: Dataset | None, shuffle: bool, drop_last: bool) -> DataLoader:
        if dataset is None:
            raise RuntimeError("call setup() before asking for dataloaders")
        # Stateful: a checkpoint records the position in the epoch, so a resumed run continues there.
        return stateful_loader(dataset, self.batch_size, shuffle=shuffle, drop_last=drop_last,
                               num_workers=self.num_workers, trainer=self.trainer)

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_dataset, shuffle=self.shuffle, drop_last=self.drop_last)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_dataset, shuffle=False, drop_last=False)
