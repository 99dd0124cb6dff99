"""Generation speed: gptlab's KV-cache decoding against ``transformers``' ``GPT2LMHeadModel.generate``.

Both decode greedily with the same weights (a random GPT-2 124M built by ``transformers`` and
converted with ``gptlab.checkpoints``), float32, on the CPU, and must produce the same tokens. With
``--batch 8`` eight prompts of different lengths are left-padded into one batch (both sides get
the same ``input_ids`` and ``attention_mask``). ``--compile`` adds gptlab's compiled decode step
over a static cache (``generate(..., compile=True)``); its one-off compilation is timed apart.
Each side is warmed up once; the timed runs alternate so that load from other processes on the
machine hits all alike.

    python experiments/generation/benchmark.py --new-tokens 200 --repeats 3
    python experiments/generation/benchmark.py --batch 8 --new-tokens 100 --repeats 3 --compile
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable

import torch

from gptlab import GPT, generate
from gptlab.callbacks.throughput import cpu_name
from gptlab.tokenizer import get_tokenizer
from gptlab.checkpoints import config_from_hf, from_hf_state_dict, model_from_state_dict
from gptlab.evaluation.responses import left_pad


def build_models(seed: int, attention: str) -> tuple[torch.nn.Module, GPT]:
    """A random GPT-2 124M in ``transformers``, and the same weights in gptlab."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    hf = GPT2LMHeadModel(GPT2Config()).eval()  # the gpt2 (124M) shape: 12 x 768, 50257 tokens
    cfg = config_from_hf(hf.config.to_dict())
    cfg.attention = attention
    ours = model_from_state_dict(from_hf_state_dict(hf.state_dict(), cfg.n_layers), cfg).eval()
    return hf, ours


#: Prompts of different lengths for ``--batch`` (cycled when the batch is larger).
PROMPTS = [
    "Every effort moves you",
    "The quick brown fox jumps over the lazy dog and then",
    "In the beginning",
    "Once upon a time, in a small village at the edge of a great forest, there lived",
    "Hello",
    "Python is a programming language that lets you work quickly and",
    "The results of the experiment were",
    "She opened the door, looked around the empty room, and realised that nobody had",
]


def left_padded_prompts(batch: int, text: str, pad_id: int = 50256) -> tuple[torch.Tensor, torch.Tensor]:
    """``input_ids`` and ``attention_mask`` of ``batch`` prompts, padded on the left."""
    tokenizer = get_tokenizer("gpt2")
    rows = [tokenizer.encode(text)] if batch == 1 else [tokenizer.encode(PROMPTS[i % len(PROMPTS)]) for i in range(batch)]
    return left_pad(rows, pad_id)


def timed(fn: Callable[[], torch.Tensor]) -> tuple[float, torch.Tensor]:
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out




def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--new-tokens", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per implementation")
    parser.add_argument("--threads", type=int, default=None, help="default: every CPU this process may use")
    parser.add_argument("--prompt", default="Every effort moves you", help="the prompt at --batch 1")
    parser.add_argument("--batch", type=int, default=1, help="prompts of different lengths, left-padded")
    parser.add_argument("--compile", action="store_true", help="also time generate(compile=True)")
    parser.add_argument("--attention", choices=["sdpa", "manual"], default="sdpa", help="gptlab's backend")
    parser.add_argument("--no-cache", action="store_true", help="also time gptlab without the KV cache")
    parser.add_argument("--seed", type=int, default=123)
    args = parser.parse_args()

    threads = args.threads or len(os.sched_getaffinity(0))
    torch.set_num_threads(threads)
    hf, ours = build_models(args.seed, args.attention)
    idx, mask = left_padded_prompts(args.batch, args.prompt)
    n = args.new_tokens

    def run_hf() -> torch.Tensor:
        with torch.inference_mode():
            return hf.generate(idx, attention_mask=mask, do_sample=False, max_new_tokens=n,
                               min_new_tokens=n, pad_token_id=50256)

    runners: dict[str, Callable[[], torch.Tensor]] = {
        "transformers `GPT2LMHeadModel.generate`": run_hf,
        f"gptlab `generate` (KV cache, {args.attention})": lambda: generate(ours, idx, n, attention_mask=mask),
    }
    if args.compile:
        runners["gptlab `generate(compile=True)` (static cache)"] = (
            lambda: generate(ours, idx, n, attention_mask=mask, compile=True))
    if args.no_cache:
        runners[f"gptlab `generate` (no cache, {args.attention})"] = (
            lambda: generate(ours, idx, n, attention_mask=mask, use_cache=False))

    warmup = {name: timed(fn) for name, fn in runners.items()}  # warm-up (and compilation), the tokens to compare
    reference = warmup[next(iter(runners))][1]
    same = {name: torch.equal(out, reference) for name, (_, out) in warmup.items()}

    times: dict[str, list[float]] = {name: [] for name in runners}
    for _ in range(args.repeats):
        for name, fn in runners.items():
            times[name].append(timed(fn)[0])

    generated = n * args.batch
    print(f"CPU: {cpu_name()}, {threads} threads; torch {torch.__version__}; batch {args.batch} "
          f"(prompts of {mask.sum(-1).min()}-{mask.sum(-1).max()} tokens, left-padded to {idx.shape[1]}) "
          f"+ {n} new tokens each, float32, greedy; median of {args.repeats} runs; "
          f"1-minute load average {os.getloadavg()[0]:.2f}\n")
    print("| implementation | tokens/s (median) | tokens/s (best) | ms/step | first call (s) | same tokens as transformers |")
    print("|---|---:|---:|---:|---:|---|")
    speed = {}
    for name, runs in times.items():
        median = statistics.median(runs)
        speed[name] = generated / median
        print(f"| {name} | {generated / median:.1f} | {generated / min(runs):.1f} | {1000 * median / n:.2f} | "
              f"{warmup[name][0]:.1f} | {'yes' if same[name] else 'NO'} |")
    hf_name = next(iter(runners))
    for name in list(runners)[1:]:
        print(f"\n{name} / transformers speed ratio: {speed[name] / speed[hf_name]:.2f}x", end="")
    print()
    if not all(same.values()):
        raise SystemExit("the implementations produced different tokens")


if __name__ == "__main__":
    main()
