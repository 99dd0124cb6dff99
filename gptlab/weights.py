"""Saving, loading and converting GPT weights.

Formats this module reads (``load_pretrained``) and writes:

* **gptlab export** (``save_model`` / ``load_model``): a directory with ``config.json`` (the
  ``GPTConfig`` plus ``"format": "gptlab"``) and ``model.safetensors`` in the book's tensor names.
* **Hugging Face GPT-2** (``export_hf`` / a local directory / a hub name such as ``gpt2``): the
  ``transformers`` ``GPT2LMHeadModel`` layout, whose ``Conv1D`` layers store weights as
  ``[in, out]`` and fuse the query/key/value projections into one ``c_attn``.
* **book state dict**: ``torch.save(model.state_dict(), "model.pth")`` from the book's code, bare
  or wrapped as ``{"model_state_dict": ...}``. It carries no architecture, so a config is needed.
* **Lightning checkpoint** of a gptlab task (``.ckpt``) and a **run directory** (``<run>/model``
  or ``<run>/checkpoints/last.ckpt``).

Every mismatch is a ``CheckpointError`` naming the tensor or setting and how to fix it.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from gptlab.errors import CheckpointError, ConfigError
from gptlab.model.config import GPTConfig
from gptlab.model.gpt import GPT

#: GPT-2 checkpoints that ``load_pretrained`` downloads by name, and their Hugging Face Hub repos.
HUB_MODELS: dict[str, str] = {
    "gpt2": "openai-community/gpt2",
    "gpt2-medium": "openai-community/gpt2-medium",
    "gpt2-large": "openai-community/gpt2-large",
    "gpt2-xl": "openai-community/gpt2-xl",
}
HUB_URL = "https://huggingface.co"
FORMAT_MARKER = "gptlab"
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"

#: Fields that fix tensor shapes: a caller's config and a checkpoint must agree on them.
SHAPE_FIELDS = ("vocab_size", "context_length", "emb_dim", "n_heads", "n_layers")
#: Keys a state dict may carry that are not weights: the book's causal-mask buffers and the
#: causal-mask buffers of older ``transformers`` GPT-2 checkpoints.
_BUFFER_SUFFIXES = (".att.mask", ".attn.bias", ".attn.masked_bias")
_MAX_NAMED = 5

StateDict = dict[str, torch.Tensor]


# --------------------------------------------------------------------------------------------
# gptlab export
# --------------------------------------------------------------------------------------------

def _is_tied(model: GPT) -> bool:
    return model.out_head.weight is model.tok_emb.weight


def save_model(model: GPT, directory: str | Path) -> Path:
    """Write ``model`` as a gptlab export (``config.json`` + ``model.safetensors``); return the path.

    The files are written to a temporary directory beside the target, which then takes the
    target's place, so an interrupted save never leaves half an export. An existing gptlab export
    at ``directory`` is replaced; any other non-empty directory is refused rather than deleted.
    """
    model = _unwrap(model)
    state = to_book_state_dict(model)
    if _is_tied(model):
        # safetensors refuses tensors that share memory; the tied head is rebuilt on load.
        state.pop("out_head.weight")
    config = {**model.cfg.to_dict(), "tie_embeddings": _is_tied(model), "format": FORMAT_MARKER}

    def write(tmp: Path) -> None:
        save_file({k: v.detach().contiguous().cpu() for k, v in state.items()}, str(tmp / WEIGHTS_FILE),
                  metadata={"format": "pt"})
        (tmp / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")

    return _atomic_directory(Path(directory), write, replaceable=_is_gptlab_export)


def load_model(directory: str | Path, config: GPTConfig | None = None) -> GPT:
    """Load a gptlab export written by ``save_model`` (see ``load_pretrained`` for ``config``)."""
    directory = Path(directory).expanduser()
    saved = _read_json(directory / CONFIG_FILE)
    if saved.get("format") != FORMAT_MARKER:
        raise CheckpointError(f"{directory} is not a gptlab export ({CONFIG_FILE} lacks \"format\": \"gptlab\")")
    weights = directory / WEIGHTS_FILE
    if not weights.is_file():
        raise CheckpointError(f"{weights} is missing; the export is incomplete, write it again with save_model")
    saved.pop("format")
    source_cfg = _config_from_dict(saved, str(directory))
    cfg = merge_config(source_cfg, config, str(directory))
    return _build(cfg, _read_safetensors(weights), str(weights))


def _is_gptlab_export(directory: Path) -> bool:
    try:
        return json.loads((directory / CONFIG_FILE).read_text()).get("format") == FORMAT_MARKER
    except (OSError, ValueError, AttributeError):
        return False


def _atomic_directory(target: Path, write: Callable[[Path], None], replaceable: Callable[[Path], bool]) -> Path:
    """Run ``write(tmp_dir)``, then move ``tmp_dir`` to ``target`` (replacing an old copy).

    The files are flushed to disk before the rename, so the directory that appears is complete.
    POSIX cannot rename a directory over a non-empty one, so an old target is first renamed
    aside and removed only once the new one is in place.
    """
    target = target.expanduser()
    if target.exists() and not target.is_dir():
        raise CheckpointError(f"cannot export to {target}: it is a file, not a directory")
    if target.is_dir() and any(target.iterdir()) and not replaceable(target):
        raise CheckpointError(
            f"cannot export to {target}: the directory exists and holds something other than a "
            "previous export of this kind; pick an empty or new directory"
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    tag = uuid.uuid4().hex[:8]
    tmp = target.parent / f".{target.name}.tmp-{tag}"
    old = target.parent / f".{target.name}.old-{tag}"
    tmp.mkdir()
    try:
        write(tmp)
        for path in tmp.iterdir():
            with open(path, "rb") as f:
                os.fsync(f.fileno())
        if target.exists():
            os.replace(target, old)
        os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if old.exists() and not target.exists():
            os.replace(old, target)
        raise
    shutil.rmtree(old, ignore_errors=True)
    return target


# --------------------------------------------------------------------------------------------
# The book's state dict
# --------------------------------------------------------------------------------------------

def to_book_state_dict(model: GPT) -> StateDict:
    """The state dict in the book's names (``tok_emb.weight``, ``trf_blocks.0.att.W_query.weight``...).

    gptlab's modules carry the book's names, so this is ``model.state_dict()``; it is loadable
    by the book's ``GPTModel`` (with ``strict=False`` there, since the book keeps its causal
    masks in the state dict and gptlab does not).
    """
    return dict(_unwrap(model).state_dict())


def from_book_state_dict(state_dict: StateDict, config: GPTConfig) -> GPT:
    """A ``GPT`` of architecture ``config`` holding the book-format ``state_dict``."""
    return _build(config, state_dict, "state dict")


# --------------------------------------------------------------------------------------------
# Hugging Face GPT-2
# --------------------------------------------------------------------------------------------

def config_from_hf(hf_config: dict[str, Any], source: str = "config.json") -> GPTConfig:
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
    unsupported = {
        "n_inner": (hf_config.get("n_inner"), (None, 4 * emb)),
        "activation_function": (hf_config.get("activation_function", "gelu_new"), ("gelu_new", "gelu_pytorch_tanh")),
        "layer_norm_epsilon": (hf_config.get("layer_norm_epsilon", 1e-5), (1e-5,)),
        "scale_attn_weights": (hf_config.get("scale_attn_weights", True), (True,)),
        "scale_attn_by_inverse_layer_idx": (hf_config.get("scale_attn_by_inverse_layer_idx", False), (False,)),
        "add_cross_attention": (hf_config.get("add_cross_attention", False), (False,)),
    }
    for key, (value, allowed) in unsupported.items():
        if value not in allowed:
            raise CheckpointError(
                f"{source}: {key}={value!r} is not supported (gptlab's GPT implements {allowed[0]!r})"
            )
    return cfg


def hf_to_book_state_dict(hf_state: StateDict, config: GPTConfig) -> StateDict:
    """Rename and reshape a ``transformers`` GPT-2 state dict into gptlab's names.

    ``Conv1D`` weights are ``[in, out]`` and become ``nn.Linear``'s ``[out, in]``; the fused
    ``c_attn`` splits into ``W_query``, ``W_key``, ``W_value``. The causal-mask buffers are dropped.
    """
    prefix = "transformer."
    hf = {(k[len(prefix):] if k.startswith(prefix) else k): v for k, v in hf_state.items()}
    hf = {k: v for k, v in hf.items() if not k.endswith(_BUFFER_SUFFIXES)}
    emb = config.emb_dim
    out: StateDict = {}

    def take(name: str, ndim: int | None = None) -> torch.Tensor:
        if name not in hf:
            raise CheckpointError(f"GPT-2 checkpoint lacks tensor {name!r} (expected for {config.n_layers} layers)")
        tensor = hf.pop(name)
        if ndim is not None and tensor.dim() != ndim:
            raise CheckpointError(f"GPT-2 tensor {name!r} has shape {list(tensor.shape)}, expected {ndim} dimensions")
        return tensor

    out["tok_emb.weight"] = take("wte.weight")
    out["pos_emb.weight"] = take("wpe.weight")
    for i in range(config.n_layers):
        h, b = f"h.{i}.", f"trf_blocks.{i}."
        qkv_w, qkv_b = take(h + "attn.c_attn.weight", 2), take(h + "attn.c_attn.bias", 1)
        if qkv_w.shape[1] != 3 * emb or qkv_b.shape[0] != 3 * emb:
            raise CheckpointError(
                f"GPT-2 tensor {h}attn.c_attn.weight has shape {list(qkv_w.shape)}, expected [{emb}, {3 * emb}]"
            )
        for name, w, bias in zip(("W_query", "W_key", "W_value"), qkv_w.split(emb, dim=1), qkv_b.split(emb)):
            out[f"{b}att.{name}.weight"] = w.t()
            out[f"{b}att.{name}.bias"] = bias
        out[b + "att.out_proj.weight"] = take(h + "attn.c_proj.weight", 2).t()
        out[b + "att.out_proj.bias"] = take(h + "attn.c_proj.bias")
        out[b + "ff.layers.0.weight"] = take(h + "mlp.c_fc.weight", 2).t()
        out[b + "ff.layers.0.bias"] = take(h + "mlp.c_fc.bias")
        out[b + "ff.layers.2.weight"] = take(h + "mlp.c_proj.weight", 2).t()
        out[b + "ff.layers.2.bias"] = take(h + "mlp.c_proj.bias")
        for hf_ln, ours in (("ln_1", "norm1"), ("ln_2", "norm2")):
            out[f"{b}{ours}.scale"] = take(f"{h}{hf_ln}.weight")
            out[f"{b}{ours}.shift"] = take(f"{h}{hf_ln}.bias")
    out["final_norm.scale"] = take("ln_f.weight")
    out["final_norm.shift"] = take("ln_f.bias")
    if "lm_head.weight" in hf:
        out["out_head.weight"] = hf.pop("lm_head.weight")
    if hf:
        raise CheckpointError(f"GPT-2 checkpoint has unexpected tensors: {_first(sorted(hf))}")
    return {k: v.contiguous() for k, v in out.items()}


def book_to_hf_state_dict(model: GPT) -> StateDict:
    """gptlab's weights in ``transformers`` GPT-2 names and ``Conv1D`` layout (see ``export_hf``)."""
    model = _unwrap(model)
    cfg = model.cfg
    sd = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    out: StateDict = {"transformer.wte.weight": sd["tok_emb.weight"], "transformer.wpe.weight": sd["pos_emb.weight"]}
    for i in range(cfg.n_layers):
        h, b = f"transformer.h.{i}.", f"trf_blocks.{i}."

        def bias(name: str) -> torch.Tensor:
            # A model built without qkv biases is the same function as one with zero biases.
            return sd.get(f"{b}att.{name}.bias", torch.zeros(cfg.emb_dim, dtype=sd[f"{b}att.{name}.weight"].dtype))

        names = ("W_query", "W_key", "W_value")
        out[h + "attn.c_attn.weight"] = torch.cat([sd[f"{b}att.{n}.weight"].t() for n in names], dim=1)
        out[h + "attn.c_attn.bias"] = torch.cat([bias(n) for n in names])
        out[h + "attn.c_proj.weight"] = sd[b + "att.out_proj.weight"].t()
        out[h + "attn.c_proj.bias"] = sd[b + "att.out_proj.bias"]
        out[h + "mlp.c_fc.weight"] = sd[b + "ff.layers.0.weight"].t()
        out[h + "mlp.c_fc.bias"] = sd[b + "ff.layers.0.bias"]
        out[h + "mlp.c_proj.weight"] = sd[b + "ff.layers.2.weight"].t()
        out[h + "mlp.c_proj.bias"] = sd[b + "ff.layers.2.bias"]
        for hf_ln, ours in (("ln_1", "norm1"), ("ln_2", "norm2")):
            out[f"{h}{hf_ln}.weight"] = sd[f"{b}{ours}.scale"]
            out[f"{h}{hf_ln}.bias"] = sd[f"{b}{ours}.shift"]
    out["transformer.ln_f.weight"] = sd["final_norm.scale"]
    out["transformer.ln_f.bias"] = sd["final_norm.shift"]
    if not _is_tied(model):
        out["lm_head.weight"] = sd["out_head.weight"]
    return {k: v.contiguous() for k, v in out.items()}


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
        "activation_function": "gelu_new",
        "resid_pdrop": config.drop_rate,
        "embd_pdrop": config.drop_rate,
        "attn_pdrop": config.drop_rate,
        "layer_norm_epsilon": 1e-5,
        "initializer_range": 0.02,
        "scale_attn_weights": True,
        "scale_attn_by_inverse_layer_idx": False,
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
    model = _unwrap(model)
    state = book_to_hf_state_dict(model)
    config = hf_config_dict(model.cfg, tied=_is_tied(model), dtype=model.tok_emb.weight.dtype)

    def write(tmp: Path) -> None:
        save_file(state, str(tmp / WEIGHTS_FILE), metadata={"format": "pt"})
        (tmp / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")

    def replaceable(directory: Path) -> bool:
        try:
            return json.loads((directory / CONFIG_FILE).read_text()).get("model_type") == "gpt2"
        except (OSError, ValueError, AttributeError):
            return False

    return _atomic_directory(Path(directory), write, replaceable=replaceable)


def load_hf_directory(directory: str | Path, config: GPTConfig | None = None) -> GPT:
    """Load a ``transformers`` GPT-2 directory (``model.safetensors`` or ``pytorch_model.bin``)."""
    directory = Path(directory).expanduser()
    if (directory / WEIGHTS_FILE).is_file():
        path = directory / WEIGHTS_FILE
        hf_state = _read_safetensors(path)
    elif (directory / "pytorch_model.bin").is_file():
        path = directory / "pytorch_model.bin"
        hf_state = _torch_load(path)
    else:
        raise CheckpointError(
            f"{directory} has a GPT-2 {CONFIG_FILE} but neither {WEIGHTS_FILE} nor pytorch_model.bin "
            "(sharded checkpoints are not supported)"
        )
    hf_config = _read_json(directory / CONFIG_FILE)
    if not hf_config.get("_name_or_path"):
        hf_config["_name_or_path"] = directory.name
    source_cfg = config_from_hf(hf_config, str(directory / CONFIG_FILE))
    return _load_hf_state(hf_state, source_cfg, config, str(path))


def _load_hf_state(hf_state: StateDict, source_cfg: GPTConfig, config: GPTConfig | None, source: str) -> GPT:
    state = hf_to_book_state_dict(hf_state, source_cfg)
    if not source_cfg.tie_embeddings and "out_head.weight" not in state:
        raise CheckpointError(f"{source}: tie_word_embeddings is false but there is no lm_head.weight")
    cfg = merge_config(source_cfg, config, source, can_untie=True)
    if not cfg.tie_embeddings and "out_head.weight" not in state:
        # As the book's load_weights_into_gpt does: the untied head starts as a copy of the embedding.
        state["out_head.weight"] = state["tok_emb.weight"].clone()
    return _build(cfg, state, source)


# --------------------------------------------------------------------------------------------
# load_pretrained: any source
# --------------------------------------------------------------------------------------------

def load_pretrained(source: str | Path, config: GPTConfig | None = None) -> GPT:
    """A ``GPT`` (in training mode, float32, on the CPU) with weights from ``source``.

    ``source`` is one of:

    * a GPT-2 name (``gpt2``, ``gpt2-medium``, ``gpt2-large``, ``gpt2-xl``), downloaded once from
      the Hugging Face Hub into its cache;
    * a directory: a Hugging Face GPT-2 one, a gptlab export, or a run directory (its ``model/``
      export, else ``checkpoints/last.ckpt``);
    * a file: a gptlab task's Lightning ``.ckpt``, or a book-format ``state_dict`` (``.pth``/``.pt``/
      ``.bin``/``.safetensors``), which needs ``config`` since it carries no architecture.

    ``config`` is the caller's model config. Where the source describes its own architecture,
    ``vocab_size``, ``emb_dim``, ``n_heads`` and ``n_layers`` must match it (``context_length``
    may be smaller: the position table is cropped), ``qkv_bias`` is the source's, ``tie_embeddings``
    is the source's unless the source is tied and ``config`` asks for an untied head (which then
    starts as a copy of the embedding, as in the book's ``load_weights_into_gpt``), and
    ``drop_rate`` and ``attention`` are the caller's. Without ``config``, imported GPT-2 weights
    get ``drop_rate=0.0`` and gptlab's own formats keep their saved settings.
    """
    if isinstance(source, str) and source in HUB_MODELS:
        model = load_hf_directory(download_gpt2(source), config)
        if config is None or config.name == "custom":
            model.cfg.name = source
        return model
    path = Path(source).expanduser()
    if not path.exists():
        text = str(source)
        looks_like_name = "/" not in text and os.sep not in text and not Path(text).suffix
        if looks_like_name:
            raise CheckpointError(
                f"unknown model {text!r}; valid names: {', '.join(HUB_MODELS)} "
                "(or pass a local directory or checkpoint file)"
            )
        raise CheckpointError(
            f"{path} does not exist; pass a model name ({', '.join(HUB_MODELS)}), a model directory "
            "or a checkpoint file"
        )
    if path.is_dir():
        return _load_directory(path, config)
    return _load_file(path, config)


def _load_directory(path: Path, config: GPTConfig | None) -> GPT:
    if (path / CONFIG_FILE).is_file():
        saved = _read_json(path / CONFIG_FILE)
        if saved.get("format") == FORMAT_MARKER:
            return load_model(path, config)
        if saved.get("model_type") == "gpt2" or "n_embd" in saved:
            return load_hf_directory(path, config)
        raise CheckpointError(
            f"{path / CONFIG_FILE} is neither a gptlab export nor a GPT-2 config "
            f"(model_type {saved.get('model_type')!r})"
        )
    if _is_gptlab_export(path / "model"):
        return load_model(path / "model", config)
    last = path / "checkpoints" / "last.ckpt"
    if last.is_file():
        return _load_file(last, config)
    raise CheckpointError(
        f"{path} holds no model: expected {CONFIG_FILE} (a gptlab export or a Hugging Face GPT-2 "
        "directory), or a run directory with model/ or checkpoints/last.ckpt"
    )


def _load_file(path: Path, config: GPTConfig | None) -> GPT:
    if path.suffix == ".safetensors":
        if (path.parent / CONFIG_FILE).is_file():
            return _load_directory(path.parent, config)
        return _load_state_dict(_read_safetensors(path), config, str(path))
    obj = _torch_load(path)
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path} holds a {type(obj).__name__}, not a state dict or checkpoint")
    if isinstance(obj.get("state_dict"), dict):
        return _load_lightning(obj, config, str(path))
    if isinstance(obj.get("model_state_dict"), dict):  # the book's chapter 5 checkpoint
        obj = obj["model_state_dict"]
    return _load_state_dict(obj, config, str(path))


