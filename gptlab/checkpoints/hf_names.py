"""The tables between ``transformers``' tensor names and gptlab's, each read in both directions.

One ``NameTable`` per Hugging Face family: GPT-2 (``GPT2LMHeadModel``) and Llama
(``LlamaForCausalLM``, also Qwen3's ``Qwen3ForCausalLM``, whose names are Llama's plus the
query/key norms). ``from_hf_state_dict`` and ``to_hf_state_dict`` are the one code path for both.

GPT-2's ``Conv1D`` layers store weights as ``[in, out]`` where ``nn.Linear`` stores ``[out, in]``,
and GPT-2 fuses the query, key and value projections into one ``c_attn`` tensor. A row of the
table says both: a ``conv1d`` tensor is transposed, and a row with several gptlab names is the
concatenation of those tensors along ``nn.Linear``'s output dimension. Llama's layers are
``nn.Linear`` already and its rotary layout is gptlab's, so its rows are plain renames.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
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
    name_some,
    write_json,
)
from gptlab.checkpoints.state import BUFFER_SUFFIXES, merge_config, model_from_state_dict
from gptlab.errors import CheckpointError
from gptlab.model.config import GPTConfig
from gptlab.model.gpt import GPT


@dataclass(frozen=True)
class NameRule:
    """``hf`` holds the concatenation of ``ours`` (transposed when ``conv1d``); ``{i}`` is the layer."""

    hf: str
    ours: tuple[str, ...]
    conv1d: bool = False
    #: Present only in some configs (a tied head has no ``lm_head.weight``; Llama's biases and
    #: Qwen3's query/key norms): read when present, written when gptlab's model has it.
    optional: bool = False


@dataclass(frozen=True)
class NameTable:
    """A family's rules, the prefix its checkpoints may omit, and the non-weight keys to drop."""

    family: str
    prefix: str
    rules: tuple[NameRule, ...]
    ignored_suffixes: tuple[str, ...] = ()


#: The ``model_type`` of each family ``config.json`` gptlab reads and writes, and its model class.
HF_MODEL_TYPES = {"gpt2": "GPT2LMHeadModel", "llama": "LlamaForCausalLM", "qwen3": "Qwen3ForCausalLM"}

_BLOCK = "trf_blocks.{i}."
_QKV = ("W_query", "W_key", "W_value")

GPT2_NAMES = NameTable("GPT-2", "transformer.", (
    NameRule("transformer.wte.weight", ("tok_emb.weight",)),
    NameRule("transformer.wpe.weight", ("pos_emb.weight",)),
    NameRule("transformer.h.{i}.ln_1.weight", (_BLOCK + "norm1.scale",)),
    NameRule("transformer.h.{i}.ln_1.bias", (_BLOCK + "norm1.shift",)),
    NameRule("transformer.h.{i}.attn.c_attn.weight", tuple(f"{_BLOCK}att.{n}.weight" for n in _QKV), conv1d=True),
    NameRule("transformer.h.{i}.attn.c_attn.bias", tuple(f"{_BLOCK}att.{n}.bias" for n in _QKV)),
    NameRule("transformer.h.{i}.attn.c_proj.weight", (_BLOCK + "att.out_proj.weight",), conv1d=True),
    NameRule("transformer.h.{i}.attn.c_proj.bias", (_BLOCK + "att.out_proj.bias",)),
    NameRule("transformer.h.{i}.ln_2.weight", (_BLOCK + "norm2.scale",)),
    NameRule("transformer.h.{i}.ln_2.bias", (_BLOCK + "norm2.shift",)),
    NameRule("transformer.h.{i}.mlp.c_fc.weight", (_BLOCK + "ff.layers.0.weight",), conv1d=True),
    NameRule("transformer.h.{i}.mlp.c_fc.bias", (_BLOCK + "ff.layers.0.bias",)),
    NameRule("transformer.h.{i}.mlp.c_proj.weight", (_BLOCK + "ff.layers.2.weight",), conv1d=True),
    NameRule("transformer.h.{i}.mlp.c_proj.bias", (_BLOCK + "ff.layers.2.bias",)),
    NameRule("transformer.ln_f.weight", ("final_norm.scale",)),
    NameRule("transformer.ln_f.bias", ("final_norm.shift",)),
    NameRule("lm_head.weight", ("out_head.weight",), optional=True),
), ignored_suffixes=BUFFER_SUFFIXES)


def _linear(hf: str, ours: str, bias: bool = True) -> tuple[NameRule, ...]:
    """A linear layer's weight row, and its optional bias row."""
    weight = NameRule(f"{hf}.weight", (f"{ours}.weight",))
    return (weight, NameRule(f"{hf}.bias", (f"{ours}.bias",), optional=True)) if bias else (weight,)


_LAYER = "model.layers.{i}."
_LLAMA_LINEARS = (
    ("self_attn.q_proj", "att.W_query"), ("self_attn.k_proj", "att.W_key"), ("self_attn.v_proj", "att.W_value"),
    ("self_attn.o_proj", "att.out_proj"), ("mlp.gate_proj", "ff.fc1"), ("mlp.up_proj", "ff.fc2"),
    ("mlp.down_proj", "ff.fc3"),
)

LLAMA_NAMES = NameTable("Llama", "model.", (
    NameRule("model.embed_tokens.weight", ("tok_emb.weight",)),
    NameRule(_LAYER + "input_layernorm.weight", (_BLOCK + "norm1.scale",)),
    *(rule for hf, ours in _LLAMA_LINEARS for rule in _linear(_LAYER + hf, _BLOCK + ours)),
    NameRule(_LAYER + "self_attn.q_norm.weight", (_BLOCK + "att.q_norm.scale",), optional=True),
    NameRule(_LAYER + "self_attn.k_norm.weight", (_BLOCK + "att.k_norm.scale",), optional=True),
    NameRule(_LAYER + "post_attention_layernorm.weight", (_BLOCK + "norm2.scale",)),
    NameRule("model.norm.weight", ("final_norm.scale",)),
    NameRule("lm_head.weight", ("out_head.weight",), optional=True),
), ignored_suffixes=(".rotary_emb.inv_freq",))


