"""DPO: the loss against hand-computed values, and the three ways of holding the reference model."""

from __future__ import annotations

import gc
import json
import math
from pathlib import Path

import lightning as L
import pytest
import torch
from helpers.runs import compose_train, train_command

from gptlab.checkpoints import save_model
from gptlab.data import PreferenceDataModule
from gptlab.errors import CheckpointError, ConfigError
from gptlab.model import GPT, GPTConfig
from gptlab.tasks import PreferenceTask
from gptlab.tasks.dpo_loss import dpo_loss, pair_logps, reduce_logps, response_logps

MODEL = {"preset": "nano", "vocab_size": 257, "context_length": 96}
MODES = {"copy": {}, "lora": {"trainable_layers": "lora"}, "precomputed": {}}
LOG2 = math.log(2.0)


def test_loss_equals_hand_computed_values():
    policy_chosen, policy_rejected = torch.tensor([-5.0, -3.0]), torch.tensor([-7.0, -2.0])
    reference_chosen, reference_rejected = torch.tensor([-6.0, -3.0]), torch.tensor([-6.5, -2.5])
    out = dpo_loss(policy_chosen, policy_rejected, reference_chosen, reference_rejected, beta=0.1)
    # Pair 1: (-5 + 7) - (-6 + 6.5) = 1.5; pair 2: (-3 + 2) - (-3 + 2.5) = -0.5.
    expected = [math.log1p(math.exp(-0.1 * 1.5)), math.log1p(math.exp(-0.1 * -0.5))]
    assert out.losses.tolist() == pytest.approx(expected, rel=1e-6)
    assert out.loss.item() == pytest.approx(sum(expected) / 2, rel=1e-6)
    assert out.chosen_rewards.tolist() == pytest.approx([0.1, 0.0], abs=1e-7)
    assert out.rejected_rewards.tolist() == pytest.approx([-0.05, 0.05], abs=1e-7)
    assert out.margins.tolist() == pytest.approx([0.15, -0.05], abs=1e-7)
    assert out.accuracies.tolist() == [1.0, 0.0]


def test_policy_equal_to_reference_gives_log_2():
    logps = torch.tensor([-4.0, -9.5, -0.3])
    out = dpo_loss(logps, logps - 1.0, logps, logps - 1.0, beta=0.5)
    assert out.losses.tolist() == pytest.approx([LOG2] * 3)
    assert out.margins.abs().max().item() == 0.0


def test_response_logps_score_only_response_tokens():
    torch.manual_seed(0)
    logits = torch.randn(2, 4, 5)
    ids = torch.tensor([[1, 2, 3, 4], [0, 4, 2, 0]])
    mask = torch.tensor([[0, 0, 1, 1], [0, 1, 1, 0]])  # row 2 ends in padding
    sums, counts = response_logps(logits, ids, mask)

    def logp(row: int, pos: int) -> float:  # log-probability of token pos given the logits before it
        values = logits[row, pos - 1].tolist()
        return values[ids[row, pos]] - math.log(sum(math.exp(v) for v in values))

    assert sums.tolist() == pytest.approx([logp(0, 2) + logp(0, 3), logp(1, 1) + logp(1, 2)], rel=1e-5)
    assert counts.tolist() == [2, 2]
    assert reduce_logps(sums, counts, "mean").tolist() == pytest.approx((sums / 2).tolist())
    with pytest.raises(ConfigError, match="logp_reduction"):
        reduce_logps(sums, counts, "max")


# ----------------------------------------------------------------------------------------------
# Tasks on a tiny byte-level model


