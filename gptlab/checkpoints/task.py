"""The only reader of gptlab task checkpoints (Lightning ``.ckpt`` files).

A task checkpoint holds the task's ``hyper_parameters`` (the model config among them) and a
``state_dict`` whose GPT weights are prefixed ``model.`` (``model._orig_mod.`` under
``torch.compile``). Everything else in gptlab that needs a checkpoint's weights or settings asks
this module.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from gptlab.checkpoints.files import load_torch_file
from gptlab.errors import CheckpointError

#: Prefixes of the GPT's weights inside a task's state dict; the first when compiled.
MODEL_PREFIXES = ("model._orig_mod.", "model.")


@dataclass
class TaskCheckpoint:
    """What a task checkpoint holds, in plain values."""

    path: Path
    hparams: dict[str, Any]
    #: The GPT's weights, prefixes removed (``tok_emb.weight``, ``trf_blocks.0...``).
    model_state: dict[str, torch.Tensor]
    #: The whole loaded checkpoint (optimizer state, loops, callbacks), for whoever needs more.
    raw: dict[str, Any]

    @property
    def model_config(self) -> dict[str, Any] | None:
        """The model config recorded by the task, if any."""
        return self.hparams.get("model")


def is_task_checkpoint(obj: Any) -> bool:
    """Whether a loaded object looks like a Lightning checkpoint (a dict with a ``state_dict``)."""
    return isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict)


def task_checkpoint_from(obj: dict[str, Any], path: str | Path) -> TaskCheckpoint:
    """Split an already loaded Lightning checkpoint into hparams and the GPT's weights."""
    state: dict[str, torch.Tensor] = {}
    for key, value in obj["state_dict"].items():
        for prefix in MODEL_PREFIXES:
            if key.startswith(prefix):
                state[key[len(prefix):]] = value
                break
    if not state:
        raise CheckpointError(f"{path} has no model.* weights; it is not a checkpoint of a gptlab task")
    return TaskCheckpoint(Path(path), dict(obj.get("hyper_parameters") or {}), state, obj)


def read_task_checkpoint(path: str | Path) -> TaskCheckpoint:
    """Read a gptlab task checkpoint; a foreign or corrupt file is one clear ``CheckpointError``."""
    path = Path(path).expanduser()
    obj = load_torch_file(path)
    if not is_task_checkpoint(obj):
        raise CheckpointError(f"{path} is not a Lightning checkpoint of a gptlab task (it has no state_dict)")
    return task_checkpoint_from(obj, path)
