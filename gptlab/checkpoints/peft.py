"""Hugging Face PEFT's LoRA adapter directories: export (``export_peft_adapter``) and import (``load_peft_adapter``).

A PEFT adapter directory holds ``adapter_config.json`` (``r``, ``lora_alpha``, ``target_modules``...)
and ``adapter_model.safetensors``, whose tensors are named after the ``transformers`` module they
adapt: ``base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight``. PEFT keeps ``A`` and
``B`` as ``nn.Linear`` weights (``r x in`` and ``out x r``) and adds ``lora_alpha / r * B @ A`` to
the layer's weight; gptlab's ``LoRALinear`` keeps them as ``in x r`` and ``r x out``, so each
tensor crosses transposed. gptlab's ``scaling="alpha"`` (the update times ``alpha``) is written as
``lora_alpha = alpha * r``, which PEFT scales back to the same update; an imported adapter always
uses ``alpha_over_rank``, PEFT's own convention.

Module names come from the Llama table of ``hf_names`` (``LLAMA_NAMES``): the rows that rename one
linear layer's weight. Llama-family models (Llama, Qwen3) only: ``transformers``' GPT-2 fuses the
query, key and value projections into one ``Conv1D`` ``c_attn``, which gptlab's per-projection
adapters do not map onto one to one, so a GPT-2-shaped model is refused with one line. RoPE needs
no care: gptlab's rotary layout is Llama's, so query and key weights (and their updates) cross
unpermuted. PEFT options gptlab's plain LoRA does not compute (DoRA, rsLoRA, per-module ranks,
LoRA biases, fully trained extra modules...) are refused, never approximated.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import nn

from gptlab.checkpoints.files import (
    StateDict,
    export_directory,
    load_torch_file,
    name_some,
    read_json,
    read_safetensors,
    write_json,
)
from gptlab.checkpoints.hf_llama import llama_model_type
from gptlab.checkpoints.hf_names import LLAMA_NAMES, expand
from gptlab.checkpoints.hub import HUB_MODELS
from gptlab.checkpoints.state import unwrap_gpt
from gptlab.errors import CheckpointError, ConfigError
from gptlab.model.gpt import GPT
from gptlab.model.lora import LoRALinear, apply_lora, has_lora, lora_layers
from gptlab.named_models import NAMED_MODELS

ADAPTER_CONFIG_FILE = "adapter_config.json"
ADAPTER_WEIGHTS_FILE = "adapter_model.safetensors"
#: The weights file of adapters saved with ``safe_serialization=False``.
LEGACY_ADAPTER_WEIGHTS_FILE = "adapter_model.bin"
#: What PEFT's causal-LM wrapper puts before the ``transformers`` module names in its tensor names.
KEY_PREFIX = "base_model.model."
#: PEFT's target for every linear layer but the output head.
ALL_LINEAR = "all-linear"

#: Adapter settings gptlab's LoRA does not compute; any true value is refused with the reason.
_UNSUPPORTED = {
    "use_dora": "DoRA (weight-decomposed LoRA)",
    "use_rslora": "rank-stabilised scaling (lora_alpha / sqrt(r))",
    "rank_pattern": "per-module ranks (rank_pattern)",
    "alpha_pattern": "per-module alphas (alpha_pattern)",
    "fan_in_fan_out": "fan_in_fan_out (Conv1D-layout base layers)",
    "lora_bias": "trained LoRA biases (lora_bias)",
    "modules_to_save": "fully trained extra modules (modules_to_save)",
    "target_parameters": "adapters on bare parameters (target_parameters)",
    "trainable_token_indices": "trainable token embeddings (trainable_token_indices)",
    "layer_replication": "replicated layers (layer_replication)",
    "use_qalora": "QA-LoRA",
    "alora_invocation_tokens": "activated LoRA (alora_invocation_tokens)",
}


@dataclass(frozen=True)
class AdapterSettings:
    """What ``adapter_config.json`` says, once checked: the parts gptlab's ``apply_lora`` needs."""

    rank: int
    alpha: float
    dropout: float
    target_modules: str | tuple[str, ...]
    exclude_modules: str | tuple[str, ...]
    layers: tuple[int, ...] | None
    base_model: str | None


def is_peft_adapter(path: Path) -> bool:
    """Whether ``path`` is a PEFT adapter directory (it has ``adapter_config.json``)."""
    return path.is_dir() and (path / ADAPTER_CONFIG_FILE).is_file()


# ----------------------------------------------------------------------------------------------
# Module names


