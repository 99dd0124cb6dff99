#!/usr/bin/env python
"""Summarise runs (classification, language modelling) as a markdown table, one row per job.

    python experiments/collect_results.py multirun/2025-01-01/12-00-00 [MORE_DIRS...]

Each argument is a Hydra multirun directory (its numbered job directories are read) or a single
run directory. A job contributes its command-line overrides (``.hydra/overrides.yaml``), its
resolved config (``config.yaml``, written by ``gptlab-train``: it fills in the value of a setting
that another job overrode) and its final metrics (``metrics.json``). Columns: the overrides whose
values differ between jobs (those shared by every job are listed above the table), then
the final metrics some job has (train/val/test accuracy in percent, test F1, validation loss,
validation bits per byte), training tokens/s (the mean of the per-step ``perf/tokens_per_sec`` in
``metrics.csv``, first two logged steps left out), the training time per epoch those tokens/s give, and the wall time from the config being written to the metrics being
written (training and every evaluation).
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

MISSING = "–"


def _percent(value: float | None) -> str:
    return MISSING if value is None else f"{100.0 * value:.2f}%"


def _number(value: float | None) -> str:
    return MISSING if value is None else f"{value:.3f}"


#: Final metrics and how each is shown; a column appears when some job has its metric.
METRICS = (("train/acc", "Training acc", _percent), ("val/acc", "Validation acc", _percent),
           ("test/acc", "Test acc", _percent), ("test/f1", "Test F1", _percent),
           ("val/loss", "Val loss", _number), ("val/bpb", "Val bits/byte", _number))


@dataclass
class Job:
    path: Path
    label: str
    overrides: dict[str, str] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, float] | None = None
    minutes: float | None = None
    tokens_per_sec: float | None = None
    epoch_minutes: float | None = None


def _job_number(path: Path) -> tuple[int, str]:
    return (int(path.name), "") if path.name.isdigit() else (sys.maxsize, path.name)


def find_jobs(root: Path) -> list[Path]:
    """``root`` itself when it is a run, else its job directories in job-number order."""
    if (root / "config.yaml").is_file() or (root / ".hydra").is_dir():
        return [root]
    jobs = [p for p in root.iterdir() if p.is_dir() and ((p / "config.yaml").is_file() or (p / ".hydra").is_dir())]
    return sorted(jobs, key=_job_number)


def _read_yaml(path: Path) -> Any:
    try:
        return yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError):
        return None


def read_job(path: Path, label: str | None = None) -> Job:
    job = Job(path, label or path.name)
    for item in _read_yaml(path / ".hydra" / "overrides.yaml") or []:
        key, _, value = str(item).partition("=")
        job.overrides[key.lstrip("+~")] = value
    job.config = _read_yaml(path / "config.yaml") or {}
    metrics_path = path / "metrics.json"
    if metrics_path.is_file():
        try:
            job.metrics = json.loads(metrics_path.read_text())
        except ValueError:
            job.metrics = None
        config_path = path / "config.yaml"
        if config_path.is_file():
            job.minutes = max(0.0, (metrics_path.stat().st_mtime - config_path.stat().st_mtime) / 60.0)
    _read_throughput(job, path / "metrics.csv")
    return job


def _read_throughput(job: Job, path: Path) -> None:
    """Training tokens/s and minutes per epoch from the per-step log (see the module docstring)."""
    if not path.is_file():
        return
    with open(path, newline="") as file:
        rows = list(csv.DictReader(file))
    speeds = [float(r["perf/tokens_per_sec"]) for r in rows if r.get("perf/tokens_per_sec")][2:]
    tokens = [float(r["tokens_seen"]) for r in rows if r.get("tokens_seen")]
    epochs = {r["epoch"] for r in rows if r.get("epoch") and r.get("perf/tokens_per_sec")}  # training rows only
    if speeds:
        job.tokens_per_sec = sum(speeds) / len(speeds)
        if tokens and epochs:
            job.epoch_minutes = max(tokens) / job.tokens_per_sec / 60.0 / len(epochs)


def _lookup(config: dict[str, Any], dotted: str) -> str:
    """A job's resolved value of an override another job set (``(default)`` if not in the config)."""
    node: Any = config
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return "(default)"
        node = node[part]
    return "null" if node is None else str(node)


def markdown_table(jobs: list[Job]) -> str:
    """The table, preceded by the overrides every job shares."""
    keys: list[str] = []
    for job in jobs:
        keys.extend(k for k in job.overrides if k not in keys)
    values = {k: [job.overrides.get(k, _lookup(job.config, k)) for job in jobs] for k in keys}
    varying = [k for k in keys if len(set(values[k])) > 1] if len(jobs) > 1 else keys
    common = [f"{k}={values[k][0]}" for k in keys if k not in varying]

    shown = [m for m in METRICS if any(job.metrics and m[0] in job.metrics for job in jobs)]
    header = ["job", *varying, *(title for _, title, _ in shown), "Train tokens/s", "Train min/epoch", "Time (min)"]
    lines = []
    if common:
        lines.append("Shared overrides: `" + " ".join(common) + "`\n")
    lines.append("| " + " | ".join(header) + " |")
    lines.append("|" + "|".join("---" for _ in header) + "|")
    for job, number in zip(jobs, range(len(jobs))):
        row = [job.label]
        row += [values[k][number] for k in varying]
        if job.metrics is None:
            row += ["failed or unfinished"] + [MISSING] * (len(shown) + 2)
        else:
            row += [show(job.metrics.get(key)) for key, _, show in shown]
            row.append(MISSING if job.tokens_per_sec is None else f"{job.tokens_per_sec:,.0f}")
            row.append(MISSING if job.epoch_minutes is None else f"{job.epoch_minutes:.2f}")
            row.append(MISSING if job.minutes is None else f"{job.minutes:.2f}")
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("dirs", nargs="+", type=Path, help="multirun or run directories")
    args = parser.parse_args(argv)
    jobs: list[Job] = []
    for root in args.dirs:
        if not root.is_dir():
            print(f"collect_results: error: {root} is not a directory", file=sys.stderr)
            return 2
        found = find_jobs(root)
        for path in found:
            # Job numbers repeat across multirun directories; name them by directory then.
            label = f"{root.name}/{path.name}" if len(args.dirs) > 1 and path != root else path.name
            jobs.append(read_job(path, label))
    if not jobs:
        print("collect_results: error: no run directories found (expected config.yaml or .hydra/ in them)",
              file=sys.stderr)
        return 2
    print(markdown_table(jobs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
