"""Hugging Face GPT-2 directories: import (``load_hf_directory``) and export (``export_hf``).

The tensor names go through the GPT-2 table in ``hf_names``; this module adds the configs
(``config.json`` of ``GPT2Config``) and the files. ``export_hf`` writes a Llama directory
(``hf_llama``) instead when the model is Llama-shaped rather than GPT-2-shaped.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch

from gptlab.checkpoints.files import CONFIG_FILE, StateDict, read_hf_weights, read_json
from gptlab.checkpoints.hf_llama import export_llama, llama_model_type
from gptlab.checkpoints.hf_names import default_eos_id, load_hf_state, to_hf_state_dict, write_hf_directory
from gptlab.checkpoints.state import export_state, is_tied, unwrap_gpt
from gptlab.errors import CheckpointError, ConfigError
from gptlab.model.config import GPTConfig
from gptlab.model.gpt import GPT

#: GPT-2 settings gptlab's GPT does not implement: the key, its default, and the values it accepts.
_FIXED: dict[str, tuple[Any, tuple[Any, ...]]] = {
    "activation_function": ("gelu_new", ("gelu_new", "gelu_pytorch_tanh")),
    "scale_attn_weights": (True, (True,)),
    "scale_attn_by_inverse_layer_idx": (False, (False,)),
    "add_cross_attention": (False, (False,)),
}


def config_from_hf(hf_config: dict[str, Any], source: str = CONFIG_FILE) -> GPTConfig:
    """The ``GPTConfig`` of a ``transformers`` GPT-2 config; refuses variants gptlab cannot run."""
    if hf_config.get("model_type", "gpt2") != "gpt2":
        raise CheckpointError(
            f"{source}: model_type {hf_config.get('model_type')!r} is not supported; only GPT-2 checkpoints load"
        )
    try:
        emb = int(hf_config["n_embd"])
        cfg = GPTConfig(
            vocab_size=int(hf_config["vocab_size"]),
            context_length=int(hf_config.get("n_positions", hf_config.get("n_ctx", 1024))),
            emb_dim=emb,
            n_heads=int(hf_config["n_head"]),
            n_layers=int(hf_config["n_layer"]),
            drop_rate=0.0,
            qkv_bias=True,
            tie_embeddings=bool(hf_config.get("tie_word_embeddings", True)),
            norm_eps=float(hf_config.get("layer_norm_epsilon", 1e-5)),
            hidden_dim=None if hf_config.get("n_inner") in (None, 4 * emb) else int(hf_config["n_inner"]),
            name=Path(str(hf_config.get("_name_or_path") or "gpt2")).name or "gpt2",
        )
    except KeyError as err:
        raise CheckpointError(f"{source}: GPT-2 config lacks {err.args[0]!r}") from None
    except (ConfigError, TypeError, ValueError) as err:
        raise CheckpointError(f"{source}: not a config gptlab's GPT can build: {err}") from None
    for key, (default, allowed) in _FIXED.items():
        value = hf_config.get(key, default)
        if value not in allowed:
            raise CheckpointError(f"{source}: {key}={value!r} is not supported (gptlab's GPT implements {allowed[0]!r})")
    return cfg


def hf_config_dict(config: GPTConfig, tied: bool = True, dtype: torch.dtype = torch.float32) -> dict[str, Any]:
    """A ``transformers`` ``GPT2Config`` dict describing a gptlab architecture."""
    eos = default_eos_id(config.vocab_size)
    return {
        "architectures": ["GPT2LMHeadModel"],
        "model_type": "gpt2",
        "vocab_size": config.vocab_size,
        "n_positions": config.context_length,
        "n_ctx": config.context_length,
        "n_embd": config.emb_dim,
        "n_layer": config.n_layers,
        "n_head": config.n_heads,
        "n_inner": None if config.ff_hidden_dim == 4 * config.emb_dim else config.ff_hidden_dim,
        "layer_norm_epsilon": config.norm_eps,
        **{key: default for key, (default, _) in _FIXED.items()},
        "resid_pdrop": config.drop_rate,
        "embd_pdrop": config.drop_rate,
        "attn_pdrop": config.drop_rate,
        "initializer_range": 0.02,
        "reorder_and_upcast_attn": False,
        "tie_word_embeddings": tied,
        "bos_token_id": eos,
        "eos_token_id": eos,
        "use_cache": True,
        "dtype": str(dtype).removeprefix("torch."),
    }


def is_gpt2_shaped(config: GPTConfig) -> bool:
    """Whether ``GPT2LMHeadModel`` computes the same function as a GPT of ``config``."""
    return ((config.norm, config.mlp, config.pos_emb) == ("layernorm", "gelu", "learned")
            and config.kv_heads == config.n_heads and config.head_dim * config.n_heads == config.emb_dim
            and not config.qk_norm)


def export_hf(model: GPT, directory: str | Path, token_ids: dict[str, Any] | None = None) -> Path:
    """Write ``model`` as a Hugging Face directory that ``transformers`` loads with the same logits.

    A GPT-2-shaped model (LayerNorm, GELU, learned positions, plain multi-head attention) becomes a
    ``GPT2LMHeadModel`` directory: biases it lacks are written as zeros (the same function), and
    an untied output head as ``lm_head.weight`` with ``tie_word_embeddings: false``. A Llama-shaped
    one (RMSNorm, SwiGLU, RoPE; any number of key/value heads) becomes a ``LlamaForCausalLM``
    directory, or ``Qwen3ForCausalLM`` with ``qk_norm``. Other mixtures have no ``transformers``
    class and are refused. The tokenizer is not written; ``token_ids`` (``bos_token_id``,
    ``eos_token_id``, ``pad_token_id``) are its special ids for ``config.json``, which otherwise
    names gptlab's own end-of-text id. Writing is atomic, as in ``save_model``.
    """
    gpt = unwrap_gpt(model)
    if not is_gpt2_shaped(gpt.cfg):
        if llama_model_type(gpt.cfg) is None:
            cfg = gpt.cfg
            raise CheckpointError(
                f"no transformers model computes norm={cfg.norm}, mlp={cfg.mlp}, pos_emb={cfg.pos_emb}, "
                f"n_kv_heads={cfg.kv_heads}, qk_norm={cfg.qk_norm}: export_hf writes GPT-2 (layernorm, gelu, learned, "
                "multi-head) or Llama (rmsnorm, swiglu, rope); use save_model for gptlab's own format"
            )
        return export_llama(gpt, directory, token_ids)
    tied = is_tied(gpt)
    hf_state = to_hf_state_dict(export_state(gpt), gpt.cfg.n_layers)
    config = {**hf_config_dict(gpt.cfg, tied=tied, dtype=gpt.tok_emb.weight.dtype), **(token_ids or {})}
    return write_hf_directory(directory, hf_state, config)


def load_hf_directory(directory: str | Path, config: GPTConfig | None = None) -> GPT:
    """Load a ``transformers`` GPT-2 directory (``model.safetensors``, its shards, or ``pytorch_model.bin``)."""
    directory = Path(directory).expanduser()
    hf_state, path = read_hf_weights(directory, "GPT-2")
    hf_config = read_json(directory / CONFIG_FILE)
    hf_config["_name_or_path"] = hf_config.get("_name_or_path") or directory.name
    return load_hf_state(hf_state, config_from_hf(hf_config, str(directory / CONFIG_FILE)), config, str(path))


def hf_config_for_state(state: StateDict, config: GPTConfig) -> GPTConfig:
    """The architecture of GPT-2 tensors without a ``config.json``: the caller's sizes, GPT-2's biases."""
    return dataclasses.replace(config, qkv_bias=True, tie_embeddings="lm_head.weight" not in state)
