"""``gptlab-classify``: label texts with a classifier trained by ``gptlab-train experiment=spam`` (or any
``task=classify`` run).

Prints one ``label<TAB>probability<TAB>text`` line per text.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from gptlab.cli import run_command
from gptlab.errors import GptlabError

PROG = "gptlab-classify"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Classify texts with a trained gptlab classifier; prints label<TAB>probability<TAB>text.",
    )
    parser.add_argument("model", help="a classification run directory, its model/ export, or a .ckpt file")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--text", action="append", help="a text to classify (repeat for several)")
    source.add_argument("--file", help="a UTF-8 file with one text per line ('-' reads standard input)")
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda (default: cpu)")
    return parser


def _read_texts(args: argparse.Namespace) -> list[str]:
    if args.text is not None:
        return list(args.text)
    try:
        if args.file == "-":
            content = sys.stdin.read()
        else:
            content = Path(args.file).expanduser().read_text(encoding="utf-8")
    except FileNotFoundError:
        raise GptlabError(f"text file not found: {args.file}") from None
    except (OSError, UnicodeDecodeError) as err:
        raise GptlabError(f"cannot read {args.file}: {err}") from None
    texts = [line for line in content.splitlines() if line.strip()]
    if not texts:
        raise GptlabError(f"{args.file} holds no text (one text per line)")
    return texts


def run(args: argparse.Namespace) -> None:
    texts = _read_texts(args)
    import torch

    from gptlab.tasks.classifier_runtime import load_classifier

    classifier = load_classifier(args.model)
    try:
        classifier.model.to(torch.device(args.device))
    except (RuntimeError, ValueError) as err:
        raise GptlabError(f"cannot use device {args.device!r}: {err}") from None
    for text, (label, probability) in zip(texts, classifier.predict(texts)):
        flat = " ".join(text.split())
        print(f"{label}\t{probability:.4f}\t{flat}")


def main(argv: list[str] | None = None) -> int:
    """Console entry point; returns the exit status (2 for a usage or input error)."""
    args = build_parser().parse_args(argv)
    return run_command(PROG, lambda: run(args))


if __name__ == "__main__":
    sys.exit(main())
