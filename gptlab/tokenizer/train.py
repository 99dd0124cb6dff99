"""Train a byte-level BPE tokenizer on your own text and write it as a ``tokenizer.json``, which
``get_tokenizer(directory)`` reads like any Hugging Face directory's.

Two implementations learn the same merges in the same order (see ``bpe_train``'s tie rule):

- ``fast``: Hugging Face ``tokenizers``' ``BpeTrainer`` in Rust, for real corpora;
- ``scratch``: ``bpe_train.train_bpe`` in plain Python, the book's algorithm to read.

Both write one file through one function (``_save``): a ``tokenizers`` BPE model with GPT-2's
byte-level pre-tokenizer and decoder, and the special tokens as added tokens. Special tokens
(``<|endoftext|>``, gptlab's document separator and the end-of-text token ``HFTokenizer`` finds)
are cut out of the text before training, so no merge spans or learns them.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import tokenizers
from tokenizers import decoders, models, pre_tokenizers, trainers
from tqdm import tqdm

from gptlab.errors import ConfigError, DataError
from gptlab.fileio import atomic_path
from gptlab.tokenizer.bpe import END_OF_TEXT
from gptlab.tokenizer.bpe_train import BYTE_ALPHABET, split_special, train_bpe
from gptlab.tokenizer.hf import HF_TOKENIZER_FILE

IMPLEMENTATIONS = ("fast", "scratch")


def train_tokenizer(
    texts: Iterable[str],
    vocab_size: int,
    out_dir: Path,
    impl: str = "fast",
    special_tokens: Sequence[str] = (END_OF_TEXT,),
    min_frequency: int = 0,
    progress: bool = False,
) -> Path:
    """Learn a byte-level BPE of ``vocab_size`` tokens (special tokens and the 256 bytes included)
    from ``texts`` and write ``out_dir/tokenizer.json``; return ``out_dir``, which
    ``get_tokenizer(str(out_dir))`` opens. ``texts`` is any iterable of text pieces (a text source's
    chunks: pieces are pre-tokenized one at a time, so cut them between words)."""
    special_tokens = tuple(special_tokens)
    if impl not in IMPLEMENTATIONS:
        raise ConfigError(f"unknown tokenizer implementation {impl!r}; choose {' or '.join(IMPLEMENTATIONS)}")
    if END_OF_TEXT not in special_tokens:
        raise ConfigError(f"the special tokens must include {END_OF_TEXT}, gptlab's document separator")
    smallest = len(BYTE_ALPHABET) + len(special_tokens)
    if vocab_size < smallest:
        raise ConfigError(f"vocabulary size {vocab_size} is too small: a byte-level BPE needs {len(BYTE_ALPHABET)} "
                          f"byte tokens + {len(special_tokens)} special, at least {smallest}")
    corpus = _Corpus(texts, special_tokens, progress)
    if impl == "scratch":
        learned = train_bpe(corpus, vocab_size, special_tokens, min_frequency, progress)
        corpus.check_not_empty()
        model = models.BPE(learned.vocab, learned.merges)
    else:
        tokenizer = _byte_level(models.BPE())
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency,
                                      special_tokens=list(special_tokens), show_progress=progress,
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
        tokenizer.train_from_iterator(corpus, trainer)
        corpus.check_not_empty()
        model = tokenizer.model
    return _save(model, special_tokens, Path(out_dir).expanduser())


class _Corpus:
    """The training text as plain pieces, special tokens cut out; counts what it read."""

    def __init__(self, texts: Iterable[str], special_tokens: tuple[str, ...], progress: bool) -> None:
        self.texts, self.special_tokens, self.progress = texts, special_tokens, progress
        self.chars = 0

    def __iter__(self) -> Iterator[str]:
        with tqdm(desc="reading", unit=" chars", unit_scale=True, disable=not self.progress) as bar:
            for text in self.texts:
                for piece, special in split_special(text, self.special_tokens):
                    if not special:
                        self.chars += len(piece)
                        bar.update(len(piece))
                        yield piece

    def check_not_empty(self) -> None:
        if not self.chars:
            raise DataError("the corpus holds no text to train a tokenizer on")


def _byte_level(model: models.Model) -> tokenizers.Tokenizer:
    """``model`` with GPT-2's byte-level pre-tokenization (its regex, no prefix space) and decoding."""
    tokenizer = tokenizers.Tokenizer(model)
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tokenizer.decoder = decoders.ByteLevel()
    return tokenizer


def _save(model: models.Model, special_tokens: tuple[str, ...], out_dir: Path) -> Path:
    tokenizer = _byte_level(model)
    tokenizer.add_special_tokens([tokenizers.AddedToken(t, special=True, normalized=False) for t in special_tokens])
    out_dir.mkdir(parents=True, exist_ok=True)
    with atomic_path(out_dir / HF_TOKENIZER_FILE) as tmp:
        tokenizer.save(str(tmp))
    return out_dir
