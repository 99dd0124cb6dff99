"""The Llama-style layers and flags against independent references: ``torch.nn.RMSNorm``, SwiGLU
written out, ``transformers``' rotary embedding and Llama 3 frequency scaling, grouped-query attention
as plain multi-head attention with repeated key/value weights, the published parameter counts, and
greedy decoding that agrees with and without the KV cache for every combination of the flags."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from helpers.decoding import left_padded
from torch.utils.flop_counter import FlopCounterMode

from gptlab import GPT, GPTConfig, generate, model_size
from gptlab.errors import ConfigError
from gptlab.model import MultiHeadAttention, RMSNorm, RotaryEmbedding, SwiGLUFeedForward
from gptlab.model.flops import flops_per_token
from gptlab.model.rope import apply_rope, inverse_frequencies

#: Llama 3.2's RoPE scaling (its config.json), and a version whose three frequency bands all occur
#: in an 8-dim head at base 10000 (wavelengths 6.3, 63, 628 and 6283 positions).
LLAMA32_SCALING = {"factor": 32.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_context_length": 8192}
SMALL_SCALING = {"factor": 4.0, "low_freq_factor": 1.0, "high_freq_factor": 16.0, "original_context_length": 1000}

VOCAB, CTX = 96, 32


def hf_rope_config(head_dim: int, base: float, scaling: dict[str, float] | None, positions: int = 64):
    """A ``transformers`` LlamaConfig with only the rotary settings that matter here."""
    from transformers import LlamaConfig

    rope = {"rope_type": "default", "rope_theta": base}
    if scaling is not None:
        rope = {"rope_type": "llama3", "rope_theta": base, "factor": scaling["factor"],
                "low_freq_factor": scaling["low_freq_factor"], "high_freq_factor": scaling["high_freq_factor"],
                "original_max_position_embeddings": scaling["original_context_length"]}
    return LlamaConfig(hidden_size=4 * head_dim, num_attention_heads=4, head_dim=head_dim,
                       max_position_embeddings=positions, rope_parameters=rope)


# ----------------------------------------------------------------------------------------------
# Layers


def test_rms_norm_equals_torch_rms_norm_and_the_formula():
    torch.manual_seed(0)
    x, weight = torch.randn(2, 5, 16) * 3 + 1, torch.randn(16)
    ours = RMSNorm(16, eps=1e-6)
    reference = torch.nn.RMSNorm(16, eps=1e-6)
    with torch.no_grad():
        ours.scale.copy_(weight)
        reference.weight.copy_(weight)
    by_hand = x / torch.sqrt(x.pow(2).mean(dim=-1, keepdim=True) + 1e-6) * weight
    torch.testing.assert_close(ours(x), reference(x))
    torch.testing.assert_close(ours(x), by_hand)
    assert set(dict(ours.named_parameters())) == {"scale"}  # no shift, no mean subtracted
    # A bfloat16 model keeps bfloat16 activations; the statistic itself is taken in float32.
    half = ours.bfloat16()(x.bfloat16())
    assert half.dtype == torch.bfloat16
    torch.testing.assert_close(half.float(), by_hand, atol=0.05, rtol=0.02)


def test_swiglu_is_the_gated_formula_written_out():
    torch.manual_seed(0)
    ff = SwiGLUFeedForward(12, hidden_dim=20, bias=True)
    x = torch.randn(3, 4, 12)

    def linear(layer: torch.nn.Linear, inputs: torch.Tensor) -> torch.Tensor:
        return inputs @ layer.weight.T + layer.bias

    gate = linear(ff.fc1, x)
    silu = gate / (1 + torch.exp(-gate))  # x * sigmoid(x)
    expected = linear(ff.fc3, silu * linear(ff.fc2, x))
    torch.testing.assert_close(ff(x), expected)
    assert ff.output_projection is ff.fc3
    assert SwiGLUFeedForward(12, 20, bias=False).fc1.bias is None


# ----------------------------------------------------------------------------------------------
# Rotary position embeddings


@pytest.mark.parametrize("scaling", [None, SMALL_SCALING], ids=["plain", "llama3"])
def test_rope_equals_transformers_llama_rotary_embedding(scaling):
    from transformers.models.llama.modeling_llama import (
        LlamaRotaryEmbedding,
        apply_rotary_pos_emb,
    )

    head_dim, base = 8, 10000.0
    torch.manual_seed(0)
    q, k = torch.randn(2, 3, 10, head_dim), torch.randn(2, 1, 10, head_dim)
    # Per-row positions, as a left-padded batch has them: row 1 starts 4 positions later.
    positions = torch.stack([torch.arange(10), torch.arange(10) + 4])
    cos_ref, sin_ref = LlamaRotaryEmbedding(hf_rope_config(head_dim, base, scaling))(q, positions)
    q_ref, k_ref = apply_rotary_pos_emb(q, k, cos_ref, sin_ref)

    rope = RotaryEmbedding(head_dim, context_length=64, base=base, scaling=scaling)
    cos, sin = rope(positions)
    torch.testing.assert_close(apply_rope(q, cos, sin), q_ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(apply_rope(k, cos, sin), k_ref, atol=1e-5, rtol=1e-5)
    # The same positions for every row: one table broadcast over the batch.
    cos_ref, sin_ref = LlamaRotaryEmbedding(hf_rope_config(head_dim, base, scaling))(q, positions[:1].expand(2, -1))
    q_ref, _ = apply_rotary_pos_emb(q, k, cos_ref, sin_ref)
    torch.testing.assert_close(apply_rope(q, *rope(torch.arange(10))), q_ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("head_dim, base, scaling", [(64, 500000.0, LLAMA32_SCALING), (8, 10000.0, SMALL_SCALING)])
def test_llama3_inverse_frequencies_equal_transformers(head_dim, base, scaling):
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    expected, attention_factor = ROPE_INIT_FUNCTIONS["llama3"](hf_rope_config(head_dim, base, scaling))
    assert attention_factor == 1.0
    ours = inverse_frequencies(head_dim, base, scaling)
    torch.testing.assert_close(ours, expected, atol=0, rtol=1e-6)
    # Every band of the scaling occurs: kept, slowed down by `factor`, and blended in between.
    plain = inverse_frequencies(head_dim, base)
    ratio = plain / ours
    assert (ratio == 1).any() and torch.isclose(ratio, torch.tensor(scaling["factor"])).any()
    assert ((ratio > 1.01) & (ratio < scaling["factor"] * 0.99)).any()


def test_rotated_dot_product_depends_only_on_the_distance():
    torch.manual_seed(0)
    rope = RotaryEmbedding(16, context_length=128, base=10000.0)
    q, k = torch.randn(1, 1, 1, 16), torch.randn(1, 1, 1, 16)

    def score(m: int, n: int) -> float:
        return float((apply_rope(q, *rope(torch.tensor([m]))) * apply_rope(k, *rope(torch.tensor([n])))).sum())

    for distance in (0, 3, 17):
        scores = [score(start + distance, start) for start in (0, 5, 40, 100)]
        assert max(scores) - min(scores) < 1e-4, (distance, scores)
    assert abs(score(3, 0) - score(20, 0)) > 1e-2  # while the distance itself does matter
    assert torch.equal(apply_rope(q, *rope(torch.tensor([0]))), q)  # position 0 is no rotation


# ----------------------------------------------------------------------------------------------
# Grouped-query attention


def _repeat_heads(weight: torch.Tensor, kv_heads: int, groups: int) -> torch.Tensor:
    """A key/value projection's rows, head by head, each head repeated for its group of queries."""
    per_head = weight.reshape(kv_heads, -1, *weight.shape[1:])
    return per_head.repeat_interleave(groups, dim=0).reshape(-1, *weight.shape[1:])


