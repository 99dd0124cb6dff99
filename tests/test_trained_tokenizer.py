"""``data.tokenizer=train``: a BPE learned from the run's training split only, used by the run and
found with its model afterwards."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from helpers.runs import train_here, user_error_of

from gptlab.cli.generate import main as generate_main
from gptlab.data import PretrainDataModule
from gptlab.data.downloads import cache_root as _cache_root
from gptlab.inference import LLM

#: A word that exists only in the validation part of the planted corpus.
PLANTED = "Zorblaxian"


def planted_corpus(tmp_path: Path, verdict_path: Path) -> Path:
    """The verdict, then a paragraph repeating ``PLANTED``, inside the last 10% of characters."""
    tail = f"\n{PLANTED} quixotry, said the {PLANTED}. " * 40
    text = verdict_path.read_text(encoding="utf-8") + tail
    assert len(tail) < 0.1 * len(text)
    path = tmp_path / "planted.txt"
    path.write_text(text, encoding="utf-8")
    return path


def vocabulary(dm: PretrainDataModule) -> list[str]:
    return list(dm.tokenizer.tokenizer.get_vocab())


def test_the_tokenizer_never_sees_validation_text(tmp_path: Path, verdict_path: Path):
    corpus = planted_corpus(tmp_path, verdict_path)
    dm = PretrainDataModule(path=str(corpus), tokenizer="train", vocab_size=600, max_length=16, train_ratio=0.9)
    dm.setup("fit")
    assert dm.tokenizer.vocab_size == 600
    assert not [token for token in vocabulary(dm) if "orbl" in token]
    # The split falls exactly where the tokenizer's training text ended, and loses no text.
    train, val = dm.train_dataset.tokens.tolist(), dm.val_dataset.tokens.tolist()
    assert len(train) == dm.trained_tokenizer.train_tokens and len(train) + len(val) == dm.num_tokens
    head = dm.tokenizer.decode(train)
    assert len(head) == dm.trained_tokenizer.train_chars
    assert head + dm.tokenizer.decode(val) == corpus.read_text(encoding="utf-8")
    assert PLANTED not in head and PLANTED in dm.tokenizer.decode(val)
    # The same corpus with the planted text inside the training share: the word is learned.
    seen = PretrainDataModule(path=str(corpus), tokenizer="train", vocab_size=600, max_length=16, train_ratio=0.999)
    assert [token for token in vocabulary(seen) if "orbl" in token]


def test_a_run_with_a_trained_tokenizer_reloads_resumes_and_generates(tmp_path: Path, verdict_path: Path,
                                                                       capsys: pytest.CaptureFixture[str],
                                                                       monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("GPTLAB_CACHE", str(tmp_path / "cache"))  # this test's tokenizers only
    run = tmp_path / "run"
    overrides = ("data=verdict", f"data.path={verdict_path}", "data.tokenizer=train", "data.vocab_size=512",
                 "model=nano", "trainer=debug", "print_config=false")
    first = train_here(run, *overrides)
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert config["data"]["tokenizer"] == "train" and config["model"]["vocab_size"] == 512
    learned = json.loads((run / "tokenizer.json").read_text())
    assert json.loads((run / "model" / "tokenizer.json").read_text()) == learned
    assert "--tokenizer" not in first.output and "try it: gptlab-generate" in first.output
    cache = list(_cache_root().glob("tokenizers/*"))
    assert len(cache) == 1
    stamp = (cache[0] / "tokenizer.json").stat().st_mtime_ns

    # Resumed from its last checkpoint with no further flags: the same tokenizer, from the cache.
    train_here(run, *overrides, "ckpt_path=last", "trainer.max_steps=6")
    assert (cache[0] / "tokenizer.json").stat().st_mtime_ns == stamp
    assert list(_cache_root().glob("tokenizers/*")) == cache

    llm = LLM.load(str(run))
    assert llm.tokenizer.vocab_size == 512 and llm.model.cfg.vocab_size == 512
    expected = llm.generate("Every effort moves you", max_new_tokens=8)
    capsys.readouterr()
    assert generate_main([str(run), "--prompt", "Every effort moves you", "--max-new-tokens", "8", "--no-echo"]) == 0
    assert capsys.readouterr().out == expected + "\n"


@pytest.mark.parametrize("override, message", [
    ("data.vocab_size=null", "data.tokenizer=train learns a vocabulary of data.vocab_size tokens"),
    ("data.vocab_size=100", "vocabulary size 100 is too small"),
])
def test_bad_trained_tokenizer_settings_are_one_line(tmp_path: Path, verdict_path: Path, override: str, message: str):
    problem = user_error_of(tmp_path / "run", "data=verdict", f"data.path={verdict_path}", "data.tokenizer=train",
                            override, "model=nano", "trainer=debug", "print_config=false")
    assert message in problem
