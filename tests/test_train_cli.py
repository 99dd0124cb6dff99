"""``gptlab-train`` end to end: one real command (a subprocess), the rest in this process (helpers.runs)."""

from __future__ import annotations

import csv
import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from helpers.runs import compose_train, train_command, train_here, user_error_of
from hydra.core.global_hydra import GlobalHydra
from safetensors.torch import load_file

from gptlab.cli import train as train_cli
from gptlab.data import PretrainDataModule
from gptlab.errors import ConfigError

FAST = ["model=nano", "trainer=debug", "data.batch_size=4", "print_config=false"]
# Under `pytest -n N`, one worker runs this module (--dist loadgroup): its tests share one finished run.
pytestmark = pytest.mark.xdist_group(__name__)


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, subprocess.CompletedProcess]:
    run_dir = tmp_path_factory.mktemp("run")
    return run_dir, train_command(run_dir, *FAST)


@pytest.fixture(scope="module")
def finished_run(finished: tuple[Path, subprocess.CompletedProcess]) -> Path:
    return finished[0]


@pytest.mark.slow
def test_run_directory_holds_config_checkpoints_metrics_plot_and_model(finished_run: Path):
    config = yaml.safe_load((finished_run / "config.yaml").read_text())
    assert config["model"]["preset"] == "nano" and config["task"]["model"] == "${model}"  # the task's model
    assert (finished_run / "checkpoints" / "last.ckpt").is_file()
    assert list((finished_run / "checkpoints").glob("best-step*.ckpt"))
    rows = list(csv.DictReader((finished_run / "metrics.csv").open()))
    assert any(row.get("val/loss") for row in rows) and any(row.get("train/loss") for row in rows)
    assert (finished_run / "loss.png").stat().st_size > 1000
    assert (finished_run / "model" / "model.safetensors").is_file()
    assert (finished_run / "model" / "config.json").is_file()
    assert not list(finished_run.rglob("*.tmp*"))


@pytest.mark.slow
def test_resume_continues_from_the_saved_step(tmp_path: Path):
    # A named run directory: ckpt_path=last finds its checkpoints/last.ckpt.
    run_dir = tmp_path / "named"
    train_here(run_dir, *FAST)
    first = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert first["global_step"] == 4
    train_here(run_dir, *FAST, "trainer.max_steps=8", "trainer.max_epochs=3", "ckpt_path=last")
    resumed = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert resumed["global_step"] == 8
    assert int(resumed["state_dict"]["tokens_seen"]) == 2 * int(first["state_dict"]["tokens_seen"])
    assert resumed["optimizer_states"][0]["state"], "optimizer state travels with the checkpoint"
    steps = [float(row["step"]) for row in csv.DictReader((run_dir / "metrics.csv").open()) if row.get("train/loss")]
    assert max(steps) >= 7


def test_checkpoint_of_another_architecture_is_refused_without_touching_it(finished_run: Path, tmp_path: Path):
    ckpt = finished_run / "checkpoints" / "last.ckpt"
    before = ckpt.read_bytes()
    line = user_error_of(tmp_path / "run", *FAST, "model=micro", f"ckpt_path={ckpt}")
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
    assert expected in user_error_of(tmp_path / "run", *FAST, *overrides)
    assert not (tmp_path / "run" / "checkpoints").exists()


@pytest.mark.parametrize(
    "text, expected", [("", "empty"), ("Just a few words.", "fewer than one window")]
)
def test_empty_or_too_short_corpus_is_refused(tmp_path: Path, text: str, expected: str):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(text)
    assert expected in user_error_of(tmp_path / "run", *FAST, f"data.path={corpus}")
    assert not (tmp_path / "run" / "checkpoints").exists()


@pytest.mark.slow
def test_verdict_experiment_runs_on_a_local_copy(verdict_path: Path, tmp_path: Path):
    # The book's chapter 5 setup, shrunk to a smoke run: the data path and the 90/10 split work.
    run_dir = tmp_path / "verdict"
    train_here(run_dir, "experiment=verdict", f"data.path={verdict_path}", "model=nano", "model.context_length=64",
               "data.max_length=64", "data.stride=64", "trainer.max_steps=5", "trainer.val_check_interval=5",
               "print_config=false")
    rows = list(csv.DictReader((run_dir / "metrics.csv").open()))
    assert any(row.get("val/loss") for row in rows)


