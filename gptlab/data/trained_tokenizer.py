"""``data.tokenizer=train``: a byte-level BPE learned from the run's own training text, and only that.

The corpus is cut where GPT-2's pre-tokenization cuts anyway (``sources.safe_cut``), at the last
such point within its first ``train_ratio`` of characters. The text before the cut trains the
tokenizer, and its tokens are exactly the run's training split: validation starts at the first
token after the cut, so no text the tokenizer learned from is ever validated on.

A tokenizer is learned once per corpus and settings and cached under
``cache_root()/tokenizers/<key>/``: a repeated or resumed run, or a re-run from ``config.yaml``,
reuses it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from gptlab.data.downloads import cache_root
from gptlab.data.sources import TextSource, safe_cut
from gptlab.errors import DataError
from gptlab.fileio import atomic_directory
from gptlab.tokenizer import HFTokenizer, train_tokenizer

#: ``data.tokenizer`` value that learns the tokenizer from the run's training text.
TRAIN = "train"
#: The split record written beside the learned ``tokenizer.json``.
SPLIT_FILE = "split.json"
#: Bump when what is learned, or how the split is drawn, changes: old caches are then not reused.
FORMAT_VERSION = 1


@dataclass(frozen=True)
class TrainedTokenizer:
    """A learned tokenizer's directory, and where its corpus's validation split starts."""

    directory: Path
    train_chars: int  # the corpus's first characters, which it learned from
    train_tokens: int  # their tokens: the training split, in the corpus's token cache


def training_text(source: TextSource, train_ratio: float) -> Iterator[str]:
    """The corpus's first ``train_ratio`` of characters, as chunks: whole ones, then the start of
    the chunk the share ends in, cut at the last point before it where GPT-2's pre-tokenization
    cuts too (``safe_cut``), so those chunks' tokens are exactly the corpus's first tokens."""
    goal = train_ratio * sum(len(chunk) for chunk in source.chunks())
    taken = 0
    for chunk in source.chunks():
        if taken + len(chunk) <= goal:
            taken += len(chunk)
            yield chunk
            continue
        head = chunk[:safe_cut(chunk[:int(goal - taken) + 1])]
        if head:
            yield head
        return


def trained_tokenizer(source: TextSource, vocab_size: int, train_ratio: float, impl: str = "fast",
                      cache_dir: str | None = None) -> TrainedTokenizer:
    """The tokenizer learned from ``source``'s training text (see the module), from the cache if
    one was learned before with the same corpus and settings."""
    settings = {"corpus": source.fingerprint, "vocab_size": vocab_size, "train_ratio": train_ratio, "impl": impl,
                "version": FORMAT_VERSION}
    key = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:32]
    directory = cache_root(cache_dir) / "tokenizers" / key
    record = directory / SPLIT_FILE
    if not record.is_file():

        def learn(tmp: Path) -> None:
            train_tokenizer(training_text(source, train_ratio), vocab_size, tmp, impl=impl, progress=True)
            tokenizer = HFTokenizer(tmp)
            train_chars = train_tokens = 0
            for piece in training_text(source, train_ratio):
                train_chars += len(piece)
                train_tokens += len(tokenizer.encode(piece))
            if train_tokens == 0:
                raise DataError(f"{source} has no training text before data.train_ratio={train_ratio}; "
                                "use a longer corpus or a larger data.train_ratio")
            split = {**settings, "train_chars": train_chars, "train_tokens": train_tokens}
            (tmp / SPLIT_FILE).write_text(json.dumps(split, indent=2) + "\n", encoding="utf-8")

        atomic_directory(directory, learn)
    split = json.loads(record.read_text(encoding="utf-8"))
    return TrainedTokenizer(directory, int(split["train_chars"]), int(split["train_tokens"]))
