"""Trainer presets and the debug group compose; sharding wraps per block; multi-process runs match one process."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch
from hydra import compose, initialize_config_module
from lightning.pytorch.strategies import FSDPStrategy

from gptlab.checkpoints import read_task_checkpoint
from gptlab.model import GPT, GPTConfig
from gptlab.model.gpt import TransformerBlock
from gptlab.strategies import ActivationCheckpointing, checkpoint_blocks, fsdp

PRESETS = ["cpu", "gpu", "ddp", "ddp_cpu", "fsdp", "fully_shard", "debug"]


def composed(*overrides: str):
    with initialize_config_module("gptlab.conf", version_base="1.3"):
        return compose("train", overrides=list(overrides), return_hydra_config=False)


@pytest.mark.parametrize("preset", PRESETS)
@pytest.mark.parametrize("debug", [None, "smoke", "fdr", "overfit", "profiler"])
def test_every_preset_composes_with_every_debug_mode(preset: str, debug: str | None):
    cfg = composed(f"trainer={preset}", *([f"debug={debug}"] if debug else []), "experiment=verdict")
    assert cfg.trainer._target_ == "lightning.Trainer"
    expected = {"fdr": ("fast_dev_run", True), "overfit": ("overfit_batches", 1), "smoke": ("max_steps", 4),
                "profiler": ("max_steps", 20)}
    if debug:  # the debug group wins over the experiment's trainer settings
        key, value = expected[debug]
        assert cfg.trainer[key] == value
    assert cfg.trainer.accelerator == {"cpu": "cpu", "ddp_cpu": "cpu", "debug": "cpu", "gpu": "gpu",
                                       "fsdp": "gpu"}.get(preset, "auto")


def test_debug_modes_build_a_trainer_on_the_cpu():
    from hydra.utils import instantiate

    for debug in ("fdr", "overfit", "profiler"):
        trainer = instantiate(composed("trainer=cpu", f"debug={debug}", "output_dir=/tmp/x").trainer)
        assert isinstance(trainer, L.Trainer)


def test_fsdp_wraps_each_transformer_block_and_lightning_refuses_it_on_cpu():
    strategy = fsdp(activation_checkpointing=True)
    gpt = GPT(GPTConfig.from_dict({"preset": "nano"}))
    # The modules FSDP would make units of: every block, plus the root (embeddings, norm, head).
    units = strategy.kwargs["auto_wrap_policy"]._run_policy(gpt, ignored_modules=set(), root_kwargs={})
    assert {id(m) for m in units if m is not gpt} == {id(b) for b in gpt.trf_blocks}
    assert strategy._activation_checkpointing_kwargs  # recompute per block as well
    assert strategy._state_dict_type == "sharded"
    with pytest.raises(ValueError, match="requires a GPU accelerator"):
        L.Trainer(accelerator="cpu", strategy=strategy, devices=2)


def test_activation_checkpointing_keeps_outputs_gradients_and_state_dict_keys():
    torch.manual_seed(0)
    cfg = GPTConfig.from_dict({"preset": "nano", "drop_rate": 0.0})
    plain, recomputed = GPT(cfg), GPT(cfg)
    recomputed.load_state_dict(plain.state_dict())
    assert checkpoint_blocks(recomputed) == cfg.n_layers and checkpoint_blocks(recomputed) == 0
    assert list(recomputed.state_dict()) == list(plain.state_dict())
    idx = torch.randint(0, cfg.vocab_size, (2, 16))
    for model in (plain, recomputed):
        model(idx).logsumexp(-1).mean().backward()
    for (name, a), (_, b) in zip(plain.named_parameters(), recomputed.named_parameters()):
        torch.testing.assert_close(a.grad, b.grad, msg=name)
    assert ActivationCheckpointing(enabled=False).enabled is False


def run_cli(run_dir: Path, *overrides: str) -> None:
    cmd = [sys.executable, "-m", "gptlab.cli.train", f"hydra.run.dir={run_dir}", "model=nano", "debug=smoke",
           "print_config=false", "callbacks.sample=null", "callbacks.loss_plot=null", *overrides]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=600,
                            env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert result.returncode == 0, result.stderr[-3000:]


def val_losses(run_dir: Path) -> list[float]:
    return [float(r["val/loss"]) for r in csv.DictReader((run_dir / "metrics.csv").open()) if r.get("val/loss")]


@pytest.mark.slow
def test_ddp_cpu_reaches_the_single_process_loss_at_the_same_global_batch(tmp_path: Path):
    # Lightning always shuffles a distributed training loader with a seeded DistributedSampler;
    # one DDP process draws the same permutation, so its batches of 4 hold exactly the windows
    # that two ranks' batches of 2 hold together.
    same = ["callbacks.export=null", "trainer.enable_model_summary=false"]
    run_cli(tmp_path / "one", "trainer=ddp_cpu", "trainer.devices=1", "data.batch_size=4", *same)
    run_cli(tmp_path / "two", "trainer=ddp_cpu", "data.batch_size=2", *same)
    one, two = val_losses(tmp_path / "one"), val_losses(tmp_path / "two")
    assert len(one) == len(two) == 2
    assert two == pytest.approx(one, abs=1e-4)
    a = read_task_checkpoint(tmp_path / "one" / "checkpoints" / "last.ckpt").model_state
    b = read_task_checkpoint(tmp_path / "two" / "checkpoints" / "last.ckpt").model_state
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-4


@pytest.mark.slow
def test_fully_shard_trains_on_two_cpu_processes_and_its_sharded_checkpoint_reloads_in_one(tmp_path: Path):
    run = tmp_path / "sharded"
    run_cli(run, "trainer=fully_shard", "trainer.accelerator=cpu", "trainer.devices=2", "data.batch_size=2")
    last = run / "checkpoints" / "last.ckpt"
    assert last.is_dir() and len(list(last.glob("*.distcp"))) == 2  # one shard per process
    assert (run / "model" / "model.safetensors").is_file()  # exported from the merged best checkpoint
    # Resumed by the strategy's own load path on one process (the shards are re-split on load).
    run_cli(run, "trainer=fully_shard", "trainer.accelerator=cpu", "trainer.devices=1", "data.batch_size=4",
            "trainer.max_steps=6", "trainer.max_epochs=2", "ckpt_path=last", "callbacks.export=null")
    from gptlab.strategies import consolidate_checkpoint

    merged = read_task_checkpoint(consolidate_checkpoint(last))
    assert merged.raw["global_step"] == 6 and merged.model_config["emb_dim"] == 64
    model = GPT(GPTConfig.from_dict(merged.model_config))
    model.load_state_dict(merged.model_state)  # every weight present, full (unsharded) shapes


def test_the_slurm_launcher_and_the_optuna_search_compose():
    with initialize_config_module("gptlab.conf", version_base="1.3"):
        slurm = compose("train", overrides=["hydra/launcher=slurm"], return_hydra_config=True)
        optuna = compose("train", overrides=["hparams_search=optuna"], return_hydra_config=True)
    assert slurm.hydra.launcher._target_.endswith("SlurmLauncher") and slurm.hydra.launcher.max_num_timeout == 3
    assert optuna.hydra.sweeper._target_.endswith("OptunaSweeper") and optuna.optimized_metric == "val/loss"
    assert set(optuna.hydra.sweeper.params) == {"task.optimizer.lr", "task.optimizer.weight_decay",
                                                "task.scheduler.warmup_ratio"}
