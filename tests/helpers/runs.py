"""Runs of ``gptlab-train`` for tests: in this process, or as the real command in a subprocess.

An in-process run calls the same ``train(cfg)`` the command calls, on the config Hydra composes
from the same overrides, so it skips only the seconds a new Python spends importing torch and
Lightning. Tests that need the command itself (its exit status, a SIGKILL, several processes,
Hydra's own flags) run it as a subprocess with ``train_command``.
"""

from __future__ import annotations

import io
import logging
import os
import subprocess
import sys
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir, initialize_config_module
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig

from gptlab.cli import train as train_cli

HELPERS = Path(__file__).parent


def compose_train(*overrides: str, config_dir: Path | None = None, hydra: bool = False) -> DictConfig:
    """The train config for ``overrides``: the package's ``train.yaml``, or a run's saved ``config.yaml``."""
    GlobalHydra.instance().clear()
    if config_dir is None:
        context = initialize_config_module(config_module="gptlab.conf", version_base="1.3")
    else:
        context = initialize_config_dir(config_dir=str(Path(config_dir).resolve()), version_base="1.3")
    with context:
        return compose(config_name="train" if config_dir is None else "config", overrides=list(overrides),
                       return_hydra_config=hydra)


@dataclass
class Run:
    """A finished in-process run: its directory, final metrics, and everything it printed or logged."""

    dir: Path
    metrics: dict[str, float]
    output: str


def train_here(run_dir: Path, *overrides: str, config_dir: Path | None = None) -> Run:
    """``gptlab-train hydra.run.dir=RUN_DIR OVERRIDES...`` in this process, its output captured."""
    cfg = compose_train(f"output_dir={run_dir}", *overrides, config_dir=config_dir)
    output = io.StringIO()
    handler = logging.StreamHandler(output)
    lightning_logs = [logging.getLogger(name) for name in ("lightning.pytorch", "lightning.fabric")]
    for log in lightning_logs:
        log.addHandler(handler)
    try:
        with redirect_stdout(output), redirect_stderr(output):
            metrics = train_cli.train(cfg)
    finally:
        for log in lightning_logs:
            log.removeHandler(handler)
    return Run(Path(run_dir), metrics, output.getvalue())


def user_error_of(run_dir: Path, *overrides: str) -> str:
    """The one line ``gptlab-train`` prints (after ``gptlab-train: error:``) for a run that must stop."""
    with pytest.raises(Exception) as raised:
        train_here(run_dir, *overrides)
    problem = train_cli.user_error(raised.value)
    assert problem is not None, f"not a user error: {raised.value!r}"
    assert "\n" not in str(problem)
    return str(problem)


def train_command(run_dir: Path, *overrides: str, check: bool = True) -> subprocess.CompletedProcess:
    """The real ``gptlab-train`` in a new process; ``helpers/`` is importable there (``inject.KillAtStep``)."""
    env = {**os.environ, "PYTHONWARNINGS": "ignore",
           "PYTHONPATH": os.pathsep.join([str(HELPERS), os.environ.get("PYTHONPATH", "")])}
    cmd = [sys.executable, "-m", "gptlab.cli.train", f"hydra.run.dir={run_dir}", *overrides]
    result = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    if check and result.returncode != 0:
        raise AssertionError(f"gptlab-train failed ({result.returncode}):\n{result.stdout[-3000:]}\n"
                             f"{result.stderr[-3000:]}")
    return result

