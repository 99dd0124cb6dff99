"""Causal multi-head self-attention (book chapter 3), with a KV cache for fast decoding.

Two interchangeable backends compute the same function:

* ``manual``: the book's explicit ``softmax(QK^T / sqrt(d)) V`` with a causal mask and dropout
  on the attention weights; easy to read and to instrument.
* ``sdpa``: ``torch.nn.functional.scaled_dot_product_attention``, which dispatches to fused
  (flash / memory-efficient) kernels where the hardware has them.

A ``Trace`` handed to ``forward`` takes the explicit path whatever the backend, and records the
weights it used (``gptlab.model.trace``).

The Llama-style options are constructor arguments: ``num_kv_heads`` below ``num_heads`` shares
each key/value head among a group of query heads (grouped-query attention: a smaller KV cache,
which stores only the key/value heads), ``qk_norm`` normalises queries and keys per head, and
rotary position embeddings arrive in ``forward`` as the ``rope`` pair of cosines and sines.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from gptlab.model.layers import RMSNorm
from gptlab.model.rope import apply_rope
from gptlab.model.trace import Trace


class LayerKVCache:
    """Keys and values of one attention layer, preallocated to the longest sequence to decode."""

    def __init__(self, batch_size: int, kv_heads: int, max_len: int, head_dim: int,
                 device: torch.device, dtype: torch.dtype) -> None:
        shape = (batch_size, kv_heads, max_len, head_dim)
        self.keys = torch.zeros(shape, device=device, dtype=dtype)
        self.values = torch.zeros(shape, device=device, dtype=dtype)

    @classmethod
    def of(cls, keys: torch.Tensor, values: torch.Tensor) -> LayerKVCache:
        """A cache over existing tensors (e.g. some rows of a larger cache): writes go into them."""
        cache = cls.__new__(cls)
        cache.keys, cache.values = keys, values
        return cache

    def update(self, start: int, keys: torch.Tensor, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store the new positions ``[start, start + T)`` and return everything cached so far."""
        end = start + keys.shape[2]
        self.keys[:, :, start:end] = keys
        self.values[:, :, start:end] = values
        return self.keys[:, :, :end], self.values[:, :, :end]


