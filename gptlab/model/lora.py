"""Low-rank adaptation, LoRA (book appendix E).

``apply_lora`` freezes a model and wraps chosen ``nn.Linear`` layers in ``LoRALinear``, which adds
a trainable low-rank update ``scale * (x @ A @ B)`` to the frozen layer's output. Only ``A`` and
``B`` (plus whatever the caller unfreezes, such as a new classification head) are trained, so an
adapter checkpoint (``lora_state_dict``) is a small fraction of the model, and ``merge_lora`` folds
the update back into plain ``nn.Linear`` weights for export and inference at no extra cost.

Scaling (``scaling``): ``alpha_over_rank`` (the default) multiplies the update by ``alpha / rank``,
as the LoRA paper, PEFT, litgpt and the book's current code do, so an adapter means the same in
all of them; ``alpha`` multiplies it by ``alpha`` alone, as the printed book's ``LoRALayer`` does
(``alpha * (x @ A @ B)``). With rank 16 and alpha 16 the two differ sixteen-fold.
"""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import nn

from gptlab.errors import ConfigError

#: Every linear layer of a GPT block: the attention projections and the feed-forward layers
#: (GPT-2's two, ``ff.layers.0`` and ``ff.layers.2``, or SwiGLU's three, ``ff.fc1`` to ``ff.fc3``).
DEFAULT_TARGETS: tuple[str, ...] = (
    "W_query", "W_key", "W_value", "out_proj", "ff.layers.0", "ff.layers.2", "ff.fc1", "ff.fc2", "ff.fc3",
)

#: Name pieces of the adapter parameters, used to pick them out of a state dict.
LORA_PARAM_SUFFIXES: tuple[str, ...] = (".lora_A", ".lora_B")

#: How the low-rank update is scaled: by ``alpha / rank`` (the field's convention) or by ``alpha``
#: (the printed book's). A checkpoint that records no scaling predates the setting: ``alpha``.
LORA_SCALINGS: tuple[str, ...] = ("alpha_over_rank", "alpha")
LEGACY_SCALING = "alpha"


def lora_scale(alpha: float, rank: int, scaling: str = "alpha_over_rank") -> float:
    """The factor the update ``x @ A @ B`` is multiplied by."""
    if scaling not in LORA_SCALINGS:
        raise ConfigError(f"LoRA scaling {scaling!r} is unknown; use one of {', '.join(LORA_SCALINGS)}")
    return float(alpha) / rank if scaling == "alpha_over_rank" else float(alpha)


class LoRALinear(nn.Module):
    """A frozen ``nn.Linear`` plus a trainable low-rank update: ``base(x) + scale * (drop(x) @ A @ B)``,
    ``scale`` being ``alpha / rank`` or ``alpha`` (``scaling``, see the module docstring).

    ``A`` (``in_features x rank``) starts Kaiming-uniform like a linear layer's weight and ``B``
    (``rank x out_features``) starts at zero, so a freshly wrapped layer computes exactly what the
    base layer does and training starts from the pretrained function.
    """

    def __init__(self, base: nn.Linear, rank: int, alpha: float, dropout: float = 0.0,
                 scaling: str = "alpha_over_rank") -> None:
        super().__init__()
        if rank <= 0:
            raise ConfigError(f"LoRA rank must be a positive integer, got {rank}")
        if not 0.0 <= dropout < 1.0:
            raise ConfigError(f"LoRA dropout must lie in [0, 1), got {dropout}")
        self.base = base
        self.rank = rank
        self.alpha = float(alpha)
        self.scaling = scaling
        self.scale = lora_scale(alpha, rank, scaling)
        factory = {"device": base.weight.device, "dtype": base.weight.dtype}
        self.lora_A = nn.Parameter(torch.empty(base.in_features, rank, **factory))
        self.lora_B = nn.Parameter(torch.zeros(rank, base.out_features, **factory))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))  # as nn.Linear initialises weights
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        for param in self.base.parameters():
            param.requires_grad_(False)

    @property
    def in_features(self) -> int:
        return self.base.in_features

    @property
    def out_features(self) -> int:
        return self.base.out_features

    def delta_weight(self) -> torch.Tensor:
        """The update in ``nn.Linear`` layout (``out_features x in_features``)."""
        return self.scale * (self.lora_A @ self.lora_B).T

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + self.scale * (self.dropout(x) @ self.lora_A @ self.lora_B)

    def merged(self) -> nn.Linear:
        """A plain ``nn.Linear`` computing the same function (without adapter dropout)."""
        base = self.base
        linear = nn.Linear(base.in_features, base.out_features, bias=base.bias is not None,
                           device=base.weight.device, dtype=base.weight.dtype)
        with torch.no_grad():
            linear.weight.copy_(base.weight + self.delta_weight().to(base.weight.dtype))
            if base.bias is not None:
                linear.bias.copy_(base.bias)
        return linear

    def extra_repr(self) -> str:
        return f"rank={self.rank}, alpha={self.alpha:g}, scaling={self.scaling}"


