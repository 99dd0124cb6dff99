"""GGUF files, llama.cpp's format: ``load_gguf`` imports one into gptlab's GPT, ``export_gguf`` writes one.

Both go through gguf-py, llama.cpp's own Python package: ``gguf.GGUFReader`` (memory-mapped) and
``gguf.quants.dequantize`` read, ``gguf.GGUFWriter`` and ``gguf.quants.quantize`` write. The
tensor names and metadata keys are the tables of ``gguf_names``; this module maps configs, moves
tensors and checks everything a file could get wrong, each problem one ``CheckpointError`` line.

Import builds the ``GPT`` first and then dequantises the file's tensors one at a time straight
into its parameters, so the peak memory is the model plus one tensor, never a second copy of the
weights. Export plans every tensor's name, shape and type first (GGUF writes its index before
the data), then converts and writes them one at a time into a temporary file that is renamed
into place only once complete.

Two architectures, as llama.cpp names them: ``llama`` (RMSNorm, SwiGLU, RoPE, grouped-query
heads, optional biases, Llama 3's RoPE scaling as ``rope_freqs.weight``) and ``gpt2`` (LayerNorm,
GELU, learned positions, fused ``attn_qkv``). A Llama's query and key rows are stored in
llama.cpp's rotary order and converted on the way in and out (see ``gguf_names``).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gguf
import numpy as np
import torch
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, Keys, LlamaFileType, ReaderTensor, TokenType

from gptlab.checkpoints.files import StateDict, name_some
from gptlab.checkpoints.gguf_names import (
    GGUF_TABLES,
    GPT2_GGUF,
    LLAMA_GGUF,
    ROPE_FREQS,
    TOKEN_EMBEDDING,
    GGUFTable,
    TensorRule,
    from_gguf_rows,
    rotary_heads,
    to_gguf_rows,
)
from gptlab.checkpoints.hf import is_gpt2_shaped
from gptlab.checkpoints.hf_llama import llama_model_type
from gptlab.checkpoints.hf_names import with_zero_biases
from gptlab.checkpoints.state import export_state, merge_config, unwrap_gpt
from gptlab.errors import CheckpointError, ConfigError, first_line
from gptlab.fileio import atomic_path
from gptlab.gguf_file import read_gguf
from gptlab.model.config import GPTConfig
from gptlab.model.gpt import GPT
from gptlab.model.rope import inverse_frequencies
from gptlab.tokenizer.gguf_vocab import GGUFVocab

#: The first four bytes of every GGUF file.
#: ``export_gguf``'s types: how matrices are stored, and the ``general.file_type`` that says so.
EXPORT_TYPES: dict[str, tuple[GGMLQuantizationType, LlamaFileType]] = {
    "f32": (GGMLQuantizationType.F32, LlamaFileType.ALL_F32),
    "f16": (GGMLQuantizationType.F16, LlamaFileType.MOSTLY_F16),
    "bf16": (GGMLQuantizationType.BF16, LlamaFileType.MOSTLY_BF16),
    "q8_0": (GGMLQuantizationType.Q8_0, LlamaFileType.MOSTLY_Q8_0),
}
_OUTPUT_HEAD = "out_head.weight"
_POSITIONS = "pos_emb.weight"


# --- reading -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GGUFModel:
    """What a GGUF file says about its model: the table of its architecture, the config, its tensors."""

    table: GGUFTable
    config: GPTConfig
    tensors: dict[str, ReaderTensor]


def gguf_model(reader: gguf.GGUFReader, source: str) -> GGUFModel:
    """The architecture, ``GPTConfig`` and tensors of an open GGUF file; refuses what gptlab cannot run."""
    metadata = {name: field.contents() for name, field in reader.fields.items()
                if not name.startswith("tokenizer.")}  # the tokenizer's arrays: many thousand entries, not needed
    arch = metadata.get(Keys.General.ARCHITECTURE)
    table = GGUF_TABLES.get(str(arch))
    if table is None:
        raise CheckpointError(f"{source}: GGUF architecture {arch!r} is not supported; gptlab reads "
                              f"{' and '.join(GGUF_TABLES)} models")
    tensors = {tensor.name: tensor for tensor in reader.tensors}
    values = {"vocab_size": _token_count(reader, tensors), **_metadata_values(table, metadata, source),
              **_layout_values(table, tensors), "drop_rate": 0.0,
              "name": str(metadata.get(Keys.General.NAME) or Path(source).stem)}
    if table is LLAMA_GGUF:
        _refuse_unsupported_llama(metadata, source)
        values.update(norm="rmsnorm", mlp="swiglu", pos_emb="rope")
    try:
        config = GPTConfig(**values)
    except (ConfigError, TypeError, ValueError) as err:
        raise CheckpointError(f"{source}: not a config gptlab's GPT can build: {err}") from None
    if ROPE_FREQS in tensors and ROPE_FREQS in table.config_tensors:
        config = _with_rope_scaling(config, tensors[ROPE_FREQS], source)
    return GGUFModel(table, config, tensors)


def _layout_values(table: GGUFTable, tensors: dict[str, ReaderTensor]) -> dict[str, bool]:
    """The ``GPTConfig`` switches that the tensors decide: which biases the first layer has, a tied head."""
    provided = {name for rule in table.expand(1) if rule.gguf in tensors for name in rule.ours}
    return {
        "qkv_bias": "trf_blocks.0.att.W_query.bias" in provided,
        "out_bias": "trf_blocks.0.att.out_proj.bias" in provided,
        "mlp_bias": any(name.startswith("trf_blocks.0.ff.") and name.endswith(".bias") for name in provided),
        "tie_embeddings": _OUTPUT_HEAD not in provided,
    }


def _metadata_values(table: GGUFTable, metadata: dict[str, Any], source: str) -> dict[str, Any]:
    """``GPTConfig`` fields from the table's metadata rows; a field held by several keys must agree."""
    values: dict[str, Any] = {}
    held_by: dict[str, str] = {}
    for rule in table.metadata:
        key = table.key(rule)
        if key not in metadata:
            if not rule.optional:
                raise CheckpointError(f"{source}: GGUF metadata lacks {key!r}, which a {table.arch} model needs")
            continue
        value = metadata[key]
        if isinstance(value, list):
            raise CheckpointError(f"{source}: per-layer {key} is not supported; gptlab's layers are all alike")
        value = _decimal(value) if rule.vtype == gguf.GGUFValueType.FLOAT32 else int(value)
        if rule.field in values and values[rule.field] != value:
            raise CheckpointError(
                f"{source}: {key}={value} differs from {held_by[rule.field]}={values[rule.field]}; gptlab has one "
                f"{rule.field} for both (partial rotary or unequal key/value heads are not supported)"
            )
        values[rule.field], held_by[rule.field] = value, key
    return values


