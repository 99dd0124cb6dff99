"""Text classification data (book chapter 6): labelled texts as padded token batches.

``TextClassificationDataModule`` reads CSV, TSV or JSONL files with a text and a label column,
maps label names to ids, optionally balances the classes, splits train/val/test (from separate
files, or one file with a seeded ratio split) and pads every example as configured.
``SMSSpamDataModule`` is the same module set up as the book's spam classifier: the UCI SMS Spam
Collection, balanced by undersampling ``ham``, split 70/10/20 with seed 123.

Batches are dicts: ``input_ids`` ``(B, T)``, ``attention_mask`` ``(B, T)`` (1 for real tokens,
0 for padding; right padding, so it also gives each example's last real token) and ``labels``
``(B,)``.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset

from gptlab.data.sources import cache_root, download, extract_member, sha256_file
from gptlab.errors import ConfigError, DataError
from gptlab.tokenizer import Tokenizer, get_tokenizer

SMS_SPAM_URL = "https://archive.ics.uci.edu/static/public/228/sms+spam+collection.zip"
SMS_SPAM_MEMBER = "SMSSpamCollection"
#: sha256 of the ``SMSSpamCollection`` file inside the UCI archive (the archive's own is not pinned).
SMS_SPAM_SHA256 = "7d039a24a6083ed9ef0f806ebad56bbb976e3aeb8de05669173bfdc4996c239d"

SPLITS = ("train", "val", "test")
PadTo = str | int | None


def encode_texts(texts: Sequence[str], tokenizer: Tokenizer, max_length: int | None = None,
                 pad_length: int | None = None, pad_token_id: int | None = None) -> dict[str, torch.Tensor]:
    """Tokenize, truncate to ``max_length`` and right-pad to ``pad_length`` (or to the longest text).

    This is the preprocessing of training, so inference on new texts (``gptlab-classify``) sees
    exactly what the classifier was trained on. Returns ``input_ids`` and ``attention_mask``.
    """
    pad_id = tokenizer.eot_id if pad_token_id is None else pad_token_id
    cap = pad_length if pad_length is not None else max_length
    encoded = [_encode_one(tokenizer, text, cap, pad_id) for text in texts]
    length = pad_length if pad_length is not None else max(len(ids) for ids in encoded)
    input_ids = torch.full((len(encoded), length), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(encoded), length), dtype=torch.long)
    for row, ids in enumerate(encoded):
        input_ids[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        attention_mask[row, : len(ids)] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask}


def _encode_one(tokenizer: Tokenizer, text: str, cap: int | None, pad_id: int) -> list[int]:
    ids = tokenizer.encode(text)[:cap] if cap is not None else tokenizer.encode(text)
    # An empty text still needs one position to classify from; a lone pad token is the neutral choice.
    return ids or [pad_id]


class ClassificationDataset(Dataset[dict[str, torch.Tensor]]):
    """Token ids and labels; ``pad_length`` pads every item to one length (``None``: no padding)."""

    def __init__(self, token_ids: list[list[int]], labels: list[int], pad_length: int | None,
                 pad_token_id: int, texts: list[str] | None = None) -> None:
        if len(token_ids) != len(labels):
            raise DataError(f"{len(token_ids)} texts but {len(labels)} labels")
        self.token_ids = token_ids
        self.labels = labels
        self.pad_length = pad_length
        self.pad_token_id = pad_token_id
        self.texts = texts

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        ids = self.token_ids[index]
        length = self.pad_length if self.pad_length is not None else len(ids)
        input_ids = torch.full((length,), self.pad_token_id, dtype=torch.long)
        input_ids[: len(ids)] = torch.tensor(ids, dtype=torch.long)
        attention_mask = torch.zeros(length, dtype=torch.long)
        attention_mask[: len(ids)] = 1
        return {"input_ids": input_ids, "attention_mask": attention_mask,
                "labels": torch.tensor(self.labels[index], dtype=torch.long)}


def _read_table(path: Path, fmt: str, column_names: Sequence[str] | None,
                read_options: dict[str, Any] | None) -> Any:
    """A pandas DataFrame from a CSV, TSV or JSONL file (``fmt="auto"`` goes by the suffix)."""
    import pandas as pd

    if fmt == "auto":
        suffix = path.suffix.lower()
        fmt = {".csv": "csv", ".tsv": "tsv", ".tab": "tsv", ".jsonl": "jsonl", ".json": "jsonl"}.get(suffix, "")
        if not fmt:
            raise ConfigError(
                f"cannot tell the format of {path} from its suffix; set data.format to csv, tsv or jsonl"
            )
    options = dict(read_options or {})
    try:
        if fmt == "jsonl":
            return pd.read_json(path, lines=True, **options)
        if fmt not in ("csv", "tsv"):
            raise ConfigError(f"data.format={fmt!r} is unknown; use auto, csv, tsv or jsonl")
        options.setdefault("sep", "\t" if fmt == "tsv" else ",")
        if column_names is not None:
            options.setdefault("header", None)
            options.setdefault("names", list(column_names))
        # pandas' default quoting treats a field that starts with `"` as quoted until the next
        # lone `"`, which may lie on a later line; the book reads the SMS data exactly this way.
        return pd.read_csv(path, **options)
    except (OSError, ValueError) as err:
        if isinstance(err, ConfigError):
            raise
        raise DataError(f"cannot read {path} as {fmt}: {err}") from err


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
            ``max_length`` pads to ``max_length``; ``none`` does not pad (needs ``batch_size=1``).
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
        self.pad_to = self._check_pad_to(pad_to, max_length, batch_size, eval_batch_size)
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
        self.pad_length: int | None = None

    @staticmethod
    def _check_pad_to(pad_to: PadTo, max_length: int | None, batch_size: int, eval_batch_size: int | None) -> PadTo:
        if pad_to is None or (isinstance(pad_to, str) and pad_to.lower() in ("none", "null")):
            if batch_size != 1 or (eval_batch_size not in (None, 1)):
                raise ConfigError(
                    "data.pad_to=none leaves examples at different lengths, so they cannot share a "
                    f"batch: set data.batch_size=1 (got {batch_size}; use trainer.accumulate_grad_batches "
                    "for a larger effective batch) or pad (data.pad_to=longest)"
                )
            return None
        if isinstance(pad_to, str) and pad_to in ("longest", "max_length"):
            if pad_to == "max_length" and max_length is None:
                raise ConfigError("data.pad_to=max_length needs data.max_length")
            return pad_to
        if isinstance(pad_to, str) and pad_to.isdigit():
            pad_to = int(pad_to)
        if isinstance(pad_to, int) and not isinstance(pad_to, bool) and pad_to >= 1:
            if max_length is not None and pad_to > max_length:
                raise ConfigError(
                    f"data.pad_to={pad_to} exceeds data.max_length={max_length} (the model's context); "
                    "pad to at most max_length"
                )
            return pad_to
        raise ConfigError(f"data.pad_to={pad_to!r} is unknown; use longest, max_length, an integer or none")

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
        df = _read_table(path, self.format, self.column_names, self.read_options)
        missing = [c for c in (self.text_column, self.label_column) if c not in df.columns]
        if missing:
            raise DataError(
                f"{path} has no column(s) {missing}; its columns are {[str(c) for c in df.columns]}; "
                "set data.text_column / data.label_column (or data.column_names for a file without a header)"
            )
        df = df[[self.text_column, self.label_column]].rename(columns={self.text_column: "text", self.label_column: "label"})
        dropped = int(df.isna().any(axis=1).sum())
        if dropped:
            warnings.warn(f"{path}: dropped {dropped} row(s) without a text or a label", stacklevel=2)
            df = df.dropna()
        if len(df) == 0:
            raise DataError(f"{path} holds no labelled examples")
        df["text"] = df["text"].astype(str)
        return df.reset_index(drop=True)

    def _label_ids(self, df: Any, names: list[str], where: str) -> Any:
        import pandas as pd

        labels = df["label"]
        if self._label_names is None and pd.api.types.is_integer_dtype(labels):
            ids = labels.astype(int)
        else:
            index = {name: i for i, name in enumerate(names)}
            ids = labels.astype(str).map(index)
            if ids.isna().any():
                unknown = sorted(set(labels.astype(str)[ids.isna()]))[:10]
                raise DataError(f"{where} has labels {unknown} outside data.label_names={names}")
        if ((ids < 0) | (ids >= len(names))).any():
            raise DataError(f"{where} has label ids outside 0..{len(names) - 1}; set data.label_names")
        return ids.astype(int)

    def _infer_label_names(self, train_labels: Any) -> list[str]:
        import pandas as pd

        if pd.api.types.is_integer_dtype(train_labels):
            return [str(i) for i in range(int(train_labels.max()) + 1)]
        return sorted(set(train_labels.astype(str)))

    def balanced(self, df: Any) -> Any:
        """Undersample every class to the smallest class's count, as the book's ``create_balanced_dataset``.

        Classes are concatenated in id order; a class already at the minimum is kept as it is,
        a larger one is ``sample(n, random_state=seed)``. For ham/spam this is exactly the book's
        ``pd.concat([df[ham].sample(num_spam, random_state=123), df[spam]])``.
        """
        import pandas as pd

        counts = df["label"].value_counts()
        smallest = int(counts.min())
        parts = []
        for label in sorted(counts.index):
            part = df[df["label"] == label]
            parts.append(part if len(part) == smallest else part.sample(smallest, random_state=self.seed))
        return pd.concat(parts)

    def split(self, df: Any) -> dict[str, Any]:
        """The book's ``random_split``: shuffle with ``seed``, then cut at ``int(n * ratio)``."""
        df = df.sample(frac=1, random_state=self.seed).reset_index(drop=True)
        train_end = int(len(df) * self.train_ratio)
        val_end = train_end + int(len(df) * self.val_ratio)
        return {"train": df[:train_end], "val": df[train_end:val_end], "test": df[val_end:]}

    def load_frames(self) -> dict[str, Any]:
        """Every split as a DataFrame with ``text`` and integer ``label`` columns (cached)."""
        if self.frames is not None:
            return self.frames
        paths = self.source_paths()
        if "all" in paths:
            df = self.read_frame(paths["all"])
            names = self._label_names or self._infer_label_names(df["label"])
            df["label"] = self._label_ids(df, names, str(paths["all"]))
            if self.balance:
                df = self.balanced(df)
            frames = self.split(df)
        else:
            frames = {split: self.read_frame(p) for split, p in paths.items()}
            names = self._label_names or self._infer_label_names(frames["train"]["label"])
            for split, p in paths.items():
                frames[split]["label"] = self._label_ids(frames[split], names, str(p))
            if self.balance:
                frames["train"] = self.balanced(frames["train"])
        self._label_names = names
        self.frames = {split: frames[split].reset_index(drop=True) for split in frames}
        for split in ("train", "val"):
            if len(self.frames.get(split, ())) == 0:
                raise DataError(f"the {split} split is empty; use more data or other data.train_ratio/val_ratio")
        return self.frames

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
        cap = self.max_length
        if self.pad_to == "longest":
            longest = max(len(ids) for ids in encoded["train"])
            self.pad_length = min(longest, cap) if cap is not None else longest
        elif self.pad_to == "max_length":
            self.pad_length = cap
        else:
            self.pad_length = self.pad_to  # an int, or None for no padding
        limit = self.pad_length if self.pad_length is not None else cap
        for split, df in frames.items():
            ids = [(seq[:limit] if limit is not None else seq) or [self.pad_token_id] for seq in encoded[split]]
            self.datasets[split] = ClassificationDataset(
                ids, df["label"].tolist(), self.pad_length, self.pad_token_id, texts=df["text"].tolist()
            )
        if self.drop_last and len(self.datasets["train"]) < self.batch_size:
            raise DataError(
                f"the training split has {len(self.datasets['train'])} examples, fewer than one batch of "
                f"data.batch_size={self.batch_size}; use a smaller batch size or data.drop_last=false"
            )

    def inference_spec(self) -> dict[str, Any]:
        """What a classifier needs to preprocess new texts as in training (stored with the model)."""
        if not self.datasets:
            self.setup()
        return {
            "tokenizer": self.tokenizer.name,
            "max_length": self.max_length,
            "pad_length": self.pad_length,
            "pad_token_id": self.pad_token_id,
            "label_names": self.label_names,
        }

    # ------------------------------------------------------------------------------------------
    # Loaders

    def _loader(self, split: str, train: bool = False) -> DataLoader:
        if not self.datasets:
            raise RuntimeError("call setup() before asking for dataloaders")
        if split not in self.datasets:
            raise ConfigError(f"there is no {split} split: give data.test_path, or use data.path with a ratio split")
        return DataLoader(
            self.datasets[split],
            batch_size=self.batch_size if train else self.eval_batch_size,
            shuffle=train and self.shuffle,
            drop_last=train and self.drop_last,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
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


class SMSSpamDataModule(TextClassificationDataModule):
    """The UCI SMS Spam Collection prepared exactly as in the book's chapter 6.

    The archive is downloaded once (``url``; the archive itself is not checksum-pinned) and its
    ``SMSSpamCollection`` extracted and verified against ``member_sha256``; or ``path`` names a
    local copy of that file. The TSV is read as the book reads it, with pandas' default quoting:
    a message starting with ``"`` runs to the next lone quote, so two lines of the file merge into
    one message and the 5,574 lines give 5,572 examples (4,825 ham, 747 spam), the book's counts.
    With ``balance`` (the book's choice), ham is undersampled to 747: 1,494 examples, split
    1,045 / 149 / 300.
    """

    def __init__(
        self,
        path: str | None = None,
        url: str = SMS_SPAM_URL,
        sha256: str | None = None,
        member: str = SMS_SPAM_MEMBER,
        member_sha256: str | None = SMS_SPAM_SHA256,
        cache_dir: str | None = None,
        balance: bool = True,
        label_names: Sequence[str] = ("ham", "spam"),
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("format", "tsv")
        kwargs.setdefault("column_names", ["Label", "Text"])
        kwargs.setdefault("text_column", "Text")
        kwargs.setdefault("label_column", "Label")
        super().__init__(path=None, balance=balance, label_names=label_names, **kwargs)
        self.local_path = path
        self.url = url
        self.sha256 = sha256
        self.member = member
        self.member_sha256 = member_sha256
        self.cache_dir = cache_dir

    def source_paths(self) -> dict[str, Path]:
        if self.local_path is not None:
            path = self._existing(self.local_path, "data.path")
            if self.member_sha256 is not None and sha256_file(path) != self.member_sha256:
                warnings.warn(
                    f"{path} differs from the UCI SMSSpamCollection (sha256 {self.member_sha256}); "
                    "splits and accuracies will not match the book's",
                    stacklevel=2,
                )
            return {"all": path}
        directory = cache_root(self.cache_dir) / "downloads" / "sms_spam"
        archive = download(self.url, self.sha256, directory, local_hint="data.path")
        extracted = extract_member(archive, self.member, directory)
        if self.member_sha256 is not None:
            found = sha256_file(extracted)
            if found != self.member_sha256:
                extracted.unlink(missing_ok=True)
                raise DataError(
                    f"{self.member} from {self.url} has sha256 {found}, expected {self.member_sha256}; "
                    f"the archive changed at its source or is corrupted: delete {archive} to download it "
                    "again, or pass a verified local copy with data.path=/path/to/SMSSpamCollection"
                )
        return {"all": extracted}

