"""Llama and Qwen3 weights, checked against ``transformers``' own models as the independent reference.

Small random ``LlamaForCausalLM`` / ``Qwen3ForCausalLM`` models saved with ``save_pretrained``
load into gptlab with the same logits and the same greedy tokens, with grouped-query attention
and Llama 3's RoPE scaling on; gptlab's exports load back in ``transformers`` with the same logits.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from gptlab import GPT, GPTConfig, generate
from gptlab.checkpoints import export_hf, llama_config_from_hf, load_pretrained
from gptlab.errors import CheckpointError

from transformers import (  # noqa: E402
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    Qwen3Config,
    Qwen3ForCausalLM,
)

VOCAB = 300
#: Llama 3's scaling with a short original context, so that the 40-token inputs below reach the
#: slowed-down, the kept and the blended frequencies alike.
LLAMA3_ROPE = {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
               "high_freq_factor": 4.0, "original_max_position_embeddings": 32}
SIZES = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=172, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, max_position_embeddings=128, rms_norm_eps=1e-5, initializer_range=0.1,
             bos_token_id=0, eos_token_id=1, pad_token_id=0)


def randomised(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """``model`` with non-trivial norm scales and biases, so a swapped or missing one would show."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" in name:
                param.uniform_(0.5, 1.5)
            elif name.endswith("bias"):
                param.uniform_(-0.2, 0.2)
    return model.eval()


def hf_llama(tied: bool = False, **overrides) -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(**{**SIZES, "rope_parameters": dict(LLAMA3_ROPE), "tie_word_embeddings": tied, **overrides})
    return randomised(LlamaForCausalLM(config))


def hf_qwen3() -> Qwen3ForCausalLM:
    torch.manual_seed(0)
    config = Qwen3Config(**{**SIZES, "head_dim": 32, "rope_parameters": {"rope_type": "default", "rope_theta": 1e6}})
    return randomised(Qwen3ForCausalLM(config))


def ids(batch: int = 2, length: int = 40, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, VOCAB, (batch, length), generator=torch.Generator().manual_seed(seed))


def max_logit_difference(ours: GPT, hf: torch.nn.Module, x: torch.Tensor) -> float:
    with torch.no_grad():
        expected = hf(x).logits
        got = ours.eval()(x)
    assert expected.abs().max() > 1.0  # not a degenerate model
    return (got - expected).abs().max().item()


def hf_greedy(hf: torch.nn.Module, prompt: torch.Tensor, n: int) -> torch.Tensor:
    with torch.no_grad():
        return hf.generate(prompt, attention_mask=torch.ones_like(prompt), do_sample=False,
                           max_new_tokens=n, min_new_tokens=n, pad_token_id=0, eos_token_id=None)


# ---------------------------------------------------------------- import

@pytest.mark.parametrize("tied", [False, True])
def test_llama_directory_loads_with_transformers_logits_and_greedy_tokens(tmp_path: Path, tied: bool):
    hf = hf_llama(tied)
    hf.save_pretrained(tmp_path)
    model = load_pretrained(tmp_path)

    cfg = model.cfg
    assert (cfg.norm, cfg.mlp, cfg.pos_emb, cfg.n_heads, cfg.kv_heads, cfg.ff_hidden_dim) == (
        "rmsnorm", "swiglu", "rope", 4, 2, 172)
    assert cfg.rope_base == 500000.0 and cfg.rope_scaling == {
        "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_context_length": 32}
    assert (model.out_head.weight is model.tok_emb.weight) is tied
    assert max_logit_difference(model, hf, ids()) <= 1e-4

    prompt = ids(1, 8, seed=3)
    ours = generate(model.eval(), prompt, max_new_tokens=20)
    assert torch.equal(ours, hf_greedy(hf, prompt, 20))

    # The scaling is really exercised: the same weights without it compute something else.
    plain = GPT(GPTConfig(**{**cfg.to_dict(), "rope_scaling": None}))
    plain.load_state_dict(model.state_dict())
    assert max_logit_difference(plain, hf, ids()) > 1e-2


