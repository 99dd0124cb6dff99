"""``Trace``: what one forward pass computed on the way to its logits, for looking inside the model.

Pass one to the model and read it afterwards::

    trace = Trace()
    logits = model(idx, trace=trace)
    trace.attention[layer]   # (batch, n_heads, tokens, keys): each query head's softmax weights
    trace.residuals[layer]   # (batch, tokens, emb_dim): the residual stream after block ``layer``

Why an argument and not forward hooks: the default attention (SDPA's fused kernel) never
materialises its weights, so a hook could only recompute them beside the pass, and nothing would
show they are the ones the model used. With a trace, every attention layer takes its explicit path
(``MultiHeadAttention.attention_weights``, the same function as the ``manual`` backend) and uses
the weights it records, so the traced logits are the model's logits computed from them. A trace
also belongs to one call, not to the modules, so concurrent calls (a server decoding while a page
is inspected) never see each other's values. Without one, ``forward`` runs exactly as before.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class Trace:
    """The intermediate values of one forward pass, filled in by ``GPT.forward(..., trace=...)``.

    Under grouped-query attention the weights are still one row per query head; query head ``h``
    reads key/value head ``gptlab.model.attention.kv_head_of(h, n_heads, n_kv_heads)``.
    """

    #: The embeddings the first block reads, ``(batch, tokens, emb_dim)``.
    embeddings: torch.Tensor | None = None
    #: Per layer: the attention weights, ``(batch, n_heads, tokens, keys)``; each row sums to 1.
    attention: list[torch.Tensor] = field(default_factory=list)
    #: Per layer: the residual stream after that block, ``(batch, tokens, emb_dim)``.
    residuals: list[torch.Tensor] = field(default_factory=list)

