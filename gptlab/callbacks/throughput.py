"""Tokens per second and model FLOPs utilisation (MFU) of every training run.

MFU is the share of the device's peak that the model's own FLOPs (``gptlab.model.flops``) use:
the number that tells whether a run is limited by the hardware or by everything around it. The
GPU peaks come from Lightning's table of common cards by dtype; a CPU has no datasheet figure
that fits, so its peak is a short matmul measurement, cached per machine.
"""

from __future__ import annotations

import functools
import json
import platform
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.fabric.utilities.throughput import get_available_flops
from lightning.pytorch.utilities import rank_zero_only

from gptlab.data.downloads import cache_root
from gptlab.fileio import atomic_write_text
from gptlab.model.flops import flops_per_token

_PRECISION_DTYPES = {"bf16": torch.bfloat16, "16": torch.float16, "64": torch.float64}


def compute_dtype(precision: str) -> torch.dtype:
    """The dtype matmuls run in under a Lightning precision setting (``bf16-mixed`` -> bf16)."""
    for prefix, dtype in _PRECISION_DTYPES.items():
        if str(precision).startswith(prefix):
            return dtype
    return torch.float32


def measure_cpu_flops(dtype: torch.dtype = torch.float32, size: int = 1024, seconds: float = 0.3) -> float:
    """Sustained FLOP/s of ``size x size`` matmuls on this CPU, at torch's current thread count.

    Its random operands come from a generator of its own: drawing them from torch's global one would
    change the run's data order and dropout, making results depend on whether this was measured."""
    own = torch.Generator().manual_seed(0)
    a, b = (torch.randn(size, size, generator=own, dtype=dtype) for _ in range(2))
    a @ b  # warm up the kernel and the caches
    runs, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds or runs < 2:
        a @ b
        runs += 1
    return 2 * size**3 * runs / elapsed


def cpu_name() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else what ``platform`` knows of it."""
    try:
        return next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                    if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def _cpu_key(dtype: torch.dtype) -> str:
    return f"{cpu_name()}|threads={torch.get_num_threads()}|{dtype}|torch={torch.__version__}"


@functools.cache
def _measured_in_this_process(key: str, dtype: torch.dtype) -> float:
    """One measurement per process and CPU setting: the jobs of a sweep share it."""
    return measure_cpu_flops(dtype)


def peak_flops(device: torch.device, dtype: torch.dtype) -> float | None:
    """The device's peak FLOP/s for ``dtype``: Lightning's GPU table, or for a CPU the best of a
    short measurement in this process and those cached from earlier runs on this machine (a
    measurement taken while other work held the cores would otherwise understate the peak)."""
    if device.type != "cpu":
        return get_available_flops(device, dtype)
    path = cache_root() / "cpu_peak_flops.json"
    try:
        known = json.loads(path.read_text())
    except (OSError, ValueError):
        known = {}
    key = _cpu_key(dtype)
    best = max(_measured_in_this_process(key, dtype), float(known.get(key, 0.0)))
    if best > float(known.get(key, 0.0)):
        atomic_write_text(path, json.dumps({**known, key: best}, indent=2) + "\n")
    return best


def sequence_length(batch: Any, default: int) -> int:
    """Tokens per sequence in a batch: the width of its first 2-D tensor of ids."""
    values = batch.values() if isinstance(batch, dict) else batch if isinstance(batch, (list, tuple)) else [batch]
    for value in values:
        if isinstance(value, torch.Tensor) and value.dim() == 2 and not value.is_floating_point():
            return int(value.shape[1])
    return default


class Throughput(L.Callback):
    """Log ``perf/tokens_per_sec`` and ``perf/mfu`` every training step, and keep a run average.

    Tokens come from the task's ``tokens_seen`` (summed over ranks), time from the start to the
    end of each training step. The first ``skip_steps`` steps (allocation, compilation) are left
    out of the run average in ``summary``. Frozen layers count only the backward work autograd
    runs for them (``flops_per_token``).
    """

    def __init__(self, skip_steps: int = 2) -> None:
        self.skip_steps = skip_steps
        self.peak: float | None = None
        self.summary: dict[str, float] = {}
        self._tokens = self._seconds = self._flops = 0.0
        self._steps = 0

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self.peak = peak_flops(trainer.strategy.root_device, compute_dtype(trainer.precision))

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        self._sync(pl_module)
        self._start, self._tokens_before = time.perf_counter(), int(pl_module.tokens_seen)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        self._sync(pl_module)
        seconds = time.perf_counter() - self._start
        tokens = int(pl_module.tokens_seen) - self._tokens_before
        if tokens <= 0 or seconds <= 0:
            return
        gpt = pl_module.gpt
        flops = tokens * flops_per_token(gpt, sequence_length(batch, gpt.cfg.context_length))
        pl_module.log("perf/tokens_per_sec", tokens / seconds, on_step=True, on_epoch=False)
        mfu = self._mfu(flops, seconds, trainer.world_size)
        if mfu is not None:
            pl_module.log("perf/mfu", mfu, on_step=True, on_epoch=False)
        self._steps += 1
        if self._steps > self.skip_steps:
            self._tokens += tokens
            self._seconds += seconds
            self._flops += flops

    @rank_zero_only
    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._seconds > 0:
            self.summary = {"tokens_per_sec": self._tokens / self._seconds}
            mfu = self._mfu(self._flops, self._seconds, trainer.world_size)
            if mfu is not None:
                self.summary["mfu"] = mfu

    def _mfu(self, flops: float, seconds: float, world_size: int) -> float | None:
        return flops / seconds / (self.peak * world_size) if self.peak else None

    @staticmethod
    def _sync(pl_module: L.LightningModule) -> None:
        if pl_module.device.type == "cuda":
            torch.cuda.synchronize(pl_module.device)
