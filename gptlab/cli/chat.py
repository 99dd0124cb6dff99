"""``gptlab-chat``: talk to an instruction-tuned or chat model, one message per line, turn after turn.

Each line read from standard input is the user's next message. The conversation so far is
rendered in the model's prompt format (``LLM``: the style its run recorded, else its own chat
template such as SmolLM2's ChatML, else Alpaca), and the reply streams back until the model's
stop token (``<|endoftext|>``, ``<|im_end|>``) or its format's end of turn. ``/reset`` starts a new
conversation. Works interactively and with piped input::

    gptlab-chat smollm2-135m-instruct
    gptlab-chat runs/instruct --no-history        # each line on its own, as the book's chapter 7
    echo "Name the capital of France." | gptlab-chat runs/instruct
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from gptlab.cli import run_command
from gptlab.cli.generate import add_sampling_arguments, emit, open_model, sampling_of
from gptlab.cli.respond import add_prompt_style_argument

PROG = "gptlab-chat"
EXIT_WORDS = ("exit", "quit", ":q")
RESET = "/reset"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG, description="Chat with an instruction-tuned GPT: one message per line on standard input.",
    )
    add_sampling_arguments(parser, max_new_tokens=256)
    add_prompt_style_argument(parser)
    parser.add_argument("--system", default=None, help="a system message to open the conversation with")
    parser.add_argument("--history", action=argparse.BooleanOptionalAction, default=True,
                        help="keep earlier turns in the prompt (default: on); off answers each line alone")
    return parser


def run(args: argparse.Namespace) -> None:
    sampling = sampling_of(args)
    llm = open_model(args, prompt_style=args.prompt_style)
    generator = llm.generator(args.seed)
    opening = [{"role": "system", "content": args.system}] if args.system else []
    messages = list(opening)
    interactive = sys.stdin.isatty()
    if interactive:
        print(f"{llm.model.cfg.name} ready ({llm.style.name} format); type a message ({RESET} to start over, "
              "Ctrl-D or 'exit' to quit).")
    while True:
        if interactive:
            sys.stdout.write("> ")
            sys.stdout.flush()
        line = sys.stdin.readline()
        if not line:
            break
        text = line.strip()
        if not text:
            continue
        if interactive and text.lower() in EXIT_WORDS:
            break
        if text == RESET:
            messages = list(opening)
            continue
        if not args.history:
            messages = list(opening)
        messages.append({"role": "user", "content": text})
        reply = emit(llm.chat_stream(messages, sampling, generator, args.eos), sys.stdout, args.stream)
        sys.stdout.write("\n")
        sys.stdout.flush()
        messages.append({"role": "assistant", "content": reply})


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point; returns the exit status (2 for a problem the user can fix)."""
    args = build_parser().parse_args(argv)
    return run_command(PROG, lambda: run(args))


if __name__ == "__main__":
    sys.exit(main())
