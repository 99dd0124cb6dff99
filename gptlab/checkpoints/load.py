"""``load_pretrained``: one entry point that recognises every weight source gptlab reads.

The sources, and the module that reads each:

* a GPT-2 name (``gpt2``, ``gpt2-medium``...): ``hub`` downloads it, ``hf`` imports it;
* a named real model (``smollm2-135m-instruct``): ``gptlab.named_models`` finds its GGUF file or
  Hub directory, which loads as below;
* a GGUF file (llama.cpp's format, ``.gguf`` or starting with ``GGUF``): ``gguf``;
* a gptlab export (``config.json`` with ``"format": "gptlab"``): ``native``;
* a Hugging Face GPT-2 directory: ``hf``; a Llama or Qwen3 one: ``hf_llama``;
* a run directory: its ``model/`` export, else ``checkpoints/last.ckpt``;
* a PEFT LoRA adapter directory (``adapter_config.json``): its base model, as any source above,
  with the adapter merged (``peft``);
* a gptlab task checkpoint (``.ckpt``): ``task``;
* the book's ``model.pth`` (a bare ``model.state_dict()`` or ``{"model_state_dict": ...}``), or
  any state dict file in gptlab's or GPT-2's names: ``state`` / ``hf``.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

import torch

from gptlab.checkpoints.files import CONFIG_FILE, load_torch_file, read_json, read_safetensors
from gptlab.checkpoints.gguf import load_gguf
from gptlab.checkpoints.hf import config_from_hf, hf_config_for_state, load_hf_directory
from gptlab.checkpoints.hf_llama import LLAMA_TYPES, load_llama_directory
from gptlab.checkpoints.hf_names import load_hf_state
from gptlab.checkpoints.hub import HUB_MODELS, download_gpt2
from gptlab.checkpoints.native import FORMAT_MARKER, is_native_export, load_model
from gptlab.checkpoints.peft import adapter_base, is_peft_adapter, load_peft_adapter
from gptlab.checkpoints.state import config_from_dict, merge_config, merge_lora_weights, model_from_state_dict
from gptlab.checkpoints.task import TaskCheckpoint, is_task_checkpoint, task_checkpoint_from
from gptlab.errors import CheckpointError
from gptlab.gguf_file import is_gguf_file
from gptlab.model.config import GPTConfig
from gptlab.model.gpt import GPT
from gptlab.model.lora import (
    LEGACY_SCALING,
    LORA_PARAM_SUFFIXES,
    apply_lora,
    load_lora_state_dict,
    lora_scale,
    merge_lora,
)
from gptlab.named_models import NAMED_MODELS, resolve_named_model
from gptlab.runs import RunFiles

#: The key under which the book's chapter 5 saves the model next to its optimizer.
BOOK_STATE_KEY = "model_state_dict"


def load_pretrained(source: str | Path, config: GPTConfig | None = None) -> GPT:
    """A ``GPT`` (in training mode, float32, on the CPU) with weights from ``source``.

    ``source`` is one of:

    * a GPT-2 name (``gpt2``, ``gpt2-medium``, ``gpt2-large``, ``gpt2-xl``), downloaded once from
      the Hugging Face Hub into its cache;
    * a named model of ``gptlab.named_models`` (``smollm2-135m-instruct``): its installed GGUF
      file, else its Hub directory;
    * a GGUF file (llama.cpp's ``llama`` or ``gpt2`` architecture, any type gguf dequantises);
    * a directory: a Hugging Face GPT-2, Llama or Qwen3 one (``config.json`` and
      ``model.safetensors`` or its shards), a gptlab export, or a run directory (its ``model/``
      export, else ``checkpoints/last.ckpt``), or a PEFT LoRA adapter (``adapter_config.json``): its
      ``base_model_name_or_path`` loaded as a source of this list, the adapter merged in;
    * a file: a gptlab task's ``.ckpt``, or a state dict (``.pth``/``.pt``/``.bin``/``.safetensors``)
      such as the book's ``model.pth``, which needs ``config`` since it carries no architecture.

    ``config`` is the caller's model config. Where the source describes its own architecture,
    its architecture fields (``vocab_size``, ``emb_dim``, ``n_heads``, ``n_layers``, ``norm``, ``mlp``,
    ``pos_emb``, the key/value heads...) must match it (``context_length`` may be smaller: the
    position table is cropped), the biases and RoPE settings are the source's, ``tie_embeddings``
    is the source's unless the source is tied and ``config`` asks for an untied head (which then
    starts as a copy of the embedding, as in the book's ``load_weights_into_gpt``), and
    ``drop_rate`` and ``attention`` are the caller's. Without ``config``, imported Hugging Face
    weights get ``drop_rate=0.0`` and gptlab's own formats keep their saved settings.
    """
    if isinstance(source, str) and source in HUB_MODELS:
        model = load_hf_directory(download_gpt2(source), config)
        if config is None or config.name == "custom":
            model.cfg.name = source
        return model
    if isinstance(source, str) and source in NAMED_MODELS:
        model = load_pretrained(resolve_named_model(source), config)
        if config is None or config.name == "custom":
            model.cfg.name = source
        return model
    path = Path(source).expanduser()
    if not path.exists():
        text = str(source)
        names = ", ".join([*HUB_MODELS, *NAMED_MODELS])
        if "/" not in text and os.sep not in text and not Path(text).suffix:
            raise CheckpointError(
                f"unknown model {text!r}; valid names: {names} (or pass a local directory, GGUF or checkpoint file)"
            )
        raise CheckpointError(
            f"{path} does not exist; pass a model name ({names}), a model directory, a GGUF file "
            "or a checkpoint file"
        )
    return _load_directory(path, config) if path.is_dir() else _load_file(path, config)


def model_from_task_checkpoint(checkpoint: TaskCheckpoint, config: GPTConfig | None = None,
                               keep_lora: bool = False) -> GPT:
    """The ``GPT`` inside a task checkpoint, built from the model config the task recorded.

    A LoRA run's adapters are folded into the weights; with ``keep_lora`` they stay ``LoRALinear``
    layers on the frozen base weights instead (what ``export_peft_adapter`` writes out).
    """
    state, saved, source = checkpoint.model_state, checkpoint.model_config, str(checkpoint.path)
    adapted = sorted(key.removesuffix(".lora_A") for key in state if key.endswith(".lora_A"))
    adapters: dict[str, torch.Tensor] = {}
    if adapted:  # a LoRA run
        lora = checkpoint.hparams.get("lora") or {}
        if lora.get("alpha") is None or lora.get("rank") is None:
            raise CheckpointError(f"{source} holds LoRA adapters but does not record lora.alpha and lora.rank; "
                                  "load it with its task")
        scaling = lora.get("scaling", LEGACY_SCALING)
        if keep_lora:
            adapters = {k: v for k, v in state.items() if k.endswith(LORA_PARAM_SUFFIXES)}
            state = _base_weights(state)
        else:
            state = merge_lora_weights(state, lora_scale(lora["alpha"], int(lora["rank"]), scaling))
    model = _task_model(state, saved, config, source)
    if adapters:
        apply_lora(model, int(lora["rank"]), lora["alpha"], float(lora.get("dropout") or 0.0), targets=adapted,
                   exclude=(), scaling=scaling)
        load_lora_state_dict(model, adapters)
    return model


def _base_weights(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A LoRA run's frozen weights under their plain names (``X.base.weight`` as ``X.weight``), adapters left out."""
    base = (".base.weight", ".base.bias")
    return {(k.replace(".base.", ".") if k.endswith(base) else k): v for k, v in state.items()
            if not k.endswith(LORA_PARAM_SUFFIXES)}


def _task_model(state: dict[str, torch.Tensor], saved: dict[str, Any] | None, config: GPTConfig | None,
                source: str) -> GPT:
    if saved is None:
        if config is None:
            raise CheckpointError(f"{source} does not record its model config; pass the config it was trained with")
        return model_from_state_dict(state, config, source)
    # The weights themselves are the authority on biases and tying, should the recorded config
    # describe the requested architecture rather than the one loaded (e.g. init=gpt2).
    head, emb = state.get("out_head.weight"), state.get("tok_emb.weight")
    untied = head is not None and emb is not None and head.shape == emb.shape and not torch.equal(head, emb)
    source_cfg = config_from_dict(dict(saved), source)
    source_cfg = dataclasses.replace(
        source_cfg,
        qkv_bias="trf_blocks.0.att.W_query.bias" in state,
        tie_embeddings=source_cfg.tie_embeddings and not untied,
    )
    return model_from_state_dict(state, merge_config(source_cfg, config, source), source)


def _load_directory(path: Path, config: GPTConfig | None) -> GPT:
    if is_peft_adapter(path):
        return _load_adapter(path, config)
    if (path / CONFIG_FILE).is_file():
        saved = read_json(path / CONFIG_FILE)
        if saved.get("format") == FORMAT_MARKER:
            return load_model(path, config)
        if saved.get("model_type") == "gpt2" or "n_embd" in saved:
            return load_hf_directory(path, config)
        if saved.get("model_type") in LLAMA_TYPES:
            return load_llama_directory(path, config)
        raise CheckpointError(
            f"{path / CONFIG_FILE} is neither a gptlab export nor a GPT-2, Llama or Qwen3 config "
            f"(model_type {saved.get('model_type')!r})"
        )
    run = RunFiles.find(path)
    if run.export_dir is not None and is_native_export(run.export_dir):
        return load_model(run.export_dir, config)
    last = run.last_checkpoint()
    if last is not None:
        return _load_file(last, config)
    raise CheckpointError(
        f"{path} holds no model: expected {CONFIG_FILE} (a gptlab export or a Hugging Face GPT-2, Llama "
        "or Qwen3 directory), or a run directory with model/ or checkpoints/last.ckpt"
    )


def _load_adapter(path: Path, config: GPTConfig | None) -> GPT:
    """A PEFT adapter's base model with the adapter merged: a plain model, every weight trainable."""
    model = load_pretrained(adapter_base(path), config)
    load_peft_adapter(model, path)
    return merge_lora(model).requires_grad_(True).train()


def _load_file(path: Path, config: GPTConfig | None) -> GPT:
    if path.suffix == ".gguf" or is_gguf_file(path):
        return load_gguf(path, config)
    if path.suffix == ".safetensors":
        if (path.parent / CONFIG_FILE).is_file():
            return _load_directory(path.parent, config)
        return _load_state_dict(read_safetensors(path), config, str(path))
    obj = load_torch_file(path)
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path} holds a {type(obj).__name__}, not a state dict or checkpoint")
    if is_task_checkpoint(obj):
        return model_from_task_checkpoint(task_checkpoint_from(obj, path), config)
    if isinstance(obj.get(BOOK_STATE_KEY), dict):
        obj = obj[BOOK_STATE_KEY]
    return _load_state_dict(obj, config, str(path))


def _load_state_dict(state: dict[str, Any], config: GPTConfig | None, source: str) -> GPT:
    """A flat state dict in gptlab's names, or in GPT-2's (architecture from a ``config.json`` beside it)."""
    tensors = {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}
    if any(k.removeprefix("transformer.") == "wte.weight" for k in tensors):
        hf_config = Path(source).parent / CONFIG_FILE
        if hf_config.is_file():
            source_cfg = config_from_hf(read_json(hf_config), str(hf_config))
        elif config is not None:
            source_cfg = hf_config_for_state(tensors, config)
        else:
            raise CheckpointError(
                f"{source} holds GPT-2 tensors but there is no {CONFIG_FILE} beside it; pass a model config"
            )
        return load_hf_state(tensors, source_cfg, config, source)
    if config is None:
        raise CheckpointError(
            f"{source} is a bare state dict without its architecture; pass the model config it was "
            "trained with, e.g. load_pretrained(path, GPTConfig.from_preset('gpt2-small')), or "
            "model=<preset> beside init=<path>"
        )
    return model_from_state_dict(tensors, config, source)