def _decimal(value: float) -> float:
    """A float32 as the shortest decimal that is the same float32 (1e-05, not 9.99999974e-06)."""
    return float(str(np.float32(value)))


def _token_count(reader: gguf.GGUFReader, tensors: dict[str, ReaderTensor]) -> int:
    """The vocabulary size of a file without ``{arch}.vocab_size``: its token list, else its embedding's rows."""
    token_list = reader.fields.get(Keys.Tokenizer.LIST)
    if token_list is not None:
        return len(token_list.data)
    embedding = tensors.get(TOKEN_EMBEDDING)
    return int(embedding.shape[-1]) if embedding is not None and len(embedding.shape) == 2 else 0


def _refuse_unsupported_llama(metadata: dict[str, Any], source: str) -> None:
    """Llama variants gptlab's GPT does not compute: experts, and positions scaled by metadata."""
    arch = LLAMA_GGUF.arch
    experts = metadata.get(Keys.LLM.EXPERT_COUNT.format(arch=arch), 0)
    if experts:
        raise CheckpointError(f"{source}: a mixture of {experts} experts is not supported; gptlab's blocks "
                              "have one feed-forward layer")
    scaling = metadata.get(Keys.Rope.SCALING_TYPE.format(arch=arch), "none")
    factor = float(metadata.get(Keys.Rope.SCALING_FACTOR.format(arch=arch), 1.0))
    if scaling not in ("none", "linear") or factor != 1.0:
        raise CheckpointError(f"{source}: RoPE scaling {scaling!r} (factor {factor}) is not supported; gptlab "
                              "implements plain RoPE and Llama 3's frequency scaling (rope_freqs.weight)")