def write_records(path: Path, n: int = 24) -> Path:
    records = [{"instruction": f"Say something about item {i}.", "input": "" if i % 2 else f"item {i}",
                "chosen": f"Item {i} is fine, thank you.", "rejected": f"Item {i}? Go away."} for i in range(n)]
    path.write_text(json.dumps(records))
    return path


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small 'instruction-tuned' model: random weights saved as a gptlab export."""
    torch.manual_seed(1)
    return save_model(GPT(GPTConfig.from_dict(MODEL)), tmp_path_factory.mktemp("source") / "model")


def datamodule(tmp_path: Path) -> PreferenceDataModule:
    return PreferenceDataModule(path=str(write_records(tmp_path / "pairs.json")), tokenizer="byte", max_length=96,
                                batch_size=4, train_ratio=0.5, test_ratio=0.2, cache_dir=str(tmp_path / "cache"),
                                shuffle=False)


def make_task(mode: str, init: Path | None, **kwargs) -> PreferenceTask:
    return PreferenceTask(MODEL, init=str(init) if init else None, reference=mode, beta=0.1,
                          optimizer={"lr": 1e-2, "weight_decay": 0.0},
                          scheduler={"name": "constant", "warmup_steps": 0},
                          **{**MODES[mode], **kwargs})


def fit(task: PreferenceTask, data: PreferenceDataModule, steps: int, ckpt_path: str | None = None,
        root: Path | None = None) -> L.Trainer:
    trainer = L.Trainer(accelerator="cpu", max_steps=steps, limit_val_batches=0, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        num_sanity_val_steps=0, default_root_dir=root)
    trainer.fit(task, datamodule=data, ckpt_path=ckpt_path)
    return trainer


def alive_gpts() -> int:
    gc.collect()
    return sum(type(obj) is GPT for obj in gc.get_objects())


@pytest.mark.parametrize("mode", list(MODES))
def test_first_step_loss_is_log_2_and_only_lora_and_precomputed_hold_one_network(mode, source, tmp_path):
    before = alive_gpts()
    task = make_task(mode, source)
    trainer = fit(task, datamodule(tmp_path), steps=1)
    metrics = trainer.callback_metrics
    assert metrics["train/loss"].item() == pytest.approx(LOG2, abs=1e-5)
    assert metrics["train/rewards/margins"].item() == pytest.approx(0.0, abs=1e-5)
    assert metrics["train/rewards/chosen"].item() == pytest.approx(0.0, abs=1e-5)
    # A second network exists only as the frozen copy; with LoRA or precomputed there is one GPT.
    assert alive_gpts() - before == (2 if mode == "copy" else 1)
    # The task's parameters are the policy's alone, whatever the reference.
    assert sum(p.numel() for p in task.parameters()) == sum(p.numel() for p in task.gpt.parameters())


def test_reference_modes_check_their_settings(source):
    with pytest.raises(ConfigError, match="trainable_layers=lora"):
        PreferenceTask(MODEL, init=str(source), reference="lora")
    with pytest.raises(ConfigError, match="task.init"):
        PreferenceTask(MODEL, reference="copy")
    with pytest.raises(ConfigError, match="reference='ema'"):
        PreferenceTask(MODEL, init=str(source), reference="ema")


def test_checkpoint_holds_no_reference_weights(source, tmp_path):
    task = make_task("copy", source)
    trainer = fit(task, datamodule(tmp_path), steps=2)
    assert task.frozen is not None and task.frozen.built
    trainer.save_checkpoint(tmp_path / "dpo.ckpt")
    state = torch.load(tmp_path / "dpo.ckpt", map_location="cpu", weights_only=True)["state_dict"]
    policy = {f"model.{k}" for k in task.gpt.state_dict()}
    assert set(state) - policy == {"tokens_seen"}
    reference = task.frozen.get()
    assert sum(v.numel() for k, v in state.items() if k != "tokens_seen") == sum(
        v.numel() for v in task.gpt.state_dict().values())
    assert not any(p.requires_grad for p in reference.parameters()) and not reference.training
    assert not any(p is q for p in reference.parameters() for q in task.parameters())


def reference_of(task: PreferenceTask, data: PreferenceDataModule) -> tuple[torch.Tensor, torch.Tensor]:
    data.setup()
    batch = next(iter(data.loader("val")))
    with torch.no_grad():
        return task.reference_logps(batch)


def policy_logps(task: PreferenceTask, data: PreferenceDataModule) -> torch.Tensor:
    batch = next(iter(data.loader("val")))
    with torch.no_grad():
        return pair_logps(task.model, batch)[0]


@pytest.mark.parametrize("mode", list(MODES))
def test_resumed_run_keeps_the_original_reference(mode, tmp_path):
    torch.manual_seed(2)
    source = save_model(GPT(GPTConfig.from_dict(MODEL)), tmp_path / "source")
    data = datamodule(tmp_path)
    task = make_task(mode, source)
    trainer = fit(task, data, steps=3, root=tmp_path)
    before = reference_of(task, data)
    trainer.save_checkpoint(tmp_path / "last.ckpt")

    # The source's own training went on meanwhile: its weights are no longer the reference.
    torch.manual_seed(3)
    save_model(GPT(GPTConfig.from_dict(MODEL)), source)
    resumed_data = datamodule(tmp_path)
    resumed = make_task(mode, source)
    if mode == "copy":  # the copy is rebuilt from the source, which must refuse the changed weights
        with pytest.raises(CheckpointError, match="no longer holds the weights"):
            fit(resumed, resumed_data, steps=4, ckpt_path=str(tmp_path / "last.ckpt"))
        return
    trainer = fit(resumed, resumed_data, steps=4, ckpt_path=str(tmp_path / "last.ckpt"))
    assert trainer.global_step == 4
    after = reference_of(resumed, resumed_data)
    assert torch.equal(before[0], after[0]) and torch.equal(before[1], after[1])
    assert not torch.allclose(policy_logps(resumed, resumed_data), after[0])  # the policy did move


def test_resumed_copy_rebuilds_the_same_reference(source, tmp_path):
    data = datamodule(tmp_path)
    task = make_task("copy", source)
    trainer = fit(task, data, steps=3)
    before = reference_of(task, data)
    trainer.save_checkpoint(tmp_path / "last.ckpt")
    resumed = PreferenceTask.load_from_checkpoint(tmp_path / "last.ckpt")
    assert resumed.hparams.init is None and resumed.source == str(source) and not resumed.frozen
    (tmp_path / "again").mkdir()
    after = reference_of(resumed, datamodule(tmp_path / "again"))
    assert torch.equal(before[0], after[0]) and torch.equal(before[1], after[1])
    assert not torch.allclose(policy_logps(resumed, data), after[0])  # the policy moved: lr 1e-2


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["lora", "precomputed"])
def test_ddp_on_two_cpu_processes_runs_dpo_steps(mode, source, tmp_path):
    # find_unused_parameters stays off (Lightning's ddp default): every trainable parameter must get
    # a gradient from the policy's one forward pass, and the reference must add none.
    run_dir = tmp_path / "ddp"
    overrides = [
        "task=preference", "data=preference", f"data.path={write_records(tmp_path / 'pairs.json', 32)}",
        "data.tokenizer=byte", "data.batch_size=2", f"data.cache_dir={tmp_path / 'cache'}",
        "model=nano", "model.vocab_size=257", "model.context_length=96", f"task.init={source}",
        f"task.reference={mode}", *(["task.trainable_layers=lora"] if mode == "lora" else []),
        "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2", "trainer.max_steps=2", "trainer.max_epochs=1",
        "trainer.limit_train_batches=2", "trainer.limit_val_batches=1", "trainer.val_check_interval=2",
        "trainer.log_every_n_steps=1", "trainer.enable_model_summary=false", "callbacks.sample=null",
        "print_config=false",
    ]
    train_command(run_dir, *overrides)
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["global_step"] == 2 and ckpt["task_state"]["dpo_reference"]["mode"] == mode
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert "val/rewards/accuracies" in metrics and "train/rewards/margins" in metrics
    assert (run_dir / "model" / "model.safetensors").is_file()  # exported with adapters merged


def test_dpo_experiment_is_the_books_setting():
    from omegaconf import OmegaConf

    cfg = compose_train("experiment=dpo", "task.init=runs/instruct")
    cfg.output_dir = "/tmp/run"
    resolved = OmegaConf.to_container(cfg, resolve=True)
    task, data = resolved["task"], resolved["data"]
    assert task["_target_"] == "gptlab.tasks.PreferenceTask" and task["init"] == "runs/instruct"
    assert (task["beta"], task["optimizer"]["lr"], task["optimizer"]["weight_decay"]) == (0.1, 5e-6, 0.01)
    assert data["batch_size"] == 8 and resolved["trainer"]["max_epochs"] == 1
    assert data["_target_"] == "gptlab.data.PreferenceDataModule" and data["prompt_style"] == "alpaca"
