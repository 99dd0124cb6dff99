"""``get_tokenizer``: a tokenizer by name (``gpt2``, ``byte``, a named model such as
``smollm2-135m-instruct``) or by path (a GGUF file, a model directory's ``tokenizer.json``)."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

from gptlab.errors import ConfigError
from gptlab.named_models import NAMED_MODELS, resolve_named_model
from gptlab.tokenizer.bpe import BPETokenizer, ByteTokenizer, Tokenizer, gpt2_encoding
from gptlab.tokenizer.gguf import GGUFTokenizer
from gptlab.tokenizer.hf import CHAT_TEMPLATE_FILE, HF_TOKENIZER_FILE, HFTokenizer

TOKENIZERS = ("gpt2", "byte")
GGUF_SUFFIX = ".gguf"


def get_tokenizer(name: str = "gpt2") -> Tokenizer:
    """A tokenizer by name: ``gpt2`` (BPE, 50,257 ids), ``byte`` (257 ids), a named model (its GGUF
    file's tokenizer, or its Hub directory's), or a path to a ``.gguf`` file or to a model directory
    holding a Hugging Face ``tokenizer.json`` (or to that file)."""
    if name == "gpt2":
        return BPETokenizer(gpt2_encoding(), "gpt2")
    if name == "byte":
        return ByteTokenizer()
    path = resolve_named_model(name) if name in NAMED_MODELS else Path(name).expanduser().resolve()
    if path.suffix == GGUF_SUFFIX:
        if not path.is_file():
            raise ConfigError(f"GGUF file {path} not found")
        return _gguf_tokenizer(path, _version(path))
    path = path.parent if path.name == HF_TOKENIZER_FILE else path
    if (path / HF_TOKENIZER_FILE).is_file():
        files = (path / f for f in (HF_TOKENIZER_FILE, CHAT_TEMPLATE_FILE, *HFTokenizer.EOS_SOURCES))
        return _hf_tokenizer(path, tuple(_version(f) if f.is_file() else None for f in files))
    raise ConfigError(
        f"unknown tokenizer {name!r}; valid tokenizers: {', '.join(TOKENIZERS)}, a named model "
        f"({', '.join(NAMED_MODELS)}), a {GGUF_SUFFIX} file, or a directory with a {HF_TOKENIZER_FILE}"
    )


def _version(path: Path) -> tuple[int, int]:
    """What changes when a file is replaced: a cached tokenizer of the old file is not reused."""
    stat = path.stat()
    return stat.st_mtime_ns, stat.st_size


@functools.lru_cache(maxsize=8)
def _hf_tokenizer(directory: Path, versions: tuple[Any, ...]) -> HFTokenizer:
    return HFTokenizer(directory)  # read once per version of its files: a large vocabulary takes a while


@functools.lru_cache(maxsize=4)
def _gguf_tokenizer(path: Path, version: tuple[int, int]) -> GGUFTokenizer:
    return GGUFTokenizer.from_file(path)  # once per version of the file: reading its metadata takes seconds
