"""``gptlab-serve``: serve a model over the OpenAI API (completions, chat, models) with a chat page.

SOURCE is anything ``LLM.load`` opens: a run, an export, a GGUF file, ``smollm2-135m-instruct``::

    gptlab-serve smollm2-135m-instruct                  # http://127.0.0.1:8000, chat page at /
    gptlab-serve runs/instruct --port 8080 --max-batch 16
    GPTLAB_API_KEY=secret gptlab-serve runs/instruct     # clients must send Authorization: Bearer secret

Then any OpenAI client works against ``http://127.0.0.1:8000/v1``, e.g.
``OpenAI(base_url="http://127.0.0.1:8000/v1", api_key="unused")``.

The KV cache takes ``max_batch x max_seq_len`` positions (printed at start); requests beyond the
``max_batch`` rows wait, and beyond ``--max-queue`` waiting ones get 503 with ``Retry-After``.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from gptlab.cli import run_command
from gptlab.cli.respond import add_prompt_style_argument
from gptlab.errors import ConfigError
from gptlab.extras import require_extra
from gptlab.tokenizer import TOKENIZERS

PROG = "gptlab-serve"
#: The environment variable read for ``--api-key``.
API_KEY_ENV = "GPTLAB_API_KEY"
#: Prompt plus completion per request at most, unless the model's context is shorter.
DEFAULT_MAX_SEQ_LEN = 2048


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description="Serve a GPT over the OpenAI API, with a chat page at /.")
    parser.add_argument("source", help="a model name (smollm2-135m-instruct, gpt2, ...), a model or run directory, "
                                       "a checkpoint, or a .gguf file")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    parser.add_argument("--port", type=int, default=8000, help="port to listen on (default 8000; 0 picks a free one)")
    parser.add_argument("--model-name", default=None, help="the model id clients send (default: SOURCE as given)")
    parser.add_argument("--api-key", default=None,
                        help=f"require 'Authorization: Bearer KEY' on /v1 (default: ${API_KEY_ENV}, else none)")
    parser.add_argument("--max-batch", type=int, default=8, help="requests decoded together (default 8)")
    parser.add_argument("--max-queue", type=int, default=64, help="requests waiting for a slot at most (default 64)")
    parser.add_argument("--max-seq-len", type=int, default=None,
                        help=f"prompt plus completion tokens per request (default: the model's context, at most "
                             f"{DEFAULT_MAX_SEQ_LEN})")
    add_prompt_style_argument(parser)
    parser.add_argument("--tokenizer", default=None,
                        help=f"{', '.join(TOKENIZERS)}, a directory with a tokenizer.json or a .gguf (default: the "
                             "model's own)")
    parser.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda, cuda:1, ...")
    return parser


def run(args: argparse.Namespace) -> None:
    require_extra("fastapi", PROG)
    import uvicorn

    from gptlab.inference import LLM
    from gptlab.inference.engine import DecodeEngine, check_limits
    from gptlab.serve.app import Served, create_app

    if not 0 <= args.port <= 65535:
        raise ConfigError(f"--port must lie in 0..65535, got {args.port}")
    check_limits(args.max_batch, args.max_queue, args.max_seq_len)  # before minutes of loading
    llm = LLM.load(args.source, tokenizer=args.tokenizer, prompt_style=args.prompt_style, device=args.device)
    max_seq_len = args.max_seq_len
    if max_seq_len is None:
        max_seq_len = min(llm.model.cfg.context_length, DEFAULT_MAX_SEQ_LEN)
    engine = DecodeEngine(llm, args.max_batch, args.max_queue, max_seq_len)
    model_id = args.model_name or args.source
    served = Served(llm, engine, model_id, aliases=frozenset({args.source}),
                    api_key=args.api_key or os.environ.get(API_KEY_ENV) or None)
    print(f"{PROG}: {model_id} ({llm.style.name} format) on {llm.device}; {engine.max_batch} slots x "
          f"{engine.max_seq_len} tokens of KV cache ({engine.cache_bytes / 2**20:.0f} MiB)", file=sys.stderr, flush=True)
    engine.start()
    try:
        uvicorn.run(create_app(served), host=args.host, port=args.port, log_level="warning")
    finally:
        engine.close()


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point; returns the exit status (2 for a problem the user can fix)."""
    args = build_parser().parse_args(argv)
    return run_command(PROG, lambda: run(args))


if __name__ == "__main__":
    sys.exit(main())
