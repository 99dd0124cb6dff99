"""File names and readers shared by every weight format: each failure is one ``CheckpointError``."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from gptlab.errors import CheckpointError, first_line
from gptlab.fileio import atomic_directory

#: The two files of a model directory, as in Hugging Face's layout.
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
#: Hugging Face's list of shards, for checkpoints split over several ``.safetensors`` files.
INDEX_FILE = "model.safetensors.index.json"
#: The weights file of older Hub checkpoints.
LEGACY_WEIGHTS_FILE = "pytorch_model.bin"

StateDict = dict[str, torch.Tensor]


def read_json(path: Path) -> dict[str, Any]:
    """A JSON object from ``path``."""
    try:
        value = json.loads(path.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{path} does not exist") from None
    except (OSError, ValueError) as err:
        raise CheckpointError(f"cannot read {path}: {err}") from None
    if not isinstance(value, dict):
        raise CheckpointError(f"{path} does not hold a JSON object")
    return value


def json_field(path: Path, key: str) -> Any:
    """``path``'s top-level ``key``, or ``None`` when the file is absent or not a JSON object."""
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return value.get(key) if isinstance(value, dict) else None


def write_json(path: Path, value: dict[str, Any]) -> None:
    """Write ``value`` indented, for a directory that ``fileio.atomic_directory`` moves into place."""
    path.write_text(json.dumps(value, indent=2) + "\n")


def read_safetensors(path: Path) -> StateDict:
    """Every tensor of a ``.safetensors`` file, on the CPU."""
    try:
        return load_file(str(path))
    except Exception as err:  # noqa: BLE001 - safetensors raises several unrelated types
        raise CheckpointError(f"cannot read {path}: {err}") from None


def name_some(names: list[str], limit: int = 5) -> str:
    """The first ``limit`` names, and how many more there are."""
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def load_torch_file(path: Path) -> Any:
    """``torch.load`` restricted to tensors and plain containers: a checkpoint can't run code."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint not found: {path}") from None
    except Exception as err:  # noqa: BLE001 - unpickling raises many types
        first = first_line(err)
        raise CheckpointError(
            f"cannot read {path} as a PyTorch checkpoint of tensors ({first}); pass a .ckpt written by "
            "gptlab-train, or re-save it with torch.save(model.state_dict(), path)"
        ) from None


def export_directory(directory: str | Path, write: Callable[[Path], None],
                     replaceable: Callable[[Path], bool]) -> Path:
    """``fileio.atomic_directory``, its refusal to replace ``directory`` a ``CheckpointError`` saying what to do."""
    try:
        return atomic_directory(directory, write, replaceable)
    except FileExistsError as err:
        raise CheckpointError(f"cannot export to {directory}: {err}; pick an empty or new directory") from None


def read_hf_weights(directory: Path, family: str) -> tuple[StateDict, Path]:
    """A Hugging Face directory's tensors and the file they came from.

    ``model.safetensors``; else the shards ``model.safetensors.index.json`` lists (its
    ``weight_map``, each file read once); else the older ``pytorch_model.bin``.
    """
    if (directory / WEIGHTS_FILE).is_file():
        return read_safetensors(directory / WEIGHTS_FILE), directory / WEIGHTS_FILE
    if (directory / INDEX_FILE).is_file():
        weight_map = read_json(directory / INDEX_FILE).get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise CheckpointError(f"{directory / INDEX_FILE} has no weight_map of tensor names to files")
        state: StateDict = {}
        for shard in sorted(set(map(str, weight_map.values()))):
            state.update(read_safetensors(directory / shard))
        missing = sorted(set(weight_map) - set(state))
        if missing:
            raise CheckpointError(f"{directory / INDEX_FILE} lists tensors no shard holds: {name_some(missing)}")
        return state, directory / INDEX_FILE
    if (directory / LEGACY_WEIGHTS_FILE).is_file():
        return load_torch_file(directory / LEGACY_WEIGHTS_FILE), directory / LEGACY_WEIGHTS_FILE
    raise CheckpointError(
        f"{directory} has a {family} {CONFIG_FILE} but no weights: expected {WEIGHTS_FILE}, {INDEX_FILE} "
        f"(with its shards) or {LEGACY_WEIGHTS_FILE}"
    )
