"""The tables between GGUF files (llama.cpp's names) and gptlab's GPT, each read in both directions.

One ``GGUFTable`` per architecture gptlab reads and writes: ``llama`` and ``gpt2``. A table holds
the tensor rows (a GGUF tensor and the gptlab tensors it is made of) and the metadata rows (a GGUF
key and the ``GPTConfig`` field it holds). The names and keys themselves are gguf-py's
(``gguf.TENSOR_NAMES``, ``gguf.Keys``), so they are spelled once, by llama.cpp.

Two layouts differ from gptlab's:

* GPT-2's query, key and value projections are one fused ``attn_qkv`` tensor: a row with several
  gptlab names is their concatenation along ``nn.Linear``'s output dimension (as in
  ``hf_names``). GGUF stores every matrix in ``nn.Linear``'s ``[out, in]`` order, so nothing is
  transposed.
* llama.cpp's converter permutes the rows of Llama's query and key weights (and biases) so that
  each head's rotary pairs are adjacent, ``(0, 1), (2, 3)...``, where gptlab's RoPE (Hugging
  Face's "rotate half" layout) pairs ``(i, i + head_dim / 2)``. ``to_gguf_rows`` applies that
  permutation on export and ``from_gguf_rows`` undoes it on import.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

import torch
from gguf import MODEL_TENSOR, TENSOR_NAMES, GGUFValueType, Keys

from gptlab.model.config import GPTConfig

#: Which rows llama.cpp permutes: a query head's (``n_heads`` of them) or a key head's (``kv_heads``).
RotaryRows = Literal["query", "key"]


def tensor_name(tensor: MODEL_TENSOR, suffix: str = "weight") -> str:
    """gguf-py's name of ``tensor`` with its ``.weight``/``.bias`` suffix; ``{bid}`` stands for the layer."""
    return f"{TENSOR_NAMES[tensor]}.{suffix}"


@dataclass(frozen=True)
class TensorRule:
    """GGUF tensor ``gguf`` holds the concatenation of gptlab's ``ours`` along dimension 0."""

    gguf: str
    ours: tuple[str, ...]
    #: Rows that llama.cpp stores permuted for its rotary layout (Llama's query and key).
    rotary: RotaryRows | None = None
    #: Read when present, written when gptlab's model has it (an untied head, Llama's biases).
    optional: bool = False
    #: Stored as float32 whatever the export type, as llama.cpp keeps it (GPT-2's position table).
    keep_f32: bool = False

    def for_layer(self, layer: int) -> TensorRule:
        """The rule with ``{bid}`` / ``{i}`` filled in for ``layer``."""
        return TensorRule(self.gguf.format(bid=layer), tuple(n.format(i=layer) for n in self.ours),
                          self.rotary, self.optional, self.keep_f32)


@dataclass(frozen=True)
class MetadataRule:
    """GGUF key ``key`` (``{arch}`` filled in) holds ``GPTConfig`` field ``field`` as a ``vtype``."""

    key: str
    field: str
    vtype: GGUFValueType
    #: Absent from a file, the field keeps ``GPTConfig``'s default (or, for ``vocab_size``, the token count).
    optional: bool = False


@dataclass(frozen=True)
class GGUFTable:
    """An architecture's tensor rows and metadata rows."""

    arch: str
    tensors: tuple[TensorRule, ...]
    metadata: tuple[MetadataRule, ...]
    #: Tensors of the file that are part of the config, not weights (Llama 3's ``rope_freqs``).
    config_tensors: tuple[str, ...] = ()

    def expand(self, n_layers: int) -> Iterator[TensorRule]:
        """The tensor rows with the layer filled in, in llama.cpp's order: the embeddings, each layer, the head."""
        per_layer = [rule for rule in self.tensors if "{bid}" in rule.gguf]
        first = self.tensors.index(per_layer[0])
        yield from self.tensors[:first]
        for layer in range(n_layers):
            yield from (rule.for_layer(layer) for rule in per_layer)
        yield from (rule for rule in self.tensors[first:] if "{bid}" not in rule.gguf)

    def key(self, rule: MetadataRule) -> str:
        """``rule``'s key for this architecture."""
        return rule.key.format(arch=self.arch)


