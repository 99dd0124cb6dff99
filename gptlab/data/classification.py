"""Text classification data (book chapter 6): labelled texts as padded token batches.

``TextClassificationDataModule`` reads CSV, TSV or JSONL files with a text and a label column
(``gptlab.data.tables``: label ids, balancing, the seeded ratio split) and pads every example with
one ``TextEncoding``, the value a trained classifier keeps to preprocess new texts the same way.

Batches are dicts: ``input_ids`` ``(B, T)``, ``attention_mask`` ``(B, T)`` (1 for real tokens,
0 for padding; right padding, so it also gives each example's last real token) and ``labels``
``(B,)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset

from gptlab.data import tables
from gptlab.data.loaders import loader_options
from gptlab.errors import ConfigError, DataError
from gptlab.tokenizer import PadTo, TextEncoding, Tokenizer, check_pad_to, get_tokenizer

SPLITS = ("train", "val", "test")


def encode_texts(texts: Sequence[str], tokenizer: Tokenizer, max_length: int | None = None,
                 pad_length: int | None = None, pad_token_id: int | None = None) -> dict[str, torch.Tensor]:
    """``TextEncoding(...).encode(tokenizer, texts)``: ``input_ids`` and ``attention_mask``."""
    pad_id = tokenizer.eot_id if pad_token_id is None else pad_token_id
    return TextEncoding(tokenizer.name, max_length, pad_length, pad_id).encode(tokenizer, texts)


class ClassificationDataset(Dataset[dict[str, torch.Tensor]]):
    """Token ids and labels; each item is padded by ``encoding`` (fixed length, or its own length)."""

    def __init__(self, token_ids: list[list[int]], labels: list[int], encoding: TextEncoding,
                 texts: list[str] | None = None) -> None:
        if len(token_ids) != len(labels):
            raise DataError(f"{len(token_ids)} texts but {len(labels)} labels")
        self.token_ids = [encoding.truncate(ids) for ids in token_ids]
        self.labels = labels
        self.encoding = encoding
        self.texts = texts

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        item = {key: row[0] for key, row in self.encoding.pad([self.token_ids[index]]).items()}
        item["labels"] = torch.tensor(self.labels[index], dtype=torch.long)
        return item

    def pad_batch(self, items: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        """Collate items of different lengths, right-padded to the batch's longest (``pad_to=batch``)."""
        rows = [item["input_ids"][item["attention_mask"].bool()].tolist() for item in items]
        batch = self.encoding.pad(rows)
        batch["labels"] = torch.stack([item["labels"] for item in items])
        return batch