class KVCache:
    """Per-layer key/value caches plus the number of positions already processed.

    ``GPT.forward`` reads ``length`` to place new tokens and advances it after every call. Only the
    key/value heads are stored (``kv_heads``: fewer than the query heads under grouped-query attention).
    """

    def __init__(self, n_layers: int, batch_size: int, kv_heads: int, max_len: int, head_dim: int,
                 device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> None:
        self.max_len = max_len
        self.length = 0
        self.layers = [
            LayerKVCache(batch_size, kv_heads, max_len, head_dim, torch.device(device), dtype)
            for _ in range(n_layers)
        ]

    def rows(self, start: int, stop: int) -> KVCache:
        """Rows ``start:stop`` of this cache as a cache of their own, empty (``length`` 0) and
        sharing memory: a prompt read into it is read into those rows (continuous batching)."""
        view = KVCache.__new__(KVCache)
        view.max_len, view.length = self.max_len, 0
        view.layers = [LayerKVCache.of(layer.keys[start:stop], layer.values[start:stop]) for layer in self.layers]
        return view


Rope = tuple[torch.Tensor, torch.Tensor]


def kv_head_of(query_head: int, n_heads: int, n_kv_heads: int) -> int:
    """The key/value head that query head ``query_head`` reads: consecutive query heads share one
    (the order ``MultiHeadAttention._repeat_kv`` expands them in)."""
    return query_head // (n_heads // n_kv_heads)


class MultiHeadAttention(nn.Module):
    """Causal self-attention over ``num_heads`` heads of size ``head_dim`` (``d_out // num_heads``).

    ``attn_mask``, when given, is a boolean tensor broadcastable to ``(B, heads, T, S)`` whose
    ``True`` entries may be attended to (it already contains the causal part). Without it the
    pattern is plain causal, offset by the number of cached positions. ``context_length`` is kept
    for the book's signature; the causal mask is built per call (``future_mask``), not stored.
    """

    def __init__(self, d_in: int, d_out: int, context_length: int, dropout: float, num_heads: int,
                 qkv_bias: bool = False, backend: str = "sdpa", num_kv_heads: int | None = None,
                 head_dim: int | None = None, out_bias: bool = True, qk_norm: bool = False,
                 norm_eps: float = 1e-6) -> None:
        super().__init__()
        assert head_dim is not None or d_out % num_heads == 0, "d_out must be divisible by num_heads"
        self.num_heads = num_heads
        self.num_kv_heads = num_kv_heads or num_heads
        assert num_heads % self.num_kv_heads == 0, "num_kv_heads must divide num_heads"
        self.head_dim = head_dim or d_out // num_heads
        self.d_out = num_heads * self.head_dim  # the width of the concatenated heads
        self.backend = backend
        self.W_query = nn.Linear(d_in, self.d_out, bias=qkv_bias)
        self.W_key = nn.Linear(d_in, self.num_kv_heads * self.head_dim, bias=qkv_bias)
        self.W_value = nn.Linear(d_in, self.num_kv_heads * self.head_dim, bias=qkv_bias)
        self.out_proj = nn.Linear(self.d_out, d_out, bias=out_bias)
        self.dropout = nn.Dropout(dropout)
        self.q_norm = RMSNorm(self.head_dim, norm_eps) if qk_norm else None
        self.k_norm = RMSNorm(self.head_dim, norm_eps) if qk_norm else None
    @staticmethod
    def _split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
        b, t, _ = x.shape
        return x.view(b, t, heads, -1).transpose(1, 2)

    def project(self, x: torch.Tensor, rope: Rope | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Queries ``(B, heads, T, head_dim)`` and keys and values ``(B, kv_heads, T, head_dim)``,
        normalised and rotated as configured: what a KV cache stores."""
        queries = self._split_heads(self.W_query(x), self.num_heads)
        keys = self._split_heads(self.W_key(x), self.num_kv_heads)
        values = self._split_heads(self.W_value(x), self.num_kv_heads)
        if self.q_norm is not None and self.k_norm is not None:
            queries, keys = self.q_norm(queries), self.k_norm(keys)
        if rope is not None:
            queries, keys = apply_rope(queries, *rope), apply_rope(keys, *rope)
        return queries, keys, values

    def merge_heads(self, context: torch.Tensor) -> torch.Tensor:
        """``(B, heads, T, head_dim)`` back to ``(B, T, d_out)``, through the output projection."""
        b, _, num_tokens, _ = context.shape
        return self.out_proj(context.transpose(1, 2).reshape(b, num_tokens, self.d_out))

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None,
                cache: LayerKVCache | None = None, cache_start: int = 0, rope: Rope | None = None,
                trace: Trace | None = None) -> torch.Tensor:
        """``trace``, when given, receives this layer's attention weights, and the explicit path
        computes the output from exactly those weights (``gptlab.model.trace``)."""
        queries, keys, values = self.project(x, rope)
        if cache is not None:
            keys, values = cache.update(cache_start, keys, values)

        if self.backend == "manual" or trace is not None:
            attn_weights = self.attention_weights(queries, keys, attn_mask)
            if trace is not None:
                trace.attention.append(attn_weights)
            context = self.dropout(attn_weights) @ self._repeat_kv(values)
        else:
            context = self._sdpa_attention(queries, keys, values, attn_mask, cached=cache is not None)
        return self.merge_heads(context)

    def static_step(self, x: torch.Tensor, rope: Rope | None, slot: torch.Tensor, visible: torch.Tensor,
                    keys: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        """One new token per row against a preallocated cache whose shapes never change.

        Its key and value are written at cache position ``slot`` of ``keys`` / ``values``
        ``(B, kv_heads, S, head_dim)``: one position for every row (a 1-element tensor), or each
        row's own (``(B,)``, rows whose sequences have different lengths). It attends wherever
        ``visible`` ``(B, S)`` is true: the same function as ``forward`` with a cache, but one
        ``torch.compile`` graph for every step of a decode.
        """
        q, k, v = self.project(x, rope)
        if slot.numel() == 1:
            keys.index_copy_(2, slot, k)
            values.index_copy_(2, slot, v)
        else:
            rows = torch.arange(keys.shape[0], device=keys.device)
            keys[rows, :, slot] = k[:, :, 0]
            values[rows, :, slot] = v[:, :, 0]
        context = F.scaled_dot_product_attention(q, keys, values, attn_mask=visible[:, None, None, :],
                                                 enable_gqa=self.grouped)
        return self.merge_heads(context)

    @staticmethod
    def future_mask(num_queries: int, num_keys: int, device: torch.device) -> torch.Tensor:
        """True where a query must not look: keys after its own position (book section 3.5).

        The queries are the last ``num_queries`` of ``num_keys`` positions (the rest are cached).
        Built per call rather than stored, so a long context costs no ``context x context`` buffer.
        """
        offset = num_keys - num_queries
        return torch.ones(num_queries, num_keys, dtype=torch.bool, device=device).triu(offset + 1)

    @property
    def grouped(self) -> bool:
        """Whether key/value heads are shared by groups of query heads (grouped-query attention)."""
        return self.num_kv_heads != self.num_heads

    def _repeat_kv(self, x: torch.Tensor) -> torch.Tensor:
        """Key/value heads repeated so each query head has its own copy (grouped-query attention)."""
        groups = self.num_heads // self.num_kv_heads
        return x if groups == 1 else x.repeat_interleave(groups, dim=1)

    def attention_weights(self, queries: torch.Tensor, keys: torch.Tensor,
                          attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        """The book's ``softmax(QK^T / sqrt(head_dim))`` under the causal (or given) mask, before dropout.

        ``(B, heads, T, S)``: one row per query and query head, summing to 1. The ``manual``
        backend and a ``Trace`` both use it; SDPA computes the same function without keeping it.
        """
        num_queries, num_keys = queries.shape[2], keys.shape[2]
        attn_scores = queries @ self._repeat_kv(keys).transpose(2, 3)
        if attn_mask is None:
            # Query i sits at absolute position (num_keys - num_queries + i).
            attn_scores = attn_scores.masked_fill(self.future_mask(num_queries, num_keys, queries.device), -torch.inf)
        else:
            attn_scores = attn_scores.masked_fill(~attn_mask, -torch.inf)
        return torch.softmax(attn_scores / math.sqrt(self.head_dim), dim=-1)

    def _sdpa_attention(self, queries: torch.Tensor, keys: torch.Tensor, values: torch.Tensor,
                        attn_mask: torch.Tensor | None, cached: bool = False) -> torch.Tensor:
        dropout_p = self.dropout.p if self.training else 0.0
        is_causal = False
        if attn_mask is None and not cached:
            # Training and a whole prompt: plain causal. Decided without comparing sizes, so
            # torch.compile traces batches of any length into one graph.
            is_causal = True
        elif attn_mask is None and queries.shape[2] > 1:
            # A chunk appended to a cache: causal, but offset by the cached length. (One new
            # token attends to every cached position: no mask needed at all.)
            attn_mask = ~self.future_mask(queries.shape[2], keys.shape[2], queries.device)
        return F.scaled_dot_product_attention(
            queries, keys, values, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal,
            enable_gqa=self.grouped,
        )