def _matches(name: str, patterns: Sequence[str]) -> bool:
    """A module name matches a pattern equal to it, to one of its dotted suffixes, or as a glob.

    ``"W_query"`` selects every ``...att.W_query``; ``"trf_blocks.11.*"`` selects by glob.
    """
    for pattern in patterns:
        if name == pattern or name.endswith("." + pattern) or fnmatch.fnmatchcase(name, pattern):
            return True
    return False


def _set_submodule(root: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, child, module)


def apply_lora(model: nn.Module, rank: int, alpha: float, dropout: float = 0.0,
               targets: Iterable[str] = DEFAULT_TARGETS, exclude: Iterable[str] = ("out_head",),
               freeze: bool = True, scaling: str = "alpha_over_rank") -> list[str]:
    """Wrap every ``nn.Linear`` whose name matches ``targets`` in a ``LoRALinear``, in place.

    With ``freeze`` (the default) every existing parameter is frozen first, so afterwards only the
    adapters are trainable; unfreeze a new head yourself. ``exclude`` patterns win over
    ``targets`` (by default the output head is never wrapped). Returns the wrapped names; no match
    at all is an error, since it almost always means a misspelt pattern.
    """
    targets, exclude = tuple(targets), tuple(exclude)
    lora_scale(alpha, rank, scaling)  # a bad scaling fails before the model is touched
    if freeze:
        for param in model.parameters():
            param.requires_grad_(False)
    names = [
        name for name, module in model.named_modules()
        if isinstance(module, nn.Linear) and _matches(name, targets) and not _matches(name, exclude)
    ]
    if not names:
        linears = sorted({name.rsplit(".", 1)[-1] for name, m in model.named_modules() if isinstance(m, nn.Linear)})
        raise ConfigError(
            f"LoRA targets {list(targets)} match no linear layer; linear layer names end in: {linears}"
        )
    for name in names:
        _set_submodule(model, name, LoRALinear(model.get_submodule(name), rank, alpha, dropout, scaling))
    return names


def lora_layers(model: nn.Module) -> dict[str, LoRALinear]:
    return {name: m for name, m in model.named_modules() if isinstance(m, LoRALinear)}


def has_lora(model: nn.Module) -> bool:
    return any(isinstance(m, LoRALinear) for m in model.modules())


def merge_lora(model: nn.Module) -> nn.Module:
    """Replace every ``LoRALinear`` by the equivalent plain ``nn.Linear``, in place; returns ``model``.

    The merged model has the original architecture and state-dict names (``...W_query.weight``),
    so it saves, loads and runs like a model that never had adapters. Trainability of the merged
    weights follows the adapter's (trainable if its ``A`` was).
    """
    for name, layer in lora_layers(model).items():
        merged = layer.merged()
        merged.requires_grad_(layer.lora_A.requires_grad)
        _set_submodule(model, name, merged)
    return model


def lora_state_dict(model: nn.Module, extra_trainable: bool = True) -> dict[str, torch.Tensor]:
    """The adapter weights only: every ``lora_A`` / ``lora_B``, plus (with ``extra_trainable``)
    every other trainable parameter, such as a new classification head.

    Frozen base weights are left out, so the file is tiny; restore it with
    ``load_lora_state_dict`` into a model built the same way (same base weights, same targets).
    """
    out: dict[str, torch.Tensor] = {}
    for name, param in model.named_parameters():
        if name.endswith(LORA_PARAM_SUFFIXES) or (extra_trainable and param.requires_grad):
            out[name] = param.detach().clone()
    return out


def load_lora_state_dict(model: nn.Module, state_dict: dict[str, torch.Tensor]) -> None:
    """Load an adapter-only state dict; every key must exist in ``model`` and every adapter be covered."""
    own = dict(model.named_parameters())
    unknown = sorted(set(state_dict) - set(own))
    if unknown:
        raise ConfigError(
            f"adapter weights {unknown[:5]} do not exist in the model; apply_lora with the same "
            "targets (and replace the same head) before loading"
        )
    missing = sorted(n for n in own if n.endswith(LORA_PARAM_SUFFIXES) and n not in state_dict)
    if missing:
        raise ConfigError(f"the adapter state dict lacks {missing[:5]}; it was saved from another LoRA setup")
    with torch.no_grad():
        for name, tensor in state_dict.items():
            if own[name].shape != tensor.shape:
                raise ConfigError(
                    f"adapter weight {name} has shape {tuple(tensor.shape)} but the model expects "
                    f"{tuple(own[name].shape)}; check the LoRA rank"
                )
            own[name].copy_(tensor)


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """``(trainable, total)`` parameters, each shared tensor counted once."""
    params = list(model.parameters())
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)


@contextmanager
def adapters_disabled(model: nn.Module) -> Iterator[nn.Module]:
    """Run ``model`` as its frozen base inside the block: every LoRA update is scaled by zero.

    Adding an exact zero leaves each base output bit for bit unchanged, so the base network needs
    no second copy in memory; DPO uses this as its reference model. The scales are restored on exit,
    also when the block raises.
    """
    layers = list(lora_layers(model).values())
    saved = [layer.scale for layer in layers]
    for layer in layers:
        layer.scale = 0.0
    try:
        yield model
    finally:
        for layer, scale in zip(layers, saved):
            layer.scale = scale
