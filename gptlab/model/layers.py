"""The small building blocks of a GPT block (book sections 4.2-4.3), and Llama's alternatives.

GPT-2 normalises with ``LayerNorm`` and expands with a GELU ``FeedForward``; Llama normalises with
``RMSNorm`` and expands with the gated ``SwiGLUFeedForward``. ``make_norm`` and
``make_feed_forward`` pick one by the config, so a block never needs to know which.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from gptlab.model.config import GPTConfig


class LayerNorm(nn.Module):
    """Layer normalisation with a learnable ``scale`` and ``shift``, named as in the book."""

    def __init__(self, emb_dim: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.scale = nn.Parameter(torch.ones(emb_dim))
        self.shift = nn.Parameter(torch.zeros(emb_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # The fused kernel computes exactly the book's mean/biased-variance normalisation.
        return F.layer_norm(x, (x.shape[-1],), self.scale, self.shift, self.eps)


class RMSNorm(nn.Module):
    """Root-mean-square normalisation: ``x / sqrt(mean(x^2) + eps) * scale``, no mean, no shift.

    Cheaper than LayerNorm and as good in practice, which is why Llama uses it. The statistic is
    taken in float32 whatever the input's dtype, as Llama's reference code does.
    """

    def __init__(self, emb_dim: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.scale = nn.Parameter(torch.ones(emb_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        normed = F.rms_norm(x.float(), (x.shape[-1],), eps=self.eps).to(x.dtype)
        return normed * self.scale


class GELU(nn.Module):
    """GELU in the tanh approximation that GPT-2 was trained with (the book's formula,
    ``0.5 * x * (1 + tanh(sqrt(2 / pi) * (x + 0.044715 * x^3)))``, as PyTorch's fused kernel)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.gelu(x, approximate="tanh")


class FeedForward(nn.Module):
    """Position-wise MLP: expand to ``hidden_dim`` (4x the embedding size), GELU, project back."""

    def __init__(self, emb_dim: int, bias: bool = True, hidden_dim: int | None = None) -> None:
        super().__init__()
        hidden_dim = hidden_dim or 4 * emb_dim
        self.layers = nn.Sequential(
            nn.Linear(emb_dim, hidden_dim, bias=bias),
            GELU(),
            nn.Linear(hidden_dim, emb_dim, bias=bias),
        )

    @property
    def output_projection(self) -> nn.Linear:
        """The layer that writes back into the residual stream."""
        return self.layers[2]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class SwiGLUFeedForward(nn.Module):
    """Llama's gated MLP: ``fc3(silu(fc1(x)) * fc2(x))``, named as in the book's Llama chapters.

    ``fc1`` is the gate, ``fc2`` the value it gates, ``fc3`` the projection back. Three matrices
    instead of two, so a ``hidden_dim`` of about 8/3 of the embedding matches GELU's 4x in size.
    """

    def __init__(self, emb_dim: int, hidden_dim: int, bias: bool = False) -> None:
        super().__init__()
        self.fc1 = nn.Linear(emb_dim, hidden_dim, bias=bias)
        self.fc2 = nn.Linear(emb_dim, hidden_dim, bias=bias)
        self.fc3 = nn.Linear(hidden_dim, emb_dim, bias=bias)

    @property
    def output_projection(self) -> nn.Linear:
        """The layer that writes back into the residual stream."""
        return self.fc3

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc3(F.silu(self.fc1(x)) * self.fc2(x))


def make_norm(cfg: GPTConfig, dim: int | None = None) -> LayerNorm | RMSNorm:
    """The config's normalisation over ``dim`` features (default: the embedding)."""
    norm = RMSNorm if cfg.norm == "rmsnorm" else LayerNorm
    return norm(dim or cfg.emb_dim, eps=cfg.norm_eps)


def make_feed_forward(cfg: GPTConfig) -> FeedForward | SwiGLUFeedForward:
    """The config's feed-forward layer."""
    if cfg.mlp == "swiglu":
        return SwiGLUFeedForward(cfg.emb_dim, cfg.ff_hidden_dim, bias=cfg.mlp_bias)
    return FeedForward(cfg.emb_dim, bias=cfg.mlp_bias, hidden_dim=cfg.ff_hidden_dim)
