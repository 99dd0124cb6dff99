"""Sweeps: the optional Hydra plugins they need, and a summary of a finished sweep.

A sweep directory (``multirun/DATE/TIME``) holds one job directory per trial, each with its
``.hydra/overrides.yaml`` (what the sweep chose), ``config.yaml`` (with ``optimized_metric``) and
``metrics.json`` (what the run reached). :func:`summarize_sweep` joins them into ``summary.csv``,
``summary.md`` (best trial first) and ``summary.png`` (the objective against each swept value).
``SweepSummary`` runs it at the end of a multirun (``hydra.callbacks``); for an old sweep run
``python experiments/sweeps/summarize.py multirun/DATE/TIME``.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml
from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from gptlab.errors import ConfigError
from gptlab.extras import require_extra
from gptlab.fileio import atomic_path, atomic_write_text
from gptlab.runs import RUN_CONFIG_FILE

#: Command-line choices that need an optional Hydra plugin: (prefix, key in ``gptlab.extras.OPTIONAL``).
PLUGINS = (
    ("hparams_search=", "optuna"),
    ("hydra/sweeper=optuna", "optuna"),
    ("hydra/launcher=slurm", "submitit"),
    ("hydra/launcher=submitit", "submitit"),
)


def require_plugins(argv: Sequence[str]) -> None:
    """Refuse, in one line, a command that picks a sweeper or launcher whose plugin is not installed."""
    for arg in argv:
        for prefix, key in PLUGINS:
            if arg.lstrip("+~").startswith(prefix):
                require_extra(key, arg)


class SweepSummary(Callback):
    """Hydra callback: write the sweep's summary into its directory when the multirun ends."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        if sweep_dir.is_dir():
            summarize_sweep(sweep_dir)


def _load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text()) if path.is_file() else None


def _value(text: str) -> Any:
    try:
        return float(text)
    except ValueError:
        return text


def read_trials(sweep_dir: Path) -> list[dict[str, Any]]:
    """One record per job directory: its number, swept values, objective and final metrics."""
    trials = []
    for job in sorted((p for p in sweep_dir.iterdir() if (p / ".hydra" / "overrides.yaml").is_file()),
                      key=lambda p: (len(p.name), p.name)):
        overrides = _load_yaml(job / ".hydra" / "overrides.yaml") or []
        params = dict(o.split("=", 1) for o in overrides if "=" in o and not o.startswith("hydra"))
        config = _load_yaml(job / RUN_CONFIG_FILE) or {}
        metrics_file = job / "metrics.json"
        metrics = json.loads(metrics_file.read_text()) if metrics_file.is_file() else {}
        metric = config.get("optimized_metric")
        trials.append({
            "job": job.name,
            "params": {k: _value(v) for k, v in params.items()},
            "metric": metric,
            "objective": metrics.get(metric) if metric else None,
            "metrics": metrics,
        })
    return trials


def _direction(sweep_dir: Path, metric: str | None) -> str:
    hydra_cfg = (_load_yaml(sweep_dir / "multirun.yaml") or {}).get("hydra", {})
    direction = (hydra_cfg.get("sweeper") or {}).get("direction")
    if isinstance(direction, str):
        return direction
    return "maximize" if metric and "acc" in metric else "minimize"


def summarize_sweep(sweep_dir: str | Path) -> list[dict[str, Any]]:
    """Write ``summary.csv``, ``summary.md`` and ``summary.png`` into ``sweep_dir``; return the sorted trials."""
    sweep_dir = Path(sweep_dir)
    trials = read_trials(sweep_dir)
    if not trials:
        raise ConfigError(f"{sweep_dir} holds no job directories (with .hydra/overrides.yaml); is it a sweep directory?")
    metric = next((t["metric"] for t in trials if t["metric"]), None)
    maximize = _direction(sweep_dir, metric) == "maximize"
    done = [t for t in trials if isinstance(t["objective"], (int, float)) and math.isfinite(t["objective"])]
    failed = [t for t in trials if t not in done]
    ranked = sorted(done, key=lambda t: t["objective"], reverse=maximize) + failed
    params = sorted({k for t in trials for k in t["params"]})
    header = ["rank", "job", *params, metric or "objective"]
    rows = [[str(i + 1) if t in done else "failed", t["job"], *(str(t["params"].get(k, "")) for k in params),
             f"{t['objective']:.6g}" if t in done else ""] for i, t in enumerate(ranked)]

    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerows([header, *rows])
    atomic_write_text(sweep_dir / "summary.csv", buffer.getvalue())
    goal = "highest" if maximize else "lowest"
    lines = [f"# Sweep {sweep_dir}", "", f"{len(done)} of {len(trials)} trials finished; "
             f"best first ({goal} {metric}).", "", "| " + " | ".join(header) + " |",
             "|" + "---|" * len(header), *("| " + " | ".join(r) + " |" for r in rows)]
    atomic_write_text(sweep_dir / "summary.md", "\n".join(lines) + "\n")
    _plot(sweep_dir / "summary.png", done, params, metric or "objective")
    return ranked


def _plot(path: Path, trials: list[dict[str, Any]], params: list[str], metric: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = ["trial", *params]
    fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 3), sharey=True, squeeze=False)
    for ax, name in zip(axes[0], panels):
        xs = [int(t["job"]) if t["job"].isdigit() else i for i, t in enumerate(trials)] if name == "trial" \
            else [t["params"].get(name) for t in trials]
        numeric = all(isinstance(x, (int, float)) for x in xs)
        ax.scatter(xs if numeric else [str(x) for x in xs], [t["objective"] for t in trials])
        if name != "trial" and numeric and xs and min(xs) > 0 and max(xs) / min(xs) > 20:
            ax.set_xscale("log")
        ax.set_xlabel(name)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel(metric)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100)
    plt.close(fig)