class TextClassificationDataModule(L.LightningDataModule):
    """Labelled texts from CSV/TSV/JSONL files, tokenized and padded for a GPT classifier.

    Args:
        path: one file holding every example; it is shuffled with ``seed`` and cut into
            ``train_ratio`` / ``val_ratio`` / the rest, as the book's ``random_split``.
        train_path, val_path, test_path: separate files instead (``test_path`` may be left out
            when no test split is needed).
        format: ``auto`` (by suffix), ``csv``, ``tsv`` or ``jsonl``.
        text_column, label_column: the columns to read.
        column_names: names for a file without a header row (CSV/TSV).
        read_options: extra keyword arguments for ``pandas.read_csv`` / ``read_json``.
        label_names: label values in id order (``["ham", "spam"]`` makes ham 0 and spam 1).
            Without it, the sorted distinct training labels; integer labels are taken as ids.
        balance: undersample every class to the size of the smallest (with ``seed``), before the
            split when reading one file, or the training file only otherwise.
        tokenizer: ``gpt2`` or ``byte``.
        max_length: truncate every text to this many tokens (normally the model's context length).
        pad_to: ``longest`` pads every split to the longest *training* example (longer val/test
            texts are truncated to it), as the book does; an integer pads to that length;
            ``max_length`` pads to ``max_length``; ``batch`` pads each batch to its own longest text
            (the least compute; pair it with ``token_position=flexible``, since the last position of
            a short text is then padding of a length that varies by batch); ``none`` does not pad
            (needs ``batch_size=1``).
        pad_token_id: the padding id (default the tokenizer's ``<|endoftext|>``, 50256 for GPT-2).
        batch_size, eval_batch_size: training batch size; evaluation (default: the same).
        drop_last: drop the last incomplete training batch (the book does).
        test_splits: the splits ``trainer.test`` evaluates, in order; ``[train, val, test]`` gives
            the book's final train/val/test accuracies of one checkpoint.
    """

    def __init__(
        self,
        path: str | None = None,
        train_path: str | None = None,
        val_path: str | None = None,
        test_path: str | None = None,
        format: str = "auto",
        text_column: str = "text",
        label_column: str = "label",
        column_names: Sequence[str] | None = None,
        read_options: dict[str, Any] | None = None,
        label_names: Sequence[str] | None = None,
        balance: bool = False,
        train_ratio: float = 0.7,
        val_ratio: float = 0.1,
        seed: int = 123,
        tokenizer: str = "gpt2",
        max_length: int | None = None,
        pad_to: PadTo = "longest",
        pad_token_id: int | None = None,
        batch_size: int = 8,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        drop_last: bool = True,
        shuffle: bool = True,
        test_splits: Sequence[str] = ("test",),
    ) -> None:
        super().__init__()
        if path is not None and train_path is not None:
            raise ConfigError("set either data.path (one file, split by ratio) or data.train_path/val_path, not both")
        if train_path is not None and val_path is None:
            raise ConfigError("data.train_path needs data.val_path (and optionally data.test_path)")
        if not (0.0 < train_ratio < 1.0 and 0.0 <= val_ratio < 1.0 and train_ratio + val_ratio <= 1.0):
            raise ConfigError(
                f"data.train_ratio={train_ratio} and data.val_ratio={val_ratio} must be shares of one "
                "(0 < train_ratio, train_ratio + val_ratio <= 1); the test split gets the rest"
            )
        if batch_size < 1 or (eval_batch_size is not None and eval_batch_size < 1):
            raise ConfigError(f"data.batch_size must be at least 1, got {batch_size}")
        if max_length is not None and max_length < 1:
            raise ConfigError(f"data.max_length must be at least 1 or null, got {max_length}")
        self.pad_to = check_pad_to(pad_to, max_length)
        if self.pad_to is None and (batch_size != 1 or eval_batch_size not in (None, 1)):
            raise ConfigError(
                "data.pad_to=none leaves examples at different lengths, so they cannot share a batch: set "
                f"data.batch_size=1 (got {batch_size}; use trainer.accumulate_grad_batches for a larger "
                "effective batch) or pad (data.pad_to=longest)"
            )
        unknown = [s for s in test_splits if s not in SPLITS]
        if unknown or not test_splits:
            raise ConfigError(f"data.test_splits={list(test_splits)} must name some of {list(SPLITS)}")
        self.path = path
        self.train_path, self.val_path, self.test_path = train_path, val_path, test_path
        self.format = format
        self.text_column = text_column
        self.label_column = label_column
        self.column_names = list(column_names) if column_names is not None else None
        self.read_options = dict(read_options) if read_options is not None else None
        self._label_names = [str(n) for n in label_names] if label_names is not None else None
        self.balance = balance
        self.train_ratio = train_ratio
        self.val_ratio = val_ratio
        self.seed = seed
        self.tokenizer: Tokenizer = get_tokenizer(tokenizer)
        self.max_length = max_length
        self.pad_token_id = self.tokenizer.eot_id if pad_token_id is None else int(pad_token_id)
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.num_workers = num_workers
        self.drop_last = drop_last
        self.shuffle = shuffle
        self.test_splits = list(test_splits)
        self.frames: dict[str, Any] | None = None
        self.datasets: dict[str, ClassificationDataset] = {}
        #: The preprocessing of every split (and of inference on new texts), fixed by ``setup``.
        self.encoding: TextEncoding | None = None

    # ------------------------------------------------------------------------------------------
    # Reading

    def source_paths(self) -> dict[str, Path]:
        """The files to read: ``{"all": path}`` or ``{"train": ..., "val": ..., "test": ...}``.

        Subclasses that download their data override this (and it runs in ``prepare_data``).
        """
        if self.path is not None:
            return {"all": self._existing(self.path, "data.path")}
        if self.train_path is not None:
            paths = {"train": self._existing(self.train_path, "data.train_path"),
                     "val": self._existing(self.val_path, "data.val_path")}
            if self.test_path is not None:
                paths["test"] = self._existing(self.test_path, "data.test_path")
            return paths
        raise ConfigError("no data given: set data.path=FILE (split by ratio) or data.train_path/val_path/test_path")

    @staticmethod
    def _existing(path: str | None, setting: str) -> Path:
        resolved = Path(str(path)).expanduser()
        if not resolved.is_file():
            raise DataError(f"data file not found: {resolved}; check {setting}")
        return resolved

    def prepare_data(self) -> None:
        self.source_paths()

    def read_frame(self, path: Path) -> Any:
        """One file as a DataFrame with columns ``text`` and ``label`` (rows with a missing value dropped)."""
        df = tables.read_table(path, self.format, self.column_names, self.read_options)
        return tables.labelled_texts(df, self.text_column, self.label_column, str(path))

    def load_frames(self) -> dict[str, Any]:
        """Every split as a DataFrame with ``text`` and integer ``label`` columns (cached)."""
        if self.frames is not None:
            return self.frames
        paths = self.source_paths()
        frames = {split: self.read_frame(path) for split, path in paths.items()}
        names = self._label_names or tables.infer_label_names(frames["all" if "all" in frames else "train"]["label"])
        for split, path in paths.items():
            frames[split]["label"] = tables.label_ids(frames[split]["label"], names, str(path),
                                                      integer_ids=self._label_names is None)
        if "all" in frames:
            frames = self.split_one_file(frames["all"])
        elif self.balance:
            frames["train"] = tables.balance(frames["train"], self.seed)
        self._label_names = names
        self.frames = {split: df.reset_index(drop=True) for split, df in frames.items()}
        for split in ("train", "val"):
            if len(self.frames.get(split, ())) == 0:
                raise DataError(f"the {split} split is empty; use more data or other data.train_ratio/val_ratio")
        return self.frames

    def split_one_file(self, df: Any) -> dict[str, Any]:
        """One file's examples (integer labels) as train / val / test: balanced (``balance``), then
        shuffled with ``seed`` and cut by ``train_ratio`` / ``val_ratio``. The harness's zero-shot
        spam task reads its test split through this too."""
        df = tables.balance(df, self.seed) if self.balance else df
        return tables.split_by_ratio(df, self.train_ratio, self.val_ratio, self.seed)

    @property
    def label_names(self) -> list[str]:
        """Label names in id order (reads the data if they were not configured)."""
        if self._label_names is None:
            self.load_frames()
        assert self._label_names is not None
        return list(self._label_names)

    @property
    def num_classes(self) -> int:
        return len(self.label_names)

    # ------------------------------------------------------------------------------------------
    # Tokenizing

    def setup(self, stage: str | None = None) -> None:
        """Tokenize every split and fix the padded length from the training split."""
        if self.datasets:
            return
        frames = self.load_frames()
        encoded = {split: [self.tokenizer.encode(t) for t in df["text"]] for split, df in frames.items()}
        self.encoding = TextEncoding.fit(self.tokenizer.name, self.max_length, self.pad_to, self.pad_token_id,
                                         [len(ids) for ids in encoded["train"]])
        for split, df in frames.items():
            self.datasets[split] = ClassificationDataset(encoded[split], df["label"].tolist(), self.encoding,
                                                         texts=df["text"].tolist())
        if self.drop_last and len(self.datasets["train"]) < self.batch_size:
            raise DataError(
                f"the training split has {len(self.datasets['train'])} examples, fewer than one batch of "
                f"data.batch_size={self.batch_size}; use a smaller batch size or data.drop_last=false"
            )

    @property
    def pad_length(self) -> int | None:
        """The padded length of every example once set up (``None``: unpadded)."""
        return self.encoding.pad_length if self.encoding is not None else None

    def inference_spec(self) -> dict[str, Any]:
        """What a classifier needs to preprocess new texts as in training: ``encoding.to_dict()`` and label names."""
        if self.encoding is None:
            self.setup()
        assert self.encoding is not None
        return {**self.encoding.to_dict(), "label_names": self.label_names}

    # ------------------------------------------------------------------------------------------
    # Loaders

    def _loader(self, split: str, train: bool = False) -> DataLoader:
        if not self.datasets:
            raise RuntimeError("call setup() before asking for dataloaders")
        if split not in self.datasets:
            raise ConfigError(f"there is no {split} split: give data.test_path, or use data.path with a ratio split")
        dataset = self.datasets[split]
        return DataLoader(
            dataset,
            batch_size=self.batch_size if train else self.eval_batch_size,
            collate_fn=dataset.pad_batch if self.pad_to == "batch" else None,
            shuffle=train and self.shuffle,
            drop_last=train and self.drop_last,
            **loader_options(self.trainer, self.num_workers),
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", train=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val")

    def test_dataloader(self) -> DataLoader | list[DataLoader]:
        """One loader per ``test_splits`` entry (in eval order, no shuffling, nothing dropped)."""
        loaders = [self._loader(split) for split in self.test_splits]
        return loaders[0] if len(loaders) == 1 else loaders

    def predict_dataloader(self) -> DataLoader:
        return self._loader("test")
