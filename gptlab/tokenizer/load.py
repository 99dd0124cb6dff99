"""``get_tokenizer``: a tokenizer by name (``gpt2``, ``byte``) or by a model directory's path."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

from gptlab.errors import ConfigError
from gptlab.tokenizer.bpe import BPETokenizer, ByteTokenizer, Tokenizer, gpt2_encoding
from gptlab.tokenizer.hf import HF_TOKENIZER_FILE, HFTokenizer

TOKENIZERS = ("gpt2", "byte")


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


