"""Text generation (book sections 4.7 and 5.3): greedy, temperature, top-k and top-p sampling.

Decoding uses the model's KV cache by default: the prompt is processed once, then each step feeds
only the newest token. ``use_cache=False`` recomputes the whole window every step, as the book
does; both give the same greedy output.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from gptlab.model.gpt import GPT


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


@torch.inference_mode()
def stream_tokens(model: GPT, idx: torch.Tensor, max_new_tokens: int, temperature: float = 0.0,
                  top_k: int | None = None, top_p: float | None = None, eos_id: int | None = None,
                  attention_mask: torch.Tensor | None = None, use_cache: bool = True,
                  generator: torch.Generator | None = None,
                  vocab_limit: int | None = None) -> Iterator[torch.Tensor]:
    """Yield the next ids, ``(batch, 1)``, one step at a time.

    ``attention_mask`` (1 = token, 0 = padding) supports left-padded batches of prompts of
    different lengths. A row that has produced ``eos_id`` keeps producing ``eos_id``; generation
    stops once every row has. ``vocab_limit`` keeps ids below it: a vocabulary padded past the
    tokenizer's (e.g. 50304 for 50257) has rows that decode to no text.
    """
    was_training = model.training
    model.eval()
    try:
        yield from _decode(model, idx, max_new_tokens, temperature, top_k, top_p, eos_id,
                           attention_mask, use_cache, generator, vocab_limit)
    finally:
        model.train(was_training)


def _decode(model: GPT, idx: torch.Tensor, max_new_tokens: int, temperature: float,
            top_k: int | None, top_p: float | None, eos_id: int | None,
            attention_mask: torch.Tensor | None, use_cache: bool,
            generator: torch.Generator | None, vocab_limit: int | None) -> Iterator[torch.Tensor]:
    context_length = model.cfg.context_length
    batch_size = idx.shape[0]
    finished = torch.zeros(batch_size, 1, dtype=torch.bool, device=idx.device)
    if attention_mask is not None:
        attention_mask = attention_mask.to(idx.device).long()

    def positions(mask: torch.Tensor) -> torch.Tensor:
        # Left padding: real tokens are numbered from 0 wherever they start.
        return (mask.cumsum(dim=-1) - 1).clamp(min=0)

    cache = None
    tokens = idx[:, -context_length:]
    mask = attention_mask[:, -context_length:] if attention_mask is not None else None
    for _ in range(max_new_tokens):
        if use_cache:
            if cache is None or cache.length >= context_length:
                # Prefill, or re-prefill once the window is full and slides (as the no-cache
                # path does, positions restart at 0 for the cropped window). The cache holds
                # only the positions this call can reach and is reused, not reallocated.
                if cache is None:
                    cache = model.new_kv_cache(batch_size, min(context_length, tokens.shape[1] + max_new_tokens))
                cache.length = 0
                feed, feed_mask = tokens, mask
            else:
                feed, feed_mask = tokens[:, -1:], mask
        else:
            feed, feed_mask = tokens, mask
        pos = positions(feed_mask)[:, -feed.shape[1]:] if feed_mask is not None else None
        logits = model(feed, attention_mask=feed_mask, position_ids=pos, kv_cache=cache if use_cache else None)
        next_id = sample_next_token(logits[:, -1, :vocab_limit], temperature, top_k, top_p, generator)
        if eos_id is not None:
            next_id = torch.where(finished, torch.full_like(next_id, eos_id), next_id)
            finished |= next_id == eos_id
        yield next_id
        if eos_id is not None and bool(finished.all()):
            return
        tokens = torch.cat([tokens, next_id], dim=1)[:, -context_length:]
        if mask is not None:
            mask = torch.cat([mask, torch.ones_like(next_id)], dim=1)[:, -context_length:]


def generate(model: GPT, idx: torch.Tensor, max_new_tokens: int, temperature: float = 0.0,
             top_k: int | None = None, top_p: float | None = None, eos_id: int | None = None,
             attention_mask: torch.Tensor | None = None, use_cache: bool = True,
             generator: torch.Generator | None = None, vocab_limit: int | None = None) -> torch.Tensor:
    """``idx`` followed by up to ``max_new_tokens`` generated ids (book's ``generate``).

    Stops early once every row has produced ``eos_id``; the ``eos_id`` itself is part of the
    output, and rows that finished first are filled with it.
    """
    new = list(stream_tokens(model, idx, max_new_tokens, temperature, top_k, top_p, eos_id,
                             attention_mask, use_cache, generator, vocab_limit))
    return torch.cat([idx, *new], dim=1) if new else idx
