"""``gptlab-eval``: measure a model (perplexity) or its responses (ROUGE-L, BLEU, an LLM judge).

Examples::

    gptlab-eval perplexity runs/verdict --text the-verdict.txt
    gptlab-eval perplexity runs/instruct --data instruction-data.json --split val --mask-prompt
    gptlab-eval perplexity smollm2-135m-instruct --data instruction-data.json --mask-prompt --prompt-style alpaca
    gptlab-eval responses runs/instruct/test.jsonl                 # ROUGE-L, BLEU, share that stopped
    GPTLAB_JUDGE_MODEL=llama3 gptlab-eval responses runs/instruct/test.jsonl --judge

``responses`` writes ``<file>.eval.jsonl`` (per record), ``<file>.eval.json`` (summary),
``<file>.eval.md`` (report) and, with ``--judge``, ``<file>.judge.png`` beside the responses.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from gptlab.cli import run_command
from gptlab.cli.respond import add_prompt_style_argument, add_split_arguments, load_llm, split_settings
from gptlab.errors import ConfigError, DataError
from gptlab.tokenizer import TOKENIZERS

PROG = "gptlab-eval"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description="Measure a model or its responses.")
    commands = parser.add_subparsers(dest="command", required=True)

    ppl = commands.add_parser("perplexity", help="perplexity of a model on a text file or an instruction split")
    ppl.add_argument("source", help="a model or run directory, a checkpoint, a .gguf, or a model name")
    what = ppl.add_mutually_exclusive_group(required=True)
    what.add_argument("--text", help="a UTF-8 text file, scored in consecutive context-length windows")
    what.add_argument("--data", help="instruction records (JSON/JSONL/URL/hf:NAME), split as in training")
    ppl.add_argument("--split", choices=("train", "val", "test"), default="val")
    add_prompt_style_argument(ppl)
    ppl.add_argument("--mask-prompt", action=argparse.BooleanOptionalAction, default=None,
                     help="score the response tokens only (default: as the run was trained, data.mask_prompt)")
    add_split_arguments(ppl)
    ppl.add_argument("--batch-size", type=int, default=8)
    ppl.add_argument("--tokenizer", default=None, help=f"{', '.join(TOKENIZERS)} or a directory with a tokenizer.json")
    ppl.add_argument("--device", default="auto")

    resp = commands.add_parser("responses", help="score gptlab-respond's JSONL against the reference outputs")
    resp.add_argument("responses", help="a JSONL file written by gptlab-respond")
    resp.add_argument("--judge", action="store_true", help="also ask an LLM judge for 0-100 scores")
    resp.add_argument("--judge-url", default=None, help="default: $GPTLAB_JUDGE_URL, else http://localhost:11434")
    resp.add_argument("--judge-model", default=None, help="default: $GPTLAB_JUDGE_MODEL, else llama3")
    resp.add_argument("--judge-protocol", choices=("ollama", "openai"), default=None,
                      help="default: $GPTLAB_JUDGE_PROTOCOL, else openai when the URL holds /v1")
    resp.add_argument("--judge-timeout", type=float, default=None, help="seconds per request (default 120)")
    resp.add_argument("--judge-retries", type=int, default=None, help="further tries per record (default 3)")
    resp.add_argument("--judge-concurrency", type=int, default=None, help="requests at a time (default 4)")
    resp.add_argument("--judge-seed", type=int, default=None, help="default 123")
    resp.add_argument("--judge-num-ctx", type=int, default=None, help="Ollama's context window, at least (default 4096)")
    return parser


def run_perplexity(args: argparse.Namespace) -> None:
    from gptlab.evaluation.perplexity import batches_perplexity, token_windows

    if args.batch_size < 1:
        raise ConfigError(f"--batch-size must be at least 1, got {args.batch_size}")
    if args.text is not None and not Path(args.text).is_file():
        raise DataError(f"text file not found: {args.text}")
    llm = load_llm(args)
    model, tokenizer = llm.model, llm.tokenizer
    context = model.cfg.context_length
    if args.text is not None:
        ids = tokenizer.encode(Path(args.text).read_text(encoding="utf-8"))
        if len(ids) < 2:
            raise DataError(f"{args.text} has fewer than 2 tokens; nothing to predict")
        result = batches_perplexity(model, token_windows(ids, context, args.batch_size))
        where = args.text
    else:
        from gptlab.data.instruction import InstructionDataModule

        mask_prompt = args.mask_prompt if args.mask_prompt is not None else bool(llm.data.get("mask_prompt", False))
        split = split_settings(args, llm)
        data = InstructionDataModule(path=args.data, sha256=None, tokenizer=tokenizer.name, prompt_style=llm.style,
                                     mask_prompt=mask_prompt, allowed_max_length=context, drop_last=False,
                                     eval_batch_size=args.batch_size, **split)
        data.setup()
        result = batches_perplexity(model, data._loader(args.split, train=False))
        where = (f"the {args.split} split of {args.data} ({llm.style.name}"
                 f"{', responses only' if mask_prompt else ''})")
    print(f"perplexity {result.perplexity:.4f} (mean loss {result.loss:.4f} over {result.tokens} tokens) on {where}")


def run_responses(args: argparse.Namespace) -> None:
    from gptlab.evaluation.report import draw_histogram, markdown_report, summarize_scores, write_jsonl
    from gptlab.evaluation.responses import read_responses
    from gptlab.evaluation.text_metrics import text_metrics
    from gptlab.fileio import atomic_write_text

    path = Path(args.responses).expanduser()
    rows = read_responses(path)
    summary, rouge = text_metrics(rows)
    per_record = [{"index": row.get("index", i), "instruction": row.get("instruction"), "rougeL": r}
                  for i, (row, r) in enumerate(zip(rows, rouge))]
    settings = {"responses": str(path), "generation": rows[0].get("generation")}
    histogram = None
    if args.judge:
        from tqdm.auto import tqdm

        from gptlab.evaluation.judge import JudgeClient, JudgeConfig

        config = JudgeConfig.from_env(url=args.judge_url, model=args.judge_model, protocol=args.judge_protocol,
                                      timeout=args.judge_timeout, retries=args.judge_retries,
                                      concurrency=args.judge_concurrency, seed=args.judge_seed,
                                      num_ctx=args.judge_num_ctx)
        with tqdm(total=len(rows), unit="record", desc="judge", disable=None) as bar:  # None: off unless a terminal
            verdicts = JudgeClient(config).judge_all(rows, progress=lambda: bar.update(1))
        for row, verdict in zip(per_record, verdicts):
            row.update(judge_score=verdict.score, judge_reply=verdict.reply, judge_error=verdict.error,
                       judge_attempts=verdict.attempts)
        summary.update(summarize_scores([v.score for v in verdicts]))
        settings.update(judge_url=config.endpoint, judge_model=config.model, judge_protocol=config.protocol,
                        judge_seed=config.seed, judge_retries=config.retries)
        scored = [v.score for v in verdicts if v.score is not None]
        if scored:
            histogram = draw_histogram(scored, path.with_suffix(".judge.png"), f"{config.model} on {path.name}").name
    stem = path.with_suffix("")
    write_jsonl(stem.with_suffix(".eval.jsonl"), per_record)
    atomic_write_text(stem.with_suffix(".eval.json"), json.dumps({**summary, **settings}, indent=2) + "\n")
    atomic_write_text(stem.with_suffix(".eval.md"),
                      markdown_report(f"Evaluation of {path.name}", summary, settings, histogram))
    for key, value in summary.items():
        print(f"{key}: {value:.4f}" if isinstance(value, float) else f"{key}: {value}")
    print(f"report: {stem.with_suffix('.eval.md')}")


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point; returns the exit status (2 for a problem the user can fix)."""
    args = build_parser().parse_args(argv)
    body = run_perplexity if args.command == "perplexity" else run_responses
    return run_command(PROG, lambda: body(args))


if __name__ == "__main__":
    sys.exit(main())
