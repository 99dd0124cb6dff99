"""The GPT model (book chapter 4): embeddings, a stack of transformer blocks, an output head."""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from gptlab.errors import ConfigError
from gptlab.model.attention import KVCache, LayerKVCache, MultiHeadAttention, Rope
from gptlab.model.config import GPTConfig
from gptlab.model.layers import make_feed_forward, make_norm
from gptlab.model.rope import RotaryEmbedding
from gptlab.model.trace import Trace


class TransformerBlock(nn.Module):
    """Pre-norm block: attention and feed-forward, each wrapped in a shortcut connection.

    The same block is GPT-2's or Llama's depending on the config: which norm, which feed-forward,
    how many key/value heads, and whether queries and keys are rotated (``rope``).
    """

    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.att = MultiHeadAttention(
            d_in=cfg.emb_dim,
            d_out=cfg.emb_dim,
            context_length=cfg.context_length,
            num_heads=cfg.n_heads,
            dropout=cfg.drop_rate,
            qkv_bias=cfg.qkv_bias,
            backend=cfg.attention,
            num_kv_heads=cfg.kv_heads,
            head_dim=cfg.head_dim,
            out_bias=cfg.out_bias,
            qk_norm=cfg.qk_norm,
            norm_eps=cfg.norm_eps,
        )
        self.ff = make_feed_forward(cfg)
        self.norm1 = make_norm(cfg)
        self.norm2 = make_norm(cfg)
        self.drop_shortcut = nn.Dropout(cfg.drop_rate)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None,
                cache: LayerKVCache | None = None, cache_start: int = 0, rope: Rope | None = None,
                trace: Trace | None = None) -> torch.Tensor:
        shortcut = x
        x = self.att(self.norm1(x), attn_mask, cache, cache_start, rope, trace)
        x = self.drop_shortcut(x) + shortcut

        shortcut = x
        x = self.ff(self.norm2(x))
        return self.drop_shortcut(x) + shortcut

    def static_step(self, x: torch.Tensor, rope: Rope | None, slot: torch.Tensor, visible: torch.Tensor,
                    keys: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        """``forward`` for one new token in eval mode, over a static cache (``MultiHeadAttention.static_step``)."""
        x = x + self.att.static_step(self.norm1(x), rope, slot, visible, keys, values)
        return x + self.ff(self.norm2(x))


class GPT(nn.Module):
    """A GPT-2 style decoder-only transformer; ``model(idx)`` returns next-token logits.

    Submodule names follow the book (``tok_emb``, ``pos_emb``, ``trf_blocks``, ``final_norm``,
    ``out_head``), so the book's state dicts load without renaming. With ``pos_emb=rope`` there is
    no position table: ``rope`` holds the rotation tables every attention layer applies.

    ``activation_checkpointing`` trades compute for memory in training: each block's activations
    are recomputed in the backward pass instead of stored, about one more forward pass for memory
    that no longer grows with depth. A runtime switch, not part of the config: the weights and what
    the model computes are the same either way.
    """

    def __init__(self, cfg: GPTConfig, activation_checkpointing: bool = False) -> None:
        super().__init__()
        self.cfg = cfg
        self.activation_checkpointing = activation_checkpointing
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.emb_dim)
        self.pos_emb = nn.Embedding(cfg.context_length, cfg.emb_dim) if cfg.pos_emb == "learned" else None
        self.rope = (RotaryEmbedding(cfg.head_dim, cfg.context_length, cfg.rope_base, cfg.rope_scaling)
                     if cfg.pos_emb == "rope" else None)
        self.drop_emb = nn.Dropout(cfg.drop_rate)
        self.trf_blocks = nn.ModuleList([TransformerBlock(cfg) for _ in range(cfg.n_layers)])
        self.final_norm = make_norm(cfg)
        self.out_head = nn.Linear(cfg.emb_dim, cfg.vocab_size, bias=False)
        if cfg.weight_init == "gpt2":
            self._init_weights()
        if cfg.tie_embeddings:
            self.out_head.weight = self.tok_emb.weight

    def _init_weights(self) -> None:
        """GPT-2's initialisation: N(0, 0.02) weights and zero biases, except the two projections
        that write into the residual stream (attention's ``out_proj``, the MLP's second linear),
        whose std is 0.02 / sqrt(2 * n_layers) so the stream's variance does not grow with depth.
        """
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if isinstance(module, nn.Linear) and module.bias is not None:
                nn.init.zeros_(module.bias)
        residual_std = 0.02 / math.sqrt(2 * self.cfg.n_layers)
        for block in self.trf_blocks:
            for projection in (block.att.out_proj, block.ff.output_projection):
                nn.init.normal_(projection.weight, mean=0.0, std=residual_std)

    def forward(self, in_idx: torch.Tensor, attention_mask: torch.Tensor | None = None,
                position_ids: torch.Tensor | None = None, kv_cache: KVCache | None = None,
                causal: bool = True, trace: Trace | None = None) -> torch.Tensor:
        """Logits of shape ``(batch, num_tokens, vocab_size)``.

        Args:
            in_idx: token ids, ``(batch, num_tokens)``.
            attention_mask: optional ``(batch, past + num_tokens)`` tensor, 1 for real tokens and 0
                for padding (left padding in batched generation).
            position_ids: optional positions of ``in_idx``; default ``past .. past + num_tokens``.
            kv_cache: optional cache; the new keys/values are appended and its length advanced.
            causal: ``False`` lets every token attend to every (non-padding) token, the chapter 6
                experiment without the causal mask.
            trace: optional ``Trace`` to fill with the embeddings and each layer's attention weights
                and residual stream; attention then runs on its explicit path (``gptlab.model.trace``).
        """
        batch_size, num_tokens = in_idx.shape
        past = kv_cache.length if kv_cache is not None else 0
        if past + num_tokens > self.cfg.context_length:
            raise ConfigError(
                f"sequence of {past + num_tokens} tokens exceeds the model's context_length "
                f"{self.cfg.context_length}; shorten the input or crop it to the last tokens"
            )
        if position_ids is None:
            position_ids = torch.arange(past, past + num_tokens, device=in_idx.device)
        x = self.embed(in_idx, position_ids)
        rope = self.rope(position_ids) if self.rope is not None else None

        attn_mask = None
        if attention_mask is None and not causal:
            attention_mask = torch.ones(batch_size, past + num_tokens, dtype=torch.bool, device=in_idx.device)
        if attention_mask is not None:
            attn_mask = self.padding_aware_causal_mask(attention_mask, num_tokens, causal)
        # Recompute only where activations are kept for a backward pass; a cache means inference.
        recompute = (self.activation_checkpointing and self.training and torch.is_grad_enabled()
                     and kv_cache is None and trace is None)
        if trace is not None:
            trace.embeddings = x
        for layer, block in enumerate(self.trf_blocks):
            if recompute:
                x = checkpoint(block, x, attn_mask, None, past, rope, use_reentrant=False)
            else:
                cache = kv_cache.layers[layer] if kv_cache is not None else None
                x = block(x, attn_mask, cache, past, rope, trace)
            if trace is not None:
                trace.residuals.append(x)
        if kv_cache is not None:
            kv_cache.length = past + num_tokens

        x = self.final_norm(x)
        return self.out_head(x)

    def static_decode_step(self, token: torch.Tensor, position_ids: torch.Tensor, slot: torch.Tensor,
                           visible: torch.Tensor, keys: list[torch.Tensor], values: list[torch.Tensor]) -> torch.Tensor:
        """Next-token logits ``(B, vocab)`` of one new token per row, with shapes that never change.

        ``keys[i]`` / ``values[i]`` are layer ``i``'s preallocated cache ``(B, kv_heads, S, head_dim)``;
        the token is written at position ``slot`` (shared, or ``(B,)``: one per row) and attends
        wherever ``visible`` ``(B, S)`` is true.
        This is ``forward`` for one token (in eval mode) with the cache's length fixed at ``S``, so
        ``torch.compile`` builds one graph for every step of a decode.
        """
        x = self.embed(token, position_ids)
        rope = self.rope(position_ids) if self.rope is not None else None
        for block, layer_keys, layer_values in zip(self.trf_blocks, keys, values):
            x = block.static_step(x, rope, slot, visible, layer_keys, layer_values)
        return self.out_head(self.final_norm(x))[:, -1]

    def embed(self, in_idx: torch.Tensor, position_ids: torch.Tensor) -> torch.Tensor:
        """Token embeddings, plus learned position embeddings unless positions are rotary."""
        x = self.tok_emb(in_idx)
        if self.pos_emb is not None:
            x = x + self.pos_emb(position_ids)
        return self.drop_emb(x)

    @staticmethod
    def padding_aware_causal_mask(attention_mask: torch.Tensor, num_queries: int, causal: bool = True) -> torch.Tensor:
        """Boolean ``(B, 1, T, S)`` mask: causal (unless ``causal=False``), padding keys hidden, each token sees itself.

        Letting a padding position attend to itself keeps its softmax finite; its output is
        never used.
        """
        num_keys = attention_mask.shape[1]
        offset = num_keys - num_queries
        query_pos = torch.arange(offset, num_keys, device=attention_mask.device)[:, None]
        key_pos = torch.arange(num_keys, device=attention_mask.device)[None, :]
        if causal:
            allowed = key_pos <= query_pos
        else:
            allowed = torch.ones(num_queries, num_keys, dtype=torch.bool, device=attention_mask.device)
        visible = attention_mask.bool()[:, None, None, :]
        return (allowed & visible) | (key_pos == query_pos)

    def new_kv_cache(self, batch_size: int, max_len: int | None = None) -> KVCache:
        """An empty cache on the model's device and dtype, for up to ``max_len`` positions."""
        param = self.tok_emb.weight
        return KVCache(
            n_layers=self.cfg.n_layers,
            batch_size=batch_size,
            kv_heads=self.cfg.kv_heads,
            max_len=max_len or self.cfg.context_length,
            head_dim=self.cfg.head_dim,
            device=param.device,
            dtype=param.dtype,
        )
