"""The classifier export format: a gptlab model export whose head is the class head, plus
``classifier.json`` (head size, labels, pooling, masking, the preprocessing of training) and, for
a LoRA classifier, ``lora_adapter.safetensors`` (the adapters and the head alone)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from gptlab.errors import CheckpointError, ConfigError
from gptlab.model import GPT, GPTConfig
from gptlab.tasks.classifier_head import replace_head
from gptlab.checkpoints import CONFIG_FILE, WEIGHTS_FILE

CLASSIFIER_FILE = "classifier.json"
ADAPTER_FILE = "lora_adapter.safetensors"


def write_classifier_files(directory: Path, meta: dict[str, Any], adapter: dict[str, torch.Tensor] | None) -> None:
    """Add the classifier's files to a model export being written in ``directory``."""
    (directory / CLASSIFIER_FILE).write_text(json.dumps(meta, indent=2) + "\n")
    if adapter is not None:
        save_file({k: v.detach().cpu().float().contiguous() for k, v in adapter.items()},
                  str(directory / ADAPTER_FILE))


def is_classifier_export(directory: Path) -> bool:
    return (directory / CLASSIFIER_FILE).is_file()


def read_classifier_export(directory: Path) -> tuple[GPT, dict[str, Any]]:
    """The model (adapters already merged) and the ``classifier.json`` of an export."""
    try:
        meta = json.loads((directory / CLASSIFIER_FILE).read_text())
        saved = json.loads((directory / CONFIG_FILE).read_text())
    except (OSError, ValueError) as err:
        raise CheckpointError(f"cannot read the classifier in {directory}: {err}") from None
    saved.pop("format", None)
    try:
        model = replace_head(GPT(GPTConfig.from_dict(saved)), int(meta["num_classes"]))
        model.load_state_dict(load_file(str(directory / WEIGHTS_FILE)))
    except (KeyError, RuntimeError, ConfigError, OSError) as err:
        raise CheckpointError(f"{directory} is not a complete classifier export: {err}") from None
    return model, meta
