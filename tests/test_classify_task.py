"""Classification task: pooling positions, trainable layers, the causal-mask switch, export and
loading, and one short end-to-end run through ``gptlab-train`` and ``gptlab-classify``."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch
from helpers.runs import train_command
from hydra.utils import instantiate

from gptlab.errors import ConfigError
from gptlab.tasks.classifier_head import pool_logits
from gptlab.tasks.classifier_runtime import load_classifier
from gptlab.tasks.classify import ClassifyTask

ROOT = Path(__file__).resolve().parents[1]
NANO = {"preset": "nano", "vocab_size": 97, "context_length": 16}


# ----------------------------------------------------------------------------------------------
# Pooling on a hand-made batch with known padding


@pytest.fixture
def padded():
    torch.manual_seed(0)
    logits = torch.randn(3, 5, 2)
    mask = torch.tensor([[1, 1, 1, 1, 1],   # no padding
                         [1, 1, 0, 0, 0],   # 2 real tokens
                         [1, 0, 0, 0, 0]])  # 1 real token
    return logits, mask


def test_last_and_first_ignore_padding(padded):
    logits, mask = padded
    assert torch.equal(pool_logits(logits, mask, "last"), logits[:, 4])
    assert torch.equal(pool_logits(logits, mask, "first"), logits[:, 0])


def test_flexible_picks_the_last_real_token(padded):
    logits, mask = padded
    expected = torch.stack([logits[0, 4], logits[1, 1], logits[2, 0]])
    assert torch.equal(pool_logits(logits, mask, "flexible"), expected)


def test_mean_averages_only_real_tokens(padded):
    logits, mask = padded
    expected = torch.stack([logits[0].mean(0), logits[1, :2].mean(0), logits[2, 0]])
    assert torch.allclose(pool_logits(logits, mask, "mean"), expected, atol=1e-6)
    assert torch.allclose(pool_logits(logits, None, "mean"), logits.mean(1))


def test_mean_of_logits_is_the_head_of_the_mean_embedding():
    task = ClassifyTask(NANO, token_position="mean").eval()
    idx = torch.randint(0, 97, (2, 8))
    mask = torch.tensor([[1] * 8, [1] * 3 + [0] * 5])
    gpt = task.gpt
    x = gpt.tok_emb(idx) + gpt.pos_emb(torch.arange(8))
    for block in gpt.trf_blocks:
        x = block(x)
    hidden = gpt.final_norm(x)
    m = mask.unsqueeze(-1).float()
    pooled_hidden = (hidden * m).sum(1) / m.sum(1)
    assert torch.allclose(task.classify(idx, mask), gpt.out_head(pooled_hidden), atol=1e-5)


# ----------------------------------------------------------------------------------------------
# The model around the head


def _trainable(task: ClassifyTask) -> set[str]:
    return {name for name, p in task.gpt.named_parameters() if p.requires_grad}


def test_trainable_layers():
    head = {"out_head.weight", "out_head.bias"}
    assert _trainable(ClassifyTask(NANO, trainable_layers="last_layer")) == head
    last = _trainable(ClassifyTask(NANO, trainable_layers="last_block"))
    assert head < last and {"final_norm.scale", "final_norm.shift"} < last
    assert {n.split(".")[1] for n in last if n.startswith("trf_blocks.")} == {"1"}
    two = _trainable(ClassifyTask(NANO, trainable_layers="last_two_blocks"))
    assert {n.split(".")[1] for n in two if n.startswith("trf_blocks.")} == {"0", "1"}
    every = ClassifyTask(NANO, trainable_layers="all")
    assert all(p.requires_grad for p in every.gpt.parameters())
    lora = _trainable(ClassifyTask(NANO, trainable_layers="lora"))
    assert head < lora and all(n in head or n.endswith((".lora_A", ".lora_B")) for n in lora)
    task = ClassifyTask(NANO, num_classes=5)
    assert task.gpt.out_head.out_features == 5 and task.gpt.out_head.weight is not task.gpt.tok_emb.weight
    with pytest.raises(ConfigError, match="trainable_layers"):
        ClassifyTask(NANO, trainable_layers="some")
    with pytest.raises(ConfigError, match="token_position"):
        ClassifyTask(NANO, token_position="middle")
    with pytest.raises(ConfigError, match="mask_padding"):
        ClassifyTask(NANO, mask_padding=True, token_position="last")


def test_causal_mask_switch():
    idx = torch.randint(0, 97, (1, 8))
    changed = idx.clone()
    changed[0, -1] = (idx[0, -1] + 1) % 97
    causal = ClassifyTask(NANO, token_position="first").eval()
    assert torch.equal(causal.classify(idx), causal.classify(changed))  # position 0 cannot see the end
    free = ClassifyTask(NANO, token_position="first", causal_mask=False).eval()
    free.load_state_dict(causal.state_dict())
    assert not torch.allclose(free.classify(idx), free.classify(changed))
    # Without the mask the first token sees everything, so it equals full attention computed by hand.
    gpt = free.gpt
    x = gpt.tok_emb(idx) + gpt.pos_emb(torch.arange(8))
    visible = torch.ones(1, 1, 8, 8, dtype=torch.bool)
    for block in gpt.trf_blocks:
        x = block(x, visible)
    assert torch.allclose(free.classify(idx), gpt.out_head(gpt.final_norm(x))[:, 0], atol=1e-5)


def test_export_and_load_give_the_same_probabilities(tmp_path: Path):
    byte_nano = {**NANO, "vocab_size": 257}
    for layers in ("last_block", "lora"):
        task = ClassifyTask(byte_nano, num_classes=3, trainable_layers=layers, token_position="flexible").eval()
        if layers == "lora":
            for name, p in task.gpt.named_parameters():
                if name.endswith("lora_B"):
                    p.data.normal_(std=0.05)
        task.inference = {"tokenizer": "byte", "max_length": 16, "pad_length": 12, "pad_token_id": 256,
                          "label_names": ["a", "b", "c"]}
        texts = ["hello", "a somewhat longer text"]
        directory = task.export(tmp_path / layers)
        files = {"config.json", "model.safetensors", "classifier.json"}
        if layers == "lora":
            files.add("lora_adapter.safetensors")
        assert {p.name for p in directory.iterdir()} == files
        if layers == "lora":
            from safetensors.torch import load_file

            adapter = load_file(str(directory / "lora_adapter.safetensors"))
            assert all(k.endswith((".lora_A", ".lora_B")) or k.startswith("out_head.") for k in adapter)
        classifier = load_classifier(directory)
        from gptlab.data.classification import encode_texts

        batch = encode_texts(texts, classifier.tokenizer, 16, 12, 256)
        with torch.no_grad():
            expected = torch.softmax(task.classify(batch["input_ids"], batch["attention_mask"]), -1)
        assert torch.allclose(classifier.predict_proba(texts), expected, atol=1e-5)
        # A checkpoint (written through the task's own hooks) loads to the same classifier.
        checkpoint = {"state_dict": task.state_dict(), "hyper_parameters": dict(task.hparams)}
        task.on_save_checkpoint(checkpoint)
        torch.save(checkpoint, tmp_path / f"{layers}.ckpt")
        assert torch.allclose(load_classifier(tmp_path / f"{layers}.ckpt").predict_proba(texts), expected, atol=1e-5)
        assert [label for label, _ in classifier.predict(texts)] == [
            "abc"[i] for i in expected.argmax(-1).tolist()
        ]


# ----------------------------------------------------------------------------------------------
# End to end


@pytest.mark.slow
def test_train_then_classify_end_to_end(tmp_path: Path, shared_data: Path, capsys):
    run = tmp_path / "run"
    # The real command: collect_results reads the overrides Hydra records in the run's .hydra/.
    result = train_command(run, "experiment=spam", "model=nano", "task.init=null", "trainer=debug",
                           "trainer.max_epochs=1", "trainer.limit_train_batches=4", "trainer.log_every_n_steps=1",
                           f"data.path={shared_data / 'SMSSpamCollection'}", "print_config=false")
    metrics = json.loads((run / "metrics.json").read_text())
    # Accuracy and F1 of every tested split agree with its confusion matrix (torchmetrics computes
    # them separately), and the matrix counts every example of the split.
    sizes = {"train": 1045, "val": 149, "test": 300}
    for split, size in sizes.items():
        confusion = json.loads((run / f"confusion_matrix_{split}.json").read_text())
        (tn, fp), (fn, tp) = confusion["matrix"]
        assert confusion["labels"] == ["ham", "spam"] and tn + fp + fn + tp == size
        assert metrics[f"{split}/acc"] == pytest.approx((tn + tp) / size, abs=1e-6)
        assert metrics[f"{split}/f1"] == pytest.approx(2 * tp / max(1, 2 * tp + fp + fn), abs=1e-6)
        assert (run / f"confusion_matrix_{split}.png").stat().st_size > 1000
    assert (run / "model" / "classifier.json").is_file()
    assert "trainable" in result.stdout + result.stderr

    # The exported classifier, preprocessing each raw test text itself, reproduces the test metrics.
    from omegaconf import OmegaConf
    from torch.nn import functional as F

    data = instantiate(OmegaConf.load(run / "config.yaml").data, _recursive_=False)
    data.setup("test")
    texts, labels = data.datasets["test"].texts, torch.tensor(data.datasets["test"].labels)
    probs = load_classifier(run).predict_proba(texts)
    assert float(F.nll_loss(probs.log(), labels)) == pytest.approx(metrics["test/loss"], abs=1e-4)
    assert float((probs.argmax(-1) == labels).float().mean()) == pytest.approx(metrics["test/acc"], abs=1e-6)

    from gptlab.cli.classify import main

    texts = tmp_path / "texts.txt"
    texts.write_text("Free entry! Text WIN to 80086 now\nSee you at lunch\n")
    assert main([str(run), "--file", str(texts)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    expected = load_classifier(run / "model").predict_proba(["Free entry! Text WIN to 80086 now", "See you at lunch"])
    assert [line.split("\t")[:2] for line in lines] == [
        [["ham", "spam"][int(p.argmax())], f"{float(p.max()):.4f}"] for p in expected
    ]
    assert lines[1].split("\t")[2] == "See you at lunch"
    ckpt = next((run / "checkpoints").glob("best*.ckpt"))
    assert main([str(ckpt), "--text", "See you at lunch"]) == 0
    assert capsys.readouterr().out.split("\t")[:2] == lines[1].split("\t")[:2]
    assert main([str(tmp_path / "nowhere"), "--text", "x"]) == 2
    assert capsys.readouterr().err.startswith("gptlab-classify: error: ")

    spec = importlib.util.spec_from_file_location("collect_results", ROOT / "experiments" / "collect_results.py")
    collect = importlib.util.module_from_spec(spec)
    sys.modules["collect_results"] = collect  # dataclasses look their module up
    spec.loader.exec_module(collect)
    assert collect.main([str(run)]) == 0
    table = capsys.readouterr().out
    assert f"{100 * metrics['test/acc']:.2f}%" in table and "| experiment |" in table and "| spam |" in table
    job = collect.read_job(run)
    assert job.tokens_per_sec > 0 and job.epoch_minutes > 0 and f"{job.tokens_per_sec:,.0f}" in table


def test_init_loads_the_base_model_before_the_head_is_replaced(tmp_path: Path):
    from gptlab.model import GPT, GPTConfig
    from gptlab.checkpoints import save_model

    torch.manual_seed(3)
    base = GPT(GPTConfig.from_dict(NANO))
    save_model(base, tmp_path / "base")
    task = ClassifyTask(NANO, init=str(tmp_path / "base"), trainable_layers="lora")
    state = task.gpt.state_dict()
    assert torch.equal(state["tok_emb.weight"], base.tok_emb.weight)
    assert torch.equal(state["trf_blocks.1.att.W_query.base.weight"], base.trf_blocks[1].att.W_query.weight)
    assert task.gpt.out_head.out_features == 2 and not task.gpt.cfg.tie_embeddings


def test_a_language_model_checkpoint_is_not_a_classifier(tmp_path: Path):
    from gptlab.errors import CheckpointError
    from gptlab.tasks import CausalLMTask

    task = CausalLMTask(NANO)
    torch.save({"state_dict": task.state_dict(), "hyper_parameters": dict(task.hparams)}, tmp_path / "lm.ckpt")
    with pytest.raises(CheckpointError, match="not a checkpoint of a classification run"):
        load_classifier(tmp_path / "lm.ckpt")
    with pytest.raises(CheckpointError, match="holds no classifier"):
        load_classifier(tmp_path)
