"""Plot training and validation loss against tokens seen, as the book's figure 5.12 does."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.utilities import rank_zero_only

from gptlab.fileio import atomic_path


class LossPlot(L.Callback):
    """Collect ``train/loss`` and ``val/loss`` with ``tokens_seen`` and draw ``loss.png``.

    The history travels in checkpoints (``state_dict``), so a resumed run draws its whole curve.
    """

    def __init__(self, path: str = "loss.png", train_key: str = "train/loss", val_key: str = "val/loss") -> None:
        self.path = Path(path)
        self.train_key = train_key
        self.val_key = val_key
        self.train: list[tuple[float, float]] = []
        self.val: list[tuple[float, float]] = []

    @staticmethod
    def _tokens(pl_module: L.LightningModule, trainer: L.Trainer) -> float:
        tokens = getattr(pl_module, "tokens_seen", None)
        return float(tokens) if tokens is not None else float(trainer.global_step)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any,
                           batch: Any, batch_idx: int) -> None:
        loss = trainer.callback_metrics.get(self.train_key)
        if loss is not None and trainer.global_step % max(1, trainer.log_every_n_steps) == 0:
            self.train.append((self._tokens(pl_module, trainer), float(loss)))

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        loss = trainer.callback_metrics.get(self.val_key)
        if trainer.sanity_checking or loss is None:
            return
        self.val.append((self._tokens(pl_module, trainer), float(loss)))
        self.draw()

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.draw()

    @rank_zero_only
    def draw(self) -> None:
        if not self.train and not self.val:
            return
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6, 4))
        if self.train:
            ax.plot(*zip(*self.train), label="Training loss")
        if self.val:
            ax.plot(*zip(*self.val), linestyle="-.", marker="o", label="Validation loss")
        ax.set_xlabel("Tokens seen")
        ax.set_ylabel("Loss")
        ax.legend(loc="upper right")
        fig.tight_layout()
        with atomic_path(self.path) as tmp:
            fig.savefig(tmp)
        plt.close(fig)

    def state_dict(self) -> dict[str, Any]:
        return {"train": self.train, "val": self.val}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.train = [tuple(p) for p in state_dict.get("train", [])]
        self.val = [tuple(p) for p in state_dict.get("val", [])]
