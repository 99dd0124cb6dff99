"""Looking inside a GPT (``gptlab.model.trace``, ``gptlab.inspect``, ``gptlab-inspect``), against
references that are not the code under test:

* attention weights against softmax(QK^T / sqrt(d) + causal mask) written out here from each
  layer's own weight matrices (norms, RoPE and grouped-query heads included), and on the real
  SmolLM2 against ``transformers``' eager attention (``output_attentions=True``);
* the traced pass never calls SDPA, the plain pass always does, and both give the same logits;
* residual streams against forward hooks on the blocks of an untraced pass; the logit lens
  against models cut after each layer; losses and top-k against the plain pass's logits;
* the book's six-token example drawn, its printed numbers and the ``.npz`` read back against the tensors;
* the page is one file with nothing fetched from elsewhere, and its embedded numbers are the tensors.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import re
from collections.abc import Callable
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from urllib.error import HTTPError
from urllib.parse import urlencode
from urllib.request import Request, urlopen

import numpy as np
import pytest
import torch
from matplotlib.image import imread
from torch.nn import functional as F

from gptlab import GPT, GPTConfig
from gptlab.checkpoints import save_model
from gptlab.cli.inspect import main as inspect_main
from gptlab.inference import LLM
from gptlab.inspect import inspect_ids, inspect_text, lens_logits, traced_forward
from gptlab.inspect.draw import attention_figure, loss_figure, save_png
from gptlab.inspect.page import ATTENTION_ON_PAGE_UP_TO, SERVED_MAX_TOKENS, html_page, served_page
from gptlab.model import Trace
from gptlab.tokenizer import get_tokenizer
from tests.helpers.serving import live_server

VOCAB = 101
GPT2_STYLE = GPTConfig(vocab_size=VOCAB, context_length=32, emb_dim=48, n_heads=4, n_layers=3, qkv_bias=True,
                       drop_rate=0.0, name="tiny-gpt2")
LLAMA_STYLE = GPTConfig(vocab_size=VOCAB, context_length=32, emb_dim=48, n_heads=6, n_kv_heads=2, n_layers=3,
                        hidden_dim=96, norm="rmsnorm", mlp="swiglu", pos_emb="rope", rope_base=500.0, qkv_bias=False,
                        out_bias=False, mlp_bias=False, drop_rate=0.0, name="tiny-llama")
#: Qwen3's variant: RMSNorm on each head's queries and keys, heads wider than emb_dim / n_heads.
QWEN_STYLE = dataclasses.replace(LLAMA_STYLE, qk_norm=True, head_size=16, name="tiny-qwen")
CONFIGS = {"gpt2": GPT2_STYLE, "llama": LLAMA_STYLE, "qwen": QWEN_STYLE}
BOOK_EXAMPLE = "Your journey starts with one step"


def random_model(cfg: GPTConfig, seed: int = 0) -> GPT:
    """A random GPT whose weights are large enough for peaked attention, norms not at their defaults."""
    torch.manual_seed(seed)
    model = GPT(cfg)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith(".scale"):
                param.uniform_(0.5, 1.5)
            elif name.endswith((".shift", ".bias")):
                param.uniform_(-0.2, 0.2)
            else:
                param.normal_(0.0, 0.3)
    return model.eval()


def random_ids(length: int, seed: int = 1, vocab: int = VOCAB) -> list[int]:
    return torch.randint(0, vocab, (length,), generator=torch.Generator().manual_seed(seed)).tolist()


# --- independent references ----------------------------------------------------------------------


def norm_by_hand(x: torch.Tensor, norm: torch.nn.Module, cfg: GPTConfig) -> torch.Tensor:
    """LayerNorm (mean, biased variance, scale, shift) or RMSNorm (scale only), from the formulas."""
    if cfg.norm == "rmsnorm":
        return x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + norm.eps) * norm.scale
    mean, var = x.mean(-1, keepdim=True), x.var(-1, keepdim=True, unbiased=False)
    return (x - mean) / torch.sqrt(var + norm.eps) * norm.scale + norm.shift


def rotate_by_hand(x: torch.Tensor, base: float) -> torch.Tensor:
    """RoPE in Llama's "rotate half" layout: dimension pairs (i, i + d/2) turned by position * base^(-2i/d)."""
    tokens, dim = x.shape[-2], x.shape[-1]
    freqs = base ** (-torch.arange(0, dim, 2, dtype=torch.float64) / dim)
    angles = torch.arange(tokens, dtype=torch.float64)[:, None] * freqs[None, :]
    cos, sin = torch.cos(angles).float(), torch.sin(angles).float()
    first, second = x[..., : dim // 2], x[..., dim // 2:]
    return torch.cat([first * cos - second * sin, second * cos + first * sin], dim=-1)


def attention_by_hand(model: GPT, layer: int, layer_input: torch.Tensor,
                      key_head: Callable[[int], int] | None = None) -> torch.Tensor:
    """``(heads, T, T)``: softmax(q k^T / sqrt(d) + causal mask) per query head from the layer's own
    weights; query head h reads key head ``key_head(h)``, by default h // (n_heads / n_kv_heads) as
    grouped-query attention (and ``transformers``' ``repeat_kv``) has it."""
    cfg, block = model.cfg, model.trf_blocks[layer]
    key_head = key_head or (lambda h: h // (cfg.n_heads // cfg.kv_heads))
    att = block.att
    x = norm_by_hand(layer_input[0], block.norm1, cfg)  # (T, emb)
    tokens, d = x.shape[0], cfg.head_dim
    q = F.linear(x, att.W_query.weight, att.W_query.bias).view(tokens, cfg.n_heads, d).transpose(0, 1)
    k = F.linear(x, att.W_key.weight, att.W_key.bias).view(tokens, cfg.kv_heads, d).transpose(0, 1)
    if cfg.qk_norm:
        q = q / torch.sqrt(q.pow(2).mean(-1, keepdim=True) + att.q_norm.eps) * att.q_norm.scale
        k = k / torch.sqrt(k.pow(2).mean(-1, keepdim=True) + att.k_norm.eps) * att.k_norm.scale
    if cfg.pos_emb == "rope":
        q, k = rotate_by_hand(q, cfg.rope_base), rotate_by_hand(k, cfg.rope_base)
    future = torch.triu(torch.ones(tokens, tokens, dtype=torch.bool), diagonal=1)
    heads = []
    for h in range(cfg.n_heads):
        key = k[key_head(h)]
        scores = (q[h] @ key.T) / math.sqrt(d)
        heads.append(torch.softmax(scores.masked_fill(future, float("-inf")), dim=-1))
    return torch.stack(heads)


class CountingSDPA:
    """``F.scaled_dot_product_attention``, counting its calls."""

    def __init__(self) -> None:
        self.calls = 0
        self.inner = F.scaled_dot_product_attention

    def __call__(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        self.calls += 1
        return self.inner(*args, **kwargs)


@pytest.fixture
def sdpa(monkeypatch: pytest.MonkeyPatch) -> CountingSDPA:
    spy = CountingSDPA()
    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", spy)
    return spy


# --- the library surface: Trace ------------------------------------------------------------------


@pytest.mark.parametrize("kind", list(CONFIGS))
def test_traced_weights_are_the_softmax_written_out_from_each_layers_weights(kind: str):
    model = random_model(CONFIGS[kind])
    logits, trace = traced_forward(model, random_ids(12))
    assert len(trace.attention) == len(trace.residuals) == model.cfg.n_layers
    inputs = [trace.embeddings, *trace.residuals[:-1]]
    for layer in range(model.cfg.n_layers):
        weights = trace.attention[layer][0]
        assert weights.shape == (model.cfg.n_heads, 12, 12)
        torch.testing.assert_close(weights, attention_by_hand(model, layer, inputs[layer]), atol=2e-6, rtol=1e-5)
        torch.testing.assert_close(weights.sum(-1), torch.ones(model.cfg.n_heads, 12))
        assert (weights.triu(diagonal=1) == 0).all()  # the causal mask: nothing from later tokens
    # Peaked, not uniform: a wrong head or a wrong scale would show.
    assert max(float(w.max()) for w in trace.attention[1:]) > 0.9


def test_grouped_query_heads_read_their_own_key_head():
    """The recomputation with consecutive query heads sharing a key head matches; interleaved
    sharing (h % n_kv_heads) does not, so the grouping is pinned down, not just the shapes."""
    model = random_model(LLAMA_STYLE)
    _, trace = traced_forward(model, random_ids(10))
    kv = LLAMA_STYLE.kv_heads
    interleaved = attention_by_hand(model, 0, trace.embeddings, key_head=lambda h: h % kv)
    group = LLAMA_STYLE.n_heads // kv
    moved = [h for h in range(LLAMA_STYLE.n_heads) if h // group != h % kv]
    assert moved
    for h in moved:
        assert (trace.attention[0][0, h] - interleaved[h]).abs().max() > 1e-2


def test_inspection_groups_query_heads_by_their_key_head():
    model = random_model(LLAMA_STYLE)
    ids = random_ids(9)
    _, trace = traced_forward(model, ids)
    inspection = inspect_ids(model, get_tokenizer("byte"), ids)
    group = LLAMA_STYLE.n_heads // LLAMA_STYLE.kv_heads
    for layer in range(LLAMA_STYLE.n_layers):
        for h in range(LLAMA_STYLE.n_heads):
            expected = trace.attention[layer][0, h].numpy()
            np.testing.assert_array_equal(inspection.attention[layer, h // group, h % group], expected)
            np.testing.assert_array_equal(inspection.head(layer, h), expected)


@pytest.mark.parametrize("kind", list(CONFIGS))
def test_sdpa_stays_on_unless_a_trace_is_asked_for_and_the_logits_agree(kind: str, sdpa: CountingSDPA):
    model = random_model(CONFIGS[kind])
    idx = torch.tensor([random_ids(16)])
    with torch.no_grad():
        plain = model(idx)
        assert sdpa.calls == model.cfg.n_layers  # the default path: SDPA in every layer
        trace = Trace()
        traced = model(idx, trace=trace)
    assert sdpa.calls == model.cfg.n_layers  # the traced pass: not once
    assert len(trace.attention) == model.cfg.n_layers
    torch.testing.assert_close(traced, plain, atol=1e-5, rtol=1e-5)


def test_a_trace_works_with_the_kv_cache_and_decodes_the_same(sdpa: CountingSDPA):
    """Prompt then one cached token: the traced cached pass gives the plain cached logits, and its
    one query row spans every cached position."""
    model = random_model(LLAMA_STYLE)
    ids = torch.tensor([random_ids(9)])
    with torch.no_grad():
        cache = model.new_kv_cache(1, 16)
        model(ids[:, :8], kv_cache=cache)
        plain = model(ids[:, 8:], kv_cache=cache)
        cache, trace = model.new_kv_cache(1, 16), Trace()
        model(ids[:, :8], kv_cache=cache, trace=Trace())
        traced = model(ids[:, 8:], kv_cache=cache, trace=trace)
        _, whole = traced_forward(model, ids[0].tolist())
    assert sdpa.calls == 2 * LLAMA_STYLE.n_layers  # the two plain passes only
    torch.testing.assert_close(traced, plain, atol=1e-5, rtol=1e-5)
    for layer in range(LLAMA_STYLE.n_layers):
        assert trace.attention[layer].shape == (1, LLAMA_STYLE.n_heads, 1, 9)
        torch.testing.assert_close(trace.attention[layer][0, :, 0], whole.attention[layer][0, :, 8], atol=1e-6,
                                   rtol=1e-5)


def test_residuals_are_the_blocks_outputs_of_an_untraced_pass():
    model = random_model(GPT2_STYLE)
    idx = torch.tensor([random_ids(10)])
    outputs: list[torch.Tensor] = []
    handles = [block.register_forward_hook(lambda _m, _i, out: outputs.append(out)) for block in model.trf_blocks]
    with torch.no_grad():
        model(idx)
    for handle in handles:
        handle.remove()
    _, trace = traced_forward(model, idx[0].tolist())
    torch.testing.assert_close(trace.embeddings, model.tok_emb(idx) + model.pos_emb(torch.arange(10)))
    for ours, hooked in zip(trace.residuals, outputs, strict=True):
        torch.testing.assert_close(ours, hooked, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kind", ["gpt2", "llama"])
def test_the_logit_lens_of_each_layer_is_the_model_cut_after_it(kind: str):
    model = random_model(CONFIGS[kind])
    ids = random_ids(11)
    logits, trace = traced_forward(model, ids)
    with torch.no_grad():
        torch.testing.assert_close(lens_logits(model, trace.residuals[-1]), logits, atol=0, rtol=0)
        for layer in range(model.cfg.n_layers - 1):
            cut = copy.deepcopy(model)
            cut.trf_blocks = cut.trf_blocks[: layer + 1]
            torch.testing.assert_close(lens_logits(model, trace.residuals[layer]), cut(torch.tensor([ids])),
                                       atol=1e-5, rtol=1e-5)
    inspection = inspect_ids(model, get_tokenizer("byte"), ids)
    np.testing.assert_array_equal(inspection.lens_ids[-1], inspection.top_ids)
    # Several layers go through the head in one product: equal up to float rounding.
    np.testing.assert_allclose(inspection.lens_probs[-1], inspection.top_probs, rtol=1e-5, atol=1e-7)
    assert (inspection.lens_ids[0] != inspection.lens_ids[-1]).any()  # the layers do differ


def test_losses_and_top_k_are_those_of_the_plain_pass():
    model = random_model(GPT2_STYLE)
    ids = random_ids(14)
    with torch.no_grad():
        log_probs = torch.log_softmax(model(torch.tensor([ids]))[0], dim=-1)
    inspection = inspect_ids(model, get_tokenizer("byte"), ids, k=3)
    assert math.isnan(inspection.losses[0])
    expected = [-float(log_probs[i - 1, ids[i]]) for i in range(1, 14)]
    np.testing.assert_allclose(inspection.losses[1:], expected, rtol=1e-5)
    probs, top = log_probs.exp().topk(3, dim=-1)
    np.testing.assert_array_equal(inspection.top_ids, top.numpy())
    np.testing.assert_allclose(inspection.top_probs, probs.numpy(), rtol=1e-5)


def test_top_k_never_names_ids_the_tokenizer_cannot_write():
    model = random_model(dataclasses.replace(GPT2_STYLE, vocab_size=300))  # 257 byte ids, 43 padding rows
    with torch.no_grad():
        model.out_head.weight[257:] = model.out_head.weight[:43] * 50  # padding rows that would win
    inspection = inspect_ids(model, get_tokenizer("byte"), random_ids(8, vocab=256), k=5)
    assert inspection.top_ids.max() < 257 and inspection.lens_ids.max() < 257


# --- the book's example: the grid drawn and read back --------------------------------------------


@pytest.fixture(scope="module")
def book_inspection():
    model = random_model(dataclasses.replace(GPT2_STYLE, vocab_size=50257, context_length=16), seed=3)
    return inspect_text(model, get_tokenizer("gpt2"), BOOK_EXAMPLE, k=4, source="tiny")


def test_the_book_example_grid_prints_the_tensors_weights(book_inspection, tmp_path: Path):
    ins = book_inspection
    assert ins.tokens == ["Your", " journey", " starts", " with", " one", " step"]
    labels = ["Your", "journey", "starts", "with", "one", "step"]
    for layer in range(ins.n_layers):
        figure = attention_figure(ins, layer)
        heads = [ax for ax in figure.axes if ax.images]
        assert len(heads) == ins.n_heads
        for h, ax in enumerate(heads):
            weights = ins.head(layer, h)
            assert [t.get_text() for t in ax.get_xticklabels()] == labels
            assert [t.get_text() for t in ax.get_yticklabels()] == labels
            np.testing.assert_array_equal(ax.images[0].get_array(), weights)
            printed = {(round(t.get_position()[1]), round(t.get_position()[0])): t.get_text() for t in ax.texts}
            expected = {(q, k): f"{weights[q, k]:.2f}" for q in range(6) for k in range(q + 1)}
            assert printed == expected  # every weight on and below the diagonal, none above it
    path = save_png(attention_figure(ins, 0), tmp_path / "grid.png")
    assert imread(path).shape[2] == 4 and imread(path).shape[0] > 300


def test_the_npz_holds_the_tensors(book_inspection, tmp_path: Path):
    ins = book_inspection
    saved = np.load(ins.save_npz(tmp_path / "inspection.npz"), allow_pickle=False)
    np.testing.assert_array_equal(saved["attention"], ins.attention)
    np.testing.assert_array_equal(saved["losses"], ins.losses)
    np.testing.assert_array_equal(saved["lens_ids"], ins.lens_ids)
    assert saved["tokens"].tolist() == ins.tokens and saved["token_ids"].tolist() == ins.token_ids.tolist()
    assert (int(saved["n_heads"]), int(saved["n_kv_heads"])) == (4, 4)


def test_the_loss_picture_prints_each_tokens_loss(book_inspection):
    figure = loss_figure(book_inspection)
    texts = [t.get_text() for t in figure.texts][: 2 * len(book_inspection.tokens)]  # then the title
    assert texts[0::2] == book_inspection.tokens
    assert texts[1::2] == ["–"] + [f"{loss:.2f}" for loss in book_inspection.losses[1:]]


# --- the page ------------------------------------------------------------------------------------


class Fetches(HTMLParser):
    """Every attribute of the page that could load something from elsewhere."""

    def __init__(self) -> None:
        super().__init__()
        self.found: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for name, value in attrs:
            if name in ("src", "href") or (tag == "link"):
                self.found.append(f"<{tag} {name}={value!r}>")


def test_the_page_is_one_file_whose_numbers_are_the_tensors(book_inspection):
    page = html_page(book_inspection)
    parser = Fetches()
    parser.feed(page)
    assert parser.found == []
    assert not re.search(r"https?://|url\(|@import", page)
    payload = re.search(r"<script type='application/json' id='attention-data'>(.*?)</script>", page, re.S).group(1)
    data = json.loads(payload)
    for layer in range(book_inspection.n_layers):
        for h in range(book_inspection.n_heads):
            weights = book_inspection.head(layer, h)
            rows = data["attention"][layer][h]
            assert [len(row) for row in rows] == [1, 2, 3, 4, 5, 6]  # the causal part of each row
            np.testing.assert_allclose([v for row in rows for v in row], weights[np.tril_indices(6)], atol=5e-5)
    for loss in book_inspection.losses[1:]:
        assert f"loss {loss:.3f} nats" in page
    assert "Logit lens" in page and "Top-4 next tokens" in page


def test_a_long_text_keeps_its_attention_off_the_page():
    model = random_model(dataclasses.replace(GPT2_STYLE, context_length=ATTENTION_ON_PAGE_UP_TO + 8))
    inspection = inspect_ids(model, get_tokenizer("byte"), random_ids(ATTENTION_ON_PAGE_UP_TO + 1))
    page = html_page(inspection)
    assert "attention-data" not in page and "<script" not in page
    assert f"{ATTENTION_ON_PAGE_UP_TO + 1} tokens: more than the {ATTENTION_ON_PAGE_UP_TO}" in page
    assert "Logit lens" in page


def test_the_served_page_is_the_form_the_inspection_or_one_error_line():
    llm_model = random_model(dataclasses.replace(LLAMA_STYLE, vocab_size=257))
    byte = get_tokenizer("byte")
    status, form = served_page(llm_model, byte, "tiny", None, 5)
    assert status == 200 and "<form" in form and "attention-data" not in form
    status, page = served_page(llm_model, byte, "tiny", "Hello", 3)
    assert status == 200 and "<form" in page and "Top-3 next tokens" in page
    expected = inspect_text(llm_model, byte, "Hello", 3)
    for loss in expected.losses[1:]:
        assert f"loss {loss:.3f} nats" in page
    for prompt, message in [("", "the text to inspect is empty"), ("x" * 40, "has 40 tokens but the model reads at most 32"),
                            ("x" * (SERVED_MAX_TOKENS + 1), f"/inspect takes at most {SERVED_MAX_TOKENS}")]:
        status, page = served_page(llm_model, byte, "tiny", prompt, 3)
        assert status == 400 and re.search(f"<p class='error'>[^<]*{re.escape(message)}[^<]*</p>", page)


# --- gptlab-inspect ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_export(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_model(random_model(dataclasses.replace(LLAMA_STYLE, vocab_size=257)),
                      tmp_path_factory.mktemp("inspect") / "model")


def test_the_command_writes_grids_loss_npz_and_page(tiny_export: Path, tmp_path: Path, capsys):
    out = tmp_path / "out"
    assert inspect_main([str(tiny_export), "--prompt", "Hello", "--out", str(out), "--layers", "0,2",
                         "--top-k", "3"]) == 0
    printed = capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir()) == [
        "attention-layer-00.png", "attention-layer-02.png", "inspection.html", "inspection.npz", "loss.png"]
    llm = LLM.load(tiny_export)
    expected = inspect_text(llm.model, llm.tokenizer, "Hello", 3)
    saved = np.load(out / "inspection.npz")
    np.testing.assert_allclose(saved["attention"], expected.attention, atol=1e-6)
    assert saved["attention"].shape == (3, 2, 3, 5, 5)
    for i, token in enumerate("Hello"):
        assert f"{token!r}" in printed.splitlines()[i + 1]


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["{model}", "--prompt", ""], "the text to inspect is empty"),
        (["{model}", "--prompt", "x" * 40], "has 40 tokens but the model reads at most 32"),
        (["{model}", "--prompt", "x", "--layers", "3"], "layer 3 does not exist; the model has 3 layers, 0 to 2"),
        (["{model}", "--prompt", "x", "--layers", "first"], "--layers takes layer numbers"),
        (["{model}", "--prompt", "x", "--top-k", "0"], "top-k must be a positive integer"),
        (["{model}", "--file", "/no/such/text.txt"], "--file /no/such/text.txt is not a file"),
        (["no-such-model", "--prompt", "x"], "unknown model 'no-such-model'"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(tiny_export: Path, tmp_path: Path, capsys, args: list[str], expected: str):
    args = [a.format(model=tiny_export) for a in args] + ["--out", str(tmp_path / "out")]
    assert inspect_main(args) == 2
    out, err = capsys.readouterr()
    assert out == "" and not (tmp_path / "out").exists()
    assert err.startswith("gptlab-inspect: error: ") and err.count("\n") == 1
    assert expected in err


def test_gptlab_serve_shows_the_page_at_inspect(tiny_export: Path):
    llm = LLM.load(tiny_export)
    expected = inspect_text(llm.model, llm.tokenizer, "Hello", 3)
    with live_server(llm, model_id="tiny", start_engine=False) as live:
        form = urlopen(f"{live.url}/inspect").read().decode()
        page = urlopen(f"{live.url}/inspect?" + urlencode({"prompt": "Hello", "top_k": 3})).read().decode()
        with pytest.raises(HTTPError) as empty:
            urlopen(f"{live.url}/inspect?prompt=")
    assert "<form" in form and "attention-data" not in form
    assert "gptlab-inspect: tiny" in page and "Top-3 next tokens" in page
    data = json.loads(re.search(r"id='attention-data'>(.*?)</script>", page, re.S).group(1))
    np.testing.assert_allclose(data["attention"][2][5][4], expected.head(2, 5)[4, :5], atol=5e-5)
    assert empty.value.code == 400 and "the text to inspect is empty" in empty.value.read().decode()


def test_inspect_asks_for_the_servers_api_key(tiny_export: Path):
    with live_server(LLM.load(tiny_export), model_id="tiny", api_key="s3cret", start_engine=False) as live:
        with pytest.raises(HTTPError) as refused:
            urlopen(f"{live.url}/inspect?prompt=Hi")
        allowed = urlopen(Request(f"{live.url}/inspect?prompt=Hi", headers={"Authorization": "Bearer s3cret"}))
    assert refused.value.code == 401 and allowed.status == 200


# --- the real model against transformers ---------------------------------------------------------


@pytest.mark.slow
@pytest.mark.xdist_group("smollm2_inspect")
def test_real_attention_equals_transformers_eager_attention(smollm2_gguf: Path, reference: Any):
    """SmolLM2-135M-Instruct (RoPE, 9 query heads over 3 key/value heads): every layer's weights
    equal ``transformers``' ``output_attentions`` from its eager attention, on its own tokens."""
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(smollm2_gguf.parent, gguf_file=smollm2_gguf.name, dtype=torch.float32,
                                              attn_implementation="eager").eval()
    llm = LLM.load("smollm2-135m-instruct", device="cpu")
    text = "The old lighthouse keeper climbed the spiral stairs every evening."
    ids = reference(text, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        expected = hf(torch.tensor([ids]), output_attentions=True)
    inspection = inspect_ids(llm.model, llm.tokenizer, ids, k=5)
    assert len(expected.attentions) == inspection.n_layers == 30 and (inspection.n_heads, inspection.n_kv_heads) == (9, 3)
    worst = 0.0
    for layer, theirs in enumerate(expected.attentions):
        ours = np.stack([inspection.head(layer, h) for h in range(9)])
        worst = max(worst, float(np.abs(ours - theirs[0].numpy()).max()))
    assert worst <= 1e-4
    log_probs = torch.log_softmax(expected.logits[0], dim=-1)
    np.testing.assert_allclose(inspection.losses[1:], [-float(log_probs[i - 1, ids[i]]) for i in range(1, len(ids))],
                               atol=5e-4)
    assert inspection.top_ids[:, 0].tolist() == expected.logits[0].argmax(-1).tolist()
