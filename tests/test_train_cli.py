"""``gptlab-train`` end to end, through the real Hydra entry point, in a subprocess."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

FAST = ["model=nano", "trainer=debug", "data.batch_size=4", "print_config=false"]


def train(run_dir: Path, *overrides: str, check: bool = True) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "gptlab.cli.train", f"hydra.run.dir={run_dir}", *overrides]
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    result = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    if check and result.returncode != 0:
        raise AssertionError(f"gptlab-train failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result


def error_line(result: subprocess.CompletedProcess) -> str:
    lines = [line for line in result.stderr.splitlines() if line.startswith("gptlab-train: error:")]
    assert result.returncode == 2, result.stderr
    assert len(lines) == 1, result.stderr
    return lines[0]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run_dir = tmp_path_factory.mktemp("run")
    train(run_dir, *FAST)
    return run_dir


def test_run_directory_holds_config_checkpoints_metrics_plot_and_model(finished_run: Path):
    assert (finished_run / "config.yaml").read_text().count("preset: nano") == 2  # model and task.model
    assert (finished_run / "checkpoints" / "last.ckpt").is_file()
    assert list((finished_run / "checkpoints").glob("best-step*.ckpt"))
    rows = list(csv.DictReader((finished_run / "metrics.csv").open()))
    assert any(row.get("val/loss") for row in rows) and any(row.get("train/loss") for row in rows)
    assert (finished_run / "loss.png").stat().st_size > 1000
    assert (finished_run / "model" / "model.safetensors").is_file()
    assert (finished_run / "model" / "config.json").is_file()
    assert not list(finished_run.rglob("*.tmp*"))


def test_resume_continues_from_the_saved_step(tmp_path: Path):
    # A named run directory: ckpt_path=last finds its checkpoints/last.ckpt.
    run_dir = tmp_path / "named"
    train(run_dir, *FAST)
    first = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert first["global_step"] == 4
    train(run_dir, *FAST, "trainer.max_steps=8", "trainer.max_epochs=3", "ckpt_path=last")
    resumed = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert resumed["global_step"] == 8
    assert int(resumed["state_dict"]["tokens_seen"]) == 2 * int(first["state_dict"]["tokens_seen"])
    assert resumed["optimizer_states"][0]["state"], "optimizer state travels with the checkpoint"
    steps = [float(row["step"]) for row in csv.DictReader((run_dir / "metrics.csv").open()) if row.get("train/loss")]
    assert max(steps) >= 7


def test_checkpoint_of_another_architecture_is_refused_without_touching_it(finished_run: Path, tmp_path: Path):
    ckpt = finished_run / "checkpoints" / "last.ckpt"
    before = ckpt.read_bytes()
    result = train(tmp_path / "run", "model=micro", "trainer=debug", "print_config=false", f"ckpt_path={ckpt}",
                   check=False)
    line = error_line(result)
    assert "different architecture" in line and "emb_dim: checkpoint 64 vs run 128" in line
    assert ckpt.read_bytes() == before
    assert not (tmp_path / "run" / "checkpoints").exists()


@pytest.mark.parametrize(
    "overrides, expected",
    [
        (["data.path=/nonexistent/corpus.txt"], "not found: /nonexistent/corpus.txt"),
        (["model.preset=gpt5"], "unknown model preset 'gpt5'"),
        (["data.tokenizer=llama"], "unknown tokenizer 'llama'"),
        (["ckpt_path=/nonexistent.ckpt"], "checkpoint not found"),
        (["ckpt_path=last"], "ckpt_path=last but"),
        (["task.scheduler.name=linear"], "task.scheduler.name='linear' is unknown"),
    ],
)
def test_bad_input_stops_with_one_clear_line(tmp_path: Path, overrides: list[str], expected: str):
    result = train(tmp_path / "run", *FAST, *overrides, check=False)
    assert expected in error_line(result)
    assert not (tmp_path / "run" / "checkpoints").exists()


@pytest.mark.parametrize(
    "text, expected", [("", "empty"), ("Just a few words.", "fewer than one window")]
)
def test_empty_or_too_short_corpus_is_refused(tmp_path: Path, text: str, expected: str):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(text)
    result = train(tmp_path / "run", *FAST, f"data.path={corpus}", check=False)
    assert expected in error_line(result)
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_verdict_experiment_runs_on_a_local_copy(verdict_path: Path, tmp_path: Path):
    # The book's chapter 5 setup, shrunk to a smoke run: the data path and the 90/10 split work.
    run_dir = tmp_path / "verdict"
    train(run_dir, "experiment=verdict", f"data.path={verdict_path}", "model=nano", "model.context_length=64",
          "data.max_length=64", "data.stride=64", "trainer.max_epochs=1", "trainer.val_check_interval=5",
          "print_config=false")
    rows = list(csv.DictReader((run_dir / "metrics.csv").open()))
    assert any(row.get("val/loss") for row in rows)


@pytest.mark.slow
def test_ddp_on_two_cpu_processes(tmp_path: Path):
    run_dir = tmp_path / "ddp"
    train(run_dir, *FAST, "trainer=ddp_cpu", "trainer.max_steps=2",
          "trainer.limit_train_batches=2", "trainer.limit_val_batches=1", "trainer.val_check_interval=2",
          "trainer.max_epochs=1", "trainer.log_every_n_steps=1", "trainer.enable_model_summary=false")
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert ckpt["global_step"] == 2
    # Two ranks of 4 windows x 64 tokens per step, two steps.
    assert int(ckpt["state_dict"]["tokens_seen"]) == 2 * 2 * 4 * 64


def test_wandb_offline_records_metrics_and_the_resolved_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    run_dir = tmp_path / "wandb-run"
    train(run_dir, *FAST, "logger=wandb")
    run_files = list((run_dir / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(run_files) == 1
    # wandb has no reader of its offline files; keys are stored as plain strings in them.
    content = run_files[0].read_bytes()
    for key in (b"val/loss", b"train/loss", b"tokens_seen", b"preset", b"nano"):
        assert key in content, key
    assert (run_dir / "metrics.csv").is_file()  # the CSV logger runs beside W&B
