"""The GPU check: one run that times gptlab's training and generation paths on one GPU and writes one JSON.

Sections, each timed and guarded (an exception is recorded in its entry and the next section runs),
within an overall time budget (a section that would start past it is recorded as skipped):

* ``gpt2_train_eager`` / ``gpt2_train_compile``: the GPT-2 124M shape (``gpt2-small``, random
  weights, the vocabulary padded to 50,304 as ``experiment=gpt2_gpu`` does) at context 1024 in
  bf16 autocast with gptlab's fused AdamW (``build_adamw``): tokens/s and MFU, eager and
  ``torch.compile``d;
* ``smollm2_lora`` / ``smollm2_full``: the real SmolLM2-135M-Instruct, LoRA (rank 16, alpha 16 on
  every projection) and full fine-tuning, the same step;
* ``fully_shard``: a few steps of the real ``gptlab-train`` with ``trainer=fully_shard`` (FSDP2 per
  block through Lightning's ``ModelParallelStrategy``) on one GPU, its tokens/s from the run's
  metrics;
* ``generation``: greedy decoding of SmolLM2 at batch 1 and 8, gptlab's ``generate`` (KV cache, and
  the compiled static cache) against ``transformers``' ``generate``, both in bf16.

MFU is ``gptlab.model.flops.flops_per_token`` times tokens/s over the device's bf16 peak: the
datasheet figure of Lightning's table where it knows the card, else a bf16 matmul measured here
(the ``environment`` entry says which). Without CUDA (or with ``--dry-run``) it makes a dry pass:
tiny shapes on the CPU, every section's code path in about two minutes of CPU time (most of it reading
SmolLM2), the same keys, ``"dry_run": true``.

    bash experiments/gpu/check.sh                 # writes experiments/gpu/results.json
"""

from __future__ import annotations

import argparse
import copy
import csv
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.nn import functional as F

from gptlab.callbacks.throughput import peak_flops
from gptlab.fileio import atomic_write_text
from gptlab.model import GPT, GPTConfig
from gptlab.model.flops import flops_per_token
from gptlab.model.lora import apply_lora
from gptlab.tasks.optim import OptimizerConfig, build_adamw

SMOLLM2 = "smollm2-135m-instruct"
SECTIONS = ("environment", "gpt2_train_eager", "gpt2_train_compile", "smollm2_lora", "smollm2_full",
            "fully_shard", "generation")
PROMPT = "The capital of France is"


@dataclass
class Shapes:
    """How big each section runs: the real sizes on a GPU, tiny ones in the dry pass."""

    gpt2_preset: str = "gpt2-small"
    gpt2_context: int = 1024
    gpt2_batch: int = 16
    smollm2_batch: int = 8
    smollm2_seq: int = 1024
    warmup: int = 3
    steps: int = 20
    shard_overrides: tuple[str, ...] = ("model=gpt2-small", "model.vocab_size=50304", "data.batch_size=8",
                                        "trainer.max_steps=12", "trainer.limit_train_batches=12")
    new_tokens: int = 128
    gen_batches: tuple[int, ...] = (1, 8)
    compile_backend: str = "inductor"

    @classmethod
    def dry(cls) -> Shapes:
        return cls(gpt2_preset="nano", gpt2_context=32, gpt2_batch=2, smollm2_batch=1, smollm2_seq=16, warmup=1,
                   steps=1, shard_overrides=("model=nano", "model.context_length=32", "data.batch_size=2",
                                             "trainer.max_steps=3", "trainer.limit_train_batches=3",
                                             "trainer.accelerator=cpu"),
                   new_tokens=4, gen_batches=(1, 2), compile_backend="eager")  # inductor on a CPU: minutes


