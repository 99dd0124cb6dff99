"""Export the trained model into the run directory at the end of fitting."""

from __future__ import annotations

from pathlib import Path

import lightning as L
from lightning.pytorch.utilities import rank_zero_info, rank_zero_only

from gptlab.callbacks.sample import tokenizer_of
from gptlab.tasks.base import GPTTask


class ExportModel(L.Callback):
    """Write the task's export (``GPTTask.export``) to ``dirpath``; ``best=True`` exports the best checkpoint.

    The data module's tokenizer goes with it where it has files of its own (``data.tokenizer=<dir>``)."""

    def __init__(self, dirpath: str = "model", best: bool = True) -> None:
        self.dirpath = Path(dirpath)
        self.best = best

    @rank_zero_only
    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not isinstance(pl_module, GPTTask):
            return
        best_path = getattr(trainer.checkpoint_callback, "best_model_path", "") if self.best else ""
        if best_path and Path(best_path).is_dir():  # a sharded checkpoint: merge it into one file first
            from gptlab.strategies import consolidate_checkpoint

            best_path = str(consolidate_checkpoint(best_path))
        task = type(pl_module).from_task_checkpoint(best_path) if best_path else pl_module
        task.export(self.dirpath, tokenizer=tokenizer_of(trainer))
        source = f"best checkpoint {Path(best_path).name}" if best_path else "final weights"
        rank_zero_info(f"Exported the model ({source}) to {self.dirpath}")
