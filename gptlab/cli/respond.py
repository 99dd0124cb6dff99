"""``gptlab-respond``: an instruction-tuned model's response to every record of a split, as JSONL.

The responses are what ``gptlab-eval responses`` scores (ROUGE-L, BLEU, an LLM judge)::

    gptlab-respond runs/instruct --data instruction-data.json --split test --out runs/instruct/test.jsonl
    gptlab-eval responses runs/instruct/test.jsonl
    gptlab-respond smollm2-135m-instruct --split test --limit 2 --out smollm2.jsonl   # in its own ChatML

Rerunning the same command after a crash answers only the records still missing.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

from gptlab.cli import run_command
from gptlab.data.instruction import split_instruction_records
from gptlab.data.records import INSTRUCTION_DATA_SHA256, INSTRUCTION_DATA_URL, read_records
from gptlab.errors import ConfigError
from gptlab.evaluation.responses import GenerationSettings, respond_to_records
from gptlab.inference import LLM, Sampling
from gptlab.prompts import CHAT_TEMPLATE, PROMPT_STYLES
from gptlab.tokenizer import TOKENIZERS

PROG = "gptlab-respond"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.splitlines()[0].split(": ", 1)[1])
    parser.add_argument("source", help="a model or run directory, a checkpoint, a .gguf, or a model name")
    parser.add_argument("--data", default=None,
                        help="records: a JSON/JSONL file, a URL or hf:NAME (default: the run's data.path, else "
                             "the book's instruction data)")
    parser.add_argument("--split", choices=("train", "val", "test", "all"), default="test",
                        help="which part of --data to answer, split as in training (default: test)")
    parser.add_argument("--out", required=True, help="the JSONL file to write (appended to when resuming)")
    add_prompt_style_argument(parser)
    parser.add_argument("--limit", type=int, default=None, help="answer the first N records of the split only")
    parser.add_argument("--batch-size", type=int, default=8, help="prompts decoded together (default: 8)")
    parser.add_argument("--max-new-tokens", type=int, default=256, help="tokens per response at most")
    parser.add_argument("--temperature", type=float, default=0.0, help="0 is greedy decoding (default)")
    parser.add_argument("--top-k", type=int, default=None)
    parser.add_argument("--top-p", type=float, default=None)
    parser.add_argument("--seed", type=int, default=None, help="seed for sampling")
    add_split_arguments(parser)
    parser.add_argument("--tokenizer", default=None, help=f"{', '.join(TOKENIZERS)} or a directory with a tokenizer.json")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True)
    return parser


def add_prompt_style_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--prompt-style", choices=[*sorted(PROMPT_STYLES), CHAT_TEMPLATE], default=None,
                        help=f"a registered style, or {CHAT_TEMPLATE}: the tokenizer's own (default: the style "
                             "recorded with the model, prompt.json, else its tokenizer's chat template, else alpaca)")


def load_llm(args: argparse.Namespace) -> LLM:
    """The model of ``args.source`` in ``--prompt-style``, where ``chat_template`` is its tokenizer's
    own template even when the run recorded another style."""
    return LLM.load(args.source, tokenizer=args.tokenizer, prompt_style=args.prompt_style, device=args.device)


#: The split settings a run records in its ``data`` config, their defaults (the book's), and their flags.
SPLIT_SETTINGS = {"train_ratio": 0.85, "test_ratio": 0.10, "shuffle": False, "seed": 123}


def add_split_arguments(parser: argparse.ArgumentParser) -> None:
    """How the records were split in training; each defaults to what the run recorded (``config.yaml``)."""
    parser.add_argument("--train-ratio", type=float, default=None, help="default: the run's, else 0.85")
    parser.add_argument("--test-ratio", type=float, default=None, help="default: the run's, else 0.10")
    parser.add_argument("--shuffle", action=argparse.BooleanOptionalAction, default=None,
                        help="whether the split was shuffled (default: the run's data.shuffle, else no)")
    parser.add_argument("--split-seed", type=int, default=None, help="its seed (default: the run's data.seed, else 123)")


#: A preference run records its split under other names: its own ``shuffle`` reorders each epoch.
PREFERENCE_SPLIT_NAMES = {"shuffle": "shuffle_split", "seed": "split_seed"}


def split_settings(args: argparse.Namespace, llm: LLM) -> dict:
    """The split options: the flags given, else the run's recorded ``data`` settings, else the book's."""
    given = {"train_ratio": args.train_ratio, "test_ratio": args.test_ratio, "shuffle": args.shuffle,
             "seed": args.split_seed}

    def recorded(key: str, default: Any) -> Any:
        name = PREFERENCE_SPLIT_NAMES.get(key)
        return llm.data[name] if name in llm.data else llm.data.get(key, default)

    return {key: given[key] if given[key] is not None else recorded(key, default)
            for key, default in SPLIT_SETTINGS.items()}


def data_path(args: argparse.Namespace, llm: LLM) -> str:
    """``--data``, else the records the run was trained on, else the book's instruction data."""
    return args.data or llm.data.get("path") or INSTRUCTION_DATA_URL


def select_records(path: str, split: str, settings: dict) -> list[dict]:
    sha256 = INSTRUCTION_DATA_SHA256 if path == INSTRUCTION_DATA_URL else None
    records = read_records(path, ("instruction", "output"), sha256=sha256, setting="--data")
    if split == "all":
        return records
    splits = split_instruction_records(records, settings["train_ratio"], settings["test_ratio"],
                                       settings["shuffle"], settings["seed"])
    if not splits[split]:
        raise ConfigError(f"the {split} split of {path} is empty; pick another --split")
    return splits[split]


def run(args: argparse.Namespace) -> None:
    sampling = Sampling(args.max_new_tokens, args.temperature, args.top_k, args.top_p, args.seed)
    if args.limit is not None and args.limit < 1:
        raise ConfigError(f"--limit must be at least 1, got {args.limit}")
    llm = load_llm(args)
    path = data_path(args, llm)
    records = select_records(path, args.split, split_settings(args, llm))[:args.limit]
    settings = GenerationSettings(model=args.source, prompt_style=llm.style.name, max_new_tokens=sampling.max_new_tokens,
                                  temperature=sampling.temperature, top_k=sampling.top_k, top_p=sampling.top_p,
                                  seed=sampling.seed)
    out = respond_to_records(llm.model, llm.tokenizer, records, args.out, settings, args.batch_size, args.progress,
                             style=llm.style, stop_ids=llm.stop_ids)
    print(f"{len(records)} responses ({args.split} split of {path}, prompt style {llm.style.name}) in {out}")


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point; returns the exit status (2 for a problem the user can fix)."""
    args = build_parser().parse_args(argv)
    return run_command(PROG, lambda: run(args))


if __name__ == "__main__":
    sys.exit(main())
