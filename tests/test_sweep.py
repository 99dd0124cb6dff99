"""Sweeps: the entry point returns optimized_metric; an Optuna sweep of two trials, each its own W&B run,
writes its summary."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from gptlab.errors import ConfigError
from gptlab.loggers import run_id
from gptlab.sweeps import require_plugins, summarize_sweep


def fake_job(sweep: Path, num: int, lr: float, loss: float | None) -> None:
    job = sweep / str(num)
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump([f"task.optimizer.lr={lr}"]))
    (job / "config.yaml").write_text(yaml.safe_dump({"optimized_metric": "val/loss"}))
    if loss is not None:
        (job / "metrics.json").write_text(json.dumps({"val/loss": loss, "train/loss": 9.0}))


def test_summary_ranks_trials_by_the_objective_and_lists_failures(tmp_path: Path):
    for num, lr, loss in ((0, 0.01, 5.0), (1, 0.001, 4.0), (2, 0.1, None), (3, 0.0001, 6.0)):
        fake_job(tmp_path, num, lr, loss)
    ranked = summarize_sweep(tmp_path)
    assert [t["job"] for t in ranked] == ["1", "0", "3", "2"]
    rows = list(csv.reader((tmp_path / "summary.csv").open()))
    assert rows[0] == ["rank", "job", "task.optimizer.lr", "val/loss"]
    assert rows[1] == ["1", "1", "0.001", "4"] and rows[-1] == ["failed", "2", "0.1", ""]
    assert "3 of 4 trials finished" in (tmp_path / "summary.md").read_text()
    assert (tmp_path / "summary.png").stat().st_size > 1000


def test_a_missing_plugin_is_one_line_naming_the_extra(monkeypatch: pytest.MonkeyPatch):
    import importlib.util

    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ConfigError, match=r"needs the submitit launcher.*pip install 'gptlab\[slurm\]'"):
        require_plugins(["model=nano", "hydra/launcher=slurm"])
    with pytest.raises(ConfigError, match=r"needs the Optuna sweeper.*gptlab\[sweep\]"):
        require_plugins(["hparams_search=optuna"])
    require_plugins(["model=nano"])


@pytest.mark.slow
def test_an_optuna_sweep_logs_each_trial_as_its_own_offline_wandb_run_and_writes_its_summary(tmp_path: Path):
    sweep = tmp_path / "sweep"
    cmd = [sys.executable, "-m", "gptlab.cli.train", "hparams_search=optuna", f"hydra.sweep.dir={sweep}",
           "hydra.sweeper.n_trials=2", "hydra.sweeper.sampler.n_startup_trials=2", "model=nano", "trainer=debug",
           "data.batch_size=4", "print_config=false", "callbacks.sample=null", "callbacks.export=null",
           "logger=wandb"]
    env = {**os.environ, "WANDB_MODE": "offline", "PYTHONWARNINGS": "ignore"}
    result = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    best = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    losses = [json.loads((sweep / job / "metrics.json").read_text())["val/loss"] for job in ("0", "1")]
    assert best["best_value"] == pytest.approx(min(losses))  # the sweeper saw what each run returned
    rows = list(csv.DictReader((sweep / "summary.csv").open()))
    assert [float(r["val/loss"]) for r in rows] == pytest.approx(sorted(losses), rel=1e-5)
    assert {"task.optimizer.lr", "task.optimizer.weight_decay", "task.scheduler.warmup_ratio"} <= set(rows[0])
    assert (sweep / "summary.png").is_file()

    # Each trial is its own W&B run (not the first one reused), named by its sampled values.
    # wandb has no reader of its offline files; keys and values are stored as plain strings in them.
    for job in ("0", "1"):
        run_files = list((sweep / job / "wandb").glob("offline-run-*/run-*.wandb"))
        assert len(run_files) == 1, (job, run_files)
        content = run_files[0].read_bytes()
        lr = next(o for o in yaml.safe_load((sweep / job / ".hydra" / "overrides.yaml").read_text())
                  if o.startswith("task.optimizer.lr="))
        for key in (b"val/loss", b"train/loss", b"plots/loss", b"pretrain-embedded", b"model:nano", lr.encode(),
                    run_id(sweep / job).encode()):
            assert key in content, (job, key)
    assert "wandb sync" in result.stderr + result.stdout
