"""PNG pictures of an ``Inspection``: attention grids like the book's chapter-3 matrices, and a
per-token loss heatmap.

Figures are built on ``matplotlib.figure.Figure`` without pyplot: no global state, so a server
thread can draw while another one does.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from matplotlib.font_manager import FontProperties

from gptlab.fileio import atomic_path
from gptlab.inspect.compute import Inspection
from gptlab.model.attention import kv_head_of
from gptlab.inspect.style import (
    ATTENTION_COLOURS, DARK, LOSS_COLOURS, NUMBERS_UP_TO, axis_label, loss_scale, loss_summary, visible,
)

#: Tokens up to which every token labels the axes; longer texts label every n-th.
LABELS_UP_TO = 48
DPI = 110


def head_layout(n_heads: int, n_kv_heads: int) -> tuple[int, int]:
    """Rows and columns of a layer's grid: one row per key/value head under grouped-query
    attention (its query heads side by side), else as square as the heads allow."""
    if n_kv_heads < n_heads:
        return n_kv_heads, n_heads // n_kv_heads
    columns = math.ceil(math.sqrt(n_heads))
    return math.ceil(n_heads / columns), columns


def attention_figure(inspection: Inspection, layer: int) -> Figure:
    """Every query head's weights in ``layer``: queries down, keys across, token labels on both axes."""
    rows, columns = head_layout(inspection.n_heads, inspection.n_kv_heads)
    tokens = [axis_label(t) for t in inspection.tokens]
    count = len(tokens)
    panel = max(2.6, 0.42 * count + 1.2) if count <= NUMBERS_UP_TO else min(max(3.0, 0.12 * count), 6.0)
    figure = Figure(figsize=(columns * panel, rows * panel + 0.6), dpi=DPI, layout="constrained")
    grouped = inspection.n_kv_heads < inspection.n_heads
    step = max(1, math.ceil(count / LABELS_UP_TO))
    font = 8 if count <= NUMBERS_UP_TO else 6
    for head in range(inspection.n_heads):
        weights = inspection.head(layer, head)
        ax = figure.add_subplot(rows, columns, head + 1)
        ax.imshow(weights, cmap=ATTENTION_COLOURS, vmin=0.0, vmax=1.0)
        ticks = np.arange(0, count, step)
        ax.set_xticks(ticks, [tokens[i] for i in ticks], rotation=90, fontsize=font)
        ax.set_yticks(ticks, [tokens[i] for i in ticks], fontsize=font)
        kv = kv_head_of(head, inspection.n_heads, inspection.n_kv_heads)
        ax.set_title(f"head {head}" + (f" (kv {kv})" if grouped else ""), fontsize=9)
        if count <= NUMBERS_UP_TO:
            for query in range(count):
                for key in range(query + 1):  # above the diagonal the causal mask leaves zeros: no number
                    value = float(weights[query, key])
                    ax.text(key, query, f"{value:.2f}", ha="center", va="center", fontsize=7,
                            color="white" if value > DARK else "black")
    kind = "grouped-query attention, a row per key/value head" if grouped else "multi-head attention"
    figure.suptitle(f"{inspection.source}: layer {layer}'s attention weights\n"
                    f"queries down, keys across; {kind}", fontsize=10)
    return figure


def loss_figure(inspection: Inspection, width_in: float = 10.0) -> Figure:
    """The text as it reads, each token on a box coloured by its loss in nats, the loss under it."""
    losses = inspection.losses
    norm, cmap = Normalize(0.0, loss_scale(losses)), colormaps[LOSS_COLOURS]
    token_font, number_font, pad, margin = 11, 7, 4.0, 14.0
    measure = FigureCanvasAgg(Figure(dpi=DPI)).get_renderer()

    def width(text: str, size: float) -> float:
        return measure.get_text_width_height_descent(text or " ", FontProperties(size=size), ismath=False)[0]

    # Lay the tokens out in lines (pixels from the top left), breaking where the width runs out
    # and after a newline.
    line_px, limit, placed = 2.6 * token_font * DPI / 72, width_in * DPI - margin, []
    x, line = margin, 0
    for text, loss in zip(inspection.tokens, losses):
        shown = visible(text)
        number = f"{loss:.2f}" if np.isfinite(loss) else "–"
        cell = max(width(shown, token_font), width(number, number_font)) + 2 * pad
        if x + cell > limit and x > margin:
            x, line = margin, line + 1
        placed.append((x, line, shown, number, loss))
        x += cell
        if "\n" in text:
            x, line = margin, line + 1
    header_in, colourbar_in = 0.5, 0.85
    body_in = (placed[-1][1] + 1) * line_px / DPI + 0.1  # the lines that hold tokens
    figure = Figure(figsize=(width_in, header_in + body_in + colourbar_in), dpi=DPI)
    height_px = figure.get_figheight() * DPI
    for x, line, shown, number, loss in placed:
        y = height_px - header_in * DPI - line * line_px
        colour = cmap(norm(loss)) if np.isfinite(loss) else (0.85, 0.85, 0.85, 1.0)
        dark = np.isfinite(loss) and norm(loss) > DARK
        figure.text(x / (width_in * DPI), y / height_px, shown, fontsize=token_font, va="top", ha="left",
                    color="white" if dark else "black", bbox={"facecolor": colour, "edgecolor": "none", "pad": 1.5})
        figure.text(x / (width_in * DPI), (y - 1.35 * token_font * DPI / 72) / height_px, number,
                    fontsize=number_font, va="top", ha="left", color="#444444")
    figure.suptitle(f"{inspection.source} · each token's loss in nats, -log p(token | the text before it) · "
                    f"{loss_summary(losses)}", fontsize=10, y=1 - 0.15 / figure.get_figheight())
    bar = figure.add_axes((0.3, 0.5 / figure.get_figheight(), 0.4, 0.12 / figure.get_figheight()))
    figure.colorbar(ScalarMappable(norm=norm, cmap=cmap), cax=bar, orientation="horizontal", label="loss (nats)")
    return figure


def save_png(figure: Figure, path: Path) -> Path:
    """Write ``figure`` as a PNG."""
    FigureCanvasAgg(figure)
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png")
    return path