@pytest.mark.parametrize("backend", ["sdpa", "manual"])
@pytest.mark.parametrize("kv_heads", [2, 1])
def test_grouped_query_attention_is_multi_head_attention_with_shared_key_value_heads(backend, kv_heads):
    torch.manual_seed(0)
    heads, head_dim, d = 4, 8, 24
    gqa = MultiHeadAttention(d, d, context_length=16, dropout=0.0, num_heads=heads, qkv_bias=True,
                             backend=backend, num_kv_heads=kv_heads, head_dim=head_dim).eval()
    mha = MultiHeadAttention(d, d, context_length=16, dropout=0.0, num_heads=heads, qkv_bias=True,
                             backend=backend, head_dim=head_dim).eval()
    assert gqa.W_key.weight.shape == (kv_heads * head_dim, d)
    with torch.no_grad():
        for name in ("W_query", "out_proj"):
            getattr(mha, name).load_state_dict(getattr(gqa, name).state_dict())
        for name in ("W_key", "W_value"):
            for param in ("weight", "bias"):
                value = _repeat_heads(getattr(getattr(gqa, name), param), kv_heads, heads // kv_heads)
                getattr(getattr(mha, name), param).copy_(value)
    x = torch.randn(2, 11, d)
    rope = RotaryEmbedding(head_dim, 16)(torch.arange(11))
    with torch.no_grad():
        torch.testing.assert_close(gqa(x), mha(x), atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(gqa(x, rope=rope), mha(x, rope=rope), atol=1e-6, rtol=1e-5)


def test_kv_cache_holds_only_the_key_value_heads():
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=VOCAB, context_length=CTX, emb_dim=32, n_heads=4, n_kv_heads=2,
                          n_layers=2, drop_rate=0.0, pos_emb="rope", norm="rmsnorm")).eval()
    cache = model.new_kv_cache(batch_size=3)
    for layer in cache.layers:
        assert layer.keys.shape == layer.values.shape == (3, 2, CTX, 8)
    idx = torch.randint(0, VOCAB, (3, 7))
    with torch.no_grad():
        model(idx, kv_cache=cache)
        block = model.trf_blocks[0]
        positions = torch.arange(7)
        _, keys, values = block.att.project(block.norm1(model.embed(idx, positions)), model.rope(positions))
    torch.testing.assert_close(cache.layers[0].keys[:, :, :7], keys)
    torch.testing.assert_close(cache.layers[0].values[:, :, :7], values)
    assert cache.length == 7


