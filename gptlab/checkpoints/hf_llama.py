"""Hugging Face Llama directories (``LlamaForCausalLM``; Qwen3's ``Qwen3ForCausalLM``): import and export.

A Llama is gptlab's GPT with ``norm=rmsnorm``, ``mlp=swiglu`` and ``pos_emb=rope``; Qwen3 adds
``qk_norm``. The tensor names go through ``hf_names.LLAMA_NAMES``; this module maps the configs
and reads and writes the files. RoPE settings are read in both spellings of ``transformers``:
``rope_parameters`` (version 5, which is what gets written) and ``rope_theta`` + ``rope_scaling``
(version 4). Settings gptlab's GPT does not implement (other RoPE types, sliding windows, other
activations) are refused, never silently approximated.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from gptlab.checkpoints.files import CONFIG_FILE, read_hf_weights, read_json
from gptlab.checkpoints.hf_names import (
    HF_MODEL_TYPES,
    LLAMA_NAMES,
    default_eos_id,
    load_hf_state,
    to_hf_state_dict,
    with_zero_biases,
    write_hf_directory,
)
from gptlab.checkpoints.state import export_state, is_tied, unwrap_gpt
from gptlab.errors import CheckpointError, ConfigError
from gptlab.model.config import GPTConfig
from gptlab.model.gpt import GPT

#: The ``config.json`` model types this module reads.
LLAMA_TYPES = ("llama", "qwen3")
#: Llama 3's RoPE scaling keys: gptlab's name and ``transformers``'.
_SCALING_KEYS = {"factor": "factor", "low_freq_factor": "low_freq_factor", "high_freq_factor": "high_freq_factor",
                 "original_context_length": "original_max_position_embeddings"}


def llama_model_type(config: GPTConfig) -> str | None:
    """``llama`` or ``qwen3`` when ``config`` is a Llama-family architecture, else ``None``."""
    if (config.norm, config.mlp, config.pos_emb) != ("rmsnorm", "swiglu", "rope"):
        return None
    return "qwen3" if config.qk_norm else "llama"


def llama_config_from_hf(hf_config: dict[str, Any], source: str = CONFIG_FILE) -> GPTConfig:
    """The ``GPTConfig`` of a ``transformers`` Llama or Qwen3 config; refuses settings gptlab cannot run."""
    model_type = hf_config.get("model_type")
    if model_type not in LLAMA_TYPES:
        raise CheckpointError(f"{source}: model_type {model_type!r} is not a Llama; expected one of {list(LLAMA_TYPES)}")
    _refuse_unsupported(hf_config, source)
    rope_base, rope_scaling = _rope_settings(hf_config, source)
    try:
        emb, heads = int(hf_config["hidden_size"]), int(hf_config["num_attention_heads"])
        head_dim = int(hf_config.get("head_dim") or emb // heads)
        attention_bias = bool(hf_config.get("attention_bias", False))
        return GPTConfig(
            vocab_size=int(hf_config["vocab_size"]),
            context_length=int(hf_config["max_position_embeddings"]),
            emb_dim=emb,
            n_heads=heads,
            n_layers=int(hf_config["num_hidden_layers"]),
            drop_rate=0.0,
            qkv_bias=attention_bias,
            out_bias=attention_bias,
            mlp_bias=bool(hf_config.get("mlp_bias", False)),
            tie_embeddings=bool(hf_config.get("tie_word_embeddings", False)),
            norm="rmsnorm",
            norm_eps=float(hf_config.get("rms_norm_eps", 1e-6)),
            mlp="swiglu",
            hidden_dim=int(hf_config["intermediate_size"]),
            pos_emb="rope",
            rope_base=rope_base,
            rope_scaling=rope_scaling,
            n_kv_heads=int(hf_config.get("num_key_value_heads") or heads),
            head_size=None if head_dim * heads == emb else head_dim,
            qk_norm=model_type == "qwen3",
            name=Path(str(hf_config.get("_name_or_path") or model_type)).name or model_type,
        )
    except KeyError as err:
        raise CheckpointError(f"{source}: {model_type} config lacks {err.args[0]!r}") from None
    except (ConfigError, TypeError, ValueError) as err:
        raise CheckpointError(f"{source}: not a config gptlab's GPT can build: {err}") from None


def _refuse_unsupported(hf_config: dict[str, Any], source: str) -> None:
    act = hf_config.get("hidden_act", "silu")
    if act != "silu":
        raise CheckpointError(f"{source}: hidden_act={act!r} is not supported (gptlab's SwiGLU implements 'silu')")
    windowed = hf_config.get("use_sliding_window") or any(
        kind != "full_attention" for kind in hf_config.get("layer_types") or ())
    if windowed:
        raise CheckpointError(f"{source}: sliding-window attention is not supported (gptlab attends over the full context)")


def _rope_settings(hf_config: dict[str, Any], source: str) -> tuple[float, dict[str, float] | None]:
    """RoPE's base and Llama 3 scaling, from ``rope_parameters`` or ``rope_theta`` + ``rope_scaling``."""
    params = hf_config.get("rope_parameters")
    if params is None:
        params = {**(hf_config.get("rope_scaling") or {}), "rope_theta": hf_config.get("rope_theta", 10000.0)}
    if not isinstance(params, dict) or any(isinstance(value, dict) for value in params.values()):
        raise CheckpointError(f"{source}: per-layer RoPE settings are not supported; expected one rope_parameters dict")
    rope_type = params.get("rope_type", params.get("type", "default"))
    if rope_type not in ("default", "llama3"):
        raise CheckpointError(
            f"{source}: rope_type {rope_type!r} is not supported; gptlab's RoPE implements 'default' and 'llama3'"
        )
    if float(params.get("partial_rotary_factor", 1.0)) != 1.0:
        raise CheckpointError(f"{source}: partial_rotary_factor is not supported; gptlab rotates whole heads")
    base = float(params.get("rope_theta", 10000.0))
    if rope_type == "default":
        return base, None
    try:
        scaling = {ours: float(params[theirs]) for ours, theirs in _SCALING_KEYS.items()}
    except KeyError as err:
        raise CheckpointError(f"{source}: llama3 RoPE scaling lacks {err.args[0]!r}") from None
    return base, {**scaling, "original_context_length": int(scaling["original_context_length"])}