def hf_module_names(model: GPT) -> dict[str, str]:
    """Every linear layer of a Llama-family ``model``: gptlab's name -> ``transformers``' name.

    Read from ``LLAMA_NAMES``: a row renaming one ``.weight`` names one layer in both worlds.
    """
    cfg = model.cfg
    if llama_model_type(cfg) is None:
        raise ConfigError(
            f"PEFT adapters are exchanged for Llama-family models (rmsnorm, swiglu, rope), not norm={cfg.norm}, "
            f"mlp={cfg.mlp}, pos_emb={cfg.pos_emb}: transformers' GPT-2 fuses query, key and value into one Conv1D "
            "c_attn, which gptlab's per-projection adapters do not map onto; merge them and export with --to hf"
        )
    modules = dict(model.named_modules())
    names: dict[str, str] = {}
    for rule in expand(cfg.n_layers, LLAMA_NAMES):
        ours = rule.ours[0].removesuffix(".weight")
        if (len(rule.ours) == 1 and rule.hf.endswith(".weight") and rule.ours[0].endswith(".weight")
                and isinstance(modules.get(ours), (nn.Linear, LoRALinear))):
            names[ours] = rule.hf.removesuffix(".weight")
    return names


def _layer_index(hf_name: str) -> int | None:
    match = re.search(r"\.layers\.(\d+)\.", hf_name)
    return int(match.group(1)) if match else None


def _leaf(hf_name: str) -> str:
    return hf_name.rsplit(".", 1)[-1]


def _matches(hf_name: str, targets: str | tuple[str, ...], head: str | None) -> bool:
    """PEFT's rule: a string is a regular expression over the whole name (or ``all-linear``), a list
    holds names that equal the module's name or one of its dotted suffixes."""
    if isinstance(targets, str):
        if targets == ALL_LINEAR:
            return hf_name != head
        return re.fullmatch(targets, hf_name) is not None
    return any(hf_name == t or hf_name.endswith("." + t) for t in targets)


def _target_modules(adapted: list[str], every: Iterable[str]) -> list[str]:
    """``target_modules`` for the adapted modules: their short names (``q_proj``) when they cover
    every layer of those kinds, else their full names (an adapter on some layers only)."""
    kinds = sorted({_leaf(name) for name in adapted})
    complete = {name for name in every if _leaf(name) in kinds} == set(adapted)
    return kinds if complete else sorted(adapted)


# ----------------------------------------------------------------------------------------------
# Export


def export_peft_adapter(model: GPT, directory: str | Path, base_model: str | None = None) -> Path:
    """Write the LoRA adapters of ``model`` as a PEFT adapter directory, atomically.

    ``PeftModel.from_pretrained(base, directory)`` on the ``transformers`` copy of the model's base
    weights (``export_hf`` of the model before ``apply_lora``) then computes the same logits.
    ``base_model`` goes into ``base_model_name_or_path``: a Hub repository or directory PEFT (and
    ``load_pretrained``) loads the base from. Every adapted layer must share one rank, alpha,
    scaling and dropout, as one ``apply_lora`` call gives them.
    """
    gpt = unwrap_gpt(model)
    layers = lora_layers(gpt)
    if not layers:
        raise ConfigError("the model has no LoRA adapters to export; apply_lora first, or train with "
                          "task.trainable_layers=lora")
    settings = {(layer.rank, layer.alpha, layer.scaling, _dropout(layer)) for layer in layers.values()}
    if len(settings) > 1:
        raise ConfigError(f"a PEFT adapter has one rank, alpha, scaling and dropout, but the model's LoRA layers "
                          f"have {len(settings)} combinations: {sorted(settings)}")
    rank, alpha, scaling, dropout = settings.pop()
    names = hf_module_names(gpt)
    foreign = sorted(set(layers) - set(names))
    if foreign:
        raise ConfigError(f"LoRA layers {name_some(foreign)} have no transformers counterpart in a Llama model")
    tensors: StateDict = {}
    for name, layer in layers.items():
        key = KEY_PREFIX + names[name]
        tensors[f"{key}.lora_A.weight"] = layer.lora_A.detach().T.contiguous().cpu()
        tensors[f"{key}.lora_B.weight"] = layer.lora_B.detach().T.contiguous().cpu()
    lora_alpha = alpha if scaling == "alpha_over_rank" else alpha * rank  # PEFT divides by r
    config = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base_model,
        "r": rank,
        "lora_alpha": int(lora_alpha) if float(lora_alpha).is_integer() else lora_alpha,
        "lora_dropout": dropout,
        "target_modules": _target_modules([names[n] for n in layers], names.values()),
        "bias": "none",
        "fan_in_fan_out": False,
        "use_rslora": False,
        "use_dora": False,
        "rank_pattern": {},
        "alpha_pattern": {},
        "modules_to_save": None,
        "init_lora_weights": True,
        "inference_mode": True,
    }

    def write(tmp: Path) -> None:
        save_file(tensors, str(tmp / ADAPTER_WEIGHTS_FILE), metadata={"format": "pt"})
        write_json(tmp / ADAPTER_CONFIG_FILE, config)

    return export_directory(directory, write, is_peft_adapter)


