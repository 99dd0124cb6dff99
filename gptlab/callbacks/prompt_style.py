"""Record the prompt format a model was instruction-tuned with, beside its run and its export.

A model answers well only in the prompt format it was trained on, so the format travels with it:
``prompt.json`` (``PromptStyle.to_record``: the style's name, its chat template, how a record's
input is shown and where a response stops) is written into the run directory when fitting starts
and into the exported model directory when it ends. ``gptlab.inference.LLM`` reads it back
(through ``gptlab.runs.RunFiles``) for every inference command.
"""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L
from lightning.pytorch.utilities import rank_zero_only

from gptlab.fileio import atomic_write_text
from gptlab.prompts import PromptStyle, get_style
from gptlab.runs import PROMPT_FILE


def write_prompt_style(directory: str | Path, style: str | PromptStyle) -> Path:
    """Write ``directory/prompt.json`` recording ``style``."""
    record = get_style(style).to_record()
    return atomic_write_text(Path(directory) / PROMPT_FILE, json.dumps(record, indent=2, ensure_ascii=False) + "\n")


class RecordPromptStyle(L.Callback):
    """Write the data module's prompt style into ``run_dir`` at the start of fitting and into
    ``model_dir`` (the export) at its end; place it after ``ExportModel``, which replaces that
    directory. The style is the resolved one (``style``: a tokenizer's own chat template with its
    text), else the registered name ``prompt_style``."""

    def __init__(self, run_dir: str, model_dir: str | None = None) -> None:
        self.run_dir = Path(run_dir)
        self.model_dir = Path(model_dir) if model_dir else None

    @staticmethod
    def _style(trainer: L.Trainer) -> PromptStyle | str | None:
        data = trainer.datamodule
        if data is None:
            return None
        style = getattr(data, "style", None)
        return style if isinstance(style, PromptStyle) else getattr(data, "prompt_style", None)

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
