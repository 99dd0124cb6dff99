"""Training speed: gptlab's GPT against ``transformers``' GPT2LMHeadModel, eager and compiled.

Both models hold the same weights (built by ``transformers``, converted with ``gptlab.checkpoints``)
and train the same batches with the same loop: forward, cross-entropy, backward, AdamW. Variants:

* ``hf`` / ``gptlab``: eager PyTorch;
* ``gptlab+gelu``: gptlab with its GELU computed by the fused ``F.gelu(approximate="tanh")``
  (patched in here to measure what the change to ``gptlab.model.layers.GELU`` would give);
* ``gptlab+gelu+fused_adamw``: plus ``torch.optim.AdamW(fused=True)``;
* ``hf+compile`` / ``gptlab+compile``: ``torch.compile`` of the model (compiled during warm-up).

The first steps of each variant are warm-up; then the variants take turns for ``--rounds``
rounds, and the median round counts. Every variant's first loss must equal the others'. Prints
tokens/s and model FLOPs utilisation (``gptlab.model.flops.flops_per_token`` against the fp32
matmul peak that ``gptlab.callbacks.throughput`` measures on a CPU, taken afresh in this run).

    python experiments/train_throughput/benchmark.py --steps 4 --warmup 2 --rounds 3
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext

import torch
from torch.nn import functional as F

from gptlab import GPT
from gptlab.callbacks.throughput import cpu_name, measure_cpu_flops
from gptlab.model import layers
from gptlab.model.flops import flops_per_token
from gptlab.checkpoints import config_from_hf, from_hf_state_dict, model_from_state_dict

VARIANTS = ("hf", "gptlab", "gptlab+gelu", "gptlab+gelu+fused_adamw", "hf+compile", "gptlab+compile")


def build_models(args: argparse.Namespace) -> tuple[torch.nn.Module, GPT]:
    """A random GPT2LMHeadModel of the benchmark's shape, and the same weights in gptlab."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(args.seed)
    hf_cfg = GPT2Config(n_layer=args.layers, n_embd=args.dim, n_head=args.heads, n_positions=args.context,
                        resid_pdrop=args.dropout, embd_pdrop=args.dropout, attn_pdrop=args.dropout)
    hf = GPT2LMHeadModel(hf_cfg)
    cfg = config_from_hf(hf.config.to_dict())
    cfg.drop_rate = args.dropout
    ours = model_from_state_dict(from_hf_state_dict(hf.state_dict(), cfg.n_layers), cfg)
    return hf, ours


@contextmanager
def fused_gelu() -> Iterator[None]:
    """``layers.GELU`` computed by PyTorch's fused tanh-approximate kernel, for the duration."""
    original = layers.GELU.forward
    layers.GELU.forward = lambda self, x: F.gelu(x, approximate="tanh")  # type: ignore[method-assign]
    try:
        yield
    finally:
        layers.GELU.forward = original  # type: ignore[method-assign]


class Trainer:
    """One model, its optimizer and a step function; ``run(steps)`` returns seconds per step."""

    def __init__(self, name: str, model: torch.nn.Module, batches: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
        self.name, self.batches, self.is_hf = name, batches, name.startswith("hf")
        self.patch = fused_gelu if "+gelu" in name else nullcontext
        self.model = torch.compile(model) if name.endswith("+compile") else model
        self.model.train()
        fused = {"fused": True} if "fused_adamw" in name else {}
        self.optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.1, **fused)
        self.first_loss: float | None = None
        self.cursor = 0

    def step(self) -> float:
        inputs, targets = self.batches[self.cursor % len(self.batches)]
        self.cursor += 1
        logits = self.model(inputs).logits if self.is_hf else self.model(inputs)
        loss = F.cross_entropy(logits.flatten(0, 1), targets.flatten())
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return loss.item()

    def run(self, steps: int) -> float:
        with self.patch():
            start = time.perf_counter()
            for _ in range(steps):
                loss = self.step()
                if self.first_loss is None:
                    self.first_loss = loss
            return (time.perf_counter() - start) / steps




def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=6)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--heads", type=int, default=6)
    parser.add_argument("--context", type=int, default=256)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--dropout", type=float, default=0.0, help="0: both models compute the same losses")
    parser.add_argument("--steps", type=int, default=4, help="timed steps per variant per round")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per variant (compilation included)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated subset of {VARIANTS}")
    parser.add_argument("--threads", type=int, default=None, help="default: every CPU this process may use")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    variants = [v for v in args.variants.split(",") if v]
    if unknown := set(variants) - set(VARIANTS):
        raise SystemExit(f"unknown variants {sorted(unknown)}; choose from {VARIANTS}")

    threads = args.threads or len(os.sched_getaffinity(0))
    torch.set_num_threads(threads)
    hf, ours = build_models(args)
    generator = torch.Generator().manual_seed(args.seed)
    data = torch.randint(0, hf.config.vocab_size, (4 * args.batch, args.context + 1), generator=generator)
    batches = [(data[i:i + args.batch, :-1], data[i:i + args.batch, 1:]) for i in range(0, len(data), args.batch)]

    peak_before = measure_cpu_flops(torch.float32, seconds=2.0)
    trainers, compile_seconds = [], {}
    for name in variants:  # each variant trains its own copy of the same initial weights
        model = hf if name.startswith("hf") else ours
        copy = type(model)(model.config) if name.startswith("hf") else GPT(ours.cfg)
        copy.load_state_dict(model.state_dict())
        trainer = Trainer(name, copy, batches)
        compile_seconds[name] = trainer.run(args.warmup) * args.warmup
        trainers.append(trainer)
    per_step: dict[str, list[float]] = {t.name: [] for t in trainers}
    for _ in range(args.rounds):
        for trainer in trainers:
            per_step[trainer.name].append(trainer.run(args.steps))

    tokens = args.batch * args.context
    fpt = flops_per_token(ours, args.context, training=True)
    # Measured in this run (before and after the timing; the higher counts, since other work on
    # the machine only lowers it) rather than read from peak_flops' per-machine cache, which may
    # hold a value taken while the machine was busy.
    peak = max(peak_before, measure_cpu_flops(torch.float32, seconds=2.0))
    speed = {name: tokens / statistics.median(times) for name, times in per_step.items()}
    reference = trainers[0].first_loss
    print(f"\nCPU: {cpu_name()}, {threads} threads; torch {torch.__version__}; GPT {args.layers} layers x "
          f"{args.dim} dims, context {args.context}, batch {args.batch}, vocab {hf.config.vocab_size}, fp32, "
          f"dropout {args.dropout}; {fpt / 1e6:.1f} MFLOP/token; measured fp32 peak {peak / 1e9:.0f} GFLOP/s; "
          f"median of {args.rounds} rounds of {args.steps} steps; 1-minute load average {os.getloadavg()[0]:.2f}\n")
    print("| variant | tokens/s | vs hf | MFU | warm-up (s) | first loss |")
    print("|---|---:|---:|---:|---:|---:|")
    base = speed.get("hf", next(iter(speed.values())))
    for trainer in trainers:
        name = trainer.name
        print(f"| {name} | {speed[name]:,.0f} | {speed[name] / base:.2f}x | {speed[name] * fpt / peak:.1%} | "
              f"{compile_seconds[name]:.1f} | {trainer.first_loss:.4f} |")
    if any(not math.isclose(t.first_loss, reference, rel_tol=1e-4) for t in trainers) and args.dropout == 0:
        raise SystemExit("the variants started from different losses: they do not compute the same model")


if __name__ == "__main__":
    main()
