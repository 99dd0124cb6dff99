"""W&B runs named from the Hydra choices, one per multirun job, resumable by run directory."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from gptlab.loggers import run_id, run_names, wandb_logger


def test_names_come_from_the_hydra_choices():
    choices = {"model": "nano", "data": "verdict", "task": "pretrain", "trainer": "cpu", "experiment": None,
               "hydra/launcher": "basic", "logger": "wandb"}
    names = run_names(choices, "task.optimizer.lr=0.001", "/runs/x")
    assert names == {"group": "pretrain-verdict", "name": "task.optimizer.lr=0.001",
                     "tags": ["model:nano", "data:verdict", "task:pretrain", "trainer:cpu"]}
    named = run_names({**choices, "experiment": "verdict"}, "", "/runs/verdict-1")
    assert named["group"] == "verdict" and named["name"] == "verdict-1" and "experiment:verdict" in named["tags"]


def test_the_run_id_is_fixed_by_the_run_directory(tmp_path: Path):
    assert run_id(tmp_path / "a") == run_id(str(tmp_path / "a")) != run_id(tmp_path / "b")
    assert run_id(tmp_path / "a").isalnum() and run_id(tmp_path / "a").islower()


def test_without_an_api_key_the_logger_is_offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    logger = wandb_logger(str(tmp_path), {"task": "pretrain", "data": "embedded"}, "")
    assert logger._offline and logger._wandb_init["id"] == run_id(tmp_path)
    assert logger._wandb_init["group"] == "pretrain-embedded" and logger._wandb_init["resume"] == "allow"
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    assert not wandb_logger(str(tmp_path), {}, "")._offline


@pytest.mark.slow
def test_each_multirun_job_is_its_own_offline_run_with_its_config_and_metrics(tmp_path: Path):
    sweep = tmp_path / "sweep"
    cmd = [sys.executable, "-m", "gptlab.cli.train", "-m", f"hydra.sweep.dir={sweep}", "model=nano",
           "trainer=debug", "data.batch_size=4", "print_config=false", "callbacks.sample=null",
           "callbacks.export=null", "logger=wandb", "task.optimizer.lr=0.001,0.002"]
    env = {**os.environ, "WANDB_MODE": "offline", "PYTHONWARNINGS": "ignore"}
    result = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    run_files = {job: list((sweep / job / "wandb").glob("offline-run-*/run-*.wandb")) for job in ("0", "1")}
    assert all(len(files) == 1 for files in run_files.values()), run_files
    # wandb has no reader of its offline files; keys and values are stored as plain strings in them.
    for job, lr in (("0", b"0.001"), ("1", b"0.002")):
        content = run_files[job][0].read_bytes()
        for key in (b"val/loss", b"train/loss", b"plots/loss", b"pretrain-embedded", b"model:nano",
                    b"task.optimizer.lr=" + lr, run_id(sweep / job).encode()):
            assert key in content, (job, key)
    assert "wandb sync" in result.stderr + result.stdout
