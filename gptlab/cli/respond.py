"""``gptlab-respond``: an instruction-tuned model's response to every record of a split, as JSONL.

The responses are what ``gptlab-eval responses`` scores (ROUGE-L, BLEU, an LLM judge)::

    gptlab-respond runs/instruct --data instruction-data.json --split test --out runs/instruct/test.jsonl
    gptlab-eval responses runs/instruct/test.jsonl

Rerunning the same command after a crash answers only the records still missing.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from gptlab.callbacks.prompt_style import read_prompt_style
from gptlab.cli import run_command
from gptlab.cli.generate import check_sampling_arguments, load_for_generation
from gptlab.data.instruction import split_instruction_records
from gptlab.data.records import INSTRUCTION_DATA_SHA256, INSTRUCTION_DATA_URL, read_records
from gptlab.errors import ConfigError
from gptlab.evaluation.responses import GenerationSettings, respond_to_records
from gptlab.prompts import PROMPT_STYLES, get_style
from gptlab.tokenizer import TOKENIZERS

PROG = "gptlab-respond"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.splitlines()[0].split(": ", 1)[1])
    parser.add_argument("source", help="a model or run directory, a checkpoint, or a GPT-2 name")
    parser.add_argument("--data", default=INSTRUCTION_DATA_URL,
                        help="records: a JSON/JSONL file, a URL or hf:NAME (default: the book's instruction data)")
    parser.add_argument("--split", choices=("train", "val", "test", "all"), default="test",
                        help="which part of --data to answer, split as in training (default: test)")
    parser.add_argument("--out", required=True, help="the JSONL file to write (appended to when resuming)")
    parser.add_argument("--prompt-style", choices=sorted(PROMPT_STYLES), default=None,
                        help="default: the style recorded with the model (prompt.json), else alpaca")
    parser.add_argument("--batch-size", type=int, default=8, help="prompts decoded together (default: 8)")
    parser.add_argument("--max-new-tokens", type=int, default=256, help="tokens per response at most")
    parser.add_argument("--temperature", type=float, default=0.0, help="0 is greedy decoding (default)")
    parser.add_argument("--top-k", type=int, default=None)
    parser.add_argument("--top-p", type=float, default=None)
    parser.add_argument("--seed", type=int, default=None, help="seed for sampling")
    parser.add_argument("--train-ratio", type=float, default=0.85)
    parser.add_argument("--test-ratio", type=float, default=0.10)
    parser.add_argument("--shuffle", action="store_true", help="the split was shuffled (data.shuffle=true)")
    parser.add_argument("--split-seed", type=int, default=123, help="its seed (data.seed)")
    parser.add_argument("--tokenizer", default=None, help=f"{', '.join(TOKENIZERS)} or a directory with a tokenizer.json")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True)
    return parser


def select_records(args: argparse.Namespace) -> list[dict]:
    sha256 = INSTRUCTION_DATA_SHA256 if args.data == INSTRUCTION_DATA_URL else None
    records = read_records(args.data, ("instruction", "output"), sha256=sha256, setting="--data")
    if args.split == "all":
        return records
    splits = split_instruction_records(records, args.train_ratio, args.test_ratio, args.shuffle, args.split_seed)
    if not splits[args.split]:
        raise ConfigError(f"the {args.split} split of {args.data} is empty; pick another --split")
    return splits[args.split]


def run(args: argparse.Namespace) -> None:
    check_sampling_arguments(args)
    style = get_style(args.prompt_style or read_prompt_style(args.source) or "alpaca")
    records = select_records(args)
    model, tokenizer = load_for_generation(args.source, args.tokenizer, args.device)
    settings = GenerationSettings(model=args.source, prompt_style=style.name, max_new_tokens=args.max_new_tokens,
                                  temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, seed=args.seed)
    out = respond_to_records(model, tokenizer, records, args.out, settings, args.batch_size, args.progress)
    print(f"{len(records)} responses ({args.split} split, prompt style {style.name}) in {out}")


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point; returns the exit status (2 for a problem the user can fix)."""
    args = build_parser().parse_args(argv)
    return run_command(PROG, lambda: run(args))


if __name__ == "__main__":
    sys.exit(main())