_BLOCK = "trf_blocks.{i}."
_U32, _F32 = GGUFValueType.UINT32, GGUFValueType.FLOAT32

#: Llama 3's RoPE frequency factors: a tensor of the file that is part of the config, not a weight.
ROPE_FREQS = tensor_name(MODEL_TENSOR.ROPE_FREQS)
#: The token embedding, ``[vocab, emb]``: where a file without a token count says its vocabulary size.
TOKEN_EMBEDDING = tensor_name(MODEL_TENSOR.TOKEN_EMBD)


def _linear(tensor: MODEL_TENSOR, ours: str, rotary: RotaryRows | None = None) -> tuple[TensorRule, ...]:
    """A Llama linear layer: its weight, and its optional bias."""
    return (TensorRule(tensor_name(tensor), (f"{_BLOCK}{ours}.weight",), rotary),
            TensorRule(tensor_name(tensor, "bias"), (f"{_BLOCK}{ours}.bias",), rotary, optional=True))


def _shared_metadata(norm_eps_key: str) -> tuple[MetadataRule, ...]:
    """The sizes every architecture records, and its normalisation epsilon."""
    return (
        MetadataRule(Keys.LLM.VOCAB_SIZE, "vocab_size", _U32, optional=True),
        MetadataRule(Keys.LLM.CONTEXT_LENGTH, "context_length", _U32),
        MetadataRule(Keys.LLM.EMBEDDING_LENGTH, "emb_dim", _U32),
        MetadataRule(Keys.LLM.BLOCK_COUNT, "n_layers", _U32),
        MetadataRule(Keys.LLM.FEED_FORWARD_LENGTH, "hidden_dim", _U32),
        MetadataRule(Keys.Attention.HEAD_COUNT, "n_heads", _U32),
        MetadataRule(norm_eps_key, "norm_eps", _F32),
    )


LLAMA_GGUF = GGUFTable("llama", (
    TensorRule(TOKEN_EMBEDDING, ("tok_emb.weight",)),
    TensorRule(tensor_name(MODEL_TENSOR.ATTN_NORM), (_BLOCK + "norm1.scale",)),
    *_linear(MODEL_TENSOR.ATTN_Q, "att.W_query", rotary="query"),
    *_linear(MODEL_TENSOR.ATTN_K, "att.W_key", rotary="key"),
    *_linear(MODEL_TENSOR.ATTN_V, "att.W_value"),
    *_linear(MODEL_TENSOR.ATTN_OUT, "att.out_proj"),
    TensorRule(tensor_name(MODEL_TENSOR.FFN_NORM), (_BLOCK + "norm2.scale",)),
    *_linear(MODEL_TENSOR.FFN_GATE, "ff.fc1"),
    *_linear(MODEL_TENSOR.FFN_UP, "ff.fc2"),
    *_linear(MODEL_TENSOR.FFN_DOWN, "ff.fc3"),
    TensorRule(tensor_name(MODEL_TENSOR.OUTPUT_NORM), ("final_norm.scale",)),
    TensorRule(tensor_name(MODEL_TENSOR.OUTPUT), ("out_head.weight",), optional=True),
), (
    *_shared_metadata(Keys.Attention.LAYERNORM_RMS_EPS),
    MetadataRule(Keys.Attention.HEAD_COUNT_KV, "n_kv_heads", _U32, optional=True),
    # One head size for keys, values and the rotation: gptlab has no partial rotary or unequal heads.
    MetadataRule(Keys.Attention.KEY_LENGTH, "head_size", _U32, optional=True),
    MetadataRule(Keys.Attention.VALUE_LENGTH, "head_size", _U32, optional=True),
    MetadataRule(Keys.Rope.DIMENSION_COUNT, "head_size", _U32, optional=True),
    MetadataRule(Keys.Rope.FREQ_BASE, "rope_base", _F32, optional=True),
), config_tensors=(ROPE_FREQS,))

