"""Parameter counts and memory footprint (book section 4.6)."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn


@dataclass(frozen=True)
class ModelSize:
    total_params: int
    """Every parameter tensor counted once (a tied output head is counted once)."""
    params_without_out_head: int
    """The book's "considering weight tying" number: total minus the output head."""
    trainable_params: int
    size_mb: float
    """Memory of the parameters, in MiB (the book's "Total size of the model")."""

    def __str__(self) -> str:
        return (
            f"{self.total_params:,} parameters ({self.trainable_params:,} trainable, "
            f"{self.params_without_out_head:,} without the output head), {self.size_mb:.2f} MB"
        )


def model_size(model: nn.Module) -> ModelSize:
    """Count parameters once each (tied weights are shared tensors) and their bytes."""
    params = list(model.parameters())  # parameters() already yields a shared tensor once
    total = sum(p.numel() for p in params)
    trainable = sum(p.numel() for p in params if p.requires_grad)
    size_bytes = sum(p.numel() * p.element_size() for p in params)
    out_head = getattr(model, "out_head", None)
    head = out_head.weight.numel() if isinstance(out_head, nn.Linear) else 0
    tied = out_head is not None and out_head.weight is getattr(getattr(model, "tok_emb", None), "weight", None)
    return ModelSize(
        total_params=total,
        params_without_out_head=total if tied else total - head,
        trainable_params=trainable,
        size_mb=size_bytes / (1024 * 1024),
    )
