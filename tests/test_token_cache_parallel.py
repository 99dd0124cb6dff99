"""The threaded token cache builder: exactly the ids of single-threaded ``encode``, read-ahead bounded."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

import gptlab.data.token_cache as token_cache
from gptlab.data import EmbeddedSource, FileSource, TextSource, build_token_cache, open_tokens
from gptlab.tokenizer import END_OF_TEXT, get_tokenizer

# Text that stresses GPT-2's pre-tokenisation: contractions, digits, runs of spaces and newlines,
# non-Latin scripts, emoji and a literal <|endoftext|> inside a document.
DOCUMENTS = [
    "It's 2024 and they'll say   we've   won.\n\n\n  Indented line\twith tab.\r\nWindows line end.",
    "Ünïcödé façade — naïve café; 東京は晴れ 😀👍🏽 and math: ∑ x_i² ≥ 0.  ",
    "  leading spaces, a number 3.14159, 1,000,000 and an email a.b@c.de" + END_OF_TEXT + "after a marker",
    "def f(x):\n    return x ** 2  # comment\n\n\n\nclass A:\n    pass\n" * 40,
]


@pytest.fixture(autouse=True)
def _cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    cache = tmp_path / "cache"
    monkeypatch.setenv("GPTLAB_CACHE", str(cache))
    return cache


def _files(tmp_path: Path, documents: list[str]) -> list[Path]:
    paths = []
    for i, text in enumerate(documents):
        path = tmp_path / f"doc{i}.txt"
        path.write_bytes(text.encode("utf-8"))  # keep "\r\n" as written
        paths.append(path)
    return paths


@pytest.mark.parametrize("tokenizer_name", ["gpt2", "byte"])
@pytest.mark.parametrize("num_threads", [1, 3])
def test_threaded_cache_equals_encoding_the_whole_corpus(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                         tokenizer_name: str, num_threads: int):
    # Tiny file blocks and pieces: many chunks per file and many pieces in flight at once.
    monkeypatch.setattr(token_cache, "PIECE_CHARS", 64)
    paths = _files(tmp_path, DOCUMENTS)
    source = FileSource(paths, "stress corpus", block_chars=50)
    assert len(list(source.chunks())) > 20
    tokenizer = get_tokenizer(tokenizer_name)
    bin_path = build_token_cache(source, tokenizer, progress=False, num_threads=num_threads)
    whole = END_OF_TEXT.join(path.read_text(encoding="utf-8") for path in paths)  # "\r\n" read as "\n"
    expected = tokenizer.encode(whole)
    assert open_tokens(bin_path).tolist() == expected
    assert expected.count(tokenizer.eot_id) == len(DOCUMENTS)  # three separators, one in a document


def test_embedded_corpus_equals_encoding_the_joined_topics():
    from pydoc_data.topics import topics

    tokenizer = get_tokenizer("gpt2")
    bin_path = build_token_cache(EmbeddedSource(), tokenizer, progress=False, num_threads=2)
    expected = tokenizer.encode(END_OF_TEXT.join(topics[key] for key in sorted(topics)))
    tokens = open_tokens(bin_path)
    assert len(tokens) == len(expected) > 100_000
    assert np.array_equal(np.asarray(tokens), np.asarray(expected, dtype=np.uint16))


class _CountingSource(TextSource):
    """Records, at every chunk it hands out, how many chunks have been handed out but not encoded."""

    description = "counting"

    def __init__(self, tokenizer: _CountingTokenizer, num_chunks: int) -> None:
        self.tokenizer, self.num_chunks, self.max_ahead = tokenizer, num_chunks, 0

    def chunks(self) -> Iterator[str]:
        for i in range(self.num_chunks):
            self.max_ahead = max(self.max_ahead, i - self.tokenizer.encoded)
            yield f"chunk{i} "

    def _fingerprint(self) -> str:
        return f"counting-{self.num_chunks}"


class _CountingTokenizer:
    name, vocab_size, eot_id = "counting", 300, 299

    def __init__(self) -> None:
        self.encoded, self._lock = 0, threading.Lock()

    def encode(self, text: str) -> list[int]:
        with self._lock:
            self.encoded += 1
        return [len(text)]


def test_read_ahead_is_bounded_by_the_window(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(token_cache, "PIECE_CHARS", 1)  # one chunk per piece
    tokenizer = _CountingTokenizer()
    source = _CountingSource(tokenizer, num_chunks=300)
    bin_path = build_token_cache(source, tokenizer, progress=False, num_threads=2)
    assert tokenizer.encoded == 300 and len(open_tokens(bin_path)) == 300
    # A window of PIECES_PER_THREAD * threads pieces, plus the one being handed out.
    assert source.max_ahead <= token_cache.PIECES_PER_THREAD * 2 + 1
