"""``gptlab-chat``: ask an instruction-tuned model (book chapter 7) one instruction after another.

Each line read from standard input is one instruction, wrapped in the prompt style the model
was fine-tuned with (recorded in its run as ``prompt.json``; Alpaca when nothing is recorded);
the response streams back until ``<|endoftext|>`` or until the model starts a new section. Works interactively and with piped input::

    gptlab-chat runs/instruct
    echo "Name the capital of France." | gptlab-chat runs/instruct
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator, Sequence

from gptlab.callbacks.prompt_style import read_prompt_style
from gptlab.cli import run_command
from gptlab.cli.generate import StopStreamer, add_sampling_arguments, emit_line, prepare, stream_text
from gptlab.prompts import ALPACA, PROMPT_STYLES, get_style

PROG = "gptlab-chat"
EXIT_WORDS = ("exit", "quit", ":q")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Answer instructions read from standard input, one per line, with an instruction-tuned GPT.",
    )
    add_sampling_arguments(parser, max_new_tokens=256)
    parser.add_argument("--prompt-style", choices=sorted(PROMPT_STYLES), default=None,
                        help="default: the style recorded with the model, else alpaca")
    return parser


def response_pieces(pieces: Iterator[str], stop: str = ALPACA.stop) -> Iterator[str]:
    """The response text, cut where the model opens a new section (``stop``, e.g. ``\n###``)."""
    # The prompt ends in a newline, so a response that itself starts with "###" stops at once.
    stopper = StopStreamer([stop], context="\n")
    for piece in pieces:
        out = stopper.push(piece)
        if out:
            yield out
        if stopper.stopped:
            return
    tail = stopper.flush()
    if tail:
        yield tail


def run(args: argparse.Namespace) -> None:
    style = get_style(args.prompt_style or read_prompt_style(args.source) or "alpaca")
    model, tokenizer, generator = prepare(args)
    interactive = sys.stdin.isatty()
    if interactive:
        print(f"{model.cfg.name} ready; type an instruction (Ctrl-D or 'exit' to quit).")
    while True:
        if interactive:
            sys.stdout.write("> ")
            sys.stdout.flush()
        line = sys.stdin.readline()
        if not line:
            break
        instruction = line.strip()
        if not instruction:
            continue
        if interactive and instruction.lower() in EXIT_WORDS:
            break
        prompt_ids = tokenizer.encode(style.prompt({"instruction": instruction, "input": ""}))
        pieces = stream_text(model, tokenizer, prompt_ids, args, generator)
        emit_line(response_pieces(pieces, style.stop), args.stream)


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point; returns the exit status (2 for a problem the user can fix)."""
    args = build_parser().parse_args(argv)
    return run_command(PROG, lambda: run(args))


if __name__ == "__main__":
    sys.exit(main())