def _load_state_dict(state: dict[str, Any], config: GPTConfig | None, source: str) -> GPT:
    """A flat state dict in the book's names, or in GPT-2's (architecture from a ``config.json`` beside it)."""
    tensors = {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}
    if any(k.removeprefix("transformer.") == "wte.weight" for k in tensors):
        hf_config = Path(source).parent / CONFIG_FILE
        if hf_config.is_file():
            source_cfg = config_from_hf(_read_json(hf_config), str(hf_config))
        elif config is not None:
            source_cfg = dataclasses.replace(config, qkv_bias=True, tie_embeddings="lm_head.weight" not in tensors)
        else:
            raise CheckpointError(
                f"{source} holds GPT-2 tensors but there is no {CONFIG_FILE} beside it; pass a model config"
            )
        return _load_hf_state(tensors, source_cfg, config, source)
    if config is None:
        raise CheckpointError(
            f"{source} is a bare state dict without its architecture; pass the model config it was "
            "trained with, e.g. load_pretrained(path, GPTConfig.from_preset('gpt2-small')), or "
            "model=<preset> beside init=<path>"
        )
    return _build(config, tensors, source)


def _load_lightning(checkpoint: dict[str, Any], config: GPTConfig | None, source: str) -> GPT:
    """A gptlab task checkpoint: ``model.``-prefixed weights plus the model config in its hparams."""
    prefixes = ("model._orig_mod.", "model.")  # the second form when the task used torch.compile
    state: StateDict = {}
    for key, value in checkpoint["state_dict"].items():
        for prefix in prefixes:
            if key.startswith(prefix):
                state[key[len(prefix):]] = value
                break
    if not state:
        raise CheckpointError(f"{source} has no model.* weights; it is not a checkpoint of a gptlab task")
    saved = (checkpoint.get("hyper_parameters") or {}).get("model")
    if saved is None:
        if config is None:
            raise CheckpointError(f"{source} does not record its model config; pass the config it was trained with")
        return _build(config, state, source)
    source_cfg = _config_from_dict(dict(saved), source)
    # The weights themselves are the authority on biases and tying, should the recorded config
    # describe the requested architecture rather than the one loaded (e.g. init=gpt2).
    head, emb = state.get("out_head.weight"), state.get("tok_emb.weight")
    untied = head is not None and emb is not None and head.shape == emb.shape and not torch.equal(head, emb)
    source_cfg = dataclasses.replace(
        source_cfg,
        qkv_bias="trf_blocks.0.att.W_query.bias" in state,
        tie_embeddings=source_cfg.tie_embeddings and not untied,
    )
    return _build(merge_config(source_cfg, config, source), state, source)


