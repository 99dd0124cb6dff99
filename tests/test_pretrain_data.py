"""Sliding windows, the token cache and PretrainDataModule, checked against the book's numbers."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from gptlab.data import (
    FileSource,
    PretrainDataModule,
    SlidingWindowDataset,
    build_token_cache,
    local_text_source,
    open_tokens,
    read_token_meta,
    token_cache_path,
)
from gptlab.errors import DataError
from gptlab.tokenizer import get_tokenizer

# The book, section 2.6: "The Verdict" is 5,145 GPT-2 tokens; its first windows of 4 are these.
VERDICT_TOKENS = 5145
FIRST_INPUT = [40, 367, 2885, 1464]
FIRST_TARGET = [367, 2885, 1464, 1807]


@pytest.fixture(autouse=True)
def _cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    cache = tmp_path / "cache"
    monkeypatch.setenv("GPTLAB_CACHE", str(cache))
    return cache


def _module(path: Path | str, **kwargs: object) -> PretrainDataModule:
    dm = PretrainDataModule(path=str(path), **kwargs)  # type: ignore[arg-type]
    dm.prepare_data()
    dm.setup("fit")
    return dm


def _text_file(tmp_path: Path, text: str, name: str = "corpus.txt") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


# --------------------------------------------------------------------------------------------
# windows


def test_verdict_windows_match_the_book(verdict_path: Path):
    dm = PretrainDataModule(path=str(verdict_path), max_length=4, stride=1, train_ratio=0.9)
    dm.prepare_data()
    dm.setup("fit")
    assert dm.num_tokens == VERDICT_TOKENS
    inputs, targets = dm.train_dataset[0]
    assert inputs.tolist() == FIRST_INPUT and targets.tolist() == FIRST_TARGET
    assert inputs.dtype == targets.dtype == torch.long
    split = int(0.9 * VERDICT_TOKENS)
    assert len(dm.train_dataset) == len(range(0, split - 4, 1))
    assert len(dm.val_dataset) == len(range(0, VERDICT_TOKENS - split - 4, 1))


def test_whole_verdict_as_one_dataset_matches_gptdatasetv1(verdict_path: Path):
    tokenizer = get_tokenizer("gpt2")
    bin_path = build_token_cache(local_text_source(verdict_path), tokenizer, progress=False)
    tokens = open_tokens(bin_path)
    assert len(tokens) == VERDICT_TOKENS
    assert tokens.tolist() == tokenizer.encode(verdict_path.read_text(encoding="utf-8"))
    for max_length, stride in [(4, 1), (4, 4), (256, 128), (256, 256)]:
        ds = SlidingWindowDataset(tokens, max_length, stride)
        assert len(ds) == len(range(0, VERDICT_TOKENS - max_length, stride))
        last_start = (len(ds) - 1) * stride
        inputs, targets = ds[len(ds) - 1]
        assert inputs.tolist() == tokens[last_start : last_start + max_length].tolist()
        assert targets.tolist() == tokens[last_start + 1 : last_start + max_length + 1].tolist()


def test_windows_with_a_stride_overlap_as_the_book_shows():
    ds = SlidingWindowDataset(list(range(10)), max_length=4, stride=2)
    windows = [(x.tolist(), y.tolist()) for x, y in (ds[i] for i in range(len(ds)))]
    assert windows == [([0, 1, 2, 3], [1, 2, 3, 4]), ([2, 3, 4, 5], [3, 4, 5, 6]), ([4, 5, 6, 7], [5, 6, 7, 8])]
    assert len(SlidingWindowDataset(list(range(5)), max_length=4, stride=1)) == 1
    assert len(SlidingWindowDataset(list(range(4)), max_length=4, stride=1)) == 0
    with pytest.raises(IndexError):
        ds[len(ds)]


def test_dataset_reads_a_memory_map_and_pickles_as_a_file_range(verdict_path: Path):
    dm = _module(verdict_path, max_length=8, stride=3)
    for ds in (dm.train_dataset, dm.val_dataset):
        assert isinstance(ds.tokens, np.memmap) and ds.tokens.dtype == np.uint16
        assert not ds.tokens.flags.writeable
    # Worker processes receive a pickled dataset: it must reopen the map, not carry the tokens.
    payload = pickle.dumps(dm.val_dataset)
    assert len(payload) < 1000
    copy = pickle.loads(payload)
    assert isinstance(copy.tokens, np.memmap)
    for i in (0, len(copy) - 1):
        assert all(torch.equal(a, b) for a, b in zip(copy[i], dm.val_dataset[i]))


# --------------------------------------------------------------------------------------------
# token cache


def test_token_cache_file_and_sidecar(verdict_path: Path, _cache: Path):
    tokenizer = get_tokenizer("gpt2")
    source = local_text_source(verdict_path)
    bin_path = build_token_cache(source, tokenizer, progress=False)
    assert bin_path == token_cache_path(source, tokenizer) and bin_path.parent == _cache / "tokens"
    assert bin_path.stat().st_size == VERDICT_TOKENS * 2  # uint16
    meta = json.loads(bin_path.with_suffix(".json").read_text())
    assert meta["num_tokens"] == VERDICT_TOKENS and meta["dtype"] == "uint16"
    assert meta["tokenizer"] == "gpt2" and meta["source"] == str(verdict_path.resolve())
    assert sorted(p.name for p in bin_path.parent.iterdir()) == [bin_path.name, bin_path.with_suffix(".json").name]
    # Another tokenizer gets another cache.
    assert build_token_cache(source, get_tokenizer("byte"), progress=False) != bin_path


def test_cache_hit_does_not_tokenize_again(verdict_path: Path, monkeypatch: pytest.MonkeyPatch):
    dm = _module(verdict_path)
    mtime = dm.tokens_path.stat().st_mtime_ns

    again = PretrainDataModule(path=str(verdict_path))

    def fail(*args: object) -> None:
        raise AssertionError("the corpus was tokenized again")

    monkeypatch.setattr(again.tokenizer, "encode_batch", fail)
    monkeypatch.setattr(again.tokenizer, "encode", fail)
    again.prepare_data()
    again.setup("fit")
    assert again.tokens_path == dm.tokens_path and again.tokens_path.stat().st_mtime_ns == mtime
    assert again.num_tokens == VERDICT_TOKENS


def test_editing_the_corpus_builds_a_new_cache(tmp_path: Path):
    path = _text_file(tmp_path, "one two three four five six seven eight nine ten " * 10)
    first = _module(path, max_length=4, batch_size=1)
    path.write_text("completely different words now " * 10)
    second = _module(path, max_length=4, batch_size=1)
    assert second.tokens_path != first.tokens_path
    assert second.num_tokens == len(get_tokenizer("gpt2").encode(path.read_text()))


class _FakeTokenizer:
    """Splits on spaces; ids grow past 65,535 so the cache needs uint32. Fails on a marked chunk."""

    name = "fake-large"
    vocab_size = 100_000
    eot_id = 99_999

    def encode(self, text: str) -> list[int]:
        if "CRASH" in text:
            raise RuntimeError("tokenizer crashed")
        return [70_000 + len(word) for word in text.split()]


def test_large_vocabularies_use_uint32(tmp_path: Path):
    path = _text_file(tmp_path, "a bb ccc")
    bin_path = build_token_cache(local_text_source(path), _FakeTokenizer(), progress=False)
    assert open_tokens(bin_path).dtype == np.uint32
    assert open_tokens(bin_path).tolist() == [70_001, 70_002, 70_003]


def test_a_crash_while_tokenizing_leaves_no_cache(tmp_path: Path, _cache: Path, monkeypatch: pytest.MonkeyPatch):
    import gptlab.data.token_cache as token_cache

    monkeypatch.setattr(token_cache, "PIECE_CHARS", 1)  # write the first file before the crash
    ok, crash = _text_file(tmp_path, "fine words", "a.txt"), _text_file(tmp_path, "CRASH here", "b.txt")
    source = FileSource([ok, crash], "two files")
    with pytest.raises(RuntimeError, match="crashed"):
        build_token_cache(source, _FakeTokenizer(), progress=False)
    assert list((_cache / "tokens").iterdir()) == []


def test_a_token_file_without_its_sidecar_is_rebuilt(tmp_path: Path):
    path = _text_file(tmp_path, "some words to cache")
    tokenizer = get_tokenizer("gpt2")
    source = local_text_source(path)
    bin_path = build_token_cache(source, tokenizer, progress=False)
    bin_path.with_suffix(".json").unlink()
    bin_path.write_bytes(b"\x00\x00")  # what a crash between the two renames could leave
    assert read_token_meta(bin_path) is None
    assert build_token_cache(source, tokenizer, progress=False) == bin_path
    assert open_tokens(bin_path).tolist() == tokenizer.encode("some words to cache")


# --------------------------------------------------------------------------------------------
# data module


def test_split_and_loaders(verdict_path: Path):
    dm = _module(verdict_path, max_length=16, stride=16, batch_size=4, train_ratio=0.8)
    split = int(0.8 * VERDICT_TOKENS)
    assert len(dm.train_dataset.tokens) == split and len(dm.val_dataset.tokens) == VERDICT_TOKENS - split
    train = dm.train_dataloader()
    assert len(train) == len(dm.train_dataset) // 4  # drop_last
    inputs, targets = next(iter(train))
    assert inputs.shape == targets.shape == (4, 16) and inputs.dtype == torch.long
    assert torch.equal(inputs[:, 1:], targets[:, :-1])
    val = dm.val_dataloader()
    assert len(val) == -(-len(dm.val_dataset) // 4)  # keeps the last, partial batch
    first_inputs, _ = next(iter(val))
    assert torch.equal(first_inputs[0], dm.val_dataset[0][0])  # not shuffled
    assert not train.persistent_workers
    # The book's chapter 5 setting: a validation loader that keeps every window, in order.
    assert sum(x.shape[0] for x, _ in val) == len(dm.val_dataset)


def test_validation_bytes_per_token_are_those_of_the_split_text(verdict_path: Path, tmp_path: Path):
    dm = _module(verdict_path, max_length=16, train_ratio=0.8)
    encoding = get_tokenizer("gpt2")
    ids = encoding.encode(verdict_path.read_text(encoding="utf-8"))
    val = ids[int(0.8 * len(ids)):]
    assert dm.val_bytes_per_token == len(encoding.decode(val).encode("utf-8")) / len(val)
    # A byte per token, once the separator between documents counts no bytes.
    docs = _text_file(tmp_path, "caf\u00e9 \u00fcber na\u00efve r\u00e9sum\u00e9 " * 40)
    assert _module(docs, max_length=16, tokenizer="byte").val_bytes_per_token == 1.0


def test_workers_are_persistent(verdict_path: Path):
    dm = _module(verdict_path, num_workers=1)
    assert dm.train_dataloader().persistent_workers and dm.val_dataloader().num_workers == 1


def test_stride_defaults_to_max_length_and_shuffle_can_be_off(verdict_path: Path):
    dm = _module(verdict_path, max_length=32, batch_size=2, shuffle=False, drop_last=False)
    assert dm.stride == 32
    inputs, _ = next(iter(dm.train_dataloader()))
    assert inputs[0].tolist()[:4] == FIRST_INPUT


def test_embedded_corpus_tokenizes(_cache: Path):
    dm = PretrainDataModule(max_length=64, batch_size=2)
    assert dm.tokenizer.vocab_size == 50257
    dm.prepare_data()
    dm.setup("fit")
    assert dm.num_tokens > 100_000
    assert dm.tokenizer.eot_id in set(dm.train_dataset.tokens[:20_000].tolist())
    inputs, targets = next(iter(dm.train_dataloader()))
    assert inputs.shape == (2, 64) and int(inputs.max()) < 50257


def test_byte_tokenizer_and_path_overriding_source(tmp_path: Path):
    path = _text_file(tmp_path, "héllo world, " * 20)
    dm = _module(path, source="https://example.invalid/never-used.txt", tokenizer="byte", max_length=8, batch_size=2)
    assert dm.num_tokens == len(("héllo world, " * 20).encode("utf-8"))
    assert dm.train_dataset.tokens.dtype == np.uint16


def test_url_source_from_a_local_file_url(verdict_path: Path):
    sha = "b41e41a68f0398a3154ae69e2e4c0e2694e17fe0d66730536837f1b01935b31f"
    dm = PretrainDataModule(source=verdict_path.as_uri(), sha256=sha, max_length=4, stride=1)
    dm.prepare_data()
    dm.setup("fit")
    assert dm.num_tokens == VERDICT_TOKENS and dm.train_dataset[0][0].tolist() == FIRST_INPUT


def _one_line_error(match: str, **kwargs: object) -> str:
    with pytest.raises(DataError, match=match) as info:
        dm = PretrainDataModule(**kwargs)  # type: ignore[arg-type]
        dm.prepare_data()
        dm.setup("fit")
    message = str(info.value)
    assert "\n" not in message
    return message


def test_too_short_splits_are_one_line_errors(verdict_path: Path, tmp_path: Path):
    message = _one_line_error("validation split", path=str(verdict_path), max_length=256, train_ratio=0.99)
    val_tokens = VERDICT_TOKENS - int(0.99 * VERDICT_TOKENS)
    assert message.startswith(f"validation split has {val_tokens} tokens, fewer than one window of max_length+1=257;")
    assert "data.max_length" in message and "data.train_ratio" in message
    short = _text_file(tmp_path, "just a few words here")
    _one_line_error("training split has 4 tokens", path=str(short), max_length=4, train_ratio=0.9)
    _one_line_error("fewer than one batch of data.batch_size=64", path=str(verdict_path), max_length=256, batch_size=64)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"train_ratio": 1.0}, "data.train_ratio"),
        ({"train_ratio": 0.0}, "data.train_ratio"),
        ({"stride": 0}, "data.stride"),
        ({"max_length": 0}, "data.max_length"),
        ({"batch_size": 0}, "data.batch_size"),
    ],
)
def test_invalid_settings_are_rejected(kwargs: dict[str, object], match: str):
    _one_line_error(match, **kwargs)


def test_missing_and_empty_corpora_are_one_line_errors(tmp_path: Path):
    missing = tmp_path / "missing.txt"
    message = _one_line_error("data file not found", path=str(missing))
    assert message == f"data file not found: {missing}; check data.path"
    empty = _text_file(tmp_path, "", "empty.txt")
    assert _one_line_error("is empty", path=str(empty)).startswith(f"corpus {empty} is empty;")
