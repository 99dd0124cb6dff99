"""``TextEncoding``: texts into a classifier's padded batches; training and inference share it."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, fields, replace
from typing import Any, Sequence

import torch

from gptlab.errors import ConfigError
from gptlab.tokenizer.bpe import Tokenizer
from gptlab.tokenizer.load import get_tokenizer

#: ``longest`` (the longest training text), ``max_length``, a length, ``batch`` (each batch to its
#: own longest text), or ``None`` (no padding).
PadTo = str | int | None


def check_pad_to(pad_to: PadTo, max_length: int | None) -> PadTo:
    """``pad_to`` validated and normalised (``"none"`` and ``"32"`` from a command line included)."""
    if pad_to is None or (isinstance(pad_to, str) and pad_to.lower() in ("none", "null")):
        return None
    if pad_to in ("longest", "max_length", "batch"):
        if pad_to == "max_length" and max_length is None:
            raise ConfigError("data.pad_to=max_length needs data.max_length")
        return pad_to
    if isinstance(pad_to, str) and pad_to.isdigit():
        pad_to = int(pad_to)
    if isinstance(pad_to, int) and not isinstance(pad_to, bool) and pad_to >= 1:
        if max_length is not None and pad_to > max_length:
            raise ConfigError(
                f"data.pad_to={pad_to} exceeds data.max_length={max_length} (the model's context); pad to at most max_length"
            )
        return pad_to
    raise ConfigError(f"data.pad_to={pad_to!r} is unknown; use longest, max_length, batch, an integer or none")


@dataclass(frozen=True)
class TextEncoding:
    """How texts become a classifier's inputs: the one preprocessing of training and inference.

    Each text is tokenized with ``tokenizer`` and cut to ``limit`` tokens; an empty text becomes a
    lone pad token, so there is always a position to classify from. A batch is right-padded with
    ``pad_token_id`` (default: the tokenizer's ``<|endoftext|>``) to ``pad_length``, or, when that
    is ``None``, to its longest text. A trained classifier stores this value (``to_dict``), so new
    texts are encoded exactly as its training texts were.
    """

    tokenizer: str = "gpt2"
    max_length: int | None = None
    pad_length: int | None = None
    pad_token_id: int | None = None

    def __post_init__(self) -> None:
        for name, least in (("max_length", 1), ("pad_length", 1), ("pad_token_id", 0)):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < least):
                raise ConfigError(f"{name} must be an integer of at least {least} or null, got {value!r}")
        if self.pad_token_id is None:
            object.__setattr__(self, "pad_token_id", get_tokenizer(self.tokenizer).eot_id)

    @classmethod
    def fit(cls, tokenizer: str, max_length: int | None, pad_to: PadTo, pad_token_id: int | None,
            train_lengths: Sequence[int]) -> TextEncoding:
        """The encoding ``pad_to`` asks for, given the token counts of the training texts.

        ``longest`` pads every split to the longest training text (capped by ``max_length``; longer
        val/test texts are cut to it), as the book does; ``max_length`` pads to ``max_length``; an
        integer pads to itself; ``batch`` and ``None`` leave each text at its own length (a batch is
        then padded to its longest text when it is collated).
        """
        pad_to = check_pad_to(pad_to, max_length)
        if pad_to == "longest":
            longest = max(train_lengths)
            pad_length = min(longest, max_length) if max_length is not None else longest
        else:
            pad_length = {"max_length": max_length, "batch": None}.get(pad_to, pad_to)  # type: ignore[arg-type]
        return cls(tokenizer, max_length, pad_length, pad_token_id)

    @property
    def limit(self) -> int | None:
        """Tokens kept of each text: ``pad_length`` when padding is fixed, else ``max_length`` (None: all)."""
        return self.pad_length if self.pad_length is not None else self.max_length

    def load_tokenizer(self) -> Tokenizer:
        return get_tokenizer(self.tokenizer)

    def truncate(self, ids: Sequence[int]) -> list[int]:
        """One text's ids cut to ``limit``; an empty text keeps one pad token."""
        kept = list(ids[: self.limit]) if self.limit is not None else list(ids)
        return kept or [int(self.pad_token_id)]  # type: ignore[arg-type]

    def pad(self, sequences: Sequence[Sequence[int]]) -> dict[str, torch.Tensor]:
        """Token ids of several texts as ``input_ids`` and ``attention_mask`` ``(B, T)`` (1: real token)."""
        rows = [self.truncate(ids) for ids in sequences]
        length = self.pad_length if self.pad_length is not None else max(map(len, rows), default=0)
        input_ids = torch.full((len(rows), length), int(self.pad_token_id), dtype=torch.long)  # type: ignore[arg-type]
        attention_mask = torch.zeros((len(rows), length), dtype=torch.long)
        for i, row in enumerate(rows):
            input_ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
            attention_mask[i, : len(row)] = 1
        return {"input_ids": input_ids, "attention_mask": attention_mask}

    def encode(self, tokenizer: Tokenizer, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        """``texts`` tokenized, truncated and padded: ``input_ids`` and ``attention_mask``."""
        if tokenizer.name != self.tokenizer:
            raise ConfigError(f"texts must be encoded with the {self.tokenizer} tokenizer, not {tokenizer.name}")
        return self.pad([tokenizer.encode(text) for text in texts])

    def batches(self, tokenizer: Tokenizer, texts: Sequence[str], batch_size: int) -> Iterator[dict[str, torch.Tensor]]:
        """``encode`` in batches; one text at a time without a fixed ``pad_length``, as in training."""
        step = batch_size if self.pad_length is not None else 1
        for start in range(0, len(texts), step):
            yield self.encode(tokenizer, texts[start : start + step])

    @staticmethod
    def last_token_index(attention_mask: torch.Tensor) -> torch.Tensor:
        """Each row's last real token: right padding puts it at ``attention_mask.sum(-1) - 1``."""
        return (attention_mask.long().sum(dim=-1) - 1).clamp(min=0)

    def within(self, context_length: int) -> TextEncoding:
        """For a model of ``context_length``: texts cut to at most the context (no ``max_length``: the context)."""
        return replace(self, max_length=min(self.max_length or context_length, context_length))

    def check_context(self, context_length: int) -> None:
        """Refuse padded or uncut examples longer than the model's context (one clear line)."""
        if self.pad_length is not None and self.pad_length > context_length:
            raise ConfigError(
                f"examples are padded to {self.pad_length} tokens but the model's context is {context_length}; "
                f"set data.max_length={context_length} or a smaller data.pad_to"
            )
        if self.pad_length is None and (self.max_length is None or self.max_length > context_length):
            raise ConfigError(f"unpadded examples must be cut to the model's context: set data.max_length={context_length}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TextEncoding:
        """The value ``to_dict`` wrote; other keys (such as ``label_names``) are ignored."""
        return cls(**{f.name: data[f.name] for f in fields(cls) if data.get(f.name) is not None})
