"""Bytes per token and tokens per word: GPT-2's vocabulary against byte-level BPEs trained here.

Each corpus is cut at the first whitespace after 80% of its characters; tokenizers are trained on
the head and every number is measured on the tail, text no tokenizer saw. Three tokenizers per
corpus: GPT-2's (50,257 tokens), a BPE trained on the head of the default quickstart corpus
(Python's docs), and a BPE trained on the corpus's own head (a small corpus runs out of pairs
before the requested size: its column says how many tokens it learned).

    python experiments/tokenizers/compression.py                       # the table in README.md
    python experiments/tokenizers/compression.py --vocab-size 8192 --impl scratch
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from gptlab.data.sources import EmbeddedSource
from gptlab.tokenizer import END_OF_TEXT, Tokenizer, get_tokenizer, token_stats, train_tokenizer

HERE = Path(__file__).resolve().parent
SHARED = HERE.parents[2] / "shared" / "data"
TRAIN_SHARE = 0.8


def instruction_text(path: Path) -> str:
    """The records' instruction, input and output, a blank line apart; records apart by <|endoftext|>."""
    records = json.loads(path.read_text(encoding="utf-8"))
    return END_OF_TEXT.join("\n\n".join(r[k] for k in ("instruction", "input", "output") if r.get(k))
                            for r in records)


def corpora(shared: Path) -> dict[str, str]:
    return {
        "Python's docs (the quickstart corpus)": "".join(EmbeddedSource().chunks()),
        "The Verdict": (shared / "the-verdict.txt").read_text(encoding="utf-8"),
        "instruction data (1,100 records)": instruction_text(shared / "instruction-data.json"),
        "Vietnamese (vietnamese.txt)": (HERE / "vietnamese.txt").read_text(encoding="utf-8"),
    }


def head_and_tail(text: str) -> tuple[str, str]:
    cut = int(len(text) * TRAIN_SHARE)
    while cut < len(text) and not text[cut].isspace():
        cut += 1
    return text[:cut], text[cut:]


def cell(tokenizer: Tokenizer, text: str) -> str:
    stats = token_stats(tokenizer, [text])
    return f"{stats.bytes_per_token:.2f} | {stats.tokens_per_word:.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vocab-size", type=int, default=4096)
    parser.add_argument("--impl", choices=("fast", "scratch"), default="fast")
    parser.add_argument("--shared", type=Path, default=SHARED, help="the reference data (the verdict, instructions)")
    args = parser.parse_args()
    texts = corpora(args.shared)
    gpt2 = get_tokenizer("gpt2")
    with tempfile.TemporaryDirectory() as tmp:
        def trained(name: str, text: str) -> Tokenizer:
            return get_tokenizer(str(train_tokenizer([text], args.vocab_size, Path(tmp) / name, args.impl)))

        docs_name = next(iter(texts))
        docs = trained("docs", head_and_tail(texts[docs_name])[0])
        n = args.vocab_size
        print(f"| corpus (tail measured) | tail bytes | GPT-2 bytes/token | GPT-2 tokens/word | docs-{n} bytes/token "
              f"| docs-{n} tokens/word | own BPE tokens | own bytes/token | own tokens/word |")
        print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
        for i, (name, text) in enumerate(texts.items()):
            head, tail = head_and_tail(text)
            own = docs if name == docs_name else trained(f"own{i}", head)
            print(f"| {name} | {len(tail.encode('utf-8')):,} | {cell(gpt2, tail)} | {cell(docs, tail)} "
                  f"| {own.vocab_size:,} | {cell(own, tail)} |")


if __name__ == "__main__":
    main()
