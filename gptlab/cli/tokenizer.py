"""``gptlab-tokenizer``: train a byte-level BPE tokenizer on your text, encode and decode with any
tokenizer, and measure how well one compresses a corpus.

Examples::

    gptlab-tokenizer train embedded --vocab-size 4096 --out tok4k           # Python's docs, HF tokenizers
    gptlab-tokenizer train ../shared/data/the-verdict.txt --vocab-size 1000 --out verdict --impl scratch
    gptlab-tokenizer encode "Every effort moves you" --tokenizer tok4k      # ids, one line
    gptlab-tokenizer decode 7 42 311 --tokenizer tok4k
    gptlab-tokenizer stats embedded --tokenizer gpt2                        # bytes/token, tokens/word

A corpus is what ``data.source`` takes: ``embedded`` (Python's docs), a file, a directory of
``*.txt``, a glob, a URL or ``hf:NAME``; several are joined with ``<|endoftext|>``. A trained
tokenizer is a directory with a ``tokenizer.json``: ``data.tokenizer=DIR model.vocab_size=N``
trains a model with it. ``--impl scratch`` trains, encodes and decodes with the from-scratch
Python BPE (``gptlab.tokenizer.bpe_train``) instead of Hugging Face ``tokenizers``; both give the
same merges and ids.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

from gptlab.cli import run_command
from gptlab.data.sources import read_text_source
from gptlab.errors import ConfigError
from gptlab.tokenizer import END_OF_TEXT, Tokenizer, get_tokenizer
from gptlab.tokenizer.bpe_train import ByteLevelBPE
from gptlab.tokenizer.stats import token_stats
from gptlab.tokenizer.train import IMPLEMENTATIONS, train_tokenizer

PROG = "gptlab-tokenizer"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0].split(": ", 1)[1].replace("\n", " "),
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 1)[1])
    commands = parser.add_subparsers(dest="command", required=True)
    train = commands.add_parser("train", help="learn a byte-level BPE from a corpus into DIR/tokenizer.json")
    train.add_argument("corpus", nargs="+", help="embedded, a file, a directory of *.txt, a glob, a URL, hf:NAME")
    train.add_argument("--vocab-size", type=int, required=True, help="tokens in all: 256 bytes + specials + merges")
    train.add_argument("--out", required=True, help="the directory to write tokenizer.json into")
    train.add_argument("--impl", choices=IMPLEMENTATIONS, default="fast",
                       help="fast: Hugging Face tokenizers (default); scratch: the from-scratch Python BPE")
    train.add_argument("--min-frequency", type=int, default=0, help="stop when the best pair occurs fewer times")
    for name, what in (("encode", "text to ids (TEXT, else stdin)"), ("decode", "ids to text")):
        sub = commands.add_parser(name, help=what)
        if name == "encode":
            sub.add_argument("text", nargs="?", help="the text; read from stdin when left out")
        else:
            sub.add_argument("ids", nargs="+", type=int, help="token ids")
        sub.add_argument("--tokenizer", default="gpt2", help="gpt2 (default), byte, a model name, a directory")
        sub.add_argument("--impl", choices=IMPLEMENTATIONS, default="fast",
                         help="scratch: the from-scratch encoder (gpt2 or a byte-level tokenizer.json)")
    stats = commands.add_parser("stats", help="bytes per token, tokens per word, the share of the vocabulary used")
    stats.add_argument("corpus", nargs="+", help="as for train")
    stats.add_argument("--tokenizer", default="gpt2", help="gpt2 (default), byte, a model name, a directory")
    return parser


def corpus_chunks(specs: Sequence[str]) -> Iterator[str]:
    """The chunks of every corpus in turn, ``<|endoftext|>`` between them."""
    for i, spec in enumerate(specs):
        if i:
            yield END_OF_TEXT
        yield from read_text_source(spec, setting="CORPUS").chunks()


def open_tokenizer(name: str, impl: str) -> Tokenizer:
    return ByteLevelBPE.load(name) if impl == "scratch" else get_tokenizer(name)


def run(args: argparse.Namespace) -> None:
    progress = sys.stderr.isatty()
    if args.command == "train":
        out = train_tokenizer(corpus_chunks(args.corpus), args.vocab_size, Path(args.out), args.impl,
                              min_frequency=args.min_frequency, progress=progress).resolve()
        tokenizer = get_tokenizer(str(out))
        print(f"{out / 'tokenizer.json'}: {tokenizer.vocab_size:,} tokens ({args.impl}); "
              f"train with data.tokenizer={out} model.vocab_size={tokenizer.vocab_size}")
    elif args.command == "encode":
        tokenizer = open_tokenizer(args.tokenizer, args.impl)
        text = sys.stdin.read() if args.text is None else args.text
        print(" ".join(map(str, tokenizer.encode(text))))
    elif args.command == "decode":
        tokenizer = open_tokenizer(args.tokenizer, args.impl)
        if bad := [i for i in args.ids if not 0 <= i < tokenizer.vocab_size]:
            raise ConfigError(f"ids {bad} are outside the vocabulary of {tokenizer.name} (0..{tokenizer.vocab_size - 1})")
        print(tokenizer.decode(args.ids))
    else:
        print(token_stats(get_tokenizer(args.tokenizer), corpus_chunks(args.corpus), progress).summary())


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point; returns the exit status (2 for a problem the user can fix)."""
    args = build_parser().parse_args(argv)
    return run_command(PROG, lambda: run(args))


if __name__ == "__main__":
    sys.exit(main())
