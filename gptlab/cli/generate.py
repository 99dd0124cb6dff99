"""``gptlab-generate``: continue a prompt with any model ``LLM.load`` opens, streaming the text.

Examples::

    gptlab-generate smollm2-135m-instruct --prompt "The capital of France is"
    gptlab-generate gpt2 --prompt "Every effort moves you" --max-new-tokens 40
    gptlab-generate runs/verdict --prompt "I had always" --temperature 1.0 --top-k 50 --seed 123
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator, Sequence
from typing import TextIO

from gptlab.cli import run_command
from gptlab.inference import LLM, Sampling
from gptlab.tokenizer import TOKENIZERS

PROG = "gptlab-generate"


def add_sampling_arguments(parser: argparse.ArgumentParser, max_new_tokens: int, source_required: bool = True) -> None:
    """The options ``gptlab-generate`` and ``gptlab-chat`` share; ``source_required=False`` lets a
    command take its text from elsewhere (``gptlab-chat --url``), so SOURCE may be left out."""
    parser.add_argument("source", nargs=None if source_required else "?", default=None,
                        help="a model name (gpt2, gpt2-medium, ..., smollm2-135m-instruct), a model or run "
                             "directory, a checkpoint, or a .gguf file")
    parser.add_argument("--max-new-tokens", type=int, default=max_new_tokens, help="tokens to generate at most")
    parser.add_argument("--temperature", type=float, default=0.0, help="0 is greedy decoding (default)")
    parser.add_argument("--top-k", type=int, default=None, help="sample among the k most likely tokens")
    parser.add_argument("--top-p", type=float, default=None, help="sample among the tokens covering this probability")
    parser.add_argument("--seed", type=int, default=None, help="seed for sampling, for reproducible output")
    parser.add_argument("--eos", action=argparse.BooleanOptionalAction, default=True,
                        help="stop at the model's stop tokens: <|endoftext|>, a chat model's end of turn (default: on)")
    parser.add_argument("--tokenizer", default=None,
                        help=f"{', '.join(TOKENIZERS)}, a directory with a tokenizer.json or a .gguf (default: the "
                             "model's own, else byte for a 257-token vocabulary, else gpt2)")
    parser.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda, cuda:1, ...")
    parser.add_argument("--stream", action=argparse.BooleanOptionalAction, default=True,
                        help="print tokens as they are generated (default: on)")


def sampling_of(args: argparse.Namespace) -> Sampling:
    """The sampling options of ``add_sampling_arguments``, checked."""
    return Sampling(args.max_new_tokens, args.temperature, args.top_k, args.top_p, args.seed)


def open_model(args: argparse.Namespace, prompt_style: str | None = None) -> LLM:
    """The model of ``args.source`` with its tokenizer, prompt format and stop ids."""
    return LLM.load(args.source, tokenizer=args.tokenizer, prompt_style=prompt_style, device=args.device)


def emit(pieces: Iterator[str], out: TextIO, stream: bool) -> str:
    """Write ``pieces`` to ``out`` (flushing each one when streaming); return the whole text."""
    if not stream:
        text = "".join(pieces)
        out.write(text)
        return text
    parts = []
    for piece in pieces:
        out.write(piece)
        out.flush()
        parts.append(piece)
    return "".join(parts)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG, description="Continue a prompt with a GPT, printing the text as it is generated."
    )
    add_sampling_arguments(parser, max_new_tokens=50)
    parser.add_argument("--prompt", default=None, help="the text to continue (default: read standard input)")
    parser.add_argument("--echo", action=argparse.BooleanOptionalAction, default=True,
                        help="print the prompt before its continuation (default: on)")
    return parser


def emit_line(pieces: Iterator[str], stream: bool) -> None:
    """Write the pieces to stdout (as they come when streaming) and end the line."""
    emit(pieces, sys.stdout, stream)
    sys.stdout.write("\n")
    sys.stdout.flush()


def run(args: argparse.Namespace) -> None:
    prompt = args.prompt if args.prompt is not None else sys.stdin.read()
    sampling = sampling_of(args)
    llm = open_model(args)
    if args.echo:
        sys.stdout.write(prompt)
        sys.stdout.flush()
    emit_line(llm.stream(prompt, sampling, stop=args.eos), args.stream)


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point; returns the exit status (2 for a problem the user can fix)."""
    args = build_parser().parse_args(argv)
    return run_command(PROG, lambda: run(args))


if __name__ == "__main__":
    sys.exit(main())