def test_sharded_llama_directory_loads(tmp_path: Path):
    hf = hf_llama()
    hf.save_pretrained(tmp_path, max_shard_size="100KB")
    assert (tmp_path / "model.safetensors.index.json").is_file()
    assert len(list(tmp_path.glob("model-*.safetensors"))) > 1
    assert max_logit_difference(load_pretrained(tmp_path), hf, ids()) <= 1e-4


def test_qwen3_directory_loads_and_exports_with_transformers_logits(tmp_path: Path):
    hf = hf_qwen3()
    hf.save_pretrained(tmp_path / "hf")
    model = load_pretrained(tmp_path / "hf")
    assert model.cfg.qk_norm and model.cfg.head_dim == 32 and model.cfg.rope_scaling is None
    assert max_logit_difference(model, hf, ids()) <= 1e-4
    prompt = ids(1, 8, seed=3)
    assert torch.equal(generate(model.eval(), prompt, max_new_tokens=20), hf_greedy(hf, prompt, 20))

    out = export_hf(model, tmp_path / "back")
    assert json.loads((out / "config.json").read_text())["architectures"] == ["Qwen3ForCausalLM"]
    assert max_logit_difference(model, Qwen3ForCausalLM.from_pretrained(out).eval(), ids()) <= 1e-4


def test_both_spellings_of_rope_settings_give_one_config():
    """``transformers`` 5's ``rope_parameters`` and version 4's ``rope_theta`` + ``rope_scaling``."""
    sizes = {k: v for k, v in SIZES.items() if not k.endswith("token_id") and k != "initializer_range"}
    current = {**sizes, "model_type": "llama", "rope_parameters": dict(LLAMA3_ROPE)}
    legacy_scaling = {k: v for k, v in LLAMA3_ROPE.items() if k != "rope_theta"}
    legacy = {**sizes, "model_type": "llama", "rope_theta": 500000.0, "rope_scaling": legacy_scaling}
    assert llama_config_from_hf(current) == llama_config_from_hf(legacy)
    assert llama_config_from_hf({**sizes, "model_type": "llama"}).rope_base == 10000.0


#: The published config.json files (transformers 4 spelling), as on the Hugging Face Hub.
LLAMA_3_2_1B = {
    "architectures": ["LlamaForCausalLM"], "attention_bias": False, "attention_dropout": 0.0, "bos_token_id": 128000,
    "eos_token_id": 128001, "head_dim": 64, "hidden_act": "silu", "hidden_size": 2048, "initializer_range": 0.02,
    "intermediate_size": 8192, "max_position_embeddings": 131072, "mlp_bias": False, "model_type": "llama",
    "num_attention_heads": 32, "num_hidden_layers": 16, "num_key_value_heads": 8, "pretraining_tp": 1,
    "rms_norm_eps": 1e-05, "rope_scaling": {"factor": 32.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0,
                                            "original_max_position_embeddings": 8192, "rope_type": "llama3"},
    "rope_theta": 500000.0, "tie_word_embeddings": True, "torch_dtype": "bfloat16", "use_cache": True,
    "vocab_size": 128256,
}
QWEN3_0_6B = {
    "architectures": ["Qwen3ForCausalLM"], "attention_bias": False, "attention_dropout": 0.0, "bos_token_id": 151643,
    "eos_token_id": 151645, "head_dim": 128, "hidden_act": "silu", "hidden_size": 1024, "initializer_range": 0.02,
    "intermediate_size": 3072, "max_position_embeddings": 40960, "max_window_layers": 28, "model_type": "qwen3",
    "num_attention_heads": 16, "num_hidden_layers": 28, "num_key_value_heads": 8, "rms_norm_eps": 1e-06,
    "rope_scaling": None, "rope_theta": 1000000, "sliding_window": None, "tie_word_embeddings": True,
    "torch_dtype": "bfloat16", "use_cache": True, "use_sliding_window": False, "vocab_size": 151936,
}


