"""gptlab's own harness tasks: where their YAMLs are, where their data is read from, and the check
that every task asked for exists and has its data.

Each YAML (``gptlab/harness/tasks/``) reads a local file through one of ``datasets``' file loaders
(``dataset_path: json`` / ``csv`` / ``text`` with ``data_files``), the loader that fits the file as
``../shared/data`` holds it, so nothing is converted or copied first. The folder is
``dataset_kwargs.data_dir``: as shipped ``../shared/data``, relative to the working directory (the
project's checkout). ``data_dir`` (``gptlab-eval harness --data-dir``, else ``$GPTLAB_DATA``) points
them elsewhere: the YAMLs are then written again with that folder, into a directory of the
caller's, which becomes the harness's ``include_path``.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from gptlab.errors import ConfigError, DataError

TASKS_DIR = Path(__file__).with_name("tasks")
#: The tag every gptlab task carries: ``--tasks gptlab`` runs them all.
TAG = "gptlab"
#: The environment variable naming the data folder when no ``--data-dir`` is given.
DATA_ENV = "GPTLAB_DATA"
_DATA_DIR_LINE = re.compile(r"^(\s*data_dir:).*$", re.MULTILINE)


def task_files() -> dict[str, Path]:
    """gptlab's tasks by name, each with its YAML."""
    return {_read(path)["task"]: path for path in sorted(TASKS_DIR.glob("*.yaml"))}


def data_dir(given: str | Path | None = None) -> Path | None:
    """The data folder asked for: ``given``, else ``$GPTLAB_DATA``; ``None`` keeps the YAMLs' own."""
    chosen = given if given is not None else os.environ.get(DATA_ENV) or None
    return Path(chosen).expanduser().resolve() if chosen is not None else None


def include_path(folder: Path | None, workdir: Path) -> Path:
    """The directory of task YAMLs that read from ``folder``: the shipped one when ``folder`` is
    ``None``, else copies in ``workdir`` whose ``data_dir`` is ``folder``."""
    if folder is None:
        return TASKS_DIR
    workdir.mkdir(parents=True, exist_ok=True)
    for path in TASKS_DIR.glob("*.yaml"):
        text = _DATA_DIR_LINE.sub(lambda m: f"{m.group(1)} {_quoted(folder)}", path.read_text(encoding="utf-8"))
        (workdir / path.name).write_text(text, encoding="utf-8")
    return workdir


def check_tasks(names: Sequence[str], tasks_dir: Path, task_manager: Any) -> None:
    """Raise ``ConfigError`` for a task the harness does not know, ``DataError`` for a gptlab task
    whose data file is missing (each in one line that says what to do)."""
    if not names:
        raise ConfigError("no tasks given; pass --tasks with gptlab's (" + ", ".join(task_files()) +
                          f", or {TAG} for all) or any of lm-eval's (lm-eval ls tasks)")
    unknown = [name for name in names if not task_manager.match_tasks([name])]
    if unknown:
        raise ConfigError(f"unknown task(s) {', '.join(unknown)}: gptlab's are {', '.join(task_files())} "
                          f"({TAG} for all); lm-eval ls tasks lists the harness's own")
    ours = set(task_files())
    asked = set(task_manager.match_tasks(list(names)))
    for name in sorted(ours if TAG in asked else ours & asked):
        for path in data_files(tasks_dir / task_files()[name].name):
            if not path.is_file():
                raise DataError(f"task {name} reads {path}, which does not exist; pass --data-dir (or set "
                                f"${DATA_ENV}) to the folder holding {path.name}")


def data_files(yaml_path: Path) -> list[Path]:
    """The files a task YAML reads: its ``data_files`` in its ``data_dir``."""
    kwargs = _read(yaml_path).get("dataset_kwargs", {})
    files = kwargs.get("data_files", [])
    base = Path(kwargs.get("data_dir", "."))
    return [base / name for name in ([files] if isinstance(files, str) else files)]


class _YamlLoader(yaml.SafeLoader):
    """PyYAML's safe loader, reading the harness's ``!function module.name`` as its text."""


_YamlLoader.add_constructor("!function", lambda loader, node: loader.construct_scalar(node))


def _read(path: Path) -> dict[str, Any]:
    """A task YAML as a dict, its ``!function`` references left as text (nothing is imported)."""
    return yaml.load(path.read_text(encoding="utf-8"), Loader=_YamlLoader)  # noqa: S506 (a safe loader)


def _quoted(folder: Path) -> str:
    """``folder`` as a YAML string (JSON's quoting is YAML's)."""
    return json.dumps(str(folder))