class Check:
    """Runs the sections in order, writing the JSON after each one (a killed run keeps what it had)."""

    def __init__(self, out: Path, budget_s: float, dry_run: bool) -> None:
        self.out, self.budget_s, self.dry_run = out, budget_s, dry_run
        self.device = torch.device("cpu" if dry_run else "cuda")
        self.shapes = Shapes.dry() if dry_run else Shapes()
        self.amp = not dry_run  # bf16 autocast on the GPU; the dry pass stays in float32
        self.started = time.perf_counter()
        self.peak: float | None = None
        self._smollm2: GPT | None = None
        self.record: dict[str, Any] = {"dry_run": dry_run, "budget_s": budget_s, "sections": {}}

    def run(self, name: str, section: Callable[[], dict[str, Any]], min_s: float = 0.0) -> None:
        """One section: its result, or its error; skipped when the budget has no ``min_s`` left."""
        entry: dict[str, Any] = {"ok": False, "error": None, "skipped": None}
        left = self.budget_s - (time.perf_counter() - self.started)
        if left < min_s:
            entry["skipped"] = f"{left:.0f} s of the budget left, the section needs about {min_s:.0f} s"
        else:
            begin = time.perf_counter()
            try:
                entry.update(section())
                entry["ok"] = True
            except Exception as err:  # noqa: BLE001 - recorded, and the next section runs
                entry["error"] = f"{type(err).__name__}: {err}"
                entry["traceback"] = traceback.format_exc()[-2000:]
            entry["seconds"] = round(time.perf_counter() - begin, 2)
            if self.device.type == "cuda":
                torch.cuda.empty_cache()
        self.record["sections"][name] = entry
        self.record["wall_s"] = round(time.perf_counter() - self.started, 2)
        self.out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.out, json.dumps(self.record, indent=2) + "\n")
        status = "ok" if entry["ok"] else entry["skipped"] or entry["error"]
        print(f"[{self.record['wall_s']:7.1f} s] {name}: {status}", flush=True)

    # ------------------------------------------------------------------------------------------
    # Sections

    def environment(self) -> dict[str, Any]:
        info: dict[str, Any] = {"torch": torch.__version__, "python": platform.python_version(),
                                "device": str(self.device)}
        if self.device.type == "cuda":
            torch.set_float32_matmul_precision("high")  # as gptlab-train's cuda_matmul_precision: high
            info.update(name=torch.cuda.get_device_name(), cuda=torch.version.cuda,
                        memory_gb=round(torch.cuda.get_device_properties(0).total_memory / 1e9, 1))
        table = peak_flops(self.device, torch.bfloat16 if self.amp else torch.float32)
        measured = measure_matmul_flops(self.device, torch.bfloat16 if self.amp else torch.float32)
        self.peak = table or measured
        source = ("datasheet (Lightning's table)" if self.device.type == "cuda" else
                  "gptlab's CPU measurement, the best cached on this machine") if table else "measured matmul"
        info.update(peak_flops=self.peak, peak_source=source, measured_matmul_flops=measured)
        return info

    def gpt2_train(self, compile: bool) -> dict[str, Any]:
        s = self.shapes
        torch.manual_seed(0)
        overrides = {"context_length": s.gpt2_context, "drop_rate": 0.0}
        if s.gpt2_preset == "gpt2-small":
            overrides["vocab_size"] = 50304  # a multiple of 64, as experiment=gpt2_gpu
        model = GPT(GPTConfig.from_dict({"preset": s.gpt2_preset, **overrides}))
        result = self.train_speed(model, s.gpt2_batch, s.gpt2_context, compile=compile)
        return {"preset": s.gpt2_preset, "batch": s.gpt2_batch, "context": s.gpt2_context, **result}

    def smollm2_train(self, lora: bool) -> dict[str, Any]:
        s = self.shapes
        model = copy.deepcopy(self.smollm2())
        if lora:
            apply_lora(model, rank=16, alpha=16, scaling="alpha_over_rank")
        result = self.train_speed(model, s.smollm2_batch, s.smollm2_seq, compile=False)
        return {"batch": s.smollm2_batch, "seq_len": s.smollm2_seq, "lora": lora, **result}

    def fully_shard(self) -> dict[str, Any]:
        """A few steps of ``gptlab-train trainer=fully_shard`` on one device, in a process of its own."""
        with tempfile.TemporaryDirectory() as run_dir:
            command = [sys.executable, "-m", "gptlab.cli.train", f"hydra.run.dir={run_dir}", "trainer=fully_shard",
                       "trainer.devices=1", "debug=smoke", "trainer.limit_val_batches=1", "print_config=false",
                       "callbacks.sample=null", "callbacks.export=null", "callbacks.loss_plot=null",
                       *self.shapes.shard_overrides]
            begin = time.perf_counter()
            done = subprocess.run(command, capture_output=True, text=True, timeout=max(60.0, self.left()))
            wall = time.perf_counter() - begin
            if done.returncode != 0:
                raise RuntimeError(f"gptlab-train exited with {done.returncode}: {done.stderr[-1500:]}")
            rows = list(csv.DictReader((Path(run_dir) / "metrics.csv").open()))
        speeds = [float(r["perf/tokens_per_sec"]) for r in rows if r.get("perf/tokens_per_sec")]
        mfus = [float(r["perf/mfu"]) for r in rows if r.get("perf/mfu")]
        timed = speeds[2:] or speeds  # the first steps allocate (and shard) memory
        return {"command": " ".join(["gptlab-train", *command[4:]]), "process_wall_s": round(wall, 2),
                "steps_logged": len(speeds), "tokens_per_s": statistics.median(timed) if timed else None,
                "mfu_vs_table": statistics.median(mfus[2:] or mfus) if mfus else None}

    def generation(self) -> dict[str, Any]:
        from transformers import AutoModelForCausalLM

        from gptlab.generate import generate
        from gptlab.named_models import resolve_named_model
        from gptlab.tokenizer import get_tokenizer

        path = resolve_named_model(SMOLLM2)
        dtype = torch.bfloat16 if self.amp else torch.float32
        ours = copy.deepcopy(self.smollm2()).to(self.device, dtype).eval()
        hf = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=dtype).to(self.device).eval()
        hf.generation_config.eos_token_id = None  # neither side stops early: the same number of tokens
        prompt = get_tokenizer(str(path)).encode(PROMPT)
        n = self.shapes.new_tokens
        runners: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
            "transformers": lambda idx: hf.generate(idx, attention_mask=torch.ones_like(idx), do_sample=False,
                                                    max_new_tokens=n, pad_token_id=0),
            "gptlab": lambda idx: generate(ours, idx, n),
        }
        if not self.dry_run:  # compiling the static-cache step with inductor on a CPU takes minutes
            runners["gptlab_compile"] = lambda idx: generate(ours, idx, n, compile=True)
        out: dict[str, Any] = {"new_tokens": n, "dtype": str(dtype), "prompt_tokens": len(prompt)}
        for batch in self.shapes.gen_batches:
            idx = torch.tensor([prompt] * batch, device=self.device)
            speeds, tokens = {}, {}
            for name, fn in runners.items():
                first, tokens[name] = self.timed(lambda: fn(idx))  # warm-up (and compilation)
                again, _ = self.timed(lambda: fn(idx))
                speeds[name] = {"tokens_per_s": n * batch / again, "first_call_s": round(first, 2)}
            speeds["gptlab_compile"] = speeds.get("gptlab_compile")  # the same keys in the dry pass
            out[f"batch_{batch}"] = {
                **speeds, "gptlab_vs_transformers": speeds["gptlab"]["tokens_per_s"] / speeds["transformers"]["tokens_per_s"],
                "same_tokens": all(torch.equal(t, tokens["transformers"]) for t in tokens.values()),
            }
        return out

    # ------------------------------------------------------------------------------------------
    # Helpers

    def smollm2(self) -> GPT:
        """The real SmolLM2 (float32, on the CPU), read once: each section works on its own copy."""
        if self._smollm2 is None:
            from gptlab.checkpoints import load_pretrained

            self._smollm2 = load_pretrained(SMOLLM2)
        return self._smollm2

    def train_speed(self, model: GPT, batch: int, seq_len: int, compile: bool) -> dict[str, Any]:
        """Tokens/s and MFU of forward, cross-entropy, backward and gptlab's AdamW step."""
        model = model.to(self.device).train()
        optimizer = build_adamw(model, OptimizerConfig())
        runner = torch.compile(model, backend=self.shapes.compile_backend) if compile else model
        data = torch.randint(0, model.cfg.vocab_size, (batch, seq_len + 1), device=self.device,
                             generator=torch.Generator(self.device).manual_seed(0))
        inputs, targets = data[:, :-1], data[:, 1:]

        def step() -> torch.Tensor:
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp):
                logits = runner(inputs)
            loss = F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten())
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            return loss

        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        warmup_s, _ = self.timed(lambda: [step() for _ in range(self.shapes.warmup)])
        seconds, losses = self.timed(lambda: [step() for _ in range(self.shapes.steps)])
        tokens_per_s = self.shapes.steps * batch * seq_len / seconds
        fpt = flops_per_token(model, seq_len)
        result = {"tokens_per_s": tokens_per_s, "mfu": tokens_per_s * fpt / self.peak if self.peak else None,
                  "flops_per_token": fpt, "warmup_s": round(warmup_s, 2), "steps": self.shapes.steps,
                  "last_loss": losses[-1].item(),
                  "trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
                  "compile_backend": self.shapes.compile_backend if compile else None}
        if self.device.type == "cuda":
            result["peak_memory_gb"] = round(torch.cuda.max_memory_allocated() / 1e9, 2)
        return result

    def timed(self, fn: Callable[[], Any]) -> tuple[float, Any]:
        """Seconds ``fn`` took (the device's queue drained before and after), and what it returned."""
        self.sync()
        begin = time.perf_counter()
        out = fn()
        self.sync()
        return time.perf_counter() - begin, out

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize()

    def left(self) -> float:
        return self.budget_s - (time.perf_counter() - self.started)