@pytest.mark.parametrize("hf_config,preset", [(LLAMA_3_2_1B, "llama-3.2-1b"), (QWEN3_0_6B, "qwen3-0.6b")])
def test_published_configs_map_to_the_presets(hf_config: dict, preset: str):
    assert llama_config_from_hf(hf_config) == GPTConfig.from_preset(preset)


@pytest.mark.parametrize("change,message", [
    ({"rope_parameters": {"rope_type": "yarn", "rope_theta": 1e4, "factor": 4.0}}, "rope_type 'yarn' is not supported"),
    ({"hidden_act": "gelu"}, "hidden_act='gelu' is not supported"),
    ({"model_type": "qwen3", "use_sliding_window": True, "sliding_window": 16}, "sliding-window attention is not supported"),
    ({"rope_parameters": {"rope_type": "llama3", "rope_theta": 1e4}}, "llama3 RoPE scaling lacks 'factor'"),
])
def test_unsupported_settings_are_one_clear_line(tmp_path: Path, change: dict, message: str):
    hf = hf_llama()
    hf.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, **change}))
    with pytest.raises(CheckpointError, match=message) as err:
        load_pretrained(tmp_path)
    assert "\n" not in str(err.value) and "config.json" in str(err.value)


# ---------------------------------------------------------------- export

def random_gpt(cfg: GPTConfig, seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    model = GPT(cfg)
    with torch.no_grad():
        for param in model.parameters():
            param.normal_(0.0, 0.1)
    return randomised(model, seed)


@pytest.mark.parametrize("overrides", [
    {},  # llama-micro as it is: tied, GQA 4/2, no biases
    {"tie_embeddings": False, "qkv_bias": True, "mlp_bias": True, "rope_scaling": {
        "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_context_length": 32}},
    {"out_bias": True, "head_size": 48, "n_kv_heads": 1},  # zero q/k/v biases, heads wider than emb_dim / n_heads
])
def test_llama_export_loads_in_transformers_with_same_logits(tmp_path: Path, overrides: dict):
    cfg = GPTConfig.from_preset("llama-micro", vocab_size=VOCAB, context_length=64, **overrides)
    model = random_gpt(cfg)
    out = export_hf(model, tmp_path / "hf")
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "llama" and config["architectures"] == ["LlamaForCausalLM"]
    assert config["tie_word_embeddings"] is cfg.tie_embeddings

    hf = LlamaForCausalLM.from_pretrained(out).eval()
    assert max_logit_difference(model, hf, ids()) <= 1e-4
    again = load_pretrained(out)  # and back: the same function again
    assert max_logit_difference(again, hf, ids()) <= 1e-4


def test_gpt2_shaped_models_still_export_as_gpt2(tmp_path: Path):
    """Biases the model lacks are written as zeros, a custom MLP width as ``n_inner``."""
    cfg = GPTConfig(vocab_size=VOCAB, context_length=64, emb_dim=64, n_heads=4, n_layers=2, out_bias=False,
                    mlp_bias=False, hidden_dim=100, norm_eps=1e-6)
    model = random_gpt(cfg)
    out = export_hf(model, tmp_path / "hf")
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "gpt2" and config["n_inner"] == 100 and config["layer_norm_epsilon"] == 1e-6
    hf = GPT2LMHeadModel.from_pretrained(out).eval()
    assert max_logit_difference(model, hf, ids()) <= 1e-4
    assert load_pretrained(out).cfg.norm_eps == 1e-6


def test_architectures_without_a_transformers_class_are_refused(tmp_path: Path):
    model = GPT(GPTConfig(vocab_size=VOCAB, context_length=64, emb_dim=64, n_heads=4, n_layers=1, pos_emb="rope"))
    with pytest.raises(CheckpointError, match="no transformers model computes norm=layernorm, mlp=gelu, pos_emb=rope"):
        export_hf(model, tmp_path / "hf")
    assert not (tmp_path / "hf").exists()
