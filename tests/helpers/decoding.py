"""What the decoding tests of several modules share: left-padded prompt batches."""

from __future__ import annotations

import torch


def left_padded(prompts: list[torch.Tensor], pad_id: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``(1, n)`` prompts as one left-padded batch and its attention mask (1 = token, 0 = padding)."""
    width = max(p.shape[1] for p in prompts)
    batch = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros_like(batch)
    for row, p in enumerate(prompts):
        batch[row, width - p.shape[1]:] = p[0]
        mask[row, width - p.shape[1]:] = 1
    return batch, mask