# --------------------------------------------------------------------------------------------
# The Hugging Face Hub
# --------------------------------------------------------------------------------------------

def download_gpt2(name: str) -> Path:
    """The local directory of GPT-2 ``name`` from the Hub's cache, downloading it if needed.

    The cache is tried first without any network access. Otherwise one quick request checks that
    the Hub is reachable before downloading, so an offline machine fails in about a second
    instead of retrying for half a minute.
    """
    if name not in HUB_MODELS:
        raise CheckpointError(f"unknown model {name!r}; valid names: {', '.join(HUB_MODELS)}")
    import huggingface_hub

    repo = HUB_MODELS[name]
    url = f"{HUB_URL}/{repo}"
    files = (CONFIG_FILE, WEIGHTS_FILE)
    try:
        paths = [huggingface_hub.hf_hub_download(repo, f, local_files_only=True) for f in files]
        return Path(paths[0]).parent
    except Exception:  # noqa: BLE001 - not cached (or a broken cache entry): download below
        pass
    try:
        huggingface_hub.get_hf_file_metadata(huggingface_hub.hf_hub_url(repo, CONFIG_FILE), timeout=10)
        paths = [huggingface_hub.hf_hub_download(repo, f, etag_timeout=10) for f in files]
    except Exception as err:  # noqa: BLE001 - any network/hub failure gets the same advice
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(
            f"could not download {name} from {url} ({type(err).__name__}: {reason}); without network "
            f"access, download that repository elsewhere and pass its directory instead, e.g. "
            f"init=/path/to/{name} or GPT.from_pretrained('/path/to/{name}')"
        ) from None
    return Path(paths[0]).parent


