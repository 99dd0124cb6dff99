"""Trainer presets and the debug group compose; sharding wraps per block; multi-process runs match one process."""

from __future__ import annotations

import csv
from pathlib import Path

import lightning as L
import pytest
from helpers.runs import compose_train, train_command

from gptlab import load_pretrained
from gptlab.checkpoints import read_task_checkpoint
from gptlab.model import GPT, GPTConfig
from gptlab.strategies import fsdp

PRESETS = ["cpu", "gpu", "ddp", "ddp_cpu", "fsdp", "fully_shard", "debug"]


@pytest.mark.parametrize("preset", PRESETS)
@pytest.mark.parametrize("debug", [None, "smoke", "fdr", "overfit", "profiler"])
def test_every_preset_composes_with_every_debug_mode(preset: str, debug: str | None):
    cfg = compose_train(f"trainer={preset}", *([f"debug={debug}"] if debug else []), "experiment=verdict")
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
        trainer = instantiate(compose_train("trainer=cpu", f"debug={debug}", "output_dir=/tmp/x").trainer)
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


SMOKE = ["debug=smoke", "print_config=false", "callbacks.loss_plot=null"]


def val_losses(run_dir: Path) -> list[float]:
    return [float(r["val/loss"]) for r in csv.DictReader((run_dir / "metrics.csv").open()) if r.get("val/loss")]


@pytest.mark.slow
def test_ddp_cpu_reaches_the_single_process_loss_at_the_same_global_batch(tmp_path: Path):
    # Lightning always shuffles a distributed training loader with a seeded DistributedSampler;
    # one DDP process draws the same permutation, so its batches of 4 hold exactly the windows
    # that two ranks' batches of 2 hold together.
    same = ["model=nano", *SMOKE, "callbacks.sample=null", "callbacks.export=null",
            "trainer.enable_model_summary=false"]
    train_command(tmp_path / "one", "trainer=ddp_cpu", "trainer.devices=1", "data.batch_size=4", *same)
    train_command(tmp_path / "two", "trainer=ddp_cpu", "data.batch_size=2", *same)
    one, two = val_losses(tmp_path / "one"), val_losses(tmp_path / "two")
    assert len(one) == len(two) == 2
    assert two == pytest.approx(one, abs=1e-4)
    a, b = (read_task_checkpoint(tmp_path / run / "checkpoints" / "last.ckpt") for run in ("one", "two"))
    assert max((a.model_state[k] - b.model_state[k]).abs().max().item() for k in a.model_state) < 1e-4
    # Both ranks' tokens count: 4 steps of 2 ranks x 2 windows x 64 tokens, as one process's 4 x 64.
    assert b.raw["global_step"] == 4
    assert int(b.raw["state_dict"]["tokens_seen"]) == int(a.raw["state_dict"]["tokens_seen"]) == 4 * 2 * 2 * 64


@pytest.mark.slow
def test_fully_shard_on_two_cpu_processes_decodes_samples_and_its_sharded_checkpoint_reloads_in_one(tmp_path: Path):
    """FSDP2 shards each block of a Llama-shaped model over both processes; decoding the sample needs
    every rank's shards, and the sharded checkpoint resumes on one process."""
    run = tmp_path / "sharded"
    llama = ["model=llama-micro", "model.n_layers=2", "model.context_length=64", *SMOKE, "trainer=fully_shard",
             "trainer.accelerator=cpu", "task.activation_checkpointing=true"]
    result = train_command(run, *llama, "trainer.devices=2", "data.batch_size=2", "callbacks.sample.max_new_tokens=4")
    assert len([line for line in result.stdout.splitlines() if line.startswith("[step ")]) == 2  # rank zero's
    last = run / "checkpoints" / "last.ckpt"
    assert last.is_dir() and len(list(last.glob("*.distcp"))) == 2  # one shard per process
    assert load_pretrained(run).cfg.kv_heads == 2  # exported from the merged best checkpoint
    # Resumed by the strategy's own load path on one process (the shards are re-split on load).
    train_command(run, *llama, "trainer.devices=1", "data.batch_size=4", "trainer.max_steps=6",
                  "trainer.max_epochs=2", "ckpt_path=last", "callbacks.export=null", "callbacks.sample=null")
    from gptlab.strategies import consolidate_checkpoint

    merged = read_task_checkpoint(consolidate_checkpoint(last))
    assert merged.raw["global_step"] == 6 and merged.model_config["n_kv_heads"] == 2
    model = GPT(GPTConfig.from_dict(merged.model_config))
    model.load_state_dict(merged.model_state)  # every weight present, full (unsharded) shapes


def test_the_slurm_launcher_and_the_optuna_search_compose():
    slurm = compose_train("hydra/launcher=slurm", hydra=True)
    optuna = compose_train("hparams_search=optuna", hydra=True)
    assert slurm.hydra.launcher._target_.endswith("SlurmLauncher") and slurm.hydra.launcher.max_num_timeout == 3
    assert optuna.hydra.sweeper._target_.endswith("OptunaSweeper") and optuna.optimized_metric == "val/loss"
    assert set(optuna.hydra.sweeper.params) == {"task.optimizer.lr", "task.optimizer.weight_decay",
                                                "task.scheduler.warmup_ratio"}