def llama_config_dict(config: GPTConfig, tied: bool = True, dtype: torch.dtype = torch.float32) -> dict[str, Any]:
    """A ``transformers`` ``LlamaConfig`` (or ``Qwen3Config`` with ``qk_norm``) dict of a gptlab architecture."""
    model_type = llama_model_type(config)
    if model_type is None:
        raise CheckpointError(f"model {config.name!r} is not a Llama (needs norm=rmsnorm, mlp=swiglu, pos_emb=rope)")
    rope: dict[str, Any] = {"rope_type": "default", "rope_theta": config.rope_base}
    if config.rope_scaling is not None:
        rope = {**rope, "rope_type": "llama3",
                **{theirs: config.rope_scaling[ours] for ours, theirs in _SCALING_KEYS.items()}}
        rope["original_max_position_embeddings"] = int(rope["original_max_position_embeddings"])
    eos = default_eos_id(config.vocab_size)
    out: dict[str, Any] = {
        "architectures": [HF_MODEL_TYPES[model_type]],
        "model_type": model_type,
        "vocab_size": config.vocab_size,
        "hidden_size": config.emb_dim,
        "intermediate_size": config.ff_hidden_dim,
        "num_hidden_layers": config.n_layers,
        "num_attention_heads": config.n_heads,
        "num_key_value_heads": config.kv_heads,
        "head_dim": config.head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": config.context_length,
        "rms_norm_eps": config.norm_eps,
        "rope_parameters": rope,
        "attention_bias": config.qkv_bias or config.out_bias,
        "attention_dropout": config.drop_rate,
        "mlp_bias": config.mlp_bias,
        "tie_word_embeddings": tied,
        "initializer_range": 0.02,
        "bos_token_id": eos,
        "eos_token_id": eos,
        "use_cache": True,
        "dtype": str(dtype).removeprefix("torch."),
    }
    if model_type == "qwen3":
        out.update(use_sliding_window=False, sliding_window=None, max_window_layers=config.n_layers,
                   layer_types=["full_attention"] * config.n_layers)
    return out


def export_llama(model: GPT, directory: str | Path, token_ids: dict[str, Any] | None = None) -> Path:
    """Write ``model`` (a Llama-family architecture) as a directory ``LlamaForCausalLM`` / ``Qwen3ForCausalLM`` loads.

    ``transformers`` has one ``attention_bias`` for the query/key/value and output projections;
    a model with only one of gptlab's two switches on is written with zero biases for the other.
    ``token_ids``: see ``export_hf``.
    """
    gpt = unwrap_gpt(model)
    cfg, tied = gpt.cfg, is_tied(gpt)
    config = {**llama_config_dict(cfg, tied=tied, dtype=gpt.tok_emb.weight.dtype), **(token_ids or {})}
    state = export_state(gpt)
    if config["attention_bias"]:
        layers = [f"trf_blocks.{i}.att.{n}" for i in range(cfg.n_layers)
                  for n in ("W_query", "W_key", "W_value", "out_proj")]
        state = with_zero_biases(state, layers)
    hf_state = to_hf_state_dict(state, cfg.n_layers, LLAMA_NAMES)
    return write_hf_directory(directory, hf_state, config)


def load_llama_directory(directory: str | Path, config: GPTConfig | None = None) -> GPT:
    """Load a ``transformers`` Llama or Qwen3 directory (one ``model.safetensors`` or its shards)."""
    directory = Path(directory).expanduser()
    hf_config = read_json(directory / CONFIG_FILE)
    hf_config["_name_or_path"] = hf_config.get("_name_or_path") or directory.name
    source_cfg = llama_config_from_hf(hf_config, str(directory / CONFIG_FILE))
    hf_state, path = read_hf_weights(directory, "Llama")
    return load_hf_state(hf_state, source_cfg, config, str(path), LLAMA_NAMES)