# --------------------------------------------------------------------------------------------
# Shared helpers
# --------------------------------------------------------------------------------------------

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
    tie = source.tie_embeddings and (caller.tie_embeddings or not can_untie)
    return dataclasses.replace(
        source,
        context_length=caller.context_length,
        tie_embeddings=tie,
        drop_rate=caller.drop_rate,
        attention=caller.attention,
        name=caller.name if caller.name != "custom" else source.name,
    )


def _build(cfg: GPTConfig, state: dict[str, Any], source: str) -> GPT:
    """A ``GPT(cfg)`` holding ``state``, after checking every key and shape."""
    state = {k: v for k, v in state.items() if not k.endswith(_BUFFER_SUFFIXES)}
    pos = state.get("pos_emb.weight")
    if isinstance(pos, torch.Tensor) and pos.dim() == 2 and pos.shape[0] > cfg.context_length:
        state["pos_emb.weight"] = pos[: cfg.context_length]  # a shorter context than the source's
    model = GPT(cfg)
    expected = model.state_dict()
    tied = _is_tied(model)
    if tied:
        expected.pop("out_head.weight")
        head = state.pop("out_head.weight", None)
        emb = state.get("tok_emb.weight")
        if head is not None and emb is not None and head is not emb and not torch.equal(head, emb):
            raise CheckpointError(
                f"{source} has an output head separate from the token embedding, but the config "
                "ties them; use tie_embeddings=False"
            )
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} tensor(s): {_first(missing)}")
        if unexpected:
            parts.append(f"unexpected {len(unexpected)} tensor(s): {_first(unexpected)}")
        hint = ""
        if any(".att.W_query.bias" in k for k in missing + unexpected):
            hint = f"; qkv_bias={cfg.qkv_bias} may be wrong for this checkpoint"
        elif any(k.startswith("trf_blocks.") for k in missing + unexpected):
            hint = f"; n_layers={cfg.n_layers} may be wrong for this checkpoint"
        raise CheckpointError(f"{source} does not match the model: {'; '.join(parts)}{hint}")
    for key, tensor in expected.items():
        found = state[key]
        if tuple(found.shape) != tuple(tensor.shape):
            raise CheckpointError(
                f"{source}: tensor {key} has shape {list(found.shape)}, expected {list(tensor.shape)} "
                f"for the config ({_config_summary(cfg)})"
            )
    model.load_state_dict(state, strict=not tied)
    return model.train()


