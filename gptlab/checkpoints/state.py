"""A ``GPT`` from a state dict in gptlab's names (``model.state_dict()``), every key and shape checked.

gptlab's modules carry the names of the book's ``GPTModel`` (``tok_emb``, ``trf_blocks.0.att.W_query``
...), so this is also how the book's own ``model.pth`` loads. The config merge decides which
settings a source's weights fix and which stay the caller's.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from gptlab.checkpoints.files import StateDict, name_some
from gptlab.errors import CheckpointError, ConfigError
from gptlab.model.config import ARCHITECTURE_FIELDS, GPTConfig
from gptlab.model.gpt import GPT

#: What fixes tensor shapes: a caller's config and a checkpoint must agree on them
#: (``context_length`` only as far as the caller's may be shorter).
SHAPE_FIELDS = ("context_length", *ARCHITECTURE_FIELDS)
#: Keys a state dict may carry that are not weights: the book's causal-mask buffers and the
#: causal-mask buffers of older ``transformers`` GPT-2 checkpoints.
BUFFER_SUFFIXES = (".att.mask", ".attn.bias", ".attn.masked_bias")


def is_tied(model: GPT) -> bool:
    """Whether the output head shares the token embedding's tensor."""
    return model.out_head.weight is model.tok_emb.weight


def export_state(model: GPT) -> StateDict:
    """The model's tensors on the CPU for writing out; a head tied to the embedding is left out
    (the exported config says it is tied)."""
    tied = is_tied(model)
    return {k: v.detach().cpu() for k, v in model.state_dict().items() if not (tied and k == "out_head.weight")}


def unwrap_gpt(model: Any) -> GPT:
    """The ``GPT`` inside a gptlab task or a ``torch.compile`` wrapper."""
    model = getattr(model, "gpt", model)
    model = getattr(model, "_orig_mod", model)
    if not isinstance(model, GPT):
        raise CheckpointError(f"expected a gptlab GPT, got {type(model).__name__}")
    return model


def config_from_dict(values: dict[str, Any], source: str) -> GPTConfig:
    """A recorded model config; one that this version cannot build is a ``CheckpointError``."""
    try:
        return GPTConfig.from_dict(values)
    except (ConfigError, TypeError) as err:
        raise CheckpointError(f"{source}: its model config is not valid for this gptlab version: {err}") from None


def merge_config(source: GPTConfig, caller: GPTConfig | None, where: str, can_untie: bool = False) -> GPTConfig:
    """The config to build: the source's architecture with the caller's training settings.

    See ``load_pretrained`` for the rules; ``can_untie`` says whether the source's tied head may
    be untied (true for GPT-2 imports).
    """
    if caller is None:
        return source
    conflicts = [
        f"{key}: source {getattr(source, key)} vs config {getattr(caller, key)}"
        for key in SHAPE_FIELDS
        if getattr(source, key) != getattr(caller, key)
        and not (key == "context_length" and caller.context_length < source.context_length)
    ]
    if conflicts:
        raise CheckpointError(
            f"{where} does not fit the model config ({'; '.join(conflicts)}); use a config with the "
            "source's sizes (e.g. the matching gpt2-* preset) or leave those fields at the source's values"
        )
    return dataclasses.replace(
        source,
        context_length=caller.context_length,
        tie_embeddings=source.tie_embeddings and (caller.tie_embeddings or not can_untie),
        drop_rate=caller.drop_rate,
        attention=caller.attention,
        name=caller.name if caller.name != "custom" else source.name,
    )


def model_from_state_dict(state_dict: dict[str, Any], config: GPTConfig, source: str = "state dict") -> GPT:
    """A ``GPT(config)`` in training mode holding ``state_dict`` (gptlab's names).

    Mask buffers are ignored and a longer position table is cropped to ``config.context_length``.
    Under a tied config a separate ``out_head.weight`` may appear only as a copy of the embedding.
    """
    state = {k: v for k, v in state_dict.items() if not k.endswith(BUFFER_SUFFIXES)}
    pos = state.get("pos_emb.weight")
    if isinstance(pos, torch.Tensor) and pos.dim() == 2 and pos.shape[0] > config.context_length:
        state["pos_emb.weight"] = pos[: config.context_length]
    model = GPT(config)
    expected = model.state_dict()
    tied = is_tied(model)
    if tied:
        expected.pop("out_head.weight")
        head, emb = state.pop("out_head.weight", None), state.get("tok_emb.weight")
        if head is not None and emb is not None and head is not emb and not torch.equal(head, emb):
            raise CheckpointError(
                f"{source} has an output head separate from the token embedding, but the config "
                "ties them; use tie_embeddings=False"
            )
    _check_names(sorted(set(expected) - set(state)), sorted(set(state) - set(expected)), config, source)
    for key, tensor in expected.items():
        found = state[key]
        if tuple(found.shape) != tuple(tensor.shape):
            summary = ", ".join(f"{k}={getattr(config, k)}" for k in (*SHAPE_FIELDS, "qkv_bias"))
            raise CheckpointError(
                f"{source}: tensor {key} has shape {list(found.shape)}, expected {list(tensor.shape)} "
                f"for the config ({summary})"
            )
    model.load_state_dict(state, strict=not tied)
    return model.train()


def _check_names(missing: list[str], unexpected: list[str], config: GPTConfig, source: str) -> None:
    if not missing and not unexpected:
        return
    parts = []
    if missing:
        parts.append(f"missing {len(missing)} tensor(s): {name_some(missing)}")
    if unexpected:
        parts.append(f"unexpected {len(unexpected)} tensor(s): {name_some(unexpected)}")
    hint = ""
    if any(".att.W_query.bias" in k for k in missing + unexpected):
        hint = f"; qkv_bias={config.qkv_bias} may be wrong for this checkpoint"
    elif any(k.startswith("trf_blocks.") for k in missing + unexpected):
        hint = f"; n_layers={config.n_layers} may be wrong for this checkpoint"
    raise CheckpointError(f"{source} does not match the model: {'; '.join(parts)}{hint}")


def merge_lora_weights(state: StateDict, scale: float) -> StateDict:
    """A state dict with LoRA-wrapped layers (``X.base.weight``, ``X.lora_A``, ``X.lora_B``) folded
    back into plain ``X.weight`` / ``X.bias``: ``W + scale * (A @ B)^T``, as ``LoRALinear.merged`` does."""
    merged = {k: v for k, v in state.items() if not k.endswith((".base.weight", ".base.bias", ".lora_A", ".lora_B"))}
    for key in state:
        if key.endswith(".lora_A"):
            layer = key.removesuffix(".lora_A")
            delta = scale * (state[f"{layer}.lora_A"] @ state[f"{layer}.lora_B"]).T
            merged[f"{layer}.weight"] = state[f"{layer}.base.weight"] + delta.to(state[f"{layer}.base.weight"].dtype)
            if f"{layer}.base.bias" in state:
                merged[f"{layer}.bias"] = state[f"{layer}.base.bias"]
    return merged