_QKV = tuple(f"{_BLOCK}att.{name}" for name in ("W_query", "W_key", "W_value"))


def _with_bias(tensor: MODEL_TENSOR, weight: tuple[str, ...], bias: tuple[str, ...]) -> tuple[TensorRule, ...]:
    """A GPT-2 layer: llama.cpp requires its bias (``shift`` for a LayerNorm) beside its weight."""
    return TensorRule(tensor_name(tensor), weight), TensorRule(tensor_name(tensor, "bias"), bias)


GPT2_GGUF = GGUFTable("gpt2", (
    TensorRule(TOKEN_EMBEDDING, ("tok_emb.weight",)),
    TensorRule(tensor_name(MODEL_TENSOR.POS_EMBD), ("pos_emb.weight",), keep_f32=True),
    *_with_bias(MODEL_TENSOR.ATTN_NORM, (_BLOCK + "norm1.scale",), (_BLOCK + "norm1.shift",)),
    *_with_bias(MODEL_TENSOR.ATTN_QKV, tuple(f"{n}.weight" for n in _QKV), tuple(f"{n}.bias" for n in _QKV)),
    *_with_bias(MODEL_TENSOR.ATTN_OUT, (_BLOCK + "att.out_proj.weight",), (_BLOCK + "att.out_proj.bias",)),
    *_with_bias(MODEL_TENSOR.FFN_NORM, (_BLOCK + "norm2.scale",), (_BLOCK + "norm2.shift",)),
    *_with_bias(MODEL_TENSOR.FFN_UP, (_BLOCK + "ff.layers.0.weight",), (_BLOCK + "ff.layers.0.bias",)),
    *_with_bias(MODEL_TENSOR.FFN_DOWN, (_BLOCK + "ff.layers.2.weight",), (_BLOCK + "ff.layers.2.bias",)),
    *_with_bias(MODEL_TENSOR.OUTPUT_NORM, ("final_norm.scale",), ("final_norm.shift",)),
    TensorRule(tensor_name(MODEL_TENSOR.OUTPUT), ("out_head.weight",), optional=True),
), _shared_metadata(Keys.Attention.LAYERNORM_EPS))

#: The tables by ``general.architecture``.
GGUF_TABLES = {table.arch: table for table in (LLAMA_GGUF, GPT2_GGUF)}


def rotary_heads(rule: TensorRule, config: GPTConfig) -> int:
    """How many heads ``rule``'s rows are permuted in: the query heads, or the key/value heads."""
    return config.n_heads if rule.rotary == "query" else config.kv_heads


def to_gguf_rows(tensor: torch.Tensor, n_heads: int) -> torch.Tensor:
    """gptlab's rotate-half rows of each head reordered as llama.cpp's converter stores them.

    Row ``j`` of the first half of a head and row ``j`` of its second half (a rotary pair)
    become rows ``2j`` and ``2j + 1``: ``reshape(heads, 2, half, ...).swapaxes(1, 2)``.
    """
    half = tensor.shape[0] // n_heads // 2
    return tensor.reshape(n_heads, 2, half, *tensor.shape[1:]).swapaxes(1, 2).reshape(tensor.shape)


def from_gguf_rows(tensor: torch.Tensor, n_heads: int) -> torch.Tensor:
    """The inverse of ``to_gguf_rows``: llama.cpp's adjacent rotary pairs back to rotate-half order."""
    half = tensor.shape[0] // n_heads // 2
    return tensor.reshape(n_heads, half, 2, *tensor.shape[1:]).swapaxes(1, 2).reshape(tensor.shape)
