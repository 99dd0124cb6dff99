"""How well a tokenizer compresses a corpus: bytes per token, tokens per word, and the share of its
vocabulary the corpus uses. Bytes per token is what turns a loss per token into bits per byte, the
measure that compares runs with different tokenizers."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from tqdm import tqdm

from gptlab.tokenizer.bpe import END_OF_TEXT, Tokenizer


@dataclass
class TokenStats:
    """Counts over a corpus; a word is a run of non-whitespace characters (``str.split``)."""

    vocab_size: int
    bytes: int = 0
    tokens: int = 0
    words: int = 0
    used: set[int] = field(default_factory=set)

    @property
    def bytes_per_token(self) -> float:
        return self.bytes / max(1, self.tokens)

    @property
    def tokens_per_word(self) -> float:
        return self.tokens / max(1, self.words)

    @property
    def vocab_used(self) -> float:
        """The share of the vocabulary's ids that occur in the corpus."""
        return len(self.used) / self.vocab_size

    def summary(self) -> str:
        return (f"{self.bytes:,} bytes, {self.words:,} words, {self.tokens:,} tokens: "
                f"{self.bytes_per_token:.3f} bytes/token, {self.tokens_per_word:.3f} tokens/word, "
                f"{len(self.used):,} of {self.vocab_size:,} ids used ({self.vocab_used:.1%})")


def text_bytes(text: str) -> int:
    """UTF-8 bytes of the text in ``text``: the ``<|endoftext|>`` separators between documents
    are not text and count none."""
    return len(text.replace(END_OF_TEXT, "").encode("utf-8"))


def token_stats(tokenizer: Tokenizer, texts: Iterable[str], progress: bool = False) -> TokenStats:
    """Encode ``texts`` piece by piece (a text source's chunks, cut between words) and count.
    ``<|endoftext|>`` separators count as tokens but not as bytes or words: they are not text."""
    stats = TokenStats(tokenizer.vocab_size)
    for text in tqdm(texts, desc="encoding", unit=" pieces", disable=not progress):
        ids = tokenizer.encode(text)
        stats.tokens += len(ids)
        stats.used.update(ids)
        stats.bytes += text_bytes(text)
        stats.words += sum(len(piece.split()) for piece in text.split(END_OF_TEXT))
    return stats
