"""The classifier's model surgery and pooling (book chapter 6): a class head in place of the
vocabulary head, and the class logits of one token position (or of the mean over real tokens)."""

from __future__ import annotations

from dataclasses import replace

import torch
from torch import nn

from gptlab.errors import ConfigError
from gptlab.model import GPT
from gptlab.tokenizer import TextEncoding

TOKEN_POSITIONS = ("last", "first", "flexible", "mean")


def check_token_position(position: str) -> None:
    if position not in TOKEN_POSITIONS:
        raise ConfigError(f"task.token_position={position!r} is unknown; use one of {', '.join(TOKEN_POSITIONS)}")


def replace_head(model: GPT, num_classes: int) -> GPT:
    """Swap the vocabulary head for ``Linear(emb_dim, num_classes)`` (with bias, PyTorch's default init).

    A head tied to the token embedding is untied by this, and ``model.cfg`` says so, so that an
    export of the model describes it truthfully.
    """
    model.out_head = nn.Linear(model.cfg.emb_dim, num_classes)
    model.cfg = replace(model.cfg, tie_embeddings=False)
    return model


def pool_logits(logits: torch.Tensor, attention_mask: torch.Tensor | None, position: str) -> torch.Tensor:
    """Per-example class logits ``(B, C)`` from per-token logits ``(B, T, C)``.

    * ``last``: position ``-1``, padding or not (the book's choice; with padding to the longest
      training example it reads a pad token that has seen the whole text through attention);
    * ``first``: position 0, which under the causal mask has seen only the first token;
    * ``flexible``: each example's last real token (right padding: index ``length - 1``);
    * ``mean``: the mean over real tokens. The head is affine, so this equals applying the head to
      the mean of the final hidden states (the book's "average embeddings").

    Without an ``attention_mask`` every position counts as real.
    """
    check_token_position(position)
    if position == "last":
        return logits[:, -1, :]
    if position == "first":
        return logits[:, 0, :]
    if attention_mask is None:
        return logits[:, -1, :] if position == "flexible" else logits.mean(dim=1)
    if position == "flexible":
        last = TextEncoding.last_token_index(attention_mask)
        return logits[torch.arange(logits.shape[0], device=logits.device), last]
    mask = attention_mask.to(logits.dtype).unsqueeze(-1)
    return (logits * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)