def measure_matmul_flops(device: torch.device, dtype: torch.dtype, seconds: float = 1.0) -> float:
    """Sustained FLOP/s of square matmuls: large ones on a GPU, the CPU's own measurement on a CPU."""
    if device.type == "cpu":
        from gptlab.callbacks.throughput import measure_cpu_flops

        return measure_cpu_flops(dtype, seconds=min(seconds, 0.3))
    size = 8192
    a, b = (torch.randn(size, size, device=device, dtype=dtype) for _ in range(2))
    a @ b
    torch.cuda.synchronize()
    runs, begin = 0, time.perf_counter()
    while time.perf_counter() - begin < seconds:
        for _ in range(10):
            a @ b
        torch.cuda.synchronize()
        runs += 10
    return 2 * size**3 * runs / (time.perf_counter() - begin)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("results.json"))
    parser.add_argument("--budget", type=float, default=420.0, help="seconds for every section together")
    parser.add_argument("--dry-run", action="store_true", help="tiny shapes on the CPU (the default without CUDA)")
    args = parser.parse_args()
    dry_run = args.dry_run or not torch.cuda.is_available()
    if dry_run:
        torch.set_num_threads(min(2, len(os.sched_getaffinity(0))))
    check = Check(args.out, args.budget, dry_run)
    check.run("environment", check.environment)
    check.run("gpt2_train_eager", lambda: check.gpt2_train(compile=False), min_s=20)
    check.run("gpt2_train_compile", lambda: check.gpt2_train(compile=True), min_s=60)
    check.run("smollm2_lora", lambda: check.smollm2_train(lora=True), min_s=30)
    check.run("smollm2_full", lambda: check.smollm2_train(lora=False), min_s=30)
    check.run("fully_shard", check.fully_shard, min_s=60)
    check.run("generation", check.generation, min_s=60)
    assert tuple(check.record["sections"]) == SECTIONS
    failed = [name for name, entry in check.record["sections"].items() if not entry["ok"]]
    print(f"wrote {args.out}; {len(SECTIONS) - len(failed)} of {len(SECTIONS)} sections ok"
          + (f", not: {', '.join(failed)}" if failed else ""))


if __name__ == "__main__":
    main()
