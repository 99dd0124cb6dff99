"""Rotary position embeddings, RoPE (Su et al., 2021), as Llama uses them.

Instead of adding a learned position vector to each token, RoPE rotates every query and key by an
angle proportional to its position, pair of dimensions by pair of dimensions, each pair at its own
frequency ``base ** (-2i / head_dim)``. The dot product of a rotated query and key then depends
only on how far apart they are. The pairs are ``(i, i + head_dim / 2)`` (the "rotate half"
layout of Llama's released checkpoints), so Hugging Face weights load without permutation.

Llama 3 stretches the low frequencies for long contexts (``rope_scaling``): wavelengths longer
than the original context are slowed down by ``factor``, short ones kept, and those in between
blended smoothly.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
from torch import nn


def inverse_frequencies(head_dim: int, base: float, scaling: Mapping[str, float] | None = None) -> torch.Tensor:
    """The ``head_dim / 2`` rotation frequencies (radians per position), float32."""
    freqs = 1.0 / base ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)
    if scaling is not None:
        freqs = _llama3_scaled(freqs, **scaling)
    return freqs.float()


def _llama3_scaled(freqs: torch.Tensor, factor: float, low_freq_factor: float, high_freq_factor: float,
                   original_context_length: float) -> torch.Tensor:
    wavelengths = 2 * math.pi / freqs
    long_wavelength = original_context_length / low_freq_factor  # beyond it: divide by factor
    short_wavelength = original_context_length / high_freq_factor  # below it: keep
    scaled = torch.where(wavelengths > long_wavelength, freqs / factor, freqs)
    # In between: interpolate between the slowed-down and the original frequency.
    blend = (original_context_length / wavelengths - low_freq_factor) / (high_freq_factor - low_freq_factor)
    smoothed = (1 - blend) * freqs / factor + blend * freqs
    in_between = (wavelengths >= short_wavelength) & (wavelengths <= long_wavelength)
    return torch.where(in_between, smoothed, scaled)


class RotaryEmbedding(nn.Module):
    """Cosines and sines of every position's angles, precomputed up to ``context_length``.

    ``forward(position_ids)`` returns the ``(cos, sin)`` pair to hand to ``apply_rope``, shaped to
    broadcast over ``(batch, heads, tokens, head_dim)``. The tables are buffers that are not saved:
    they follow the config, not the checkpoint.
    """

    def __init__(self, head_dim: int, context_length: int, base: float = 10000.0,
                 scaling: Mapping[str, float] | None = None) -> None:
        super().__init__()
        freqs = inverse_frequencies(head_dim, base, scaling)
        angles = torch.outer(torch.arange(context_length, dtype=torch.float32), freqs)
        angles = torch.cat([angles, angles], dim=-1)  # (positions, head_dim): each pair's angle twice
        self.register_buffer("cos", angles.cos(), persistent=False)
        self.register_buffer("sin", angles.sin(), persistent=False)

    def forward(self, position_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        cos, sin = self.cos[position_ids], self.sin[position_ids]
        if position_ids.dim() == 1:  # the same positions for every row
            return cos[None, None], sin[None, None]
        return cos[:, None], sin[:, None]  # per row (left-padded batches)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate ``x`` (``(batch, heads, tokens, head_dim)``): each pair ``(a, b)`` becomes
    ``(a cos - b sin, b cos + a sin)``."""
    first, second = x.chunk(2, dim=-1)
    rotated_half = torch.cat((-second, first), dim=-1)
    return (x * cos + rotated_half * sin).to(x.dtype)
