"""AdamW with decay/no-decay groups and a warmup + cosine learning-rate schedule (book appendix D)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from gptlab.errors import ConfigError


@dataclass
class OptimizerConfig:
    lr: float = 4e-4
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = 1e-8


@dataclass
class SchedulerConfig:
    """``cosine``: linear warmup, then cosine decay to ``min_lr_ratio * lr``; ``constant``: warmup, then flat."""

    name: str = "cosine"
    warmup_steps: int | None = None
    warmup_ratio: float = 0.05
    min_lr_ratio: float = 0.1

    def __post_init__(self) -> None:
        if self.name not in ("cosine", "constant"):
            raise ConfigError(f"task.scheduler.name={self.name!r} is unknown; use 'cosine' or 'constant'")
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ConfigError(f"task.scheduler.min_lr_ratio must lie in [0, 1], got {self.min_lr_ratio}")


def parameter_groups(module: nn.Module, weight_decay: float) -> list[dict]:
    """Decay matrices (linear and embedding weights); never decay biases or the scales and shifts of
    LayerNorm, RMSNorm and QK-norm (every 1-D parameter)."""
    decay, no_decay = [], []
    for param in module.parameters():  # tied weights appear once
        if not param.requires_grad:
            continue
        (decay if param.dim() >= 2 else no_decay).append(param)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def build_adamw(module: nn.Module, cfg: OptimizerConfig, allow_fused: bool = True) -> torch.optim.AdamW:
    """AdamW over ``parameter_groups``, with the fused kernel (one launch for every tensor) on GPUs
    and CPUs alike when ``allow_fused``. Sharded (DTensor) parameters keep the default kernel."""
    groups = [g for g in parameter_groups(module, cfg.weight_decay) if g["params"]]
    params = [p for g in groups for p in g["params"]]
    fused = allow_fused and all(type(p.data) is torch.Tensor and p.device.type in ("cuda", "cpu") for p in params)
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps, fused=fused or None)


def lr_lambda(cfg: SchedulerConfig, total_steps: int):
    """The multiplier of the peak learning rate at each optimizer step."""
    total_steps = max(1, total_steps)
    warmup = cfg.warmup_steps if cfg.warmup_steps is not None else int(cfg.warmup_ratio * total_steps)
    warmup = min(max(0, warmup), total_steps)

    def multiplier(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if cfg.name == "constant":
            return 1.0
        progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
        cosine = 0.5 * (1.0 + math.cos(math.pi * progress))
        return cfg.min_lr_ratio + (1.0 - cfg.min_lr_ratio) * cosine

    return multiplier