def _dropout(layer: LoRALinear) -> float:
    return float(getattr(layer.dropout, "p", 0.0))


# ----------------------------------------------------------------------------------------------
# Import


def read_adapter_config(directory: str | Path) -> AdapterSettings:
    """``adapter_config.json`` of a LoRA adapter gptlab computes exactly; anything else is one ``CheckpointError``."""
    path = Path(directory).expanduser() / ADAPTER_CONFIG_FILE
    raw = read_json(path)
    peft_type = raw.get("peft_type")
    if str(peft_type).upper() != "LORA":
        raise CheckpointError(f"{path}: peft_type {peft_type!r} is not LORA; gptlab reads LoRA adapters only")
    for key, what in _UNSUPPORTED.items():
        if raw.get(key):
            raise CheckpointError(f"{path}: {what} is not supported; gptlab's LoRA adds lora_alpha / r * B @ A "
                                  "to each adapted linear layer")
    if raw.get("bias", "none") not in (None, "none"):
        raise CheckpointError(f"{path}: bias={raw['bias']!r} (trained biases) is not supported; use bias='none'")
    if raw.get("layers_pattern") not in (None, "layers", ["layers"]):
        raise CheckpointError(f"{path}: layers_pattern {raw['layers_pattern']!r} is not supported for Llama models")
    try:
        rank, alpha, dropout = int(raw["r"]), float(raw["lora_alpha"]), float(raw.get("lora_dropout") or 0.0)
    except KeyError as err:
        raise CheckpointError(f"{path} lacks {err.args[0]!r}") from None
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"{path}: r, lora_alpha and lora_dropout must be numbers ({err})") from None
    if rank <= 0 or not math.isfinite(alpha):
        raise CheckpointError(f"{path}: r must be a positive integer and lora_alpha a number, got r={raw['r']!r}, "
                              f"lora_alpha={raw['lora_alpha']!r}")
    layers = raw.get("layers_to_transform")
    base = raw.get("base_model_name_or_path")
    return AdapterSettings(
        rank=rank, alpha=alpha, dropout=dropout,
        target_modules=_names_field(raw.get("target_modules"), path, "target_modules"),
        exclude_modules=_names_field(raw.get("exclude_modules") or (), path, "exclude_modules"),
        layers=None if layers is None else tuple(int(i) for i in ([layers] if isinstance(layers, int) else layers)),
        base_model=str(base) if base else None,
    )


def _names_field(value: Any, path: Path, key: str) -> str | tuple[str, ...]:
    if isinstance(value, str):
        try:
            re.compile(value)
        except re.error as err:
            raise CheckpointError(f"{path}: {key} {value!r} is not a regular expression ({err})") from None
        return value
    listed = isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value)
    if listed and (value or key != "target_modules"):  # no targets at all would adapt nothing
        return tuple(value)
    raise CheckpointError(f"{path}: {key} must be a list of module names or a regular expression, got {value!r}")


def load_peft_adapter(model: GPT, directory: str | Path) -> list[str]:
    """Give ``model`` the LoRA adapters of a PEFT adapter directory, in place; returns the adapted layers.

    The adapter's rank, ``lora_alpha`` (scaling ``alpha_over_rank``) and dropout go to ``apply_lora``,
    which freezes every other weight as for LoRA training; its ``target_modules``,
    ``exclude_modules`` and ``layers_to_transform`` pick the layers as PEFT does. Every target must
    name a linear layer of the model, and the weights file must hold exactly the adapted layers'
    tensors. ``merge_lora`` folds the adapters in afterwards, as ``load_pretrained`` does for an
    adapter directory.
    """
    directory = Path(directory).expanduser()
    settings = read_adapter_config(directory)
    gpt = unwrap_gpt(model)
    if has_lora(gpt):
        raise ConfigError("the model already has LoRA adapters; merge_lora it before loading another adapter")
    names = hf_module_names(gpt)
    by_hf = {hf: ours for ours, hf in names.items()}
    head = names.get("out_head")
    _check_targets(settings.target_modules, list(by_hf), head, directory)
    selected = [
        hf for hf in by_hf
        if _matches(hf, settings.target_modules, head) and not (
            settings.exclude_modules and _matches(hf, settings.exclude_modules, None))
        and (settings.layers is None or _layer_index(hf) in settings.layers)
    ]
    if not selected:
        raise CheckpointError(f"{directory / ADAPTER_CONFIG_FILE}: its targets select no layer of this model")
    tensors = _read_adapter_weights(directory)
    expected = {f"{hf}.lora_{ab}.weight" for hf in selected for ab in "AB"}
    missing, unexpected = sorted(expected - set(tensors)), sorted(set(tensors) - expected)
    if missing or unexpected:
        parts = ([f"lacks {name_some(missing)}"] if missing else []) + (
            [f"has tensors its config does not target: {name_some(unexpected)}"] if unexpected else [])
        raise CheckpointError(f"{directory}: the adapter weights do not fit its config: {'; '.join(parts)}")
    for hf in selected:
        _check_shapes(tensors, hf, settings.rank, gpt.get_submodule(by_hf[hf]), directory)
    wrapped = apply_lora(gpt, settings.rank, settings.alpha, settings.dropout, targets=[by_hf[hf] for hf in selected],
                         exclude=(), scaling="alpha_over_rank")
    with torch.no_grad():
        for ours, layer in lora_layers(gpt).items():
            layer.lora_A.copy_(tensors[f"{names[ours]}.lora_A.weight"].T)
            layer.lora_B.copy_(tensors[f"{names[ours]}.lora_B.weight"].T)
    return wrapped