# ----------------------------------------------------------------------------------------------
# Every combination of the flags: cached, uncached and static-cache greedy decoding, both backends

MAIN_FLAGS = list(itertools.product(["layernorm", "rmsnorm"], ["gelu", "swiglu"], ["learned", "rope"],
                                    [None, 2], [False, True]))
#: The other switches, cycled over the combinations so each is on and off beside every main flag.
EXTRAS = [
    {},
    {"qkv_bias": True, "out_bias": False, "mlp_bias": False, "tie_embeddings": True},
    {"head_size": 16, "rope_scaling": {**SMALL_SCALING, "original_context_length": 16}},
    {"hidden_dim": 40, "tie_embeddings": True, "rope_base": 500.0, "out_bias": False},
    {"qkv_bias": True, "head_size": 12, "mlp_bias": False},
]
COMBINATIONS = [(*flags, EXTRAS[i % len(EXTRAS)]) for i, flags in enumerate(MAIN_FLAGS)]


def combination_id(combo) -> str:
    norm, mlp, pos, kv, qk, extra = combo
    return "-".join([norm, mlp, pos, f"kv{kv or 4}", "qknorm" if qk else "noqk", *sorted(extra)])


def tiny_model(attention: str = "sdpa", seed: int = 1, **flags) -> GPT:
    """A random model whose weights are large enough that greedy choices are never near-ties."""
    cfg = GPTConfig(vocab_size=VOCAB, context_length=CTX, emb_dim=32, n_heads=4, n_layers=2, drop_rate=0.0,
                    attention=attention, **flags)
    model = GPT(cfg)
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            param.normal_(1.0, 0.1) if name.endswith(".scale") else param.normal_(0.0, 0.3)
    return model.eval()


def prompt(length: int, seed: int = 1) -> torch.Tensor:
    return torch.randint(1, VOCAB, (1, length), generator=torch.Generator().manual_seed(seed))




def flags_of(combo) -> dict:
    norm, mlp, pos, kv, qk, extra = combo
    return {"norm": norm, "mlp": mlp, "pos_emb": pos, "n_kv_heads": kv, "qk_norm": qk, **extra}


