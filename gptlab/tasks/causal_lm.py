"""Next-token prediction, the causal language-modelling objective: pretraining (book chapter 5,
appendix D) and, with prompt tokens masked out of the targets, instruction tuning (chapter 7)."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch.nn import functional as F
from torchmetrics import MeanMetric
from torchmetrics.text import Perplexity

from gptlab.tasks.base import GPTTask

IGNORE_INDEX = -100


def next_token_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over all target positions (``-100`` targets are skipped)."""
    return F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=IGNORE_INDEX)


class CausalLMTask(GPTTask):
    """Train a GPT to predict each next token of its inputs.

    Batches are ``(inputs, targets)`` pairs of ``(batch, length)`` ids, the targets being the
    inputs shifted by one; targets of ``-100`` (padding, or an instruction's prompt) are not
    scored. Logs ``train/loss``, ``val/loss``, ``val/ppl`` and ``tokens_seen``, and ``val/bpb``
    when the data knows its validation text's bytes per token (``val_bytes_per_token``).

    ``val/bpb``, bits per byte, is the loss in bits spread over the bytes of text the tokens stand
    for: ``val/loss / ln 2 / bytes per token``. Unlike a loss per token, it compares runs whose
    tokenizers cut the same text into different numbers of tokens.
    """

    def __init__(self, model: dict[str, Any], **kwargs: Any) -> None:
        super().__init__(model, **kwargs)
        self.val_loss = MeanMetric()
        self.val_ppl = Perplexity(ignore_index=IGNORE_INDEX)
        self.val_bytes_per_token: float | None = None

    def setup(self, stage: str) -> None:
        super().setup(stage)
        datamodule = getattr(self.trainer, "datamodule", None)
        self.val_bytes_per_token = getattr(datamodule, "val_bytes_per_token", None)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        inputs, targets = batch
        loss = next_token_loss(self(inputs), targets)
        self.count_tokens(inputs.numel())
        self.log("train/loss", loss, on_step=True, on_epoch=False, prog_bar=True)
        return loss

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        inputs, targets = batch
        logits = self(inputs)
        loss = next_token_loss(logits, targets)
        # Weight by tokens so the epoch value is the loss over all validation tokens.
        self.val_loss.update(loss, weight=(targets != IGNORE_INDEX).sum())
        self.val_ppl.update(logits.float(), targets)
        self.log("val/loss", self.val_loss, on_step=False, on_epoch=True, prog_bar=True)
        self.log("val/ppl", self.val_ppl, on_step=False, on_epoch=True)

    def on_validation_epoch_end(self) -> None:
        if self.val_bytes_per_token and self.val_loss.update_count:
            self.log("val/bpb", self.val_loss.compute() / math.log(2) / self.val_bytes_per_token, prog_bar=True)


#: The name under which the causal-LM task first shipped.
PretrainTask = CausalLMTask
