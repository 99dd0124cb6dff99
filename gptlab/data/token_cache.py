"""Tokenize a corpus once into a flat binary file of token ids, read back with ``np.memmap``.

A corpus is tokenized chunk by chunk and appended to the file, so memory stays flat however large
the corpus is, and training later reads only the windows it needs from the memory map. The file
is named by a hash of the corpus content, the tokenizer and the file format, so changing any of
them builds a new cache instead of silently reusing a stale one.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from gptlab.data.downloads import cache_root
from gptlab.data.sources import TextSource
from gptlab.errors import DataError
from gptlab.fileio import atomic_path, atomic_write_text
from gptlab.tokenizer import Tokenizer

#: Bumped whenever the file layout or the way text is split changes, to invalidate old caches.
TOKEN_FORMAT_VERSION = 1
#: Text handed to the tokenizer at once: large enough for tiktoken's threads, small enough for RAM.
BATCH_CHARS = 4 << 20


def token_dtype(vocab_size: int) -> np.dtype:
    """``uint16`` when every id fits (GPT-2's 50,257 do), else ``uint32``: half the disk and page cache."""
    return np.dtype(np.uint16 if vocab_size <= 1 << 16 else np.uint32)


def token_cache_key(fingerprint: str, tokenizer_name: str) -> str:
    """The cache file's stem: a hash of the corpus fingerprint, the tokenizer and the format version."""
    key = f"{fingerprint}\0{tokenizer_name}\0v{TOKEN_FORMAT_VERSION}"
    return hashlib.sha256(key.encode()).hexdigest()[:32]


def token_cache_path(source: TextSource, tokenizer: Tokenizer, cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """Where the tokens of ``source`` live: ``cache_root(cache_dir)/tokens/<key>.bin``."""
    key = token_cache_key(source.fingerprint, tokenizer.name)
    return cache_root(cache_dir) / "tokens" / f"{key}.bin"


def _meta_path(bin_path: Path) -> Path:
    return bin_path.with_suffix(".json")


def read_token_meta(bin_path: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The sidecar metadata of a complete cache, or ``None`` when the cache is missing or unfinished."""
    bin_path = Path(bin_path)
    try:
        meta = json.loads(_meta_path(bin_path).read_text())
        size = bin_path.stat().st_size
    except (OSError, ValueError):
        return None
    if meta.get("format") != TOKEN_FORMAT_VERSION:
        return None
    if size != int(meta["num_tokens"]) * np.dtype(meta["dtype"]).itemsize:
        return None
    return meta


def _batches(chunks: Iterable[str], max_chars: int) -> Iterator[list[str]]:
    batch: list[str] = []
    size = 0
    for chunk in chunks:
        batch.append(chunk)
        size += len(chunk)
        if size >= max_chars:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch


def _encode_batch(tokenizer: Tokenizer, texts: list[str]) -> list[list[int]]:
    encode_batch = getattr(tokenizer, "encode_batch", None)
    if encode_batch is not None:
        return encode_batch(texts)
    return [tokenizer.encode(text) for text in texts]


def build_token_cache(
    source: TextSource,
    tokenizer: Tokenizer,
    cache_dir: str | os.PathLike[str] | None = None,
    *,
    progress: bool = True,
) -> Path:
    """Tokenize ``source`` into its cache file unless a complete one exists; return the ``.bin`` path.

    The ids stream into a hidden temporary file in the cache directory that is renamed into place
    when complete; the JSON sidecar is written last and marks the cache as finished, so a crash
    at any point leaves nothing that a later run would mistake for a complete cache.
    """
    bin_path = token_cache_path(source, tokenizer, cache_dir)
    if read_token_meta(bin_path) is not None:
        return bin_path

    dtype = token_dtype(tokenizer.vocab_size)
    num_tokens = num_chars = 0
    with atomic_path(bin_path) as tmp, open(tmp, "wb") as out:
        bar = tqdm(desc=f"tokenize {source.description}", unit=" chunks", disable=not progress)
        with bar:
            for batch in _batches(source.chunks(), BATCH_CHARS):
                for ids in _encode_batch(tokenizer, batch):
                    np.asarray(ids, dtype=dtype).tofile(out)
                    num_tokens += len(ids)
                num_chars += sum(len(text) for text in batch)
                bar.update(len(batch))
                bar.set_postfix(tokens=num_tokens)
        if num_chars == 0 or num_tokens == 0:
            raise DataError(f"corpus {source.description} is empty; point data.source or data.path at some text")

    meta = {
        "format": TOKEN_FORMAT_VERSION,
        "num_tokens": num_tokens,
        "num_chars": num_chars,
        "dtype": dtype.name,
        "tokenizer": tokenizer.name,
        "vocab_size": tokenizer.vocab_size,
        "source": source.description,
        "fingerprint": source.fingerprint,
    }
    atomic_write_text(_meta_path(bin_path), json.dumps(meta, indent=2) + "\n")
    return bin_path


def open_tokens(bin_path: str | os.PathLike[str], start: int = 0, stop: int | None = None) -> np.memmap:
    """A read-only memory map of tokens ``[start, stop)`` of a complete cache file.

    Each range is mapped on its own (rather than sliced from a whole-file map) so that its file
    offset and length are exactly known, which lets datasets reopen it in worker processes.
    """
    bin_path = Path(bin_path)
    meta = read_token_meta(bin_path)
    if meta is None:
        raise DataError(f"token cache {bin_path} is missing or unfinished; run prepare_data() first or delete it")
    dtype = np.dtype(meta["dtype"])
    total = int(meta["num_tokens"])
    stop = total if stop is None else stop
    if not 0 <= start < stop <= total:
        raise DataError(f"token range [{start}, {stop}) is empty or outside the {total} tokens of {bin_path}")
    return np.memmap(bin_path, dtype=dtype, mode="r", offset=start * dtype.itemsize, shape=(stop - start,))
