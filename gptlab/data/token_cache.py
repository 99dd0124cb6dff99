"""Tokenize a corpus once into a flat binary file of token ids, read back with ``np.memmap``.

A corpus is tokenized chunk by chunk and appended to the file, so memory stays flat however large
the corpus is, and training later reads only the windows it needs from the memory map. The file
is named by a hash of the corpus content, the tokenizer and the file format, so changing any of
them builds a new cache instead of silently reusing a stale one.

Tokenizing uses every core: chunks are grouped into pieces of about a megabyte, and a thread pool
encodes a bounded window of pieces while the main thread reads the next ones and writes finished
ones in order. tiktoken releases the GIL while it encodes (and ``encode_to_numpy`` skips building
Python lists of ints), so threads scale without the pickling a process pool would need.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import tiktoken
from tqdm.auto import tqdm

from gptlab.data.downloads import cache_root
from gptlab.data.sources import TextSource
from gptlab.errors import DataError
from gptlab.fileio import atomic_path, atomic_write_text
from gptlab.tokenizer import END_OF_TEXT, Tokenizer

#: Bumped whenever the file layout or the way text is split changes, to invalidate old caches.
TOKEN_FORMAT_VERSION = 1
#: Characters one thread encodes as one task: large enough to hide the task overhead, small for RAM.
PIECE_CHARS = 1 << 20
#: Pieces in flight per thread: one being encoded, one queued, so no thread waits for the reader.
PIECES_PER_THREAD = 2


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


def default_num_threads() -> int:
    """Every CPU this process may run on (the affinity mask, not the machine's total)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS and Windows have no affinity mask
        return os.cpu_count() or 1


def _pieces(chunks: Iterable[str], max_chars: int) -> Iterator[list[str]]:
    """Consecutive chunks grouped until a group holds ``max_chars`` characters.

    Chunks stay separate within a piece (each is encoded on its own, exactly as ``chunks()``
    yields them), so grouping changes nothing in the ids.
    """
    piece: list[str] = []
    size = 0
    for chunk in chunks:
        piece.append(chunk)
        size += len(chunk)
        if size >= max_chars:
            yield piece
            piece, size = [], 0
    if piece:
        yield piece


def _array_encoder(tokenizer: Tokenizer) -> Callable[[str], np.ndarray]:
    """A function from one text to its ids as an array, the same ids as ``tokenizer.encode``.

    For tiktoken encodings it calls ``encode_to_numpy`` (no Python list of ints, GIL released);
    any other tokenizer goes through its ``encode``.
    """
    encoding = getattr(tokenizer, "encoding", None)
    if isinstance(encoding, tiktoken.Encoding):
        allowed = {END_OF_TEXT} & encoding.special_tokens_set
        return functools.partial(encoding.encode_to_numpy, allowed_special=allowed)
    return lambda text: np.asarray(tokenizer.encode(text), dtype=np.int64)


def _encode_piece(encode: Callable[[str], np.ndarray], piece: list[str], dtype: np.dtype) -> np.ndarray:
    arrays = [encode(chunk) for chunk in piece]
    return np.concatenate(arrays).astype(dtype, copy=False) if arrays else np.empty(0, dtype)


def _encoded_in_order(pieces: Iterable[list[str]], encode: Callable[[str], np.ndarray], dtype: np.dtype,
                      num_threads: int) -> Iterator[tuple[list[str], np.ndarray]]:
    """``(piece, ids)`` in corpus order, encoded by ``num_threads`` threads.

    At most ``PIECES_PER_THREAD * num_threads`` pieces are read ahead, so memory is bounded
    whatever the corpus size; the caller writes each result before the next piece is read.
    """
    window = max(1, PIECES_PER_THREAD * num_threads)
    with ThreadPoolExecutor(max_workers=num_threads, thread_name_prefix="tokenize") as pool:
        pending: deque[tuple[list[str], Future[np.ndarray]]] = deque()
        try:
            for piece in pieces:
                pending.append((piece, pool.submit(_encode_piece, encode, piece, dtype)))
                if len(pending) >= window:
                    done, future = pending.popleft()
                    yield done, future.result()
            while pending:
                done, future = pending.popleft()
                yield done, future.result()
        finally:
            for _, future in pending:  # an error or an abandoned generator: drop queued work
                future.cancel()


def build_token_cache(
    source: TextSource,
    tokenizer: Tokenizer,
    cache_dir: str | os.PathLike[str] | None = None,
    *,
    progress: bool = True,
    num_threads: int | None = None,
) -> Path:
    """Tokenize ``source`` into its cache file unless a complete one exists; return the ``.bin`` path.

    The ids stream into a hidden temporary file in the cache directory that is renamed into place
    when complete; the JSON sidecar is written last and marks the cache as finished, so a crash
    at any point leaves nothing that a later run would mistake for a complete cache. The ids are
    exactly ``tokenizer.encode`` of each chunk, concatenated. ``num_threads`` encoder threads
    (default: every CPU this process may use) work on a bounded window of pieces.
    """
    bin_path = token_cache_path(source, tokenizer, cache_dir)
    if read_token_meta(bin_path) is not None:
        return bin_path

    dtype = token_dtype(tokenizer.vocab_size)
    threads = num_threads or default_num_threads()
    pieces = _pieces(source.chunks(), PIECE_CHARS)
    num_tokens = num_chars = 0
    with atomic_path(bin_path) as tmp, open(tmp, "wb") as out:
        bar = tqdm(desc=f"tokenize {source.description}", unit=" chars", unit_scale=True, disable=not progress)
        with bar:
            for piece, ids in _encoded_in_order(pieces, _array_encoder(tokenizer), dtype, threads):
                ids.tofile(out)
                num_tokens += len(ids)
                chars = sum(map(len, piece))
                num_chars += chars
                bar.update(chars)
                bar.set_postfix(tokens=num_tokens, refresh=False)
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
