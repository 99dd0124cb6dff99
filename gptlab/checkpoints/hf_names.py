"""The one table between ``transformers``' GPT-2 tensor names and gptlab's, read in both directions.

GPT-2's ``Conv1D`` layers store weights as ``[in, out]`` where ``nn.Linear`` stores ``[out, in]``,
and GPT-2 fuses the query, key and value projections into one ``c_attn`` tensor. A row of the
table says both: a ``conv1d`` tensor is transposed, and a row with several gptlab names is the
concatenation of those tensors along ``nn.Linear``'s output dimension.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch

from gptlab.checkpoints.files import StateDict, name_some
from gptlab.checkpoints.state import BUFFER_SUFFIXES
from gptlab.errors import CheckpointError


@dataclass(frozen=True)
class NameRule:
    """``hf`` holds the concatenation of ``ours`` (transposed when ``conv1d``); ``{i}`` is the layer."""

    hf: str
    ours: tuple[str, ...]
    conv1d: bool = False
    #: Absent when the output head is tied to the token embedding.
    optional: bool = False


_BLOCK = "trf_blocks.{i}."
_QKV = ("W_query", "W_key", "W_value")

GPT2_NAMES: tuple[NameRule, ...] = (
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
)


def expand(n_layers: int) -> Iterator[NameRule]:
    """The table with ``{i}`` filled in for every layer."""
    for rule in GPT2_NAMES:
        layers = range(n_layers) if "{i}" in rule.hf else (0,)
        for i in layers:
            yield NameRule(rule.hf.format(i=i), tuple(n.format(i=i) for n in rule.ours), rule.conv1d, rule.optional)


def from_hf_state_dict(hf_state: StateDict, n_layers: int) -> StateDict:
    """A ``transformers`` GPT-2 state dict in gptlab's names and ``nn.Linear`` layout.

    Keys may lack the ``transformer.`` prefix (as on the Hub); causal-mask buffers are dropped.
    """
    hf = {_with_prefix(k): v for k, v in hf_state.items() if not k.endswith(BUFFER_SUFFIXES)}
    out: StateDict = {}
    for rule in expand(n_layers):
        if rule.hf not in hf:
            if rule.optional:
                continue
            raise CheckpointError(f"GPT-2 checkpoint lacks tensor {rule.hf!r} (expected for {n_layers} layers)")
        tensor = hf.pop(rule.hf)
        if rule.conv1d:
            if tensor.dim() != 2:
                raise CheckpointError(f"GPT-2 tensor {rule.hf!r} has shape {list(tensor.shape)}, expected 2 dimensions")
            tensor = tensor.t()
        if tensor.shape[0] % len(rule.ours):
            raise CheckpointError(
                f"GPT-2 tensor {rule.hf!r} has shape {list(tensor.shape)}, not {len(rule.ours)} fused projections"
            )
        out.update(zip(rule.ours, (part.contiguous() for part in tensor.chunk(len(rule.ours)))))
    if hf:
        raise CheckpointError(f"GPT-2 checkpoint has unexpected tensors: {name_some(sorted(hf))}")
    return out


def to_hf_state_dict(state: StateDict, n_layers: int) -> StateDict:
    """gptlab's state dict in ``transformers`` GPT-2 names and ``Conv1D`` layout.

    Leave ``out_head.weight`` out for a tied head. Missing query/key/value biases (a model built
    with ``qkv_bias=False``) are written as zeros: the same function.
    """
    state = dict(state)
    for i in range(n_layers):
        for name in _QKV:
            weight = state[f"trf_blocks.{i}.att.{name}.weight"]
            state.setdefault(f"trf_blocks.{i}.att.{name}.bias", weight.new_zeros(weight.shape[0]))
    out: StateDict = {}
    for rule in expand(n_layers):
        if rule.optional and rule.ours[0] not in state:
            continue
        tensor = torch.cat([state[name] for name in rule.ours])
        out[rule.hf] = (tensor.t() if rule.conv1d else tensor).contiguous()
    return out


def _with_prefix(name: str) -> str:
    return name if name.startswith("transformer.") or name == "lm_head.weight" else "transformer." + name
