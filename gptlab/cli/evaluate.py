"""``gptlab-eval``: measure a model (perplexity) or its responses (ROUGE-L, BLEU, an LLM judge).

Examples::

    gptlab-eval perplexity runs/verdict --text the-verdict.txt
    gptlab-eval perplexity runs/instruct --data instruction-data.json --split val --mask-prompt
    gptlab-eval perplexity smollm2-135m-instruct --data instruction-data.json --mask-prompt --prompt-style alpaca
    gptlab-eval responses runs/instruct/test.jsonl                 # ROUGE-L, BLEU, share that stopped
    GPTLAB_JUDGE_MODEL=llama3 gptlab-eval responses runs/instruct/test.jsonl --judge
    gptlab-eval harness runs/verdict --tasks gptlab_verdict lambada_openai          # lm-evaluation-harness
    gptlab-eval harness smollm2-135m-instruct --tasks gptlab --limit 20 --out runs/smollm2-harness

``responses`` writes ``<file>.eval.jsonl`` (per record), ``<file>.eval.json`` (summary),
``<file>.eval.md`` (report) and, with ``--judge``, ``<file>.judge.png`` beside the responses.

``harness`` runs EleutherAI's lm-evaluation-harness on the model through the ``gptlab`` backend
(``pip install 'gptlab[harness]'``), with gptlab's offline tasks (``gptlab_sms_spam``,
``gptlab_verdict``, ``gptlab_instruction``; ``gptlab`` for all three) beside the harness's own. It
writes ``results.json`` and ``results.md`` (the harness's table) into the run's ``harness/`` folder,
or into ``--out``. gptlab's tasks read their files from ``--data-dir``, else ``$GPTLAB_DATA``, else
``../shared/data``.
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

    harness = commands.add_parser("harness", help="lm-evaluation-harness tasks on the model (the gptlab backend)")
    harness.add_argument("source", help="a model or run directory, a checkpoint, a .gguf, or a model name")
    harness.add_argument("--tasks", nargs="+", required=True,
                         help="harness tasks: gptlab's (gptlab_sms_spam, gptlab_verdict, gptlab_instruction, or "
                              "gptlab for all) or any of lm-eval's (lm-eval ls tasks)")
    harness.add_argument("--out", default=None, help="where to write results.json / results.md (default: RUN/harness)")
    harness.add_argument("--data-dir", default=None,
                         help="the folder of gptlab's task data (default: $GPTLAB_DATA, else ../shared/data)")
    harness.add_argument("--limit", type=float, default=None, help="the first N documents of each task (below 1: a share)")
    harness.add_argument("--num-fewshot", type=int, default=None)
    harness.add_argument("--batch-size", type=int, default=8)
    harness.add_argument("--max-gen-toks", type=int, default=None, help="tokens per generation at most (default: the task's)")
    harness.add_argument("--apply-chat-template", action="store_true",
                         help="prompts in the model's prompt format (see --prompt-style)")
    harness.add_argument("--log-samples", action="store_true", help="also write every request and answer (samples/)")
    add_prompt_style_argument(harness)
    harness.add_argument("--tokenizer", default=None, help=f"{', '.join(TOKENIZERS)} or a directory with a tokenizer.json")
    harness.add_argument("--device", default="auto")
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


def run_harness(args: argparse.Namespace) -> None:
    from gptlab.extras import require_extra
    from gptlab.runs import RunFiles

    require_extra("lm_eval", "gptlab-eval harness")
    from gptlab.harness import GptlabLM, evaluate

    if args.limit is not None and args.limit <= 0:
        raise ConfigError(f"--limit must be positive, got {args.limit}")
    run = RunFiles.find(args.source).root
    if args.out is None and run is None:
        raise ConfigError(f"{args.source} is not a run directory; pass --out DIR for the results")
    out = Path(args.out).expanduser() if args.out is not None else run / "harness"
    model = GptlabLM(args.source, batch_size=args.batch_size, device=args.device, tokenizer=args.tokenizer,
                     prompt_style=args.prompt_style)
    limit = int(args.limit) if args.limit is not None and args.limit >= 1 else args.limit
    gen_kwargs = {"max_gen_toks": args.max_gen_toks} if args.max_gen_toks is not None else None
    results = evaluate(model, args.tasks, out, data=args.data_dir, log_samples=args.log_samples, limit=limit,
                       num_fewshot=args.num_fewshot, gen_kwargs=gen_kwargs,
                       apply_chat_template=args.apply_chat_template)
    for task, metrics in results["results"].items():
        shown = ", ".join(f"{key.split(',')[0]} {value:.4f}" for key, value in metrics.items()
                          if isinstance(value, float) and "_stderr" not in key)
        print(f"{task}: {shown}")
    print(f"results: {out / 'results.json'} and {out / 'results.md'}")


COMMANDS = {"perplexity": run_perplexity, "responses": run_responses, "harness": run_harness}


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point; returns the exit status (2 for a problem the user can fix)."""
    args = build_parser().parse_args(argv)
    body = COMMANDS[args.command]
    return run_command(PROG, lambda: body(args))


if __name__ == "__main__":
    sys.exit(main())
