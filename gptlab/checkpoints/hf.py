"""Hugging Face GPT-2 directories: import (``load_hf_directory``) and export (``export_hf``).

The tensor names go through the one table in ``hf_names``; this module adds the configs
(``config.json`` of ``GPT2Config``) and the files.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from gptlab.checkpoints.files import (
    CONFIG_FILE,
    WEIGHTS_FILE,
    StateDict,
    export_directory,
    json_field,
    load_torch_file,
    read_json,
    read_safetensors,
    write_json,
)
from gptlab.checkpoints.hf_names import from_hf_state_dict, to_hf_state_dict
from gptlab.checkpoints.state import is_tied, merge_config, model_from_state_dict, unwrap_gpt
from gptlab.errors import CheckpointError
from gptlab.model.config import GPTConfig
from gptlab.model.gpt import GPT

#: The weights file of older Hub checkpoints.
LEGACY_WEIGHTS_FILE = "pytorch_model.bin"
#: GPT-2 settings gptlab's GPT does not implement: the key, its default, and the values it accepts.
_FIXED: dict[str, tuple[Any, tuple[Any, ...]]] = {
    "activation_function": ("gelu_new", ("gelu_new", "gelu_pytorch_tanh")),
    "layer_norm_epsilon": (1e-5, (1e-5,)),
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
            name=Path(str(hf_config.get("_name_or_path") or "gpt2")).name or "gpt2",
        )
    except KeyError as err:
        raise CheckpointError(f"{source}: GPT-2 config lacks {err.args[0]!r}") from None
    checks = {key: (hf_config.get(key, default), allowed) for key, (default, allowed) in _FIXED.items()}
    checks["n_inner"] = (hf_config.get("n_inner"), (None, 4 * emb))
    for key, (value, allowed) in checks.items():
        if value not in allowed:
            raise CheckpointError(f"{source}: {key}={value!r} is not supported (gptlab's GPT implements {allowed[0]!r})")
    return cfg


def hf_config_dict(config: GPTConfig, tied: bool = True, dtype: torch.dtype = torch.float32) -> dict[str, Any]:
    """A ``transformers`` ``GPT2Config`` dict describing a gptlab architecture."""
    eos = 50256 if config.vocab_size > 50256 else config.vocab_size - 1
    return {
        "architectures": ["GPT2LMHeadModel"],
        "model_type": "gpt2",
        "vocab_size": config.vocab_size,
        "n_positions": config.context_length,
        "n_ctx": config.context_length,
        "n_embd": config.emb_dim,
        "n_layer": config.n_layers,
        "n_head": config.n_heads,
        "n_inner": None,
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


def export_hf(model: GPT, directory: str | Path) -> Path:
    """Write ``model`` as a Hugging Face GPT-2 directory that ``GPT2LMHeadModel.from_pretrained`` loads.

    Every gptlab GPT is expressible as a GPT-2: a model without qkv biases is written with zero
    biases (the same function), and an untied output head is written as ``lm_head.weight`` with
    ``tie_word_embeddings: false``. The tokenizer is not written; GPT-2's is ``gpt2`` on the Hub.
    Writing is atomic, as in ``save_model``.
    """
    gpt = unwrap_gpt(model)
    tied = is_tied(gpt)
    state = {k: v.cpu() for k, v in gpt.state_dict().items() if not (tied and k == "out_head.weight")}
    hf_state = to_hf_state_dict(state, gpt.cfg.n_layers)
    config = hf_config_dict(gpt.cfg, tied=tied, dtype=gpt.tok_emb.weight.dtype)

    def write(tmp: Path) -> None:
        save_file(hf_state, str(tmp / WEIGHTS_FILE), metadata={"format": "pt"})
        write_json(tmp / CONFIG_FILE, config)

    return export_directory(directory, write, lambda d: json_field(d / CONFIG_FILE, "model_type") == "gpt2")


def load_hf_directory(directory: str | Path, config: GPTConfig | None = None) -> GPT:
    """Load a ``transformers`` GPT-2 directory (``model.safetensors`` or ``pytorch_model.bin``)."""
    directory = Path(directory).expanduser()
    if (directory / WEIGHTS_FILE).is_file():
        path = directory / WEIGHTS_FILE
        hf_state = read_safetensors(path)
    elif (directory / LEGACY_WEIGHTS_FILE).is_file():
        path = directory / LEGACY_WEIGHTS_FILE
        hf_state = load_torch_file(path)
    else:
        raise CheckpointError(
            f"{directory} has a GPT-2 {CONFIG_FILE} but neither {WEIGHTS_FILE} nor {LEGACY_WEIGHTS_FILE} "
            "(sharded checkpoints are not supported)"
        )
    hf_config = read_json(directory / CONFIG_FILE)
    hf_config["_name_or_path"] = hf_config.get("_name_or_path") or directory.name
    return load_hf_state(hf_state, config_from_hf(hf_config, str(directory / CONFIG_FILE)), config, str(path))


def load_hf_state(hf_state: StateDict, source_cfg: GPTConfig, config: GPTConfig | None, source: str) -> GPT:
    """A ``GPT`` from GPT-2 tensors of architecture ``source_cfg``, merged with the caller's ``config``."""
    state = from_hf_state_dict(hf_state, source_cfg.n_layers)
    if not source_cfg.tie_embeddings and "out_head.weight" not in state:
        raise CheckpointError(f"{source}: tie_word_embeddings is false but there is no lm_head.weight")
    cfg = merge_config(source_cfg, config, source, can_untie=True)
    if not cfg.tie_embeddings and "out_head.weight" not in state:
        # As the book's load_weights_into_gpt does: the untied head starts as a copy of the embedding.
        state["out_head.weight"] = state["tok_emb.weight"].clone()
    return model_from_state_dict(state, cfg, source)


def hf_config_for_state(state: StateDict, config: GPTConfig) -> GPTConfig:
    """The architecture of GPT-2 tensors without a ``config.json``: the caller's sizes, GPT-2's biases."""
    return dataclasses.replace(config, qkv_bias=True, tie_embeddings="lm_head.weight" not in state)
