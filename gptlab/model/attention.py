"""Causal multi-head self-attention (book chapter 3), with a KV cache for fast decoding.

Two interchangeable backends compute the same function:

* ``manual``: the book's explicit ``softmax(QK^T / sqrt(d)) V`` with a causal mask and dropout
  on the attention weights; easy to read and to instrument.
* ``sdpa``: ``torch.nn.functional.scaled_dot_product_attention``, which dispatches to fused
  (flash / memory-efficient) kernels where the hardware has them.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F


class LayerKVCache:
    """Keys and values of one attention layer, preallocated to the longest sequence to decode."""

    def __init__(self, batch_size: int, n_heads: int, max_len: int, head_dim: int,
                 device: torch.device, dtype: torch.dtype) -> None:
        shape = (batch_size, n_heads, max_len, head_dim)
        self.keys = torch.zeros(shape, device=device, dtype=dtype)
        self.values = torch.zeros(shape, device=device, dtype=dtype)

    def update(self, start: int, keys: torch.Tensor, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store the new positions ``[start, start + T)`` and return everything cached so far."""
        end = start + keys.shape[2]
        self.keys[:, :, start:end] = keys
        self.values[:, :, start:end] = values
        return self.keys[:, :, :end], self.values[:, :, :end]


class KVCache:
    """Per-layer key/value caches plus the number of positions already processed.

    ``GPT.forward`` reads ``length`` to place new tokens and advances it after every call.
    """

    def __init__(self, n_layers: int, batch_size: int, n_heads: int, max_len: int, head_dim: int,
                 device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> None:
        self.max_len = max_len
        self.length = 0
        self.layers = [
            LayerKVCache(batch_size, n_heads, max_len, head_dim, torch.device(device), dtype)
            for _ in range(n_layers)
        ]


class MultiHeadAttention(nn.Module):
    """Causal self-attention over ``num_heads`` heads of size ``d_out // num_heads``.

    ``attn_mask``, when given, is a boolean tensor broadcastable to ``(B, heads, T, S)`` whose
    ``True`` entries may be attended to (it already contains the causal part). Without it the
    pattern is plain causal, offset by the number of cached positions.
    """

    def __init__(self, d_in: int, d_out: int, context_length: int, dropout: float, num_heads: int,
                 qkv_bias: bool = False, backend: str = "sdpa") -> None:
        super().__init__()
        assert d_out % num_heads == 0, "d_out must be divisible by num_heads"
        self.d_out = d_out
        self.num_heads = num_heads
        self.head_dim = d_out // num_heads
        self.backend = backend
        self.W_query = nn.Linear(d_in, d_out, bias=qkv_bias)
        self.W_key = nn.Linear(d_in, d_out, bias=qkv_bias)
        self.W_value = nn.Linear(d_in, d_out, bias=qkv_bias)
        self.out_proj = nn.Linear(d_out, d_out)
        self.dropout = nn.Dropout(dropout)
        # True above the diagonal: the future positions a token must not see (book section 3.5).
        self.register_buffer(
            "mask", torch.triu(torch.ones(context_length, context_length, dtype=torch.bool), diagonal=1),
            persistent=False,
        )

    def _split_heads(self, x: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        return x.view(b, t, self.num_heads, self.head_dim).transpose(1, 2)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None,
                cache: LayerKVCache | None = None, cache_start: int = 0) -> torch.Tensor:
        b, num_tokens, _ = x.shape
        queries = self._split_heads(self.W_query(x))
        keys = self._split_heads(self.W_key(x))
        values = self._split_heads(self.W_value(x))
        if cache is not None:
            keys, values = cache.update(cache_start, keys, values)

        if self.backend == "manual":
            context = self._manual_attention(queries, keys, values, attn_mask)
        else:
            context = self._sdpa_attention(queries, keys, values, attn_mask)
        context = context.transpose(1, 2).contiguous().view(b, num_tokens, self.d_out)
        return self.out_proj(context)

    def _manual_attention(self, queries: torch.Tensor, keys: torch.Tensor, values: torch.Tensor,
                          attn_mask: torch.Tensor | None) -> torch.Tensor:
        num_queries, num_keys = queries.shape[2], keys.shape[2]
        attn_scores = queries @ keys.transpose(2, 3)
        if attn_mask is None:
            # Query i sits at absolute position (num_keys - num_queries + i).
            offset = num_keys - num_queries
            future = self.mask[offset:offset + num_queries, :num_keys]
            attn_scores = attn_scores.masked_fill(future, -torch.inf)
        else:
            attn_scores = attn_scores.masked_fill(~attn_mask, -torch.inf)
        attn_weights = torch.softmax(attn_scores / math.sqrt(self.head_dim), dim=-1)
        attn_weights = self.dropout(attn_weights)
        return attn_weights @ values

    def _sdpa_attention(self, queries: torch.Tensor, keys: torch.Tensor, values: torch.Tensor,
                        attn_mask: torch.Tensor | None) -> torch.Tensor:
        dropout_p = self.dropout.p if self.training else 0.0
        num_queries, num_keys = queries.shape[2], keys.shape[2]
        if attn_mask is None and num_queries != num_keys and num_queries > 1:
            # A chunk appended to a cache: causal, but offset by the cached length.
            offset = num_keys - num_queries
            attn_mask = ~self.mask[offset:offset + num_queries, :num_keys]
        # One new token attends to every cached position: no mask needed at all.
        is_causal = attn_mask is None and num_queries == num_keys and num_queries > 1
        return F.scaled_dot_product_attention(
            queries, keys, values, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal
        )
