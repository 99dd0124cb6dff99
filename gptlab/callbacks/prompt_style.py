"""Record the prompt style a model was instruction-tuned with, beside its run and its export.

A model answers well only in the prompt format it was trained on, so the format travels with it:
``prompt.json`` (``{"prompt_style": "alpaca"}``) is written into the run directory when fitting
starts and into the exported model directory when it ends. ``read_prompt_style`` finds it again
for ``gptlab-chat`` and ``gptlab-respond``.
"""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L
from lightning.pytorch.utilities import rank_zero_only

from gptlab.fileio import atomic_write_text

PROMPT_FILE = "prompt.json"


def write_prompt_style(directory: str | Path, style: str) -> Path:
    """Write ``directory/prompt.json`` naming ``style``."""
    return atomic_write_text(Path(directory) / PROMPT_FILE, json.dumps({"prompt_style": style}, indent=2) + "\n")


def read_prompt_style(source: str | Path) -> str | None:
    """The prompt style recorded for a model ``source`` (an export, a run directory or a checkpoint
    inside one), or ``None`` when nothing is recorded, e.g. for a GPT-2 name."""
    path = Path(source).expanduser()
    if not path.exists():
        return None
    base = path if path.is_dir() else path.parent
    # An export (model/), its run directory, or the run directory of checkpoints/*.ckpt.
    for directory in (base, base / "model", base.parent):
        file = directory / PROMPT_FILE
        if file.is_file():
            try:
                style = json.loads(file.read_text(encoding="utf-8")).get("prompt_style")
            except (json.JSONDecodeError, AttributeError):
                continue
            if isinstance(style, str):
                return style
    return None


class RecordPromptStyle(L.Callback):
    """Write the data module's ``prompt_style`` into ``run_dir`` at the start of fitting and into
    ``model_dir`` (the export) at its end; place it after ``ExportModel``, which replaces that
    directory."""

    def __init__(self, run_dir: str, model_dir: str | None = None) -> None:
        self.run_dir = Path(run_dir)
        self.model_dir = Path(model_dir) if model_dir else None

    @staticmethod
    def _style(trainer: L.Trainer) -> str | None:
        return getattr(trainer.datamodule, "prompt_style", None) if trainer.datamodule is not None else None

    @rank_zero_only
    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        style = self._style(trainer)
        if style:
            write_prompt_style(self.run_dir, style)

    @rank_zero_only
    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        style = self._style(trainer)
        if style and self.model_dir is not None and self.model_dir.is_dir():
            write_prompt_style(self.model_dir, style)
