"""Text generation (book sections 4.7 and 5.3): greedy, temperature, top-k and top-p sampling.

Decoding uses the model's KV cache by default: the prompt is processed once, then each step feeds
only the newest token. ``use_cache=False`` recomputes the whole window every step, as the book
does; both give the same greedy output.

``compile=True`` decodes with a static cache instead: each one-token step attends over the whole
preallocated cache (positions not yet written are masked out), so every step has the same shapes
and ``torch.compile`` builds one graph for all of them, with GELU, LayerNorm and the residual
additions fused. The prompt itself still runs eagerly.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator, Sequence

import torch

from gptlab.model.attention import KVCache
from gptlab.model.gpt import GPT
from gptlab.model.modes import eval_mode

#: Static caches are sized to a multiple of this, so calls of similar lengths share a compiled graph.
STATIC_CACHE_MULTIPLE = 64


def sample_next_token(logits: torch.Tensor, temperature: float = 0.0, top_k: int | None = None,
                      top_p: float | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
    """Pick one id per row of ``logits`` (``(batch, vocab)``); ``temperature=0`` is greedy."""
    if temperature <= 0.0:
        return logits.argmax(dim=-1, keepdim=True)
    logits = logits / temperature
    if top_k is not None and top_k > 0:
        kth_largest = torch.topk(logits, min(top_k, logits.shape[-1])).values[:, -1:]
        logits = logits.masked_fill(logits < kth_largest, -torch.inf)
    if top_p is not None and 0.0 < top_p < 1.0:
        sorted_logits, sorted_idx = torch.sort(logits, descending=True)
        cumulative = torch.softmax(sorted_logits, dim=-1).cumsum(dim=-1)
        # Drop a token when the tokens ranked above it already cover top_p of the mass.
        drop_sorted = (cumulative - torch.softmax(sorted_logits, dim=-1)) >= top_p
        drop = drop_sorted.scatter(-1, sorted_idx, drop_sorted)
        logits = logits.masked_fill(drop, -torch.inf)
    probs = torch.softmax(logits, dim=-1)
    return torch.multinomial(probs, num_samples=1, generator=generator)


@functools.cache
def compiled_decode_step() -> Callable[..., torch.Tensor]:
    """``GPT.static_decode_step`` under ``torch.compile``, built once per process (graphs per shape).

    Not ``fullgraph``: past torch's recompile limit (many models or shapes in one process) a
    step then runs eagerly instead of failing.
    """
    return torch.compile(GPT.static_decode_step, dynamic=False)


@torch.inference_mode()
def stream_tokens(model: GPT, idx: torch.Tensor, max_new_tokens: int, temperature: float = 0.0,
                  top_k: int | None = None, top_p: float | None = None, eos_id: int | Sequence[int] | None = None,
                  attention_mask: torch.Tensor | None = None, use_cache: bool = True,
                  generator: torch.Generator | None = None,
                  vocab_limit: int | None = None, compile: bool = False) -> Iterator[torch.Tensor]:
    """Yield the next ids, ``(batch, 1)``, one step at a time.

    ``attention_mask`` (1 = token, 0 = padding) supports left-padded batches of prompts of
    different lengths. ``eos_id`` is one stop id or several (a chat model ends its turn with
    ``<|im_end|>`` and its documents with its EOS): a row that has produced one keeps producing
    it; generation stops once every row has. ``vocab_limit`` keeps ids below it: a vocabulary padded past the
    tokenizer's (e.g. 50304 for 50257) has rows that decode to no text. ``compile=True`` runs
    the one-token steps as a compiled graph over a static cache (it implies ``use_cache``); the
    first call per batch size and cache size pays for the compilation.
    """
    step = compiled_decode_step() if compile else None
    with eval_mode(model):
        yield from _decode(model, idx, max_new_tokens, temperature, top_k, top_p, eos_id,
                           attention_mask, use_cache or compile, generator, vocab_limit, step)


def _positions(mask: torch.Tensor) -> torch.Tensor:
    # Left padding: real tokens are numbered from 0 wherever they start.
    return (mask.cumsum(dim=-1) - 1).clamp(min=0)


def _cache_size(needed: int, context_length: int, static: bool) -> int:
    if static:
        needed = -(-needed // STATIC_CACHE_MULTIPLE) * STATIC_CACHE_MULTIPLE
    return min(context_length, needed)


class _StaticDecoder:
    """Runs ``step`` (``GPT.static_decode_step``, compiled or not) on a cache the prompt was read into.

    Keeps what the step needs besides the cache: which positions are visible (written and not
    padding) and the next token's position id.
    """

    def __init__(self, step: Callable[..., torch.Tensor], cache: KVCache, prompt_mask: torch.Tensor | None,
                 prompt_positions: torch.Tensor | None, prompt_length: int, batch_size: int,
                 device: torch.device) -> None:
        self.step, self.cache = step, cache
        self.visible = torch.zeros(batch_size, cache.max_len, dtype=torch.bool, device=device)
        self.visible[:, :prompt_length] = prompt_mask.bool() if prompt_mask is not None else True
        if prompt_positions is not None:
            self.next_pos = prompt_positions[:, -1:] + 1
        else:
            self.next_pos = torch.full((batch_size, 1), prompt_length, dtype=torch.long, device=device)

    def __call__(self, model: GPT, token: torch.Tensor) -> torch.Tensor:
        slot = self.cache.length
        self.visible[:, slot] = True
        logits = self.step(model, token.clone(memory_format=torch.contiguous_format),  # same strides every step
                           self.next_pos, torch.tensor([slot], device=token.device), self.visible,
                           [layer.keys for layer in self.cache.layers], [layer.values for layer in self.cache.layers])
        self.cache.length += 1
        self.next_pos = self.next_pos + 1
        return logits


def _stop_tensor(eos_id: int | Sequence[int] | None, device: torch.device) -> torch.Tensor | None:
    if eos_id is None:
        return None
    ids = [eos_id] if isinstance(eos_id, int) else list(eos_id)
    return torch.tensor(ids, dtype=torch.long, device=device) if ids else None


def _decode(model: GPT, idx: torch.Tensor, max_new_tokens: int, temperature: float,
            top_k: int | None, top_p: float | None, eos_id: int | Sequence[int] | None,
            attention_mask: torch.Tensor | None, use_cache: bool,
            generator: torch.Generator | None, vocab_limit: int | None,
            static_step: Callable[..., torch.Tensor] | None = None) -> Iterator[torch.Tensor]:
    context_length = model.cfg.context_length
    batch_size = idx.shape[0]
    finished = torch.zeros(batch_size, 1, dtype=torch.bool, device=idx.device)
    stops = _stop_tensor(eos_id, idx.device)
    last = torch.zeros(batch_size, 1, dtype=torch.long, device=idx.device)  # each finished row's stop id
    if attention_mask is not None:
        attention_mask = attention_mask.to(idx.device).long()

    cache: KVCache | None = None
    static: _StaticDecoder | None = None
    tokens = idx[:, -context_length:]
    mask = attention_mask[:, -context_length:] if attention_mask is not None else None
    for _ in range(max_new_tokens):
        prefill = use_cache and (cache is None or cache.length >= context_length)
        if prefill:
            # Prefill, or re-prefill once the window is full and slides (as the no-cache path
            # does, positions restart at 0 for the cropped window). The cache holds only the
            # positions this call can reach and is reused, not reallocated.
            if cache is None:
                size = _cache_size(tokens.shape[1] + max_new_tokens, context_length, static_step is not None)
                cache = model.new_kv_cache(batch_size, size)
            cache.length = 0
        feed = tokens[:, -1:] if use_cache and not prefill else tokens
        if static is not None and not prefill:
            last_logits = static(model, feed)
        else:
            pos = _positions(mask)[:, -feed.shape[1]:] if mask is not None else None
            logits = model(feed, attention_mask=mask, position_ids=pos, kv_cache=cache if use_cache else None)
            last_logits = logits[:, -1]
            if static_step is not None and cache is not None:
                static = _StaticDecoder(static_step, cache, mask, pos, feed.shape[1], batch_size, idx.device)
        next_id = sample_next_token(last_logits[:, :vocab_limit], temperature, top_k, top_p, generator)
        if stops is not None:
            next_id = torch.where(finished, last, next_id)
            last = next_id
            finished |= torch.isin(next_id, stops)
        yield next_id
        if stops is not None and bool(finished.all()):
            return
        tokens = torch.cat([tokens, next_id], dim=1)[:, -context_length:]
        if mask is not None:
            mask = torch.cat([mask, torch.ones_like(next_id)], dim=1)[:, -context_length:]


def generate(model: GPT, idx: torch.Tensor, max_new_tokens: int, temperature: float = 0.0,
             top_k: int | None = None, top_p: float | None = None, eos_id: int | Sequence[int] | None = None,
             attention_mask: torch.Tensor | None = None, use_cache: bool = True,
             generator: torch.Generator | None = None, vocab_limit: int | None = None,
             compile: bool = False) -> torch.Tensor:
    """``idx`` followed by up to ``max_new_tokens`` generated ids (book's ``generate``).

    Stops early once every row has produced a stop id (``eos_id``: one or several); the stop id
    itself is part of the output, and rows that finished first are filled with theirs. ``compile``: see ``stream_tokens``.
    """
    new = list(stream_tokens(model, idx, max_new_tokens, temperature, top_k, top_p, eos_id,
                             attention_mask, use_cache, generator, vocab_limit, compile))
    return torch.cat([idx, *new], dim=1) if new else idx
