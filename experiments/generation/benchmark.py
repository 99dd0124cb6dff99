"""Generation speed: gptlab's KV-cache decoding against ``transformers``' ``GPT2LMHeadModel.generate``.

Both decode greedily from the same prompt with the same weights (a random GPT-2 124M built by
``transformers`` and converted with ``gptlab.checkpoints``), batch 1, float32, on the CPU, and must
produce the same tokens. Each side is warmed up once; the timed runs alternate between the two
so that load from other processes on the machine hits both alike.

    python experiments/generation/benchmark.py --new-tokens 200 --repeats 3
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from collections.abc import Callable

import torch

from gptlab import GPT, generate
from gptlab.tokenizer import get_tokenizer
from gptlab.checkpoints import config_from_hf, from_hf_state_dict, model_from_state_dict


def build_models(seed: int, attention: str) -> tuple[torch.nn.Module, GPT]:
    """A random GPT-2 124M in ``transformers``, and the same weights in gptlab."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    hf = GPT2LMHeadModel(GPT2Config()).eval()  # the gpt2 (124M) shape: 12 x 768, 50257 tokens
    cfg = config_from_hf(hf.config.to_dict())
    cfg.attention = attention
    ours = model_from_state_dict(from_hf_state_dict(hf.state_dict(), cfg.n_layers), cfg).eval()
    return hf, ours


def timed(fn: Callable[[], torch.Tensor]) -> tuple[float, torch.Tensor]:
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--new-tokens", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per implementation")
    parser.add_argument("--threads", type=int, default=None, help="default: every CPU this process may use")
    parser.add_argument("--prompt", default="Every effort moves you")
    parser.add_argument("--attention", choices=["sdpa", "manual"], default="sdpa", help="gptlab's backend")
    parser.add_argument("--no-cache", action="store_true", help="also time gptlab without the KV cache")
    parser.add_argument("--seed", type=int, default=123)
    args = parser.parse_args()

    threads = args.threads or len(os.sched_getaffinity(0))
    torch.set_num_threads(threads)
    hf, ours = build_models(args.seed, args.attention)
    idx = torch.tensor([get_tokenizer("gpt2").encode(args.prompt)])
    n = args.new_tokens

    def run_hf() -> torch.Tensor:
        with torch.inference_mode():
            return hf.generate(idx, attention_mask=torch.ones_like(idx), do_sample=False, max_new_tokens=n,
                               min_new_tokens=n, pad_token_id=50256)

    runners: dict[str, Callable[[], torch.Tensor]] = {
        "transformers `GPT2LMHeadModel.generate`": run_hf,
        f"gptlab `generate` (KV cache, {args.attention})": lambda: generate(ours, idx, n, use_cache=True),
    }
    if args.no_cache:
        runners[f"gptlab `generate` (no cache, {args.attention})"] = lambda: generate(ours, idx, n, use_cache=False)

    outputs = {name: fn() for name, fn in runners.items()}  # warm-up, and the tokens to compare
    reference = outputs[next(iter(runners))]
    same = {name: torch.equal(out, reference) for name, out in outputs.items()}

    times: dict[str, list[float]] = {name: [] for name in runners}
    for _ in range(args.repeats):
        for name, fn in runners.items():
            times[name].append(timed(fn)[0])

    print(f"CPU: {cpu_name()}, {threads} threads; torch {torch.__version__}; "
          f"prompt {idx.shape[1]} tokens + {n} new, batch 1, float32, greedy; median of {args.repeats} runs\n")
    print("| implementation | tokens/s (median) | tokens/s (best) | ms/token | same tokens as transformers |")
    print("|---|---:|---:|---:|---|")
    speed = {}
    for name, runs in times.items():
        median = statistics.median(runs)
        speed[name] = n / median
        print(f"| {name} | {n / median:.1f} | {n / min(runs):.1f} | {1000 * median / n:.2f} | "
              f"{'yes' if same[name] else 'NO'} |")
    hf_name, ours_name = list(runners)[:2]
    print(f"\ngptlab / transformers speed ratio: {speed[ours_name] / speed[hf_name]:.2f}x")
    if not all(same.values()):
        raise SystemExit("the implementations produced different tokens")


if __name__ == "__main__":
    main()
