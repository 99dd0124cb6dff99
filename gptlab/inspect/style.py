"""How an inspection is shown, in the PNGs and on the HTML page alike: token labels and colours."""

from __future__ import annotations

import math

import numpy as np

#: Characters a label replaces by a visible sign.
VISIBLE = {"\n": "↵", "\t": "⇥", "\r": "␍"}
#: Matplotlib colour maps: attention weights and lens probabilities (0 to 1), token losses (nats).
ATTENTION_COLOURS = "Blues"
LENS_COLOURS = "Greens"
LOSS_COLOURS = "YlOrRd"
#: Above this fraction of its colour scale a cell is dark enough for white text.
DARK = 0.6
#: Tokens up to which every cell of an attention matrix shows its weight, as the book prints them.
NUMBERS_UP_TO = 12


def visible(text: str) -> str:
    """The token's text with newlines and tabs as signs (spaces kept)."""
    return "".join(VISIBLE.get(char, char) for char in text)


def axis_label(text: str) -> str:
    """A token as an axis label in the book's chapter-3 matrices: ``" journey"`` is ``journey``;
    a token of spaces only is shown as ``␣`` per space, one with no text of its own (part of a
    character) as ``∅``."""
    shown = visible(text)
    return shown.strip(" ") or "␣" * len(shown) or "∅"


def loss_scale(losses: np.ndarray) -> float:
    """The top of the loss colour scale: the text's largest loss rounded up to whole nats (at least 1)."""
    finite = losses[np.isfinite(losses)]
    return max(1.0, float(math.ceil(finite.max()))) if finite.size else 1.0


def loss_summary(losses: np.ndarray) -> str:
    """The text's mean loss and perplexity, in words."""
    finite = losses[np.isfinite(losses)]
    if not finite.size:
        return "one token: nothing to score"
    return f"mean loss {finite.mean():.3f} nats, perplexity {math.exp(finite.mean()):.2f}"
