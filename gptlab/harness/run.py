"""One harness evaluation of a gptlab model: ``simple_evaluate`` with gptlab's tasks on the path,
written as ``results.json`` (the harness's own results, less the per-request samples) and
``results.md`` (its markdown table), and the samples per task with ``log_samples``."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lm_eval import simple_evaluate
from lm_eval.tasks import TaskManager
from lm_eval.utils import handle_non_serializable, make_table

from gptlab.fileio import atomic_write_text
from gptlab.harness.backend import GptlabLM
from gptlab.harness.suite import TAG, check_tasks, data_dir, include_path, task_files

RESULTS_FILE = "results.json"
TABLE_FILE = "results.md"
SAMPLES_DIR = "samples"
#: Where the YAMLs go when they are rewritten for another data folder (inside ``out``).
TASKS_COPY = "tasks"


def task_manager(out: Path, data: str | Path | None = None,
                 tasks: Sequence[str] | None = None) -> tuple[TaskManager, Path]:
    """The harness's task index with gptlab's tasks reading from ``data`` (``suite.data_dir``), and
    the folder of those YAMLs. The harness's own thousands of tasks are indexed too (seconds of
    reading YAML) unless ``tasks`` names gptlab's alone."""
    tasks_dir = include_path(data_dir(data), out / TASKS_COPY)
    ours = {*task_files(), TAG}
    stock = tasks is None or any(name not in ours for name in tasks)
    return TaskManager(include_path=str(tasks_dir), include_defaults=stock), tasks_dir


def evaluate(model: GptlabLM, tasks: Sequence[str], out: str | Path, data: str | Path | None = None,
             log_samples: bool = False, **options: Any) -> dict[str, Any]:
    """Run ``tasks`` on ``model`` and write the results into ``out``; ``options`` go to
    ``simple_evaluate`` (``limit``, ``num_fewshot``, ``gen_kwargs``, ``apply_chat_template``, ...)."""
    out = Path(out).expanduser()
    manager, tasks_dir = task_manager(out, data, tasks)
    check_tasks(tasks, tasks_dir, manager)
    results = simple_evaluate(model=model, tasks=list(tasks), task_manager=manager, log_samples=log_samples, **options)
    samples = results.pop("samples", {}) if log_samples else {}
    atomic_write_text(out / RESULTS_FILE, json.dumps(results, indent=2, default=handle_non_serializable,
                                                     ensure_ascii=False) + "\n")
    table = make_table(results) + (make_table(results, "groups") if "groups" in results else "")
    atomic_write_text(out / TABLE_FILE, table)
    for name, rows in samples.items():
        lines = "".join(json.dumps(row, default=handle_non_serializable, ensure_ascii=False) + "\n" for row in rows)
        atomic_write_text(out / SAMPLES_DIR / f"{name}.jsonl", lines)
    if samples:
        results["samples"] = samples
    return results
