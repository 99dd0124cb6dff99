"""Export the trained model (safetensors + config) into the run directory at the end of fitting."""

from __future__ import annotations

from pathlib import Path

import lightning as L
from lightning.pytorch.utilities import rank_zero_info, rank_zero_only


class ExportModel(L.Callback):
    """Write ``pl_module.gpt`` with ``gptlab.weights.save_model``; ``best=True`` exports the best checkpoint."""

    def __init__(self, dirpath: str = "model", best: bool = True) -> None:
        self.dirpath = Path(dirpath)
        self.best = best

    @rank_zero_only
    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not hasattr(pl_module, "gpt"):
            return
        from gptlab.weights import load_pretrained, save_model

        model = pl_module.gpt
        best_path = getattr(trainer.checkpoint_callback, "best_model_path", "") if self.best else ""
        own_export = getattr(pl_module, "export_model", None)
        if callable(own_export):  # a task whose model is not a language model, e.g. a classifier
            own_export(self.dirpath, best_path or None)
        else:
            if best_path:
                if Path(best_path).is_dir():  # a sharded checkpoint: merge it into one file first
                    from gptlab.strategies import consolidate_checkpoint

                    best_path = str(consolidate_checkpoint(best_path))
                model = load_pretrained(best_path)
            save_model(model, self.dirpath)
        source = f"best checkpoint {Path(best_path).name}" if best_path else "final weights"
        rank_zero_info(f"Exported the model ({source}) to {self.dirpath}")
