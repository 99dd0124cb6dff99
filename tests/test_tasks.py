"""What every task shares (``GPTTask``): learning at all, one trainable-layers / LoRA policy,
checkpoints that rebuild without the original weights, sealed hooks, and every task config
instantiated as ``gptlab-train`` does."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import lightning as L
import pytest
import torch
from helpers.runs import compose_train
from hydra.utils import instantiate
from torch.utils.data import DataLoader

from gptlab.checkpoints import load_model, save_model
from gptlab.errors import CheckpointError, ConfigError
from gptlab.model import GPT, GPTConfig
from gptlab.tasks import CausalLMTask, ClassifyTask, GPTTask, PretrainTask
from gptlab.tasks.causal_lm import next_token_loss

NANO = {"preset": "nano", "vocab_size": 97, "context_length": 16}
CONF = Path(__file__).resolve().parents[1] / "gptlab" / "conf"
ADAPTED = ("att.W_query", "att.W_key", "att.W_value", "att.out_proj", "ff.layers.0", "ff.layers.2")


def _trainer(tmp_path: Path, steps: int) -> L.Trainer:
    return L.Trainer(max_steps=steps, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                     enable_model_summary=False, default_root_dir=tmp_path, accelerator="cpu")


def _lm_batch(seed: int = 0, rows: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    data = torch.randint(0, 97, (rows, 17), generator=torch.Generator().manual_seed(seed))
    return data[:, :-1], data[:, 1:]


def _lm_loader() -> DataLoader:
    inputs, targets = _lm_batch()
    return DataLoader(list(zip(inputs, targets)), batch_size=len(inputs))


def _trainable(task: GPTTask) -> set[str]:
    return {name for name, p in task.gpt.named_parameters() if p.requires_grad}


def test_loss_starts_at_chance_and_goes_down(tmp_path: Path):
    torch.manual_seed(0)
    task = CausalLMTask(NANO, optimizer={"lr": 1e-2, "weight_decay": 0.0},
                        scheduler={"name": "constant", "warmup_steps": 0})
    inputs, targets = _lm_batch()
    with torch.no_grad():
        before = float(next_token_loss(task.eval()(inputs), targets))
    assert before == pytest.approx(math.log(97), abs=0.15)  # small initial weights: near-uniform predictions
    task.train()
    _trainer(tmp_path, steps=10).fit(task, _lm_loader())
    with torch.no_grad():
        after = float(next_token_loss(task.eval()(inputs), targets))
    assert after < 0.5 * before  # ten steps on one batch memorise much of it
    assert int(task.tokens_seen) == 10 * inputs.numel()


def test_lora_is_one_policy_for_the_language_model_and_the_classifier(tmp_path: Path):
    lora = {"rank": 2, "alpha": 4}
    lm = CausalLMTask(NANO, trainable_layers="lora", lora=lora)
    adapters = {f"trf_blocks.{b}.{layer}.lora_{ab}" for b in range(2) for layer in ADAPTED for ab in "AB"}
    assert _trainable(lm) == adapters  # the (tied) head and embeddings stay frozen
    classifier = ClassifyTask(NANO, trainable_layers="lora", lora=lora)
    assert _trainable(classifier) == adapters | {"out_head.weight", "out_head.bias"}  # plus the new head
    assert lm.lora_layers == classifier.lora_layers and lm.hparams["lora"] == classifier.hparams["lora"]

    frozen = {k: v.clone() for k, v in lm.gpt.state_dict().items() if "lora_" not in k}
    trainer = _trainer(tmp_path, steps=3)
    trainer.fit(lm, _lm_loader())
    optimized = {id(p) for group in trainer.optimizers[0].param_groups for p in group["params"]}
    assert optimized == {id(p) for name, p in lm.gpt.named_parameters() if name in adapters}
    state = lm.gpt.state_dict()
    assert all(torch.equal(state[k], v) for k, v in frozen.items())
    assert any(state[k].abs().sum() > 0 for k in adapters if k.endswith("lora_B"))  # B started at zero

    # The export merges the adapters into plain weights of the original architecture.
    exported = load_model(lm.export(tmp_path / "lm"))
    assert not any("lora" in k for k in exported.state_dict())
    inputs, _ = _lm_batch(seed=1)
    with torch.no_grad():
        assert torch.allclose(exported.eval()(inputs), lm.gpt.eval()(inputs), atol=1e-5)


def test_checkpoint_of_a_lora_run_loads_as_a_plain_model(tmp_path: Path):
    """``init=<a LoRA run's .ckpt>`` (how DPO starts from an instruction-tuned LoRA run) merges the adapters."""
    from gptlab.checkpoints import load_pretrained

    torch.manual_seed(0)
    lm = CausalLMTask(NANO, trainable_layers="lora", lora={"rank": 2, "alpha": 4},
                      optimizer={"lr": 1e-2, "weight_decay": 0.0})
    trainer = L.Trainer(max_steps=3, logger=False, enable_progress_bar=False, enable_model_summary=False,
                        default_root_dir=tmp_path, accelerator="cpu", enable_checkpointing=False)
    trainer.fit(lm, _lm_loader())
    trainer.save_checkpoint(tmp_path / "lora.ckpt")
    loaded = load_pretrained(tmp_path / "lora.ckpt")
    assert not any("lora" in k or ".base." in k for k in loaded.state_dict())
    inputs, _ = _lm_batch(seed=2)
    with torch.no_grad():
        assert torch.allclose(loaded.eval()(inputs), lm.gpt.eval()(inputs), atol=1e-5)


