"""One text through a GPT, reduced to the numbers worth looking at: tensors in, arrays out.

``inspect_ids`` runs a single traced forward pass (``gptlab.model.trace``) and keeps:

* the attention weights of every layer and query head, grouped by the key/value head they share;
* each token's loss in nats, ``-log p(token | the tokens before it)``;
* the top-k next tokens after each position;
* the logit lens: each layer's residual stream through the final norm and the output head, read
  as that layer's guess at the next token (its top-k).

Drawing them is ``gptlab.inspect.draw`` (PNG) and ``gptlab.inspect.page`` (HTML); this module
never draws.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

from gptlab.errors import ConfigError
from gptlab.fileio import atomic_path
from gptlab.model.attention import kv_head_of
from gptlab.model.gpt import GPT
from gptlab.model.modes import eval_mode
from gptlab.model.trace import Trace
from gptlab.tokenizer import Tokenizer


#: Rows (layer positions) sent through the output head at once by the logit lens.
LENS_ROWS = 1024


@dataclass(frozen=True)
class Inspection:
    """What ``inspect_ids`` found, as NumPy arrays over the ``T`` tokens of one text.

    Query head ``h`` of a layer is ``attention[layer, h // group, h % group]`` with
    ``group = n_heads // n_kv_heads`` (``head``): the query heads that share a key/value head sit
    together, as grouped-query attention groups them (``gptlab.model.attention.kv_head_of``).
    """

    source: str
    n_heads: int
    n_kv_heads: int
    #: ``(T,)`` the text's token ids, and each one's text.
    token_ids: np.ndarray
    tokens: list[str]
    #: ``(layers, n_kv_heads, n_heads // n_kv_heads, T, T)``: query position by key position.
    attention: np.ndarray
    #: ``(T,)`` nats; NaN for the first token, which nothing before it predicts.
    losses: np.ndarray
    #: ``(T, k)`` the k most likely next tokens after each position, and their probabilities.
    top_ids: np.ndarray
    top_probs: np.ndarray
    #: ``(layers, T, k)`` the same, read from each layer's residual stream (the logit lens).
    lens_ids: np.ndarray
    lens_probs: np.ndarray
    #: Text of every id in ``top_ids`` and ``lens_ids``.
    vocabulary: dict[int, str]

    @property
    def n_layers(self) -> int:
        return int(self.attention.shape[0])

    def head(self, layer: int, query_head: int) -> np.ndarray:
        """The ``(T, T)`` weights of one query head."""
        group = self.n_heads // self.n_kv_heads
        return self.attention[layer, kv_head_of(query_head, self.n_heads, self.n_kv_heads), query_head % group]

    def save_npz(self, path: Path) -> Path:
        """Every array in one ``.npz`` (``np.load`` reads it without pickle)."""
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            np.savez_compressed(
                f, token_ids=self.token_ids, tokens=np.array(self.tokens, dtype=str), attention=self.attention,
                losses=self.losses, top_ids=self.top_ids, top_probs=self.top_probs, lens_ids=self.lens_ids,
                lens_probs=self.lens_probs, n_heads=self.n_heads, n_kv_heads=self.n_kv_heads,
            )
        return path


def check_ids(ids: Sequence[int], context_length: int) -> None:
    """A text the model can read in one pass, or one line saying what to change."""
    if not ids:
        raise ConfigError("the text to inspect is empty; give a text of at least one token")
    if len(ids) > context_length:
        raise ConfigError(f"the text to inspect has {len(ids)} tokens but the model reads at most {context_length} "
                          "(its context_length); shorten it")


@torch.no_grad()
def traced_forward(model: GPT, ids: Sequence[int]) -> tuple[torch.Tensor, Trace]:
    """The logits ``(1, T, vocab)`` of one forward pass in eval mode, with its ``Trace``."""
    check_ids(ids, model.cfg.context_length)
    idx = torch.tensor([list(ids)], dtype=torch.long, device=model.tok_emb.weight.device)
    trace = Trace()
    with eval_mode(model):
        logits = model(idx, trace=trace)
    return logits, trace


def lens_logits(model: GPT, residual: torch.Tensor) -> torch.Tensor:
    """The logit lens of one residual stream: what the output head reads from it after the final norm.

    For the last block's residual this is exactly the model's logits.
    """
    return model.out_head(model.final_norm(residual))


def token_losses(logits: torch.Tensor, ids: Sequence[int]) -> torch.Tensor:
    """``(T,)`` each token's loss in nats under the logits ``(T, vocab)`` of the positions before it; NaN first."""
    targets = torch.tensor(list(ids)[1:], dtype=torch.long, device=logits.device)
    losses = F.cross_entropy(logits[:-1].float(), targets, reduction="none")
    return torch.cat([losses.new_full((1,), float("nan")), losses])


def top_k(logits: torch.Tensor, k: int, vocab_limit: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` most likely ids over the last dimension, below ``vocab_limit`` (ids the tokenizer
    can write; a padded vocabulary has more rows), and their probabilities."""
    probs = torch.softmax(logits.float(), dim=-1)[..., :vocab_limit]
    values, indices = probs.topk(min(k, vocab_limit), dim=-1, sorted=True)
    return indices, values


@torch.no_grad()
def lens_top_k(model: GPT, trace: Trace, k: int, vocab_limit: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(layers, T, k)`` the logit lens' top-k ids and probabilities of a one-row trace.

    Several layers go through the output head at once: a head as large as SmolLM2's (49152 x 576)
    costs the time of reading it, not of the few rows multiplied by it. ``LENS_ROWS`` bounds the
    logits held at a time.
    """
    residuals = torch.stack([residual[0] for residual in trace.residuals])  # (layers, T, emb)
    per_chunk = max(1, LENS_ROWS // residuals.shape[1])
    chunks = [top_k(lens_logits(model, part), k, vocab_limit) for part in residuals.split(per_chunk)]
    return torch.cat([ids for ids, _ in chunks]), torch.cat([probs for _, probs in chunks])


def inspect_ids(model: GPT, tokenizer: Tokenizer, ids: Sequence[int], k: int = 5, source: str = "") -> Inspection:
    """Attention, per-token loss, top-k next tokens and logit lens of ``ids`` (see the module)."""
    if k <= 0:
        raise ConfigError(f"top-k must be a positive integer, got {k}")
    logits, trace = traced_forward(model, ids)
    cfg, vocab_limit = model.cfg, min(tokenizer.vocab_size, model.cfg.vocab_size)
    group = cfg.n_heads // cfg.kv_heads
    attention = torch.stack([weights[0] for weights in trace.attention])  # (layers, heads, T, T)
    attention = attention.unflatten(1, (cfg.kv_heads, group))
    lens_ids, lens_probs = lens_top_k(model, trace, k, vocab_limit)
    top_ids, top_probs = top_k(logits[0], k, vocab_limit)
    seen = set(top_ids.flatten().tolist()) | set(lens_ids.flatten().tolist())
    return Inspection(
        source=source, n_heads=cfg.n_heads, n_kv_heads=cfg.kv_heads,
        token_ids=np.array(list(ids), dtype=np.int64), tokens=[tokenizer.decode([i]) for i in ids],
        attention=_numpy(attention), losses=_numpy(token_losses(logits[0], ids)),
        top_ids=_numpy(top_ids), top_probs=_numpy(top_probs),
        lens_ids=_numpy(lens_ids), lens_probs=_numpy(lens_probs),
        vocabulary={i: tokenizer.decode([i]) for i in sorted(seen)},
    )


def inspect_text(model: GPT, tokenizer: Tokenizer, text: str, k: int = 5, source: str = "") -> Inspection:
    """``inspect_ids`` of ``text`` as the tokenizer encodes it."""
    return inspect_ids(model, tokenizer, tokenizer.encode(text), k, source)


def _numpy(tensor: torch.Tensor) -> np.ndarray:
    array = tensor.detach().cpu()
    return array.numpy() if not array.is_floating_point() else array.float().numpy()