@pytest.mark.parametrize("combo", COMBINATIONS, ids=[combination_id(c) for c in COMBINATIONS])
def test_greedy_is_the_same_with_without_and_with_a_static_cache(combo, eager_static_step):
    model = tiny_model(**flags_of(combo))
    idx = prompt(9)
    # 40 new tokens: past the context length of 32, so the window slides and the cache is re-read.
    cached = generate(model, idx, 40, use_cache=True)
    assert torch.equal(cached, generate(model, idx, 40, use_cache=False))
    assert torch.equal(cached, generate(model, idx, 40, compile=True))
    assert len(set(cached[0, 9:].tolist())) > 1  # a real continuation, not one repeated token
    # Logits too: a prefill, a chunk and single steps through the cache equal one full forward.
    idx = torch.randint(0, VOCAB, (2, 24), generator=torch.Generator().manual_seed(0))
    cache = model.new_kv_cache(batch_size=2)
    with torch.no_grad():
        steps = [model(idx[:, :10], kv_cache=cache), model(idx[:, 10:17], kv_cache=cache)]
        steps += [model(idx[:, i:i + 1], kv_cache=cache) for i in range(17, 24)]
        torch.testing.assert_close(torch.cat(steps, dim=1), model(idx), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("combo", COMBINATIONS, ids=[combination_id(c) for c in COMBINATIONS])
def test_attention_backends_agree_for_every_combination(combo):
    sdpa, manual = tiny_model("sdpa", **flags_of(combo)), tiny_model("manual", **flags_of(combo))
    manual.load_state_dict(sdpa.state_dict())
    batch, mask = left_padded([prompt(n, seed=n) for n in (5, 12, 20)])
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        torch.testing.assert_close(manual(batch), sdpa(batch), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(manual(batch, attention_mask=mask, position_ids=positions),
                                   sdpa(batch, attention_mask=mask, position_ids=positions), atol=1e-5, rtol=1e-5)


ROPE_MODELS = {
    "llama": {"norm": "rmsnorm", "mlp": "swiglu", "pos_emb": "rope", "n_kv_heads": 2, "out_bias": False,
              "mlp_bias": False, "tie_embeddings": True, "rope_scaling": {**SMALL_SCALING, "original_context_length": 16}},
    "qwen3": {"norm": "rmsnorm", "mlp": "swiglu", "pos_emb": "rope", "n_kv_heads": 1, "head_size": 16,
              "qk_norm": True, "out_bias": False, "mlp_bias": False},
    "gpt2-rope": {"pos_emb": "rope", "qkv_bias": True},
}


@pytest.mark.parametrize("name", list(ROPE_MODELS))
@pytest.mark.parametrize("mode", ["cache", "no-cache", "static"])
def test_left_padded_rope_batch_matches_each_prompt_alone(name, mode, eager_static_step):
    model = tiny_model(**ROPE_MODELS[name])
    options = {"cache": {}, "no-cache": {"use_cache": False}, "static": {"compile": True}}[mode]
    prompts = [prompt(n, seed=n) for n in (3, 8, 13)]
    batch, mask = left_padded(prompts)
    out = generate(model, batch, 25, attention_mask=mask, **options)  # the longest row slides past 32
    for row, p in enumerate(prompts):
        alone = generate(model, p, 25, **options)
        assert torch.equal(out[row, batch.shape[1]:], alone[0, p.shape[1]:]), f"row {row}"


@pytest.mark.slow
def test_compiled_static_decoding_equals_eager_with_every_llama_and_qwen3_switch_on():
    # One model, since each compile takes seconds: Llama's RoPE scaling and tied embeddings with
    # Qwen3's QK-norm, head size apart from emb_dim / n_heads, and a single key/value head.
    model = tiny_model(**{**ROPE_MODELS["llama"], **ROPE_MODELS["qwen3"]})
    assert model.cfg.rope_scaling and model.cfg.qk_norm and model.cfg.kv_heads == 1 and model.cfg.tie_embeddings
    batch, mask = left_padded([prompt(n, seed=n) for n in (2, 6, 11)])
    compiled = generate(model, batch, 15, attention_mask=mask, compile=True)
    assert torch.equal(compiled, generate(model, batch, 15, attention_mask=mask))


# ----------------------------------------------------------------------------------------------
# Presets, FLOPs and config validation


@pytest.mark.parametrize("preset, published", [("llama-3.2-1b", 1_235_814_400), ("qwen3-0.6b", 596_049_920),
                                               ("smollm2-135m", 134_515_008)])
def test_preset_parameter_counts_equal_the_published_and_transformers(preset, published):
    import transformers

    cfg = GPTConfig.from_preset(preset)
    hf_class, hf_config = {
        "llama-3.2-1b": (transformers.LlamaForCausalLM, transformers.LlamaConfig),
        "smollm2-135m": (transformers.LlamaForCausalLM, transformers.LlamaConfig),
        "qwen3-0.6b": (transformers.Qwen3ForCausalLM, transformers.Qwen3Config),
    }[preset]
    with torch.device("meta"):
        ours = GPT(cfg)
        reference = hf_class(hf_config(
            vocab_size=cfg.vocab_size, hidden_size=cfg.emb_dim, intermediate_size=cfg.hidden_dim,
            num_hidden_layers=cfg.n_layers, num_attention_heads=cfg.n_heads, num_key_value_heads=cfg.n_kv_heads,
            head_dim=cfg.head_dim, tie_word_embeddings=True))
    assert model_size(ours).total_params == published
    assert reference.num_parameters() == published


def test_llama_micro_and_mini_are_llama_shaped_at_their_gpt_budgets():
    for name, gpt_name in (("llama-micro", "micro"), ("llama-mini", "mini")):
        llama, gpt = GPTConfig.from_preset(name), GPTConfig.from_preset(gpt_name)
        assert (llama.norm, llama.mlp, llama.pos_emb) == ("rmsnorm", "swiglu", "rope")
        assert llama.kv_heads < llama.n_heads and not (llama.out_bias or llama.mlp_bias or llama.qkv_bias)
        sizes = [model_size(GPT(c)).total_params for c in (llama, gpt)]
        assert abs(sizes[0] - sizes[1]) / sizes[1] < 0.02, (name, sizes)


def test_flops_of_grouped_query_swiglu_model_equal_a_hand_count():
    d, heads, kv, head_dim, hidden, layers, vocab, t = 32, 4, 2, 16, 80, 2, VOCAB, CTX
    model = GPT(GPTConfig(vocab_size=vocab, context_length=t, emb_dim=d, n_heads=heads, n_kv_heads=kv,
                          head_size=head_dim, hidden_dim=hidden, n_layers=layers, drop_rate=0.0, norm="rmsnorm",
                          mlp="swiglu", pos_emb="rope", tie_embeddings=True, attention="manual"))
    per_layer = d * heads * head_dim + 2 * d * kv * head_dim + heads * head_dim * d + 3 * d * hidden
    weights = layers * per_layer + vocab * d  # the tied head multiplies once
    assert flops_per_token(model, t) == 6 * weights + 12 * layers * t * heads * head_dim
    assert flops_per_token(model, t, training=False) == 2 * weights + 4 * layers * t * heads * head_dim
    # And PyTorch's own counter agrees (the manual backend runs attention as plain matmuls).
    idx = torch.randint(0, vocab, (2, t))
    with FlopCounterMode(display=False) as counter:
        model(idx).sum().backward()
    assert counter.get_total_flops() == idx.numel() * flops_per_token(model, t)


@pytest.mark.parametrize("overrides, message", [
    ({"n_heads": 4, "n_kv_heads": 3}, "model.n_kv_heads=3 does not divide model.n_heads=4"),
    ({"norm": "batchnorm"}, "model.norm='batchnorm' is unknown; use one of ['layernorm', 'rmsnorm']"),
    ({"mlp": "relu"}, "model.mlp='relu' is unknown"),
    ({"pos_emb": "alibi"}, "model.pos_emb='alibi' is unknown"),
    ({"emb_dim": 36, "n_heads": 4, "pos_emb": "rope"}, "pos_emb=rope needs an even head size, got 9"),
    ({"pos_emb": "rope", "rope_scaling": {"factor": 8.0}}, "model.rope_scaling needs exactly the keys"),
    ({"pos_emb": "rope", "rope_scaling": {**LLAMA32_SCALING, "high_freq_factor": 1.0}},
     "high_freq_factor must be larger than its low_freq_factor"),
    ({"n_kv_heads": 0}, "model.n_kv_heads must be a positive integer or null"),
])
def test_bad_architecture_flags_are_one_clear_line(overrides, message):
    base = {"vocab_size": VOCAB, "context_length": CTX, "emb_dim": 32, "n_heads": 4, "n_layers": 1}
    with pytest.raises(ConfigError) as raised:
        GPTConfig(**{**base, **overrides})
    assert message in str(raised.value) and "\n" not in str(raised.value)
    with pytest.raises(ConfigError):  # from a config dict (Hydra's model node) alike
        GPTConfig.from_dict({"preset": "nano", **overrides})


def test_rope_position_tables_follow_the_config_not_the_checkpoint():
    model = GPT(GPTConfig(vocab_size=VOCAB, context_length=CTX, emb_dim=32, n_heads=4, n_layers=1, pos_emb="rope"))
    assert model.pos_emb is None
    assert not any("rope" in key or "pos_emb" in key for key in model.state_dict())
    angles = torch.outer(torch.arange(CTX).float(), inverse_frequencies(8, 10000.0))
    torch.testing.assert_close(model.rope.cos[:, :4], angles.cos())
    torch.testing.assert_close(model.rope.sin[:, 4:], angles.sin())
    assert math.isclose(float(model.rope.cos[5, 0]), math.cos(5.0), rel_tol=1e-6)
