"""Perplexity (book section 5.1): exp of the mean next-token loss over every predicted token."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch.nn import functional as F

from gptlab.model.gpt import GPT
from gptlab.model.modes import eval_mode

IGNORE_INDEX = -100


@dataclass
class Perplexity:
    loss: float
    perplexity: float
    tokens: int


@torch.inference_mode()
def batches_perplexity(model: GPT, batches: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> Perplexity:
    """Perplexity over ``(inputs, targets)`` batches in eval mode; targets of -100 are not counted."""
    device = model.tok_emb.weight.device
    total, count = 0.0, 0
    with eval_mode(model):
        for inputs, targets in batches:
            logits = model(inputs.to(device))
            targets = targets.to(device)
            total += float(F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(),
                                           ignore_index=IGNORE_INDEX, reduction="sum"))
            count += int((targets != IGNORE_INDEX).sum())
    if count == 0:
        raise ValueError("no target tokens to score")
    loss = total / count
    return Perplexity(loss, math.exp(loss), count)


def token_windows(ids: list[int], context_length: int, batch_size: int) -> Iterable[tuple[torch.Tensor, torch.Tensor]]:
    """Consecutive non-overlapping windows of ``ids``: every token after the first is predicted
    once, from the tokens before it in its window. The last window may be shorter."""
    pairs = []
    for start in range(0, len(ids) - 1, context_length):
        window = ids[start:start + context_length + 1]
        pairs.append((window[:-1], window[1:]))
    for i in range(0, len(pairs), batch_size):
        chunk = pairs[i:i + batch_size]
        width = max(len(x) for x, _ in chunk)
        inputs = torch.zeros((len(chunk), width), dtype=torch.long)
        targets = torch.full((len(chunk), width), IGNORE_INDEX, dtype=torch.long)
        for row, (x, y) in enumerate(chunk):
            inputs[row, :len(x)] = torch.tensor(x)
            targets[row, :len(y)] = torch.tensor(y)
        yield inputs, targets
