"""``gptlab-generate``: continue a prompt with any model ``load_pretrained`` accepts, streaming the text.

Examples::

    gptlab-generate gpt2 --prompt "Every effort moves you" --max-new-tokens 40
    gptlab-generate runs/verdict --prompt "I had always" --temperature 1.0 --top-k 50 --seed 123
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TextIO

import torch

from gptlab.checkpoints import load_pretrained
from gptlab.cli import run_command
from gptlab.errors import ConfigError
from gptlab.generate import stream_tokens
from gptlab.model.gpt import GPT
from gptlab.tokenizer import HF_TOKENIZER_FILE, TOKENIZERS, ByteTokenizer, Tokenizer, get_tokenizer

PROG = "gptlab-generate"
#: Tokens whose text is held back at most, waiting for the rest of a split UTF-8 character.
_MAX_PENDING = 8


class TextStreamer:
    """Turns generated ids into text as they arrive.

    A BPE token can end in the middle of a multi-byte UTF-8 character, whose text then decodes
    to U+FFFD. Such tokens are held back until the character is complete, so the printed text
    never contains a replacement character that the full decode would not.
    """

    def __init__(self, tokenizer: Tokenizer) -> None:
        self.tokenizer = tokenizer
        self.pending: list[int] = []

    def push(self, token_id: int) -> str:
        """The text that ``token_id`` completes (possibly empty)."""
        self.pending.append(token_id)
        text = self.tokenizer.decode(self.pending)
        if text.endswith("\ufffd") and len(self.pending) < _MAX_PENDING:
            return ""
        self.pending.clear()
        return text

    def flush(self) -> str:
        """Whatever is still held back, decoded as well as it can be."""
        text = self.tokenizer.decode(self.pending) if self.pending else ""
        self.pending.clear()
        return text


class StopStreamer:
    """Passes text through until a stop string appears; what precedes it is all that is emitted.

    Text that could be the beginning of a stop string, and trailing whitespace, is held back
    until the next piece shows whether it belongs to the answer.
    """

    def __init__(self, stops: Sequence[str], context: str = "") -> None:
        """``context`` is text taken to precede the stream (never emitted), e.g. ``"\n"`` so that
        a stop string ``"\n###"`` also matches at the very start."""
        self.stops = [s for s in stops if s]
        self.buffer = context
        self.skip = len(context)
        self.stopped = False

    def _take(self, end: int) -> str:
        out, self.buffer = self.buffer[:end], self.buffer[end:]
        dropped = min(self.skip, len(out))
        self.skip -= dropped
        return out[dropped:]

    def push(self, text: str) -> str:
        if self.stopped:
            return ""
        self.buffer += text
        cut = min((i for i in (self.buffer.find(s) for s in self.stops) if i >= 0), default=-1)
        if cut >= 0:
            self.stopped = True
            self.buffer = self.buffer[:cut].rstrip()
            return self._take(len(self.buffer))
        hold = 0
        for stop in self.stops:
            for n in range(min(len(stop) - 1, len(self.buffer)), 0, -1):
                if self.buffer.endswith(stop[:n]):
                    hold = max(hold, n)
                    break
        kept = self.buffer[: len(self.buffer) - hold]
        return self._take(len(kept.rstrip()))

    def flush(self) -> str:
        if self.stopped:
            return ""
        self.buffer = self.buffer.rstrip()
        return self._take(len(self.buffer))


def add_sampling_arguments(parser: argparse.ArgumentParser, max_new_tokens: int) -> None:
    """The options ``gptlab-generate`` and ``gptlab-chat`` share."""
    parser.add_argument("source",
                        help="a GPT-2 name (gpt2, gpt2-medium, ...), a model or run directory, or a checkpoint")
    parser.add_argument("--max-new-tokens", type=int, default=max_new_tokens, help="tokens to generate at most")
    parser.add_argument("--temperature", type=float, default=0.0, help="0 is greedy decoding (default)")
    parser.add_argument("--top-k", type=int, default=None, help="sample among the k most likely tokens")
    parser.add_argument("--top-p", type=float, default=None, help="sample among the tokens covering this probability")
    parser.add_argument("--seed", type=int, default=None, help="seed for sampling, for reproducible output")
    parser.add_argument("--eos", action=argparse.BooleanOptionalAction, default=True,
                        help="stop at <|endoftext|> (default: on)")
    parser.add_argument("--tokenizer", default=None,
                        help=f"{', '.join(TOKENIZERS)} or a directory with a tokenizer.json (default: the model "
                             "directory's own tokenizer.json, else byte for a 257-token vocabulary, else gpt2)")
    parser.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda, cuda:1, ...")
    parser.add_argument("--stream", action=argparse.BooleanOptionalAction, default=True,
                        help="print tokens as they are generated (default: on)")


def check_sampling_arguments(args: argparse.Namespace) -> None:
    if args.max_new_tokens < 0:
        raise ConfigError(f"--max-new-tokens must be >= 0, got {args.max_new_tokens}")
    if args.temperature < 0:
        raise ConfigError(f"--temperature must be >= 0, got {args.temperature}")
    if args.top_k is not None and args.top_k <= 0:
        raise ConfigError(f"--top-k must be a positive integer, got {args.top_k}")
    if args.top_p is not None and not 0.0 < args.top_p <= 1.0:
        raise ConfigError(f"--top-p must lie in (0, 1], got {args.top_p}")


def load_for_generation(source: str, tokenizer_name: str | None, device: str) -> tuple[GPT, Tokenizer]:
    """The model from ``source`` in eval mode on ``device``, and a tokenizer that fits its vocabulary."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        torch_device = torch.device(device)
    except RuntimeError as err:
        raise ConfigError(f"--device {device!r} is not a valid device: {err}") from None
    model = load_pretrained(source).to(torch_device).eval()
    vocab = model.cfg.vocab_size
    # The model's own tokenizer.json: in the model directory, or in a run directory's model/ export.
    own = next((d for d in (Path(source).expanduser(), Path(source).expanduser() / "model")
                if (d / HF_TOKENIZER_FILE).is_file()), None)
    name = tokenizer_name or (str(own) if own else "byte" if vocab == ByteTokenizer.vocab_size else "gpt2")
    tokenizer = get_tokenizer(name)
    if tokenizer.vocab_size > vocab:
        raise ConfigError(
            f"tokenizer {name!r} has {tokenizer.vocab_size} ids but the model's vocab_size is {vocab}; "
            f"pick the tokenizer the model was trained with (--tokenizer {', '.join(TOKENIZERS)} or a directory)"
        )
    return model, tokenizer