def _config_from_dict(values: dict[str, Any], source: str) -> GPTConfig:
    try:
        return GPTConfig.from_dict(values)
    except (ConfigError, TypeError) as err:
        raise CheckpointError(f"{source}: its model config is not valid for this gptlab version: {err}") from None


def _config_summary(cfg: GPTConfig) -> str:
    return ", ".join(f"{k}={getattr(cfg, k)}" for k in (*SHAPE_FIELDS, "qkv_bias"))


def _first(names: list[str]) -> str:
    shown = ", ".join(names[:_MAX_NAMED])
    return shown + (f" and {len(names) - _MAX_NAMED} more" if len(names) > _MAX_NAMED else "")


def _read_json(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{path} does not exist") from None
    except (OSError, ValueError) as err:
        raise CheckpointError(f"cannot read {path}: {err}") from None
    if not isinstance(value, dict):
        raise CheckpointError(f"{path} does not hold a JSON object")
    return value


def _read_safetensors(path: Path) -> StateDict:
    try:
        return load_file(str(path))
    except Exception as err:  # noqa: BLE001 - safetensors raises several unrelated types
        raise CheckpointError(f"cannot read {path}: {err}") from None


def _torch_load(path: Path) -> Any:
    """``torch.load`` restricted to tensors and plain containers: a checkpoint can't run code."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - unpickling raises many types
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(
            f"cannot read {path} as a PyTorch checkpoint of tensors ({first}); re-save it with "
            "torch.save(model.state_dict(), path)"
        ) from None


def _unwrap(model: Any) -> GPT:
    """The ``GPT`` inside a ``torch.compile`` wrapper or a gptlab task."""
    model = getattr(model, "gpt", model)
    model = getattr(model, "_orig_mod", model)
    if not isinstance(model, GPT):
        raise CheckpointError(f"expected a gptlab GPT, got {type(model).__name__}")
    return model
