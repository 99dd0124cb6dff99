"""Model FLOPs per token (the PaLM / nanoGPT count), for throughput and MFU.

Training one token costs 6 FLOPs per weight of every matrix multiply (2 forward, 4 backward)
plus attention's two ``T x T`` products per layer, ``12 * n_layers * T * n_heads * head_dim``
(``emb_dim`` for GPT-2's heads). Embedding
lookups, norms and activations are not counted, as is customary. The weights are read off the
model itself, so every architecture variant (another MLP, grouped-query attention, adapters) is
counted as built.
"""

from __future__ import annotations

from torch import nn


def matmul_params(model: nn.Module) -> int:
    """Weights that take part in a matrix multiply: every ``nn.Linear`` weight, once each."""
    seen: set[int] = set()
    total = 0
    for module in model.modules():
        if isinstance(module, nn.Linear) and id(module.weight) not in seen:
            seen.add(id(module.weight))
            total += module.weight.numel()
    return total


def flops_per_token(model: nn.Module, seq_len: int, training: bool = True) -> int:
    """FLOPs to process one token of a ``seq_len``-token sequence (forward only if not ``training``).

    Attention is counted over the full ``T x T`` score matrix, as the usual formula does, though a
    causal kernel may skip the masked half.
    """
    cfg = model.cfg
    forward = 2 * matmul_params(model) + 4 * cfg.n_layers * seq_len * cfg.n_heads * cfg.head_dim
    return 3 * forward if training else forward
