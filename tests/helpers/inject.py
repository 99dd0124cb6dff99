"""Callbacks the fault tests inject into real runs with ``+callbacks.NAME._target_=...``."""

from __future__ import annotations

import os
import signal

import lightning as L
import torch


class KillAtStep(L.Callback):
    """SIGKILL this process when ``step`` optimizer steps are done: no cleanup, no final save."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer: L.Trainer, *args: object) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGKILL)


class NanLossAtStep(L.Callback):
    """Poison one weight before optimizer step ``step`` (1-based), so that step's loss is NaN."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: object) -> None:
        if trainer.global_step + 1 == self.step:
            with torch.no_grad():
                next(pl_module.parameters()).fill_(float("nan"))

