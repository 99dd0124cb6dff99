"""The layout of a run directory: the one module that knows where a run keeps things.

``gptlab-train`` writes a run as::

    RUN/config.yaml           the resolved config (its ``data`` node: the split settings)
    RUN/prompt.json           the prompt format of an instruction or preference run
    RUN/checkpoints/*.ckpt    last.ckpt, and the best checkpoint by validation loss
    RUN/model/                the export: weights, config.json, tokenizer files, prompt.json

``RunFiles.find`` accepts any path into a run (the run directory, its ``model/``, or one of its
checkpoints) and tells where the weights, the tokenizer, the prompt format and the recorded data
settings are. Sources outside a run (a Hugging Face directory, a GGUF file) get a ``RunFiles``
whose ``root`` is ``None``: only their own directory is searched.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

RUN_CONFIG_FILE = "config.yaml"
PROMPT_FILE = "prompt.json"
MODEL_DIR = "model"
CHECKPOINT_DIR = "checkpoints"
LAST_CHECKPOINT = "last.ckpt"
#: The file that makes a directory a tokenizer (Hugging Face's layout).
TOKENIZER_FILE = "tokenizer.json"


@dataclass(frozen=True)
class RunFiles:
    """Where one model source keeps its parts. ``root`` is the run directory, if the source is in one."""

    source: Path
    root: Path | None

    @classmethod
    def find(cls, source: str | Path) -> RunFiles:
        """The run around ``source``: itself (it has ``config.yaml``, ``checkpoints/`` or ``model/``), or
        the directory holding ``source`` when that is a ``model/`` export or the ``checkpoints/`` folder."""
        path = Path(source).expanduser()
        base = path if path.is_dir() else path.parent
        if (base / RUN_CONFIG_FILE).is_file() or (base / CHECKPOINT_DIR).is_dir() or (base / MODEL_DIR).is_dir():
            return cls(path, base)
        if base.name in (MODEL_DIR, CHECKPOINT_DIR) and base.parent != base:
            return cls(path, base.parent)
        return cls(path, None)

    @property
    def export_dir(self) -> Path | None:
        """The run's ``model/`` export, or the source directory itself when it is not a run."""
        if self.root is not None and (self.root / MODEL_DIR).is_dir():
            return self.root / MODEL_DIR
        return self.source if self.source.is_dir() and self.root is None else None

    def last_checkpoint(self) -> Path | None:
        path = self.root / CHECKPOINT_DIR / LAST_CHECKPOINT if self.root is not None else None
        return path if path is not None and path.is_file() else None

    def checkpoints(self, pattern: str = "*.ckpt") -> list[Path]:
        """The run's checkpoints matching ``pattern``, sorted by name."""
        return sorted((self.root / CHECKPOINT_DIR).glob(pattern)) if self.root is not None else []

    def _search_dirs(self) -> list[Path]:
        """Where a file that travels with the model may be: the source, the export, the run."""
        base = self.source if self.source.is_dir() else self.source.parent
        dirs = [base, base / MODEL_DIR] + ([self.root / MODEL_DIR, self.root] if self.root is not None else [])
        return list(dict.fromkeys(dirs))

    def tokenizer_dir(self) -> Path | None:
        """The directory of the model's own ``tokenizer.json``, if it has one."""
        return next((d for d in self._search_dirs() if (d / TOKENIZER_FILE).is_file()), None)

    def prompt_record(self) -> dict[str, Any] | None:
        """The prompt format recorded with the model (``prompt.json``), or ``None``."""
        for directory in self._search_dirs():
            value = _json_object(directory / PROMPT_FILE)
            if isinstance(value.get("prompt_style"), str):
                return value
        return None

    def data_settings(self) -> dict[str, Any]:
        """The run's recorded ``data`` settings (``config.yaml``): path, split ratios, seed, prompt style..."""
        if self.root is None:
            return {}
        from omegaconf import OmegaConf

        try:
            config = OmegaConf.load(self.root / RUN_CONFIG_FILE)
            data = OmegaConf.to_container(config.get("data") or {}, resolve=False)
        except Exception:  # noqa: BLE001 - an unreadable config only loses the defaults it would give
            return {}
        return data if isinstance(data, dict) else {}


def _json_object(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}
