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


def flops_per_token(model: nn.Module, seq_len: int, training: bool = True) -> int:
    """FLOPs to process one token of a ``seq_len``-token sequence (forward only if not ``training``).

    Attention is counted over the full ``T x T`` score matrix, as the usual formula does, though a
    causal kernel may skip the masked half. With every weight trained this is the usual
    ``3 * forward``. Frozen layers cost less, as autograd runs them: a frozen weight needs no weight
    gradient, and a layer before the first trained one needs no backward pass at all (the book's
    ``trainable_layers=last_block`` trains one block's worth of backward, LoRA all of the input
    gradients but none of the frozen weights'). Counted per block; LoRA's own small products are
    left out.
    """
    cfg = model.cfg
    attention = 4 * seq_len * cfg.n_heads * cfg.head_dim  # QK^T and PV of one layer, forward
    seen: set[int] = set()
    forward = backward = 0
    upstream_trains = _trains(model.tok_emb)  # a gradient flows back into the stage's input
    for stage in [*model.trf_blocks, model.out_head]:
        weights = [w for w in _linear_weights(stage) if id(w) not in seen]
        seen.update(id(w) for w in weights)
        is_block = stage is not model.out_head
        stage_forward = 2 * sum(w.numel() for w in weights) + (attention if is_block else 0)
        forward += stage_forward
        if upstream_trains or (is_block and _trains(stage)):  # gradients w.r.t. activations
            backward += stage_forward + (attention if is_block else 0)
        backward += 2 * sum(w.numel() for w in weights if w.requires_grad)  # gradients w.r.t. weights
        upstream_trains = upstream_trains or _trains(stage)
    return forward + backward if training else forward


def _linear_weights(module: nn.Module) -> list[nn.Parameter]:
    return [m.weight for m in module.modules() if isinstance(m, nn.Linear)]


def _trains(module: nn.Module) -> bool:
    return any(p.requires_grad for p in module.parameters())
