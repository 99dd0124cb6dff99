"""``gptlab-inspect``: look inside a model on one text, writing pictures, numbers and a page.

For any model ``LLM.load`` opens (a run, an export, a checkpoint, a GGUF, a named model) it writes
into ``--out``:

* ``attention-layer-NN.png``: each layer's attention weights per query head, as the book's
  chapter-3 matrices (grouped-query heads in one row per key/value head);
* ``loss.png``: the text with each token coloured by its loss in nats;
* ``inspection.npz``: every number behind them (``gptlab.inspect.Inspection``), and the logit lens;
* ``inspection.html``: all of it on one self-contained page;

and prints the top-k next tokens after each position. Examples::

    gptlab-inspect smollm2-135m-instruct --prompt "Your journey starts with one step"
    gptlab-inspect runs/verdict --file ../shared/data/the-verdict.txt --layers 0,5 --out inspection/verdict
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from gptlab.cli import run_command
from gptlab.errors import ConfigError
from gptlab.fileio import atomic_write_text
from gptlab.inference import LLM
from gptlab.inspect import Inspection, inspect_text
from gptlab.inspect.draw import attention_figure, loss_figure, save_png
from gptlab.inspect.page import html_page
from gptlab.inspect.style import visible
from gptlab.tokenizer import TOKENIZERS

PROG = "gptlab-inspect"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG, description="Attention weights, per-token loss, top-k next tokens and the logit lens of one text."
    )
    parser.add_argument("source", help="a model name (gpt2, ..., smollm2-135m-instruct), a model or run directory, "
                                       "a checkpoint, or a .gguf file")
    text = parser.add_mutually_exclusive_group()
    text.add_argument("--prompt", default=None, help="the text to inspect (default: read standard input)")
    text.add_argument("--file", type=Path, default=None, help="read the text to inspect from this file")
    parser.add_argument("--out", type=Path, default=Path("inspection"), help="directory to write into "
                                                                              "(default: ./inspection)")
    parser.add_argument("--top-k", type=int, default=5, help="next-token candidates per position (default: 5)")
    parser.add_argument("--layers", default="all",
                        help="layers to draw attention grids of, e.g. 0,5,29 (default: all; the .npz and the "
                             "page always have every layer)")
    parser.add_argument("--tokenizer", default=None,
                        help=f"{', '.join(TOKENIZERS)}, a directory with a tokenizer.json or a .gguf "
                             "(default: the model's own)")
    parser.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda, cuda:1, ...")
    return parser


def parse_layers(value: str, n_layers: int) -> list[int]:
    """``all`` or comma-separated layer numbers, each checked against the model's depth."""
    if value.strip() == "all":
        return list(range(n_layers))
    try:
        layers = [int(part) for part in value.split(",")]
    except ValueError:
        raise ConfigError(f"--layers takes layer numbers separated by commas (e.g. 0,5) or 'all', got {value!r}") from None
    for layer in layers:
        if not 0 <= layer < n_layers:
            raise ConfigError(f"--layers: layer {layer} does not exist; the model has {n_layers} layers, "
                              f"0 to {n_layers - 1}")
    return layers


def write_outputs(inspection: Inspection, layers: Sequence[int], out: Path) -> list[Path]:
    """The PNGs, the ``.npz`` and the page, in ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    written = [save_png(attention_figure(inspection, layer), out / f"attention-layer-{layer:02d}.png")
               for layer in layers]
    written.append(save_png(loss_figure(inspection), out / "loss.png"))
    written.append(inspection.save_npz(out / "inspection.npz"))
    return [*written, atomic_write_text(out / "inspection.html", html_page(inspection))]


def top_k_lines(inspection: Inspection) -> list[str]:
    """One line per position: the token, its loss, and the most likely next tokens."""
    lines = []
    for i, (token, loss) in enumerate(zip(inspection.tokens, inspection.losses)):
        candidates = "  ".join(f"{visible(inspection.vocabulary[int(c)])!r} {p:.3f}"
                               for c, p in zip(inspection.top_ids[i], inspection.top_probs[i]))
        shown = "-" if i == 0 else f"{loss:.2f}"
        lines.append(f"{i:4d} {visible(token)!r:>16} {shown:>6}  ->  {candidates}")
    return lines


def read_text(args: argparse.Namespace) -> str:
    """The text to inspect: ``--prompt``, ``--file`` or standard input."""
    if args.file is None:
        return args.prompt if args.prompt is not None else sys.stdin.read()
    if not args.file.is_file():
        raise ConfigError(f"--file {args.file} is not a file; give the path of a text file")
    return args.file.read_text(encoding="utf-8")


def run(args: argparse.Namespace) -> None:
    text = read_text(args)
    llm = LLM.load(args.source, tokenizer=args.tokenizer, device=args.device)
    layers = parse_layers(args.layers, llm.model.cfg.n_layers)
    inspection = inspect_text(llm.model, llm.tokenizer, text, args.top_k, source=args.source)
    print("   # token              loss  ->  top-{} next tokens".format(args.top_k))
    print("\n".join(top_k_lines(inspection)))
    for path in write_outputs(inspection, layers, args.out):
        print(f"wrote {path}")


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point; returns the exit status (2 for a problem the user can fix)."""
    args = build_parser().parse_args(argv)
    return run_command(PROG, lambda: run(args))


if __name__ == "__main__":
    sys.exit(main())
