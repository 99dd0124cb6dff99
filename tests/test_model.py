"""The from-scratch model against the book's worked examples and PyTorch's own reference ops."""

import math

import pytest
import transformers
import torch
from torch import nn

from gptlab import GPT, GPTConfig, model_size
from gptlab.errors import ConfigError
from gptlab.model import GELU, FeedForward, LayerNorm, MultiHeadAttention

GPT_CONFIG_124M = {  # the book's config dict, verbatim
    "vocab_size": 50257,
    "context_length": 1024,
    "emb_dim": 768,
    "n_heads": 12,
    "n_layers": 12,
    "drop_rate": 0.1,
    "qkv_bias": False,
}

BOOK_INPUTS = torch.tensor(  # "Your journey starts with one step" embeddings, book section 3.3
    [[0.43, 0.15, 0.89], [0.55, 0.87, 0.66], [0.57, 0.85, 0.64],
     [0.22, 0.58, 0.33], [0.77, 0.25, 0.10], [0.05, 0.80, 0.55]]
)
BOOK_MHA_OUTPUT = torch.tensor(  # printed in section 3.6.2 after torch.manual_seed(123)
    [[0.3190, 0.4858], [0.2943, 0.3897], [0.2856, 0.3593],
     [0.2693, 0.3873], [0.2639, 0.3928], [0.2575, 0.4028]]
)


@pytest.mark.parametrize("backend", ["sdpa", "manual"])
def test_multi_head_attention_reproduces_the_book(backend):
    torch.manual_seed(123)
    batch = torch.stack((BOOK_INPUTS, BOOK_INPUTS), dim=0)
    mha = MultiHeadAttention(3, 2, context_length=6, dropout=0.0, num_heads=2, backend=backend)
    out = mha(batch)
    assert out.shape == (2, 6, 2)
    torch.testing.assert_close(out[0], BOOK_MHA_OUTPUT, atol=1e-4, rtol=0)
    torch.testing.assert_close(out[1], BOOK_MHA_OUTPUT, atol=1e-4, rtol=0)


def test_layer_norm_equals_torch_layer_norm():
    x = torch.randn(2, 5, 16)
    ours, ref = LayerNorm(16), nn.LayerNorm(16)
    with torch.no_grad():
        ours.scale.uniform_(0.5, 1.5), ours.shift.uniform_(-1, 1)
        ref.weight.copy_(ours.scale), ref.bias.copy_(ours.shift)
    torch.testing.assert_close(ours(x), ref(x))
    plain = LayerNorm(16)(x)  # the book's check: zero mean, unit (biased) variance
    torch.testing.assert_close(plain.mean(-1), torch.zeros(2, 5), atol=1e-5, rtol=0)
    torch.testing.assert_close(plain.var(-1, unbiased=False), torch.ones(2, 5), atol=1e-3, rtol=0)


def test_gelu_is_the_books_tanh_approximation():
    x = torch.linspace(-6, 6, 1201, dtype=torch.float64)
    book = 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * torch.pow(x, 3))))
    torch.testing.assert_close(GELU()(x), book, atol=1e-12, rtol=0)
    assert float(GELU()(torch.tensor(1.0))) == pytest.approx(0.841192, abs=1e-6)  # vs exact GELU 0.841345


def test_feed_forward_keeps_the_shape():
    assert FeedForward(768)(torch.rand(2, 3, 768)).shape == (2, 3, 768)


def test_book_config_dict_and_parameter_counts():
    # Book section 4.6: 163,009,536 parameters, 124,412,160 without the output head, 621.83 MB.
    cfg = GPTConfig(**GPT_CONFIG_124M)
    assert cfg == GPTConfig.from_preset("gpt2-small")
    with torch.device("meta"):
        model = GPT(cfg)
    size = model_size(model)
    assert size.total_params == 163_009_536
    assert size.params_without_out_head == 124_412_160
    assert f"{size.size_mb:.2f}" == "621.83"


@pytest.mark.parametrize(
    "preset, params",  # the released GPT-2 checkpoints: tied head, qkv bias
    [("gpt2-medium", 354_823_168), ("gpt2-large", 774_030_080), ("gpt2-xl", 1_557_611_200)],
)
def test_larger_presets_have_the_gpt2_sizes(preset, params):
    with torch.device("meta"):
        model = GPT(GPTConfig.from_preset(preset, tie_embeddings=True, qkv_bias=True))
    assert model_size(model).total_params == params


def test_forward_returns_logits_for_every_position():
    torch.manual_seed(0)
    model = GPT(GPTConfig.from_preset("nano"))
    idx = torch.tensor([[6109, 3626, 6100, 345], [6109, 1110, 6622, 257]])  # the book's batch
    assert model(idx).shape == (2, 4, 50257)


def test_tied_embeddings_share_one_tensor():
    model = GPT(GPTConfig.from_preset("nano", tie_embeddings=True))
    assert model.out_head.weight is model.tok_emb.weight
    untied = GPT(GPTConfig.from_preset("nano", tie_embeddings=False))
    assert model_size(untied).total_params - model_size(model).total_params == 50257 * 64


