"""One self-contained HTML page of an ``Inspection``: no external assets, every colour and number inline.

It shows each token's loss as coloured text, the attention weights of any layer and query head as
the book's chapter-3 matrix (a small script draws the chosen head from the weights embedded in
the page), the top-k next tokens after each position, and the logit lens as a table of layers by
positions. ``gptlab-inspect`` writes it to a file; ``gptlab-serve`` answers ``/inspect`` with it
(``served_page``), with a form on top to inspect another text.
"""

from __future__ import annotations

import json
import math
from html import escape

import numpy as np
from matplotlib import colormaps
from matplotlib.colors import to_hex

from gptlab.errors import ConfigError, GptlabError, first_line
from gptlab.inspect.compute import Inspection, inspect_text
from gptlab.inspect.style import (
    ATTENTION_COLOURS, DARK, LENS_COLOURS, LOSS_COLOURS, NUMBERS_UP_TO, axis_label, loss_scale, loss_summary,
    visible,
)
from gptlab.model.attention import kv_head_of
from gptlab.model.gpt import GPT
from gptlab.tokenizer import Tokenizer

#: Steps of a colour map on the page: value v in [0, 1] takes colour ``round(v * STEPS)``.
STEPS = 100
#: Tokens up to which the page carries every attention weight (beyond, the page would weigh megabytes:
#: layers x heads x tokens^2 numbers); the ``.npz`` and the PNGs always have them.
ATTENTION_ON_PAGE_UP_TO = 128
#: The longest text ``/inspect`` takes: the weights of a pass grow with the square of its length.
SERVED_MAX_TOKENS = 512

STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5em; color: #222; max-width: 80em; }
h2 { margin-top: 1.6em; font-size: 1.15em; }
.text { font-family: ui-monospace, monospace; line-height: 2.1; white-space: pre-wrap; }
.tok { padding: 2px 1px; border-radius: 2px; }
table { border-collapse: collapse; font-size: 0.85em; }
td, th { padding: 2px 5px; text-align: center; white-space: pre; }
.scroll { overflow-x: auto; }
.att td { width: 3.2em; height: 2.2em; border: 1px solid #eee; }
.att th.key span { writing-mode: vertical-rl; transform: rotate(180deg); }
.grid td { border: 1px solid #ddd; font-family: ui-monospace, monospace; }
.hit { outline: 2px solid #c33; }
form textarea { width: 100%; font-family: ui-monospace, monospace; }
.note { color: #666; font-size: 0.9em; }
.error { color: #b00; font-weight: bold; }
"""

SCRIPT = """
const data = JSON.parse(document.getElementById("attention-data").textContent);
const layer = document.getElementById("layer"), head = document.getElementById("head");
const esc = s => s.replace(/[&<>"]/g, c => ({"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;"})[c]);
data.attention.forEach((_, i) => layer.add(new Option(`layer ${i}`, i)));
data.kvOf.forEach((kv, h) => head.add(new Option(data.grouped ? `head ${h} (kv ${kv})` : `head ${h}`, h)));
function draw() {
  const rows = data.attention[+layer.value][+head.value], n = data.tokens.length;
  let html = '<tr><th></th>' + data.tokens.map(t => `<th class="key"><span>${esc(t)}</span></th>`).join("") + "</tr>";
  rows.forEach((row, q) => {
    html += `<tr><th>${esc(data.tokens[q])}</th>`;
    for (let k = 0; k < n; k++) {
      if (k >= row.length) { html += "<td></td>"; continue; }
      const v = row[k], colour = data.palette[Math.round(v * (data.palette.length - 1))];
      const text = data.numbers ? v.toFixed(2) : "";
      html += `<td style="background:${colour};color:${v > data.dark ? "white" : "black"}" ` +
              `title="${esc(data.tokens[q])} → ${esc(data.tokens[k])}: ${v.toFixed(4)}">${text}</td>`;
    }
    html += "</tr>";
  });
  document.getElementById("attention").innerHTML = html;
}
layer.onchange = head.onchange = draw;
draw();
"""


def palette(name: str) -> list[str]:
    """``STEPS + 1`` colours of a matplotlib colour map, from 0 to 1."""
    cmap = colormaps[name]
    return [to_hex(cmap(i / STEPS)) for i in range(STEPS + 1)]


def served_page(model: GPT, tokenizer: Tokenizer, source: str, prompt: str | None, k: int,
                action: str = "/inspect") -> tuple[int, str]:
    """``gptlab-serve``'s ``/inspect``: the HTTP status and the page, the form alone without a
    prompt; bad input is a 400 page whose one line names what is wrong."""
    if prompt is None:
        return 200, html_page(None, action, "", k)
    try:
        count = len(tokenizer.encode(prompt))
        if count > SERVED_MAX_TOKENS:
            raise ConfigError(f"the text to inspect has {count} tokens; /inspect takes at most {SERVED_MAX_TOKENS} "
                              "(gptlab-inspect takes longer texts)")
        inspection = inspect_text(model, tokenizer, prompt, k, source)
    except GptlabError as err:
        return 400, html_page(None, action, prompt, k, error=first_line(err))
    return 200, html_page(inspection, action, prompt, k)


def html_page(inspection: Inspection | None, form_action: str | None = None, text: str = "", k: int = 5,
              error: str | None = None) -> str:
    """The page of ``inspection`` (none: only the form), with a form sending to ``form_action`` if
    given, and ``error`` above it."""
    title = f"gptlab-inspect: {inspection.source}" if inspection is not None else "gptlab-inspect"
    parts = [f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>{escape(title)}</title>"
             f"<style>{STYLE}</style></head><body><h1>{escape(title)}</h1>"]
    if form_action is not None:
        parts.append(_form(form_action, text, k))
    if error is not None:
        parts.append(f"<p class='error'>{escape(error)}</p>")
    if inspection is not None:
        parts += [_summary(inspection), _loss_text(inspection), _attention(inspection), _top_k(inspection),
                  _lens(inspection)]
    parts.append("</body></html>")
    return "".join(parts)


def _form(action: str, text: str, k: int) -> str:
    return (f"<form method='get' action='{escape(action)}'><textarea name='prompt' rows='3' "
            f"placeholder='Your journey starts with one step'>{escape(text)}</textarea><br>"
            f"<label>top-k <input name='top_k' type='number' min='1' value='{k}'></label> "
            "<button>Inspect</button></form>")


def _summary(ins: Inspection) -> str:
    return (f"<p>{len(ins.tokens)} tokens · {ins.n_layers} layers · {ins.n_heads} query heads, "
            f"{ins.n_kv_heads} key/value heads · {escape(loss_summary(ins.losses))}</p>")


def _loss_text(ins: Inspection) -> str:
    scale, colours = loss_scale(ins.losses), palette(LOSS_COLOURS)
    spans = []
    for i, (token, loss) in enumerate(zip(ins.tokens, ins.losses)):
        if np.isfinite(loss):
            share = min(float(loss) / scale, 1.0)
            style = f"background:{colours[round(share * STEPS)]};color:{'white' if share > DARK else 'black'}"
            tip = f"token {i}: loss {loss:.3f} nats (p = {math.exp(-loss):.4f})"
        else:
            style, tip = "background:#d9d9d9", f"token {i}: the first token, which nothing before it predicts"
        spans.append(f"<span class='tok' style='{style}' title='{escape(tip)}'>{escape(visible(token))}</span>"
                     + ("<br>" if "\n" in token else ""))
    return (f"<h2>Each token's loss</h2><p class='note'>-log p(token | the text before it), in nats; colour "
            f"from 0 (pale) to {scale:g} (dark). Hover a token for its value.</p><div class='text'>{''.join(spans)}</div>")


def _attention(ins: Inspection) -> str:
    if len(ins.tokens) > ATTENTION_ON_PAGE_UP_TO:
        return (f"<h2>Attention weights</h2><p class='note'>{len(ins.tokens)} tokens: more than the "
                f"{ATTENTION_ON_PAGE_UP_TO} whose weights this page carries. gptlab-inspect writes them to "
                "inspection.npz and draws them as PNGs.</p>")
    weights = [[[[round(float(v), 4) for v in ins.head(layer, h)[q, :q + 1]] for q in range(len(ins.tokens))]
                for h in range(ins.n_heads)] for layer in range(ins.n_layers)]
    data = {"tokens": [axis_label(t) for t in ins.tokens], "grouped": ins.n_kv_heads < ins.n_heads,
            "kvOf": [kv_head_of(h, ins.n_heads, ins.n_kv_heads) for h in range(ins.n_heads)], "attention": weights, "palette": palette(ATTENTION_COLOURS), "dark": DARK,
            "numbers": len(ins.tokens) <= NUMBERS_UP_TO}
    payload = json.dumps(data, ensure_ascii=False, separators=(",", ":")).replace("</", "<\\/")
    grouped = (" Under grouped-query attention, consecutive query heads share one key/value head (kv)."
               if ins.n_kv_heads < ins.n_heads else "")
    return ("<h2>Attention weights</h2><p class='note'>Queries down, keys across; each row sums to 1, and the "
            f"causal mask leaves the cells above the diagonal empty.{grouped}</p>"
            "<p><select id='layer'></select> <select id='head'></select></p>"
            "<div class='scroll'><table class='att' id='attention'></table></div>"
            f"<script type='application/json' id='attention-data'>{payload}</script><script>{SCRIPT}</script>")


def _top_k(ins: Inspection) -> str:
    k = ins.top_ids.shape[1]
    rows = []
    for i, token in enumerate(ins.tokens):
        actual = int(ins.token_ids[i + 1]) if i + 1 < len(ins.tokens) else None
        cells = "".join(
            f"<td class='{'hit' if int(c) == actual else ''}'>{escape(visible(ins.vocabulary[int(c)]))} "
            f"<span class='note'>{p:.3f}</span></td>"
            for c, p in zip(ins.top_ids[i], ins.top_probs[i]))
        following = escape(visible(ins.tokens[i + 1])) if actual is not None else "<span class='note'>(end)</span>"
        rows.append(f"<tr><td>{i}</td><td>{escape(visible(token))}</td><td>{following}</td>{cells}</tr>")
    header = "".join(f"<th>#{j + 1}</th>" for j in range(k))
    return (f"<h2>Top-{k} next tokens</h2><p class='note'>After each position, the model's {k} most likely next "
            "tokens and their probabilities; the one the text continues with is outlined.</p><div class='scroll'>"
            f"<table class='grid'><tr><th>pos</th><th>token</th><th>next in the text</th>{header}</tr>"
            f"{''.join(rows)}</table></div>")


def _lens(ins: Inspection) -> str:
    colours = palette(LENS_COLOURS)
    header = "".join(f"<th>{escape(axis_label(t))}</th>" for t in ins.tokens)
    rows = []
    for layer in range(ins.n_layers):
        cells = []
        for i in range(len(ins.tokens)):
            best, prob = int(ins.lens_ids[layer, i, 0]), float(ins.lens_probs[layer, i, 0])
            tip = ", ".join(f"{visible(ins.vocabulary[int(c)])!r} {p:.3f}"
                            for c, p in zip(ins.lens_ids[layer, i], ins.lens_probs[layer, i]))
            cells.append(f"<td style='background:{colours[round(prob * STEPS)]};color:"
                         f"{'white' if prob > DARK else 'black'}' title='{escape(tip)}'>"
                         f"{escape(axis_label(ins.vocabulary[best]))}</td>")
        name = f"layer {layer}" + (" = output" if layer == ins.n_layers - 1 else "")
        rows.append(f"<tr><th>{name}</th>{''.join(cells)}</tr>")
    return ("<h2>Logit lens</h2><p class='note'>Each layer's residual stream through the final norm and the output "
            "head: that layer's most likely next token after each position (columns), coloured by its probability. "
            "The last layer's is the model's own prediction. Hover a cell for the top-k.</p>"
            f"<div class='scroll'><table class='grid'><tr><th></th>{header}</tr>{''.join(rows)}</table></div>")