def test_trainable_layer_options_apply_to_the_language_model():
    assert all(p.requires_grad for p in CausalLMTask(NANO).gpt.parameters())  # default: all
    task = CausalLMTask(NANO, trainable_layers="last_block")
    last = _trainable(task)
    assert {n.split(".")[1] for n in last if n.startswith("trf_blocks.")} == {"1"}
    assert "final_norm.scale" in last and "trf_blocks.0.att.W_query.weight" not in last
    assert task.gpt.out_head.weight.requires_grad  # nano ties it to the embedding, so that trains too
    with pytest.raises(ConfigError, match="trainable_layers='most'"):
        CausalLMTask(NANO, trainable_layers="most")


def test_classifier_started_from_pretrained_weights_reloads_without_them(tmp_path: Path):
    torch.manual_seed(0)
    source = tmp_path / "base"
    save_model(GPT(GPTConfig.from_dict(NANO)), source)
    task = ClassifyTask(NANO, init=str(source), num_classes=3, token_position="flexible",
                        optimizer={"lr": 1e-3})
    task.inference = {"tokenizer": "byte", "max_length": 16, "pad_length": 12, "pad_token_id": 0,
                      "label_names": ["a", "b", "c"]}
    ids = torch.randint(1, 97, (4, 12), generator=torch.Generator().manual_seed(2))
    mask = (torch.arange(12) < torch.tensor([[12], [7], [3], [9]])).long()
    batches = [{"input_ids": i, "attention_mask": m, "labels": torch.tensor(k % 3)} for k, (i, m) in
               enumerate(zip(ids, mask))]
    trainer = _trainer(tmp_path, steps=2)
    trainer.fit(task, DataLoader(batches, batch_size=4))
    trainer.save_checkpoint(tmp_path / "step2.ckpt")
    shutil.rmtree(source)  # rebuilding must not read the source again

    reloaded = ClassifyTask.load_from_checkpoint(tmp_path / "step2.ckpt")
    assert reloaded.hparams["init"] is None and reloaded.hparams["initialized_from"] == str(source)
    assert reloaded.inference == task.inference  # task state travels with the checkpoint
    same = ClassifyTask.from_task_checkpoint(tmp_path / "step2.ckpt")
    with torch.no_grad():
        expected = task.eval().classify(ids, mask)
        assert torch.equal(reloaded.eval().classify(ids, mask), expected)
        assert torch.equal(same.eval().classify(ids, mask), expected)
    assert int(same.tokens_seen) == int(task.tokens_seen) == 2 * int(mask.sum())


def test_checkpoint_of_another_architecture_is_refused():
    saved = {"hyper_parameters": dict(CausalLMTask(NANO).hparams)}
    with pytest.raises(CheckpointError, match="emb_dim: checkpoint 64 vs run 32"):
        CausalLMTask({**NANO, "emb_dim": 32}).on_load_checkpoint(saved)


def test_subclasses_extend_checkpoints_without_replacing_the_base_hooks():
    with pytest.raises(TypeError, match="task_state"):
        class Careless(GPTTask):  # noqa: F841 - defining it is the test
            def on_save_checkpoint(self, checkpoint):
                checkpoint["mine"] = 1
    assert PretrainTask is CausalLMTask


# ----------------------------------------------------------------------------------------------
# Every task config and experiment, instantiated as gptlab-train does


def _options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


@pytest.fixture(scope="module")
def nano_init(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A saved nano GPT for every task to start from (DPO needs one: its reference is ``init``)."""
    return str(save_model(GPT(GPTConfig.from_dict(NANO)), tmp_path_factory.mktemp("nano") / "model"))


def _instantiate_task(overrides: list[str], init: str | None = None) -> GPTTask:
    tiny = ["model=nano", "model.vocab_size=97", "model.context_length=16", f"task.init={init or 'null'}"]
    cfg = compose_train(*overrides, *tiny)
    return instantiate(cfg.task, _recursive_=False), cfg


@pytest.mark.parametrize("choice", [f"task={o}" for o in _options("task")]
                         + [f"experiment={o}" for o in _options("experiment")])
def test_every_task_config_builds_its_task(choice: str, tmp_path: Path, nano_init: str):
    task, cfg = _instantiate_task([choice], nano_init)
    assert f"{type(task).__module__.rsplit('.', 1)[0]}.{type(task).__name__}" == cfg.task._target_
    for key in ("trainable_layers", "init"):
        assert task.hparams[key] == cfg.task[key]
    assert task.hparams["optimizer"]["lr"] == cfg.task.optimizer.lr
    assert task.hparams["model"]["context_length"] == 16
    # Plain values only: a checkpoint's hparams load back with weights_only=True.
    torch.save(dict(task.hparams), tmp_path / "hparams.pt")
    assert torch.load(tmp_path / "hparams.pt", weights_only=True) == dict(task.hparams)


@pytest.mark.parametrize("task_name", _options("task"))
def test_lora_from_the_command_line_on_every_task(task_name: str, nano_init: str):
    task, _ = _instantiate_task([f"task={task_name}", "task.trainable_layers=lora", "task.lora.rank=2"], nano_init)
    trainable = _trainable(task)
    assert trainable and all(n.endswith((".lora_A", ".lora_B")) or n.startswith(task.new_modules) for n in trainable)
    assert len(task.lora_layers) == 2 * len(ADAPTED)
