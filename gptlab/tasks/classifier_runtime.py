"""A trained classifier applied to new texts (``gptlab-classify``): loaded from an export or a
checkpoint, each text preprocessed exactly as in training."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from gptlab.checkpoints import read_task_checkpoint
from gptlab.errors import CheckpointError
from gptlab.model import GPT
from gptlab.model.lora import has_lora, merge_lora
from gptlab.runs import LAST_CHECKPOINT, RunFiles
from gptlab.tasks.classifier_export import CLASSIFIER_FILE, is_classifier_export, read_classifier_export
from gptlab.tasks.classifier_head import pool_logits
from gptlab.tasks.classify import ClassifyTask
from gptlab.tokenizer import TextEncoding


class Classifier:
    """A trained classifier ready for new texts: the model plus the preprocessing of training.

    ``meta`` is what ``ClassifyTask.classifier_meta`` returns: ``num_classes``, ``label_names``,
    ``token_position``, ``causal_mask``, ``mask_padding`` and ``preprocessing`` (``tokenizer``,
    ``max_length``, ``pad_length``, ``pad_token_id``, as the data module's ``inference_spec``).
    """

    def __init__(self, model: GPT, meta: dict[str, Any]) -> None:
        self.model = model.eval()
        self.meta = meta
        self.encoding = TextEncoding.from_dict(meta.get("preprocessing") or {}).within(model.cfg.context_length)
        self.tokenizer = self.encoding.load_tokenizer()
        self.label_names = list(meta.get("label_names") or [str(i) for i in range(meta["num_classes"])])

    @torch.no_grad()
    def predict_proba(self, texts: Sequence[str], batch_size: int = 32) -> torch.Tensor:
        """Class probabilities ``(len(texts), num_classes)``, each text preprocessed as in training."""
        device = next(self.model.parameters()).device
        out = []
        for batch in self.encoding.batches(self.tokenizer, list(texts), batch_size):
            ids, mask = batch["input_ids"].to(device), batch["attention_mask"].to(device)
            logits = self.model(ids, attention_mask=mask if self.meta.get("mask_padding") else None,
                                causal=bool(self.meta.get("causal_mask", True)))
            pooled = pool_logits(logits, mask, self.meta.get("token_position", "last"))
            out.append(torch.softmax(pooled.float(), dim=-1).cpu())
        return torch.cat(out) if out else torch.empty(0, len(self.label_names))

    def predict(self, texts: Sequence[str]) -> list[tuple[str, float]]:
        """``(label, probability)`` of the most likely class of each text."""
        probs = self.predict_proba(texts)
        best = probs.argmax(dim=-1)
        return [(self.label_names[int(i)], float(probs[row, i])) for row, i in enumerate(best)]


def load_classifier(source: str | Path) -> Classifier:
    """A classifier from a run directory, its ``model/`` export, or a ``.ckpt`` of a ``ClassifyTask``.

    A run directory is read from ``model/`` when it was exported, else from its best checkpoint
    (``checkpoints/best*.ckpt``), else ``checkpoints/last.ckpt``.
    """
    path = Path(source).expanduser()
    if not path.exists():
        raise CheckpointError(f"{path} does not exist; pass a run directory, its model/ directory or a .ckpt file")
    if path.is_dir():
        run = RunFiles.find(path)
        for directory in (path, run.export_dir):
            if directory is not None and is_classifier_export(directory):
                return Classifier(*read_classifier_export(directory))
        checkpoints = run.checkpoints("best*.ckpt") or run.checkpoints(LAST_CHECKPOINT)
        if not checkpoints:
            raise CheckpointError(
                f"{path} holds no classifier: expected {CLASSIFIER_FILE}, model/{CLASSIFIER_FILE} or "
                "checkpoints/*.ckpt of a classification run"
            )
        path = checkpoints[-1]
    return classifier_from_checkpoint(path)


def classifier_from_checkpoint(path: Path) -> Classifier:
    """The classifier of a ``ClassifyTask`` checkpoint, adapters merged."""
    checkpoint = read_task_checkpoint(path)
    if "num_classes" not in checkpoint.hparams or "token_position" not in checkpoint.hparams:
        raise CheckpointError(f"{path} is not a checkpoint of a classification run (task=classify)")
    task = ClassifyTask.from_task_checkpoint(checkpoint)
    gpt = merge_lora(task.gpt) if has_lora(task.gpt) else task.gpt
    return Classifier(gpt, task.classifier_meta())