def make_generator(seed: int | None, device: torch.device) -> torch.Generator | None:
    if seed is None:
        return None
    torch.manual_seed(seed)
    return torch.Generator(device=device).manual_seed(seed)


def stream_text(model: GPT, tokenizer: Tokenizer, prompt_ids: list[int], args: argparse.Namespace,
                generator: torch.Generator | None) -> Iterator[str]:
    """The generated text piece by piece, ending before ``<|endoftext|>`` when ``args.eos``."""
    device = model.tok_emb.weight.device
    idx = torch.tensor([prompt_ids or [tokenizer.eot_id]], dtype=torch.long, device=device)
    eos_id = tokenizer.eot_id if args.eos else None
    streamer = TextStreamer(tokenizer)
    for next_id in stream_tokens(model, idx, args.max_new_tokens, temperature=args.temperature,
                                 top_k=args.top_k, top_p=args.top_p, eos_id=eos_id, generator=generator,
                                 vocab_limit=tokenizer.vocab_size):
        token = int(next_id[0, 0])
        if token == eos_id:
            break
        text = streamer.push(token)
        if text:
            yield text
    tail = streamer.flush()
    if tail:
        yield tail


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


def prepare(args: argparse.Namespace) -> tuple[GPT, Tokenizer, torch.Generator | None]:
    """Check the sampling options, then load the model, its tokenizer and the seeded generator."""
    check_sampling_arguments(args)
    model, tokenizer = load_for_generation(args.source, args.tokenizer, args.device)
    return model, tokenizer, make_generator(args.seed, model.tok_emb.weight.device)


def emit_line(pieces: Iterator[str], stream: bool) -> None:
    """Write the pieces to stdout (as they come when streaming) and end the line."""
    emit(pieces, sys.stdout, stream)
    sys.stdout.write("\n")
    sys.stdout.flush()


def run(args: argparse.Namespace) -> None:
    prompt = args.prompt if args.prompt is not None else sys.stdin.read()
    model, tokenizer, generator = prepare(args)
    if args.echo:
        sys.stdout.write(prompt)
        sys.stdout.flush()
    emit_line(stream_text(model, tokenizer, tokenizer.encode(prompt), args, generator), args.stream)


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point; returns the exit status (2 for a problem the user can fix)."""
    args = build_parser().parse_args(argv)
    return run_command(PROG, lambda: run(args))


if __name__ == "__main__":
    sys.exit(main())