@pytest.mark.slow
def test_wandb_offline_records_metrics_and_the_resolved_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    run_dir = tmp_path / "wandb-run"
    train_here(run_dir, *FAST, "logger=wandb")
    run_files = list((run_dir / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(run_files) == 1
    # wandb has no reader of its offline files; keys are stored as plain strings in them.
    content = run_files[0].read_bytes()
    for key in (b"val/loss", b"train/loss", b"tokens_seen", b"preset", b"nano"):
        assert key in content, key
    assert (run_dir / "metrics.csv").is_file()  # the CSV logger runs beside W&B


def test_config_yaml_shows_every_model_value(finished_run: Path):
    model = yaml.safe_load((finished_run / "config.yaml").read_text())["model"]
    expected = {"vocab_size": 50257, "context_length": 64, "emb_dim": 64, "n_heads": 2, "n_layers": 2}
    assert {key: model[key] for key in expected} == expected
    assert all(type(model[key]) is int for key in expected)
    assert (model["hidden_dim"], model["n_kv_heads"], model["head_size"]) == (256, 2, 32)  # nano's rules, written out
    assert [key for key, value in model.items() if value is None] == ["rope_scaling"]  # null is "no scaling"


@pytest.mark.slow
def test_config_yaml_fed_back_rebuilds_the_same_model_in_a_new_run(finished_run: Path, tmp_path: Path):
    before = (finished_run / "checkpoints" / "last.ckpt").read_bytes()
    again = tmp_path / "again"
    train_here(again, config_dir=finished_run)  # what `--config-path RUN --config-name config` composes
    assert (again / "checkpoints" / "last.ckpt").is_file()
    assert (finished_run / "checkpoints" / "last.ckpt").read_bytes() == before  # the first run is untouched
    first = json.loads((finished_run / "model" / "config.json").read_text())
    assert json.loads((again / "model" / "config.json").read_text()) == first
    shapes = [{k: v.shape for k, v in load_file(run / "model" / "model.safetensors").items()}
              for run in (finished_run, again)]
    assert shapes[0] == shapes[1]
    # A model override of the re-run reaches the task's model too.
    deeper = tmp_path / "deeper"
    train_here(deeper, "model.n_layers=3", config_dir=finished_run)
    assert json.loads((deeper / "model" / "config.json").read_text())["n_layers"] == 3


def test_run_prints_samples_of_the_data_prompt_and_a_closing_summary(finished):
    run_dir, result = finished
    samples = [line for line in result.stdout.splitlines() if line.startswith("[step ")]
    assert samples and all(line.split("] ", 1)[1].startswith("The with statement") for line in samples)
    tail = result.stdout.rstrip().splitlines()[-4:]
    assert tail[0] == f"Run finished: {run_dir}"
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert (f"final val/loss {metrics['val/loss']:.3f}, perplexity {metrics['val/ppl']:,.1f}, "
            f"{metrics['val/bpb']:.3f} bits per byte at step 4") in tail[1]
    assert f"{4 * 4 * 64:,} training tokens" in tail[2] and "tokens/s (training steps alone:" in tail[2]
    mfu = float(tail[2].split("MFU ", 1)[1].split("%", 1)[0])
    assert 0 < mfu < 100 and "GFLOP/s" in tail[2]
    assert tail[3] == (f"  try it: gptlab-generate {run_dir} --prompt 'The with statement' --max-new-tokens 50 "
                       "--temperature 0.8 --top-k 40 --seed 123")


@pytest.mark.slow
def test_bits_per_byte_are_the_loss_in_bits_over_the_validation_bytes(finished_run: Path):
    metrics = json.loads((finished_run / "metrics.json").read_text())
    data = yaml.safe_load((finished_run / "config.yaml").read_text())["data"]
    validation = PretrainDataModule(source=data["source"], tokenizer=data["tokenizer"], train_ratio=data["train_ratio"],
                                    max_length=data["max_length"])
    validation.setup("fit")
    bytes_per_token = validation.val_bytes_per_token
    assert 1.5 < bytes_per_token < 5  # GPT-2 tokens of English prose and code
    assert metrics["val/bpb"] == pytest.approx(metrics["val/loss"] / math.log(2) / bytes_per_token, rel=1e-5)


def test_help_lists_groups_overrides_and_where_runs_go(monkeypatch: pytest.MonkeyPatch, capsys):
    monkeypatch.setattr(sys, "argv", ["gptlab-train", "--help"])  # the console script's main, in this process
    with pytest.raises(SystemExit) as exited:
        train_cli.main()
    GlobalHydra.instance().clear()
    assert exited.value.code == 0
    out = capsys.readouterr().out
    for group in ("model", "data", "task", "trainer", "logger", "callbacks", "experiment"):
        assert any(line.strip().startswith(group + " ") for line in out.splitlines()), group
    assert ("model: gpt2-large, gpt2-medium, gpt2-small, gpt2-xl, llama-3.2-1b, llama-micro, llama-mini, micro, mini, "
            "nano, qwen3-0.6b, smollm2-135m") in out
    assert "model.n_layers=8" in out and "runs/DATE/TIME/" in out


@pytest.mark.parametrize(
    "overrides, module, line",
    [
        (["logger=wandb"], "wandb", "logger=wandb needs the 'wandb' package: pip install 'gptlab[wandb]'"),
        (["logger=tensorboard"], "tensorboard", "pip install 'gptlab[tensorboard]'"),
        (["data=hf"], "datasets", "pip install 'gptlab[hf]'"),
    ],
)
def test_an_optional_part_without_its_extra_names_the_install(monkeypatch, overrides, module, line):
    cfg = compose_train(*overrides)
    train_cli.check_extras(cfg)  # installed here: nothing to say
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == module else real(name, *a))
    with pytest.raises(ConfigError) as err:
        train_cli.check_extras(cfg)
    assert line in str(err.value) and "\n" not in str(err.value)