def _with_rope_scaling(config: GPTConfig, rope_freqs: ReaderTensor, source: str) -> GPTConfig:
    """``config`` with the Llama 3 scaling behind a file's ``rope_freqs.weight`` (all ones: none)."""
    factors = _dequantized(rope_freqs, source)
    if tuple(factors.shape) != (config.head_dim // 2,):
        raise CheckpointError(f"{source}: {ROPE_FREQS} has shape {list(factors.shape)}, expected "
                              f"[{config.head_dim // 2}] for heads of size {config.head_dim}")
    scaling = llama3_scaling(factors, config.head_dim, config.rope_base, source)
    return dataclasses.replace(config, rope_scaling=scaling)


def llama3_scaling(factors: torch.Tensor, head_dim: int, base: float, source: str) -> dict[str, float] | None:
    """The Llama 3 ``rope_scaling`` settings whose frequencies llama.cpp's ``rope_freqs`` factors give.

    A factor divides a frequency: ``factor`` for the long wavelengths, 1 for the short ones, and
    ``1 / ((1 - s) / factor + s)`` in between, where ``s`` is linear in the inverse wavelength.
    Those blended factors fix ``s``'s line, which fixes the other three settings up to one common
    scale; Llama 3's ``low_freq_factor`` of 1 picks it. Settings that do not reproduce the file's
    factors are refused rather than approximated.
    """
    factors = factors.double()
    if torch.all(factors == 1.0):
        return None
    factor = float(factors.max())
    blended = (factors > 1.0 + 1e-6) & (factors < factor * (1 - 1e-6))
    if int(blended.sum()) < 2:
        raise CheckpointError(f"{source}: {ROPE_FREQS} blends {int(blended.sum())} frequencies, too few to recover "
                              "Llama 3's RoPE scaling settings (it takes two)")
    wavelengths = 2 * math.pi / inverse_frequencies(head_dim, base).double()
    smooth = (1 / factors[blended] - 1 / factor) / (1 - 1 / factor)
    slope, intercept = (float(x) for x in np.polyfit((1 / wavelengths[blended]).numpy(), smooth.numpy(), 1))
    if intercept < 0 < slope:  # with low_freq_factor = 1: intercept = -1 / (high - 1), slope = context / (high - 1)
        high_freq_factor = round(1 - 1 / intercept, 6)
        scaling = {"factor": round(factor, 6), "low_freq_factor": 1.0, "high_freq_factor": high_freq_factor,
                   "original_context_length": round(slope * (high_freq_factor - 1))}
        if _reproduces(scaling, factors, head_dim, base):
            return scaling
    raise CheckpointError(f"{source}: {ROPE_FREQS} is not Llama 3's RoPE frequency scaling, the only "
                          "frequency scaling gptlab implements")


def _reproduces(scaling: dict[str, float], factors: torch.Tensor, head_dim: int, base: float) -> bool:
    """Whether Llama 3 ``scaling`` gives ``factors`` (to float32 precision)."""
    implied = rope_factors(head_dim, base, scaling).double()
    return bool(torch.allclose(implied, factors, rtol=1e-5, atol=0.0))


def load_gguf(path: str | Path, config: GPTConfig | None = None, dtype: torch.dtype = torch.float32) -> GPT:
    """A ``GPT`` (training mode, on the CPU, ``dtype``) with the weights of GGUF file ``path``.

    Every tensor type gguf-py dequantises (F32, F16, BF16, Q8_0, Q4_x, K-quants, IQ...) becomes
    ``dtype``; another is one line naming it. A file without ``output.weight`` has a head tied to
    the token embedding. ``config`` merges as in ``load_pretrained`` (its architecture must match
    the file's, ``context_length`` may be shorter, ``drop_rate`` and ``attention`` are the caller's).
    """
    path = Path(path).expanduser()
    source = str(path)
    found = gguf_model(read_gguf(path), source)
    cfg = merge_config(found.config, config, source, can_untie=True)
    model = GPT(cfg).to(dtype)
    parameters = dict(model.named_parameters())  # a tied head appears once, as tok_emb.weight
    plan = _import_plan(found, parameters, source)
    with torch.no_grad():
        for rule, tensor in plan:
            _load_rule(rule, _dequantized(tensor, source), parameters, found.config)
        if found.config.tie_embeddings and _OUTPUT_HEAD in parameters:  # a tied source, untied by config
            parameters[_OUTPUT_HEAD].copy_(parameters["tok_emb.weight"])
    return model.train()


def _import_plan(found: GGUFModel, parameters: dict[str, torch.Tensor],
                 source: str) -> list[tuple[TensorRule, ReaderTensor]]:
    """Every (rule, file tensor) to load, after checking names and shapes against the metadata's config."""
    plan, known = [], set(found.table.config_tensors)
    for rule in found.table.expand(found.config.n_layers):
        known.add(rule.gguf)
        tensor = found.tensors.get(rule.gguf)
        needed = _needed(rule, parameters, found.config)
        if tensor is None and not needed:
            continue
        if tensor is None or not needed:
            state = "lacks" if tensor is None else "has"
            raise CheckpointError(f"{source}: GGUF file {state} tensor {rule.gguf!r}, unlike the metadata and first "
                                  f"layer of its {found.config.n_layers}-layer {found.table.arch} model")
        _check_shape(rule, tensor, _file_shape(rule, parameters, found.config), found.config, source)
        plan.append((rule, tensor))
    unexpected = sorted(set(found.tensors) - known)
    if unexpected:
        raise CheckpointError(f"{source}: unexpected tensors for a {found.table.arch} model of "
                              f"{found.config.n_layers} layers: {name_some(unexpected)}")
    return plan


def _check_shape(rule: TensorRule, tensor: ReaderTensor, expected: tuple[int, ...], cfg: GPTConfig,
                 source: str) -> None:
    """``tensor``'s shape (GGUF lists dimensions innermost first) against what the metadata makes it."""
    shape = tuple(int(n) for n in reversed(tensor.shape.tolist()))
    if shape != expected:
        raise CheckpointError(
            f"{source}: tensor {rule.gguf} has shape {list(shape)}, but the metadata (vocab_size={cfg.vocab_size}, "
            f"emb_dim={cfg.emb_dim}, n_heads={cfg.n_heads}, n_kv_heads={cfg.kv_heads}, "
            f"hidden_dim={cfg.ff_hidden_dim}, context_length={cfg.context_length}) makes it {list(expected)}"
        )


def _needed(rule: TensorRule, parameters: dict[str, torch.Tensor], source_cfg: GPTConfig) -> bool:
    """Whether the file's config has parameters that ``rule``'s tensor fills (a tied source's head is its embedding)."""
    if rule.ours == (_OUTPUT_HEAD,):
        return not source_cfg.tie_embeddings
    return all(name in parameters for name in rule.ours)


def _file_shape(rule: TensorRule, parameters: dict[str, torch.Tensor], source_cfg: GPTConfig) -> tuple[int, ...]:
    """The shape of ``rule``'s tensor in a file of ``source_cfg`` (a position table may outgrow the model's)."""
    shapes = [(source_cfg.context_length, *parameters[name].shape[1:]) if name == _POSITIONS
              else tuple(parameters[name].shape) for name in rule.ours]
    return (sum(shape[0] for shape in shapes), *shapes[0][1:])


def _dequantized(tensor: ReaderTensor, source: str) -> torch.Tensor:
    """One file tensor as a float32 ``torch.Tensor`` of its own (the reader's memory map stays untouched)."""
    try:
        array = gguf.quants.dequantize(tensor.data, tensor.tensor_type)
    except NotImplementedError:
        raise CheckpointError(
            f"{source}: tensor {tensor.name} has type {tensor.tensor_type.name}, which gguf cannot dequantise; "
            "convert the model to a type it reads (e.g. Q8_0, Q4_K or F16) with llama.cpp's llama-quantize"
        ) from None
    if not array.flags.writeable:  # F32 comes back as a read-only view of the file
        array = array.copy()
    return torch.from_numpy(array)


def _load_rule(rule: TensorRule, tensor: torch.Tensor, parameters: dict[str, torch.Tensor],
               source_cfg: GPTConfig) -> None:
    """Copy one file tensor into the parameters it holds: rotary rows reordered, fused rows split."""
    if rule.rotary is not None:
        tensor = from_gguf_rows(tensor, rotary_heads(rule, source_cfg))
    rows = [source_cfg.context_length if name == _POSITIONS else parameters[name].shape[0] for name in rule.ours]
    for name, part in zip(rule.ours, tensor.split(rows)):
        target = parameters[name]
        target.copy_(part[: target.shape[0]])  # the position table, cropped to the model's context


# --- writing -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _PlannedTensor:
    """One tensor of an export: its name, shape (``torch``'s order), storage type, and its float32 values."""

    name: str
    shape: tuple[int, ...]
    qtype: GGMLQuantizationType
    values: Callable[[], torch.Tensor]

    @property
    def nbytes(self) -> int:
        block, type_size = GGML_QUANT_SIZES[self.qtype]
        return math.prod(self.shape) // block * type_size


def gguf_table(config: GPTConfig) -> GGUFTable:
    """The GGUF architecture a gptlab config is written as: ``gpt2`` or ``llama``; any other is refused."""
    if is_gpt2_shaped(config):
        return GPT2_GGUF
    if llama_model_type(config) == "llama":
        return LLAMA_GGUF
    raise CheckpointError(
        f"GGUF export writes llama (rmsnorm, swiglu, rope, no qk_norm) or gpt2 (layernorm, gelu, learned, one key/"
        f"value head per head) models; {config.name!r} has norm={config.norm}, mlp={config.mlp}, "
        f"pos_emb={config.pos_emb}, qk_norm={config.qk_norm}, n_kv_heads={config.kv_heads} of {config.n_heads}"
    )


def export_gguf(model: GPT, path: str | Path, dtype: str = "f32", vocab: GGUFVocab | None = None) -> Path:
    """Write ``model`` as a GGUF file llama.cpp runs (with ``vocab``, its tokenizer); return the path.

    ``dtype`` stores the matrices as ``f32``, ``f16``, ``bf16`` or ``q8_0``; as llama.cpp does,
    norms, biases and other 1-D tensors (and GPT-2's position table) stay float32, and a q8_0
    matrix whose rows are not whole 32-value blocks is stored as f16. A tied head writes no
    ``output.weight``. A GPT-2-shaped model writes ``gpt2``, zero biases where it has none (the
    same function); a Llama-shaped one writes ``llama``. Without ``vocab`` the file holds no
    tokenizer: gptlab loads it, llama.cpp needs one. Writing is atomic: a failure leaves no file.
    """
    gpt = unwrap_gpt(model)
    cfg = gpt.cfg
    table = gguf_table(cfg)
    if dtype not in EXPORT_TYPES:
        raise CheckpointError(f"GGUF export type {dtype!r} is unknown; use one of {list(EXPORT_TYPES)}")
    qtype, file_type = EXPORT_TYPES[dtype]
    if vocab is not None:
        _check_vocab(vocab, cfg.vocab_size)
    plan = _export_plan(table, export_state(gpt), cfg, qtype)
    target = Path(path).expanduser()
    try:
        with atomic_path(target) as tmp:
            _write_file(tmp, table, cfg, file_type, vocab, plan)
    except OSError as err:
        raise CheckpointError(f"cannot write {target}: {first_line(err)}") from None
    return target


def _export_plan(table: GGUFTable, state: StateDict, cfg: GPTConfig,
                 qtype: GGMLQuantizationType) -> list[_PlannedTensor]:
    """Every tensor to write, in the table's order (``rope_freqs`` last), values still to be computed."""
    rules = [rule for rule in table.expand(cfg.n_layers) if not (rule.optional and rule.ours[0] not in state)]
    # llama.cpp's GPT-2 requires every bias: a model without some gets zeros, the same function.
    no_bias = [name.removesuffix(".bias") for rule in rules for name in rule.ours
               if name.endswith(".bias") and name not in state]
    state = with_zero_biases(state, no_bias)
    plan = []
    for rule in rules:
        parts = [state[name] for name in rule.ours]
        shape = (sum(part.shape[0] for part in parts), *parts[0].shape[1:])
        plan.append(_PlannedTensor(rule.gguf, shape, _storage_type(shape, qtype, rule.keep_f32),
                                   functools.partial(_file_tensor, rule, state, cfg)))
    if cfg.rope_scaling is not None:
        factors = functools.partial(rope_factors, cfg.head_dim, cfg.rope_base, cfg.rope_scaling)
        plan.append(_PlannedTensor(ROPE_FREQS, (cfg.head_dim // 2,), GGMLQuantizationType.F32, factors))
    return plan


def _storage_type(shape: tuple[int, ...], qtype: GGMLQuantizationType, keep_f32: bool) -> GGMLQuantizationType:
    """llama.cpp's choice for one tensor: float32 for 1-D ones, f16 where rows are not whole blocks of ``qtype``."""
    if len(shape) == 1 or keep_f32:
        return GGMLQuantizationType.F32
    block, _ = GGML_QUANT_SIZES[qtype]
    return GGMLQuantizationType.F16 if shape[-1] % block else qtype


def _file_tensor(rule: TensorRule, state: StateDict, cfg: GPTConfig) -> torch.Tensor:
    """``rule``'s tensor as the file stores it: gptlab's parts concatenated, rotary rows in llama.cpp's order."""
    tensor = torch.cat([state[name].float() for name in rule.ours])
    return to_gguf_rows(tensor, rotary_heads(rule, cfg)) if rule.rotary is not None else tensor


def rope_factors(head_dim: int, base: float, scaling: dict[str, float]) -> torch.Tensor:
    """llama.cpp's ``rope_freqs.weight`` for Llama 3 ``scaling``: how many times slower each frequency turns."""
    return inverse_frequencies(head_dim, base) / inverse_frequencies(head_dim, base, scaling)


def _write_file(path: Path, table: GGUFTable, cfg: GPTConfig, file_type: LlamaFileType,
                vocab: GGUFVocab | None, plan: list[_PlannedTensor]) -> None:
    """The whole file: header, metadata, tensor index, then each tensor converted as it is written."""
    writer = gguf.GGUFWriter(path, table.arch)
    try:
        _add_model_metadata(writer, table, cfg, file_type)
        if vocab is not None:
            _add_vocab(writer, vocab, cfg.vocab_size)
        for planned in plan:
            writer.add_tensor_info(planned.name, planned.shape, np.dtype(np.float32), planned.nbytes,
                                   raw_dtype=planned.qtype)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        for planned in plan:
            values = planned.values().detach().contiguous().numpy()
            writer.write_tensor_data(gguf.quants.quantize(values, planned.qtype))
    finally:
        writer.close()


def _add_model_metadata(writer: gguf.GGUFWriter, table: GGUFTable, cfg: GPTConfig,
                        file_type: LlamaFileType) -> None:
    """``general.*`` and the table's metadata rows (``{arch}.context_length``, heads, norm epsilon...)."""
    writer.add_type(gguf.GGUFType.MODEL)
    writer.add_name(cfg.name)
    writer.add_file_type(file_type)
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    sizes = cfg.written_out()  # hidden_dim, n_kv_heads and head_size as numbers, not None
    for rule in table.metadata:
        writer.add_key_value(table.key(rule), getattr(sizes, rule.field), rule.vtype)


def _check_vocab(vocab: GGUFVocab, vocab_size: int) -> None:
    """Refuse, before anything is written, a vocabulary that does not fit the model or GGUF's fields."""
    if len(vocab.tokens) > vocab_size or len(vocab.token_types) != len(vocab.tokens):
        raise CheckpointError(
            f"the vocabulary has {len(vocab.tokens)} tokens and {len(vocab.token_types)} token types for a model of "
            f"{vocab_size} embedding rows; pass the tokenizer the model was trained with"
        )
    if len(vocab.extra_stop_ids) > 2:
        raise CheckpointError(f"GGUF holds two stop ids besides EOS (eot, eom); the vocabulary has "
                              f"{list(vocab.extra_stop_ids)}")


def _add_vocab(writer: gguf.GGUFWriter, vocab: GGUFVocab, vocab_size: int) -> None:
    """``tokenizer.ggml.*`` and the chat template; the token list padded to the embedding's rows, as llama.cpp needs."""
    padding = range(len(vocab.tokens), vocab_size)
    writer.add_tokenizer_model(vocab.model)
    writer.add_tokenizer_pre(vocab.pre)
    writer.add_token_list([*vocab.tokens, *(f"[PAD{i}]" for i in padding)])
    writer.add_token_types([*map(int, vocab.token_types), *(int(TokenType.UNUSED) for _ in padding)])
    writer.add_token_merges(list(vocab.merges))
    writer.add_eos_token_id(vocab.eos_id)
    for token_id, add in ((vocab.bos_id, writer.add_bos_token_id), (vocab.pad_id, writer.add_pad_token_id),
                          (vocab.unknown_id, writer.add_unk_token_id)):
        if token_id is not None:
            add(token_id)
    writer.add_add_bos_token(vocab.add_bos)
    if vocab.chat_template is not None:
        writer.add_chat_template(vocab.chat_template)
    for token_id, add in zip(vocab.extra_stop_ids, (writer.add_eot_token_id, writer.add_eom_token_id)):
        add(token_id)
