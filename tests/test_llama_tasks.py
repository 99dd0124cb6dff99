"""Every task with a Llama-style model: the trainable-layers and LoRA policy, weight decay, the task
configs, and pretraining, instruction tuning (LoRA), DPO and classification end to end through
``gptlab-train``, each export reloading with the logits of its checkpoint."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from helpers.runs import Run, compose_train, train_here
from hydra.utils import instantiate

from gptlab import load_pretrained
from gptlab.checkpoints import load_model, save_model
from gptlab.model import GPT, GPTConfig
from gptlab.model.lora import DEFAULT_TARGETS
from gptlab.tasks import CausalLMTask, ClassifyTask
from gptlab.tasks.optim import parameter_groups

LLAMA = {"preset": "llama-micro", "vocab_size": 97, "context_length": 16, "n_layers": 2}
#: Every linear layer of a Llama block: attention's four and SwiGLU's three.
LLAMA_LINEARS = ("att.W_query", "att.W_key", "att.W_value", "att.out_proj", "ff.fc1", "ff.fc2", "ff.fc3")
CONF = Path(__file__).resolve().parents[1] / "gptlab" / "conf"
# Under `pytest -n N`, one worker runs this module (--dist loadgroup): each run starts from the one before.
pytestmark = pytest.mark.xdist_group(__name__)


def _trainable(task) -> set[str]:
    return {name for name, p in task.gpt.named_parameters() if p.requires_grad}


# ----------------------------------------------------------------------------------------------
# What a task trains, in-process


def test_command_line_lora_targets_are_the_library_defaults():
    assert list(compose_train().task.lora.targets) == list(DEFAULT_TARGETS)


def test_lora_adapts_every_linear_layer_of_a_llama_block_and_merges_on_export(tmp_path: Path):
    torch.manual_seed(0)  # the weights, so the comparison is the same whatever ran before
    task = CausalLMTask(LLAMA, trainable_layers="lora", lora={"rank": 2, "alpha": 4})
    assert set(task.lora_layers) == {f"trf_blocks.{b}.{name}" for b in range(2) for name in LLAMA_LINEARS}
    assert _trainable(task) == {f"{layer}.lora_{ab}" for layer in task.lora_layers for ab in "AB"}
    with torch.no_grad():  # a non-zero update, so merging has something to fold in
        for name, param in task.gpt.named_parameters():
            if name.endswith("lora_B"):
                param.normal_(0.0, 0.1)
    exported = load_model(task.export(tmp_path / "model")).eval()
    assert not any("lora" in key for key in exported.state_dict())
    idx = torch.randint(0, 97, (2, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(exported(idx), task.gpt.eval()(idx), atol=1e-4, rtol=1e-4)


def test_last_block_trains_the_final_rms_norm_and_the_block_norms():
    task = CausalLMTask({**LLAMA, "qk_norm": True}, trainable_layers="last_block")
    trainable = _trainable(task)
    assert "final_norm.scale" in trainable and "tok_emb.weight" in trainable  # the tied head
    for name in ("norm1.scale", "norm2.scale", "att.q_norm.scale", "att.k_norm.scale", "ff.fc3.weight"):
        assert f"trf_blocks.1.{name}" in trainable and f"trf_blocks.0.{name}" not in trainable


def test_norm_scales_and_biases_are_never_decayed():
    model = GPT(GPTConfig.from_dict({**LLAMA, "qk_norm": True, "qkv_bias": True, "tie_embeddings": False}))
    decay, no_decay = parameter_groups(model, weight_decay=0.1)
    names = {id(p): n for n, p in model.named_parameters()}
    undecayed = {names[id(p)].rsplit(".", 2)[-2] + "." + names[id(p)].rsplit(".", 1)[-1] for p in no_decay["params"]}
    assert undecayed == {"norm1.scale", "norm2.scale", "final_norm.scale", "q_norm.scale", "k_norm.scale",
                         "W_query.bias", "W_key.bias", "W_value.bias"}
    assert all(p.dim() == 2 for p in decay["params"]) and decay["weight_decay"] == 0.1
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))


def test_classifier_unties_a_llama_head():
    task = ClassifyTask(LLAMA, num_classes=3)
    assert task.gpt.out_head.weight.shape == (3, 128) and not task.gpt.cfg.tie_embeddings
    assert task.gpt.out_head.weight is not task.gpt.tok_emb.weight
    ids = torch.randint(0, 97, (2, 9))
    mask = torch.ones_like(ids)
    assert task.eval().classify(ids, mask).shape == (2, 3)


def test_model_summary_input_stays_short_for_long_context_models():
    task = CausalLMTask({**LLAMA, "context_length": 131072, "rope_scaling": {
        "factor": 32.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_context_length": 8192}})
    assert task.example_input_array.shape == (1, 1024)
    assert CausalLMTask(LLAMA).example_input_array.shape == (1, 16)


@pytest.fixture(scope="module")
def llama_init(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(save_model(GPT(GPTConfig.from_dict(LLAMA)), tmp_path_factory.mktemp("llama") / "model"))


@pytest.mark.parametrize("choice", [f"task={p.stem}" for p in sorted((CONF / "task").glob("*.yaml"))]
                         + [f"experiment={p.stem}" for p in sorted((CONF / "experiment").glob("*.yaml"))])
def test_every_task_config_builds_with_a_llama_preset(choice: str, llama_init: str):
    cfg = compose_train(choice, "model=llama-micro", "model.vocab_size=97", "model.context_length=16",
                   "model.n_layers=2", f"task.init={llama_init}", "model.qkv_bias=false")
    task = instantiate(cfg.task, _recursive_=False)
    built = task.hparams["model"]
    assert (built["norm"], built["mlp"], built["pos_emb"], built["n_kv_heads"]) == ("rmsnorm", "swiglu", "rope", 2)
    idx = torch.randint(0, 97, (2, 16))
    with torch.no_grad():
        assert torch.isfinite(task.eval()(idx)).all()


# ----------------------------------------------------------------------------------------------
# End to end through gptlab-train's train(), each run started from the one before

SHRINK = ["model=llama-micro", "model.n_layers=2", "model.context_length=64", "print_config=false"]


def train(run_dir: Path, *overrides: str) -> Run:
    return train_here(run_dir, *SHRINK, *overrides)


def final_metrics(run_dir: Path, *keys: str) -> dict[str, float]:
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert all(math.isfinite(metrics[key]) for key in keys), metrics
    return metrics


def assert_export_reloads_like_its_checkpoint(run_dir: Path) -> GPT:
    """``load_pretrained`` on the run (its ``model/`` export) against the best checkpoint it came from."""
    exported = load_pretrained(run_dir).eval()
    checkpoint = load_pretrained(next((run_dir / "checkpoints").glob("best*.ckpt"))).eval()
    assert exported.cfg.pos_emb == "rope" and exported.cfg.kv_heads == 2 and exported.cfg.norm == "rmsnorm"
    idx = torch.randint(0, 50257, (2, 40), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(exported(idx), checkpoint(idx), atol=1e-5, rtol=1e-5)
    return exported


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Run]:
    run_dir = tmp_path_factory.mktemp("llama") / "pretrain"
    result = train(run_dir, "trainer=debug", "data.batch_size=4", "trainer.enable_model_summary=true",
                   "task.activation_checkpointing=true", "callbacks.sample.max_new_tokens=8")
    return run_dir, result


@pytest.fixture(scope="module")
def instructed(pretrained, shared_data: Path) -> tuple[Path, Run]:
    run_dir = pretrained[0].parent / "instruct"
    result = train(run_dir, "experiment=instruct_scratch", f"data.path={shared_data / 'instruction-data.json'}",
                   f"task.init={pretrained[0]}", "task.trainable_layers=lora", "task.lora.rank=4",
                   "trainer.max_steps=3", "trainer.val_check_interval=3", "trainer.limit_val_batches=1",
                   "callbacks.sample.max_new_tokens=8")
    return run_dir, result


@pytest.mark.slow
def test_pretraining_a_llama_model(pretrained):
    run_dir, result = pretrained
    final_metrics(run_dir, "train/loss", "val/loss")
    assert [line for line in result.output.splitlines() if line.startswith("[step ")]  # samples decode
    assert "MFU" in result.output and "Total estimated model params size" in result.output
    config = json.loads((run_dir / "model" / "config.json").read_text())
    assert {k: config[k] for k in ("norm", "mlp", "pos_emb", "n_kv_heads")} == {
        "norm": "rmsnorm", "mlp": "swiglu", "pos_emb": "rope", "n_kv_heads": 2}
    assert_export_reloads_like_its_checkpoint(run_dir)


@pytest.mark.slow
def test_instruction_tuning_a_llama_model_with_lora(instructed):
    run_dir, result = instructed
    final_metrics(run_dir, "train/loss", "val/loss")
    assert f"LoRA on {2 * len(LLAMA_LINEARS)} layers" in result.output
    model = assert_export_reloads_like_its_checkpoint(run_dir)
    assert not any("lora" in key for key in model.state_dict())
    assert (run_dir / "model" / "prompt.json").is_file()


@pytest.mark.slow
def test_preference_tuning_a_llama_model_with_dpo(instructed, shared_data: Path):
    run_dir = instructed[0].parent / "dpo"
    result = train(run_dir, "experiment=dpo_scratch", f"task.init={instructed[0]}",
                   f"data.path={shared_data / 'instruction-data-with-preference.json'}",
                   f"data.cache_dir={run_dir.parent}", "trainer.max_steps=2", "trainer.limit_train_batches=2",
                   "trainer.limit_val_batches=1", "trainer.val_check_interval=2")
    metrics = final_metrics(run_dir, "train/loss", "val/loss", "val/rewards/margins")
    assert metrics["val/loss"] < 1.0  # near log 2 after two steps from the reference
    assert f"final val/loss {metrics['val/loss']:.3f} at step 2" in result.output  # no 'perplexity' of a DPO loss
    assert_export_reloads_like_its_checkpoint(run_dir)


@pytest.mark.slow
def test_classifying_with_a_llama_model(pretrained, shared_data: Path):
    from gptlab.tasks.classifier_runtime import load_classifier

    run_dir = pretrained[0].parent / "spam"
    train(run_dir, "experiment=spam_scratch", f"data.path={shared_data / 'SMSSpamCollection'}",
          f"task.init={pretrained[0]}", "task.trainable_layers=last_block", "trainer.max_steps=3",
          "trainer.max_epochs=1", "trainer.limit_train_batches=3", "trainer.limit_val_batches=2", "test=false")
    final_metrics(run_dir, "train/loss", "val/loss", "val/acc")
    texts = ["Free entry! Text WIN to 80086 now", "See you at lunch"]
    exported = load_classifier(run_dir).predict_proba(texts)
    checkpoint = load_classifier(next((run_dir / "checkpoints").glob("best*.ckpt"))).predict_proba(texts)
    torch.testing.assert_close(exported, checkpoint, atol=1e-6, rtol=1e-5)
    config = json.loads((run_dir / "model" / "config.json").read_text())
    assert config["pos_emb"] == "rope" and config["tie_embeddings"] is False
