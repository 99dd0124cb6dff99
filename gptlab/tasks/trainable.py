"""Which parameters a task trains: the book's ``trainable_layers`` options and LoRA (appendix E).

Every task applies the same policy (``GPTTask`` calls ``set_trainable`` once its model is built
and adapted), so ``task.trainable_layers=lora`` means the same thing for next-token training,
classification and any later task.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from torch import nn

from gptlab.errors import ConfigError
from gptlab.model import GPT
from gptlab.model.lora import DEFAULT_TARGETS, apply_lora

TRAINABLE_LAYERS = ("all", "last_layer", "last_block", "last_two_blocks", "lora")


@dataclass
class LoRAConfig:
    """LoRA settings; the update is scaled by ``alpha / rank`` or, as in the printed book, by
    ``alpha`` (``scaling``, see ``gptlab.model.lora``)."""

    rank: int = 16
    alpha: float = 16.0
    dropout: float = 0.0
    scaling: str = "alpha_over_rank"
    targets: list[str] = field(default_factory=lambda: list(DEFAULT_TARGETS))


def check_trainable_layers(trainable_layers: str) -> None:
    if trainable_layers not in TRAINABLE_LAYERS:
        raise ConfigError(
            f"task.trainable_layers={trainable_layers!r} is unknown; use one of {', '.join(TRAINABLE_LAYERS)}"
        )


def set_trainable(model: GPT, trainable_layers: str, lora: LoRAConfig,
                  new_modules: Sequence[str] = ()) -> list[str]:
    """Freeze or unfreeze parameters (and add adapters) in place, as the book's options do.

    * ``all``: every parameter;
    * ``last_layer``: the output head (with a tied head, that is the token embedding too);
    * ``last_block`` / ``last_two_blocks``: those transformer blocks, the final norm and the head;
    * ``lora``: adapters on ``lora.targets``, every original weight frozen.

    ``new_modules`` (submodule names, e.g. a classifier's fresh ``out_head``) are trained under
    every option: a layer that starts random must learn. Returns the names of the layers given
    LoRA adapters (empty unless ``lora``).
    """
    check_trainable_layers(trainable_layers)
    model.requires_grad_(trainable_layers == "all")
    wrapped: list[str] = []
    if trainable_layers == "lora":
        wrapped = apply_lora(model, lora.rank, lora.alpha, lora.dropout, targets=lora.targets,
                             scaling=lora.scaling)
    elif trainable_layers == "last_layer":
        model.out_head.requires_grad_(True)
    elif trainable_layers in ("last_block", "last_two_blocks"):
        count = 1 if trainable_layers == "last_block" else 2
        if len(model.trf_blocks) < count:
            raise ConfigError(f"trainable_layers={trainable_layers} needs at least {count} transformer blocks")
        for block in list(model.trf_blocks)[-count:]:
            block.requires_grad_(True)
        model.final_norm.requires_grad_(True)
        model.out_head.requires_grad_(True)
    for name in new_modules:
        module: nn.Module = model.get_submodule(name)
        module.requires_grad_(True)
    return wrapped