def test_attention_backends_agree_with_and_without_padding():
    torch.manual_seed(0)
    sdpa = GPT(GPTConfig.from_preset("nano", drop_rate=0.0, attention="sdpa")).eval()
    manual = GPT(GPTConfig.from_preset("nano", drop_rate=0.0, attention="manual")).eval()
    manual.load_state_dict(sdpa.state_dict())
    idx = torch.randint(0, 50257, (3, 40))
    torch.testing.assert_close(sdpa(idx), manual(idx), atol=1e-5, rtol=0)
    mask = torch.ones(3, 40, dtype=torch.long)
    mask[1, :7] = 0  # left padding
    mask[2, :30] = 0
    torch.testing.assert_close(sdpa(idx, attention_mask=mask), manual(idx, attention_mask=mask), atol=1e-5, rtol=0)


def test_causality_future_tokens_do_not_change_past_logits():
    torch.manual_seed(0)
    model = GPT(GPTConfig.from_preset("nano", drop_rate=0.0)).eval()
    idx = torch.randint(0, 50257, (1, 20))
    changed = idx.clone()
    changed[0, 10:] = torch.randint(0, 50257, (10,))
    torch.testing.assert_close(model(idx)[:, :10], model(changed)[:, :10])


def test_kv_cache_prefill_then_steps_equals_full_forward():
    torch.manual_seed(0)
    model = GPT(GPTConfig.from_preset("nano", drop_rate=0.0)).eval()
    idx = torch.randint(0, 50257, (2, 24))
    full = model(idx)
    cache = model.new_kv_cache(batch_size=2)
    parts = [model(idx[:, :10], kv_cache=cache), model(idx[:, 10:17], kv_cache=cache)]
    parts += [model(idx[:, i:i + 1], kv_cache=cache) for i in range(17, 24)]
    torch.testing.assert_close(torch.cat(parts, dim=1), full, atol=1e-5, rtol=0)
    assert cache.length == 24


def test_config_errors_are_one_clear_line():
    with pytest.raises(ConfigError, match="unknown model preset 'gpt5'; valid presets: gpt2-small"):
        GPTConfig.from_preset("gpt5")
    with pytest.raises(ConfigError, match=r"unknown model config key\(s\) \['emb_size'\]"):
        GPTConfig.from_dict({"preset": "nano", "emb_size": 3})
    with pytest.raises(ConfigError, match="not divisible"):
        GPTConfig(emb_dim=100, n_heads=3)
    model = GPT(GPTConfig.from_preset("nano"))
    with pytest.raises(ConfigError, match="exceeds the model's context_length 64"):
        model(torch.zeros(1, 65, dtype=torch.long))


def test_gpt2_init_matches_transformers_gpt2_statistics():
    """Every tensor's mean and std against ``transformers``' own GPT-2 initialisation, including the
    residual projections scaled by 1 / sqrt(2 * n_layers)."""
    from gptlab.checkpoints import from_hf_state_dict

    sizes = dict(vocab_size=1000, context_length=128, emb_dim=128, n_heads=4, n_layers=6)
    torch.manual_seed(0)
    hf = transformers.GPT2LMHeadModel(transformers.GPT2Config(
        vocab_size=1000, n_positions=128, n_embd=128, n_head=4, n_layer=6, bos_token_id=0, eos_token_id=0))
    reference = from_hf_state_dict(hf.state_dict(), n_layers=6)
    ours = GPT(GPTConfig(**sizes, qkv_bias=True, tie_embeddings=True, weight_init="gpt2")).state_dict()
    assert set(ours) == set(reference)
    for name, expected in reference.items():
        got = ours[name]
        torch.testing.assert_close(got.std(), expected.std(), rtol=0.05, atol=1e-6, msg=name)
        sampling_error = 6 * expected.std().item() / got.numel() ** 0.5  # of the difference of two means
        torch.testing.assert_close(got.mean(), expected.mean(), rtol=0, atol=sampling_error + 1e-6, msg=name)
    # The scaled projections are really distinguished: 0.02 / sqrt(12) against 0.02.
    assert reference["trf_blocks.0.att.out_proj.weight"].std() < 0.35 * reference["trf_blocks.0.att.W_query.weight"].std()


def test_book_init_is_pytorchs_default_and_unknown_init_is_refused():
    torch.manual_seed(0)
    book = GPT(GPTConfig.from_preset("nano", weight_init="book"))
    # The book's GPTModel keeps PyTorch's defaults: N(0, 1) embeddings, U(-1/sqrt(in), 1/sqrt(in)) linears.
    assert abs(book.tok_emb.weight.std().item() - 1.0) < 0.02
    linear = book.trf_blocks[0].ff.layers[0]
    bound = 1 / linear.in_features ** 0.5
    assert linear.weight.abs().max() <= bound and linear.weight.abs().max() > 0.95 * bound
    assert torch.count_nonzero(linear.bias) > 0
    with pytest.raises(ConfigError, match="weight_init='xavier' is unknown"):
        GPTConfig.from_preset("nano", weight_init="xavier")