def expand(n_layers: int, table: NameTable = GPT2_NAMES) -> Iterator[NameRule]:
    """The table's rules with ``{i}`` filled in for every layer."""
    for rule in table.rules:
        layers = range(n_layers) if "{i}" in rule.hf else (0,)
        for i in layers:
            yield NameRule(rule.hf.format(i=i), tuple(n.format(i=i) for n in rule.ours), rule.conv1d, rule.optional)


def from_hf_state_dict(hf_state: StateDict, n_layers: int, table: NameTable = GPT2_NAMES) -> StateDict:
    """A ``transformers`` state dict of ``table``'s family in gptlab's names and ``nn.Linear`` layout.

    Keys may lack the family's prefix (``transformer.`` on the Hub's GPT-2 files); buffers that
    are not weights (causal masks, rotary frequencies) are dropped.
    """
    names = {rule.hf for rule in table.rules}
    hf = {
        (k if k.startswith(table.prefix) or k in names else table.prefix + k): v
        for k, v in hf_state.items() if not k.endswith(table.ignored_suffixes)
    }
    out: StateDict = {}
    for rule in expand(n_layers, table):
        if rule.hf not in hf:
            if rule.optional:
                continue
            raise CheckpointError(f"{table.family} checkpoint lacks tensor {rule.hf!r} (expected for {n_layers} layers)")
        tensor = hf.pop(rule.hf)
        if rule.conv1d:
            if tensor.dim() != 2:
                raise CheckpointError(
                    f"{table.family} tensor {rule.hf!r} has shape {list(tensor.shape)}, expected 2 dimensions"
                )
            tensor = tensor.t()
        if tensor.shape[0] % len(rule.ours):
            raise CheckpointError(
                f"{table.family} tensor {rule.hf!r} has shape {list(tensor.shape)}, not {len(rule.ours)} fused projections"
            )
        out.update(zip(rule.ours, (part.contiguous() for part in tensor.chunk(len(rule.ours)))))
    if hf:
        raise CheckpointError(f"{table.family} checkpoint has unexpected tensors: {name_some(sorted(hf))}")
    return out


def to_hf_state_dict(state: StateDict, n_layers: int, table: NameTable = GPT2_NAMES) -> StateDict:
    """gptlab's state dict in ``transformers``' names and layout for ``table``'s family.

    Leave ``out_head.weight`` out for a tied head. An optional row is written when gptlab's
    tensors are there. A required bias row whose biases the model lacks (GPT-2 always has them;
    a model built with ``qkv_bias=False`` does not) is written as zeros: the same function.
    """
    out: StateDict = {}
    for rule in expand(n_layers, table):
        if rule.optional and rule.ours[0] not in state:
            continue
        tensor = torch.cat([state[name] if name in state or not name.endswith(".bias") else _zero_bias(state, name)
                            for name in rule.ours])
        out[rule.hf] = (tensor.t() if rule.conv1d else tensor).contiguous()
    return out


def with_zero_biases(state: StateDict, layers: list[str]) -> StateDict:
    """``state`` plus a zero bias for each of ``layers`` (such as ``trf_blocks.0.att.out_proj``) that lacks one."""
    return {**{f"{layer}.bias": _zero_bias(state, f"{layer}.bias") for layer in layers}, **state}


def _zero_bias(state: StateDict, name: str) -> torch.Tensor:
    weight = state[name.removesuffix(".bias") + ".weight"]
    return weight.new_zeros(weight.shape[0])


def load_hf_state(hf_state: StateDict, source_cfg: GPTConfig, config: GPTConfig | None, source: str,
                  table: NameTable = GPT2_NAMES) -> GPT:
    """A ``GPT`` from ``table``-named tensors of architecture ``source_cfg``, merged with the caller's ``config``."""
    state = from_hf_state_dict(hf_state, source_cfg.n_layers, table)
    if not source_cfg.tie_embeddings and "out_head.weight" not in state:
        raise CheckpointError(f"{source}: tie_word_embeddings is false but there is no lm_head.weight")
    cfg = merge_config(source_cfg, config, source, can_untie=True)
    if not cfg.tie_embeddings and "out_head.weight" not in state:
        # As the book's load_weights_into_gpt does: the untied head starts as a copy of the embedding.
        state["out_head.weight"] = state["tok_emb.weight"].clone()
    return model_from_state_dict(state, cfg, source)


def is_hf_export(directory: Path) -> bool:
    """Whether ``directory`` holds a Hugging Face model of a family gptlab writes (so an export may replace it)."""
    return json_field(directory / CONFIG_FILE, "model_type") in HF_MODEL_TYPES


def write_hf_directory(directory: str | Path, hf_state: StateDict, hf_config: dict[str, Any]) -> Path:
    """``model.safetensors`` and ``config.json`` written atomically into ``directory`` (see ``export_directory``)."""

    def write(tmp: Path) -> None:
        save_file(hf_state, str(tmp / WEIGHTS_FILE), metadata={"format": "pt"})
        write_json(tmp / CONFIG_FILE, hf_config)

    return export_directory(directory, write, is_hf_export)


def default_eos_id(vocab_size: int) -> int:
    """The end-of-text id of gptlab's own tokenizers: GPT-2's 50256, or the byte tokenizer's last id."""
    return 50256 if vocab_size > 50256 else vocab_size - 1
