"""W&B runs named from the Hydra choices, resumable by run directory (one per multirun job: test_sweep)."""

from __future__ import annotations

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