def _check_targets(targets: str | tuple[str, ...], modules: list[str], head: str | None, directory: Path) -> None:
    """Every listed target names a linear layer gptlab adapts: a misspelt or foreign one is an error, not a no-op."""
    if isinstance(targets, str):
        return  # a regular expression: the selection as a whole must be non-empty
    unknown = [t for t in targets if not any(_matches(m, (t,), head) for m in modules)]
    if unknown:
        kinds = sorted({_leaf(m) for m in modules})
        raise CheckpointError(
            f"{directory / ADAPTER_CONFIG_FILE}: target_modules {unknown} name no linear layer of this model; "
            f"gptlab adapts {', '.join(kinds)}"
        )


def _read_adapter_weights(directory: Path) -> StateDict:
    """The adapter's tensors by ``transformers`` module name (PEFT's ``base_model.model.`` prefix removed)."""
    if (directory / ADAPTER_WEIGHTS_FILE).is_file():
        raw = read_safetensors(directory / ADAPTER_WEIGHTS_FILE)
    elif (directory / LEGACY_ADAPTER_WEIGHTS_FILE).is_file():
        raw = load_torch_file(directory / LEGACY_ADAPTER_WEIGHTS_FILE)
    else:
        raise CheckpointError(f"{directory} has an {ADAPTER_CONFIG_FILE} but no {ADAPTER_WEIGHTS_FILE}")
    return {key.removeprefix(KEY_PREFIX): value for key, value in raw.items()}


def _check_shapes(tensors: StateDict, hf: str, rank: int, layer: nn.Module, directory: Path) -> None:
    for ab, shape in (("A", (rank, layer.in_features)), ("B", (layer.out_features, rank))):
        found = tuple(tensors[f"{hf}.lora_{ab}.weight"].shape)
        if found != shape:
            raise CheckpointError(f"{directory}: {hf}.lora_{ab}.weight has shape {list(found)}, expected "
                                  f"{list(shape)} for r={rank} on this model")


# ----------------------------------------------------------------------------------------------
# The base model


def adapter_base(directory: Path) -> str:
    """The base model of a PEFT adapter directory, as ``load_pretrained`` opens it.

    A Hub repository of a name gptlab knows (``HuggingFaceTB/SmolLM2-135M-Instruct``,
    ``openai-community/gpt2``) becomes that name; a relative path that is not there from the
    working directory is looked up beside the adapter.
    """
    base = read_adapter_config(directory).base_model
    if base is None:
        raise CheckpointError(
            f"{directory / ADAPTER_CONFIG_FILE} names no base_model_name_or_path; load the base model and apply "
            "the adapter with gptlab.checkpoints.load_peft_adapter"
        )
    repos = {**{m.hub_repo: name for name, m in NAMED_MODELS.items()}, **{r: n for n, r in HUB_MODELS.items()}}
    if base in repos:
        return repos[base]
    path = Path(base).expanduser()
    if not path.is_absolute() and not path.exists() and (directory / path).exists():
        path = directory / path
    if path.exists() and path.resolve() == directory.resolve():
        raise CheckpointError(f"{directory / ADAPTER_CONFIG_FILE}: base_model_name_or_path is the adapter itself")
    return str(path) if path.exists() else base


def hub_name(source: str) -> str:
    """``source`` as PEFT and ``transformers`` find it: a named model's Hub repository, else ``source``."""
    if source in NAMED_MODELS:
        return NAMED_MODELS[source].hub_repo
    return HUB_MODELS.get(source, source)
