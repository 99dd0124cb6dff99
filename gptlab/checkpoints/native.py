"""gptlab's own export: a directory with ``config.json`` (the ``GPTConfig``) and ``model.safetensors``.

The tensors carry the model's own names (``model.state_dict()``). A tied output head shares the
embedding's tensor; safetensors' ``save_model``/``load_model`` store it once and restore the tie,
whichever of the two names the file kept.
"""

from __future__ import annotations

from pathlib import Path

import safetensors.torch

from gptlab.checkpoints.files import (
    CONFIG_FILE,
    WEIGHTS_FILE,
    export_directory,
    json_field,
    name_some,
    read_json,
    write_json,
)
from gptlab.checkpoints.state import config_from_dict, is_tied, merge_config, model_from_state_dict, unwrap_gpt
from gptlab.errors import CheckpointError
from gptlab.model.config import GPTConfig
from gptlab.model.gpt import GPT

#: ``config.json``'s ``"format"`` value that marks a gptlab export.
FORMAT_MARKER = "gptlab"


def is_native_export(directory: Path) -> bool:
    """Whether ``directory`` holds a gptlab export (judged by its ``config.json``)."""
    return json_field(directory / CONFIG_FILE, "format") == FORMAT_MARKER


def save_model(model: GPT, directory: str | Path) -> Path:
    """Write ``model`` (a ``GPT``, compiled or inside a task) as a gptlab export; return the path.

    The directory appears complete or not at all (``fileio.atomic_directory``). An earlier gptlab
    export there is replaced; any other non-empty directory is refused rather than deleted.
    """
    gpt = unwrap_gpt(model)
    config = {**gpt.cfg.written_out().to_dict(), "tie_embeddings": is_tied(gpt), "format": FORMAT_MARKER}

    def write(tmp: Path) -> None:
        safetensors.torch.save_model(gpt, str(tmp / WEIGHTS_FILE), metadata={"format": "pt"})
        write_json(tmp / CONFIG_FILE, config)

    return export_directory(directory, write, is_native_export)


def load_model(directory: str | Path, config: GPTConfig | None = None) -> GPT:
    """Load a gptlab export written by ``save_model`` (see ``load_pretrained`` for ``config``)."""
    directory = Path(directory).expanduser()
    saved = read_json(directory / CONFIG_FILE)
    if saved.pop("format", None) != FORMAT_MARKER:
        raise CheckpointError(f"{directory} is not a gptlab export ({CONFIG_FILE} lacks \"format\": \"gptlab\")")
    weights = directory / WEIGHTS_FILE
    if not weights.is_file():
        raise CheckpointError(f"{weights} is missing; the export is incomplete, write it again with save_model")
    source_cfg = config_from_dict(saved, str(directory))
    cfg = merge_config(source_cfg, config, str(directory))
    if cfg.context_length == source_cfg.context_length:  # same shapes: load straight into the model to use
        return _read_weights(GPT(cfg), weights).train()
    # A shorter context: load as saved, then crop the position table.
    return model_from_state_dict(_read_weights(GPT(source_cfg), weights).state_dict(), cfg, str(weights))


def _read_weights(model: GPT, weights: Path) -> GPT:
    """``safetensors.torch.load_model``, which restores a tie whichever name the file kept."""
    try:
        missing, unexpected = safetensors.torch.load_model(model, weights, strict=False)
    except Exception as err:  # noqa: BLE001 - a corrupt file or a size mismatch
        detail = "; ".join(line.strip() for line in str(err).splitlines() if line.strip())
        raise CheckpointError(f"{weights} does not match {CONFIG_FILE} beside it: {detail}") from None
    if missing or unexpected:
        raise CheckpointError(
            f"{weights} does not match {CONFIG_FILE} beside it: missing {name_some(sorted(missing)) or 'none'}, "
            f"unexpected {name_some(sorted(unexpected)) or 'none'}"
        )
    return model
