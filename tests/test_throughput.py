"""FLOPs per token against PyTorch's own FLOP counter; MFU of a real short fit."""

from __future__ import annotations

import functools
import json

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset
from torch.utils.flop_counter import FlopCounterMode

from gptlab.callbacks import throughput
from gptlab.callbacks.throughput import Throughput, compute_dtype, peak_flops, sequence_length
from gptlab.model import GPT, GPTConfig
from gptlab.model.flops import flops_per_token
from gptlab.tasks import CausalLMTask

TINY = dict(vocab_size=300, context_length=32, emb_dim=32, n_heads=4, n_layers=2, drop_rate=0.0)


@pytest.mark.parametrize("tie", [False, True])
def test_flops_per_token_equals_torch_flop_counter(tie: bool) -> None:
    # The explicit attention path runs every product as a matmul, so PyTorch's counter sees them all.
    model = GPT(GPTConfig(**TINY, attention="manual", qkv_bias=True, tie_embeddings=tie))
    idx = torch.randint(0, 300, (3, 32))
    with FlopCounterMode(display=False) as counter:
        model(idx).sum().backward()
    assert counter.get_total_flops() == idx.numel() * flops_per_token(model, 32)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(idx)
    assert counter.get_total_flops() == idx.numel() * flops_per_token(model, 32, training=False)


@pytest.mark.parametrize("trainable", ["last_block", "last_layer", "last_layer_tied"])
def test_flops_of_partly_frozen_training_equal_what_autograd_runs(trainable: str) -> None:
    # The book's frozen-layer options: autograd skips the backward of layers before the first
    # trained one and the weight gradients of frozen weights; the count must follow it.
    model = GPT(GPTConfig(**TINY, attention="manual", tie_embeddings=trainable.endswith("tied")))
    model.requires_grad_(False)
    if trainable == "last_block":
        for module in (model.trf_blocks[-1], model.final_norm, model.out_head):
            module.requires_grad_(True)
    else:
        model.out_head.requires_grad_(True)
    idx = torch.randint(0, 300, (3, 32))
    with FlopCounterMode(display=False) as counter:
        model(idx).sum().backward()
    assert counter.get_total_flops() == idx.numel() * flops_per_token(model, 32)
    assert flops_per_token(model, 32) < flops_per_token(GPT(GPTConfig(**TINY, attention="manual")), 32)


def test_flops_hand_count_gpt2_small() -> None:
    # 124M: 12 layers x 12 d^2 matmul weights + the 50257 x 768 head; attention at T = 1024.
    model = GPT(GPTConfig.from_preset("gpt2-small"))
    d, layers, vocab, t = 768, 12, 50257, 1024
    assert flops_per_token(model, t) == 6 * (layers * 12 * d * d + vocab * d) + 12 * layers * t * d


def test_compute_dtype_and_sequence_length() -> None:
    assert compute_dtype("bf16-mixed") is torch.bfloat16
    assert compute_dtype("16-mixed") is torch.float16
    assert compute_dtype("32-true") is torch.float32
    ids = torch.zeros(2, 7, dtype=torch.long)
    assert sequence_length((ids, ids), 99) == 7
    assert sequence_length({"labels": torch.zeros(2), "input_ids": ids}, 99) == 7
    assert sequence_length(object(), 99) == 99


def test_cpu_peak_keeps_the_best_measurement_of_this_machine(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    monkeypatch.setenv("GPTLAB_CACHE", str(tmp_path))
    measured = iter([5e10, 2e10, 7e10])  # the second taken while other work held the cores
    monkeypatch.setattr(throughput, "measure_cpu_flops", lambda dtype: next(measured))
    peaks = []
    for _ in range(3):  # three runs, each in a process of its own
        monkeypatch.setattr(throughput, "_measured_in_this_process",
                            functools.cache(throughput._measured_in_this_process.__wrapped__))
        peaks.append(peak_flops(torch.device("cpu"), torch.float32))
    assert peaks == [5e10, 5e10, 7e10]
    assert list(json.loads((tmp_path / "cpu_peak_flops.json").read_text()).values()) == [7e10]
    # Another run in the same process (a sweep's next job) measures nothing new.
    assert peak_flops(torch.device("cpu"), torch.float32) == 7e10


def test_measured_cpu_peak_is_plausible_and_leaves_the_runs_random_numbers_alone() -> None:
    torch.manual_seed(0)
    expected = torch.rand(4)
    torch.manual_seed(0)
    flops = throughput.measure_cpu_flops(torch.float32, size=256, seconds=0.05)
    assert 1e8 < flops < 1e14
    # A run's data order and dropout come after this measurement; they must not depend on it.
    assert torch.equal(torch.rand(4), expected)


def test_fit_logs_tokens_per_second_and_mfu_between_zero_and_one(tmp_path) -> None:
    ids = torch.randint(0, 300, (16, 33))
    loader = DataLoader(TensorDataset(ids[:, :-1], ids[:, 1:]), batch_size=4)
    task = CausalLMTask(model=TINY)
    callback = Throughput(skip_steps=1)
    trainer = L.Trainer(max_steps=6, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, callbacks=[callback],
                        default_root_dir=tmp_path, limit_val_batches=0)
    trainer.fit(task, train_dataloaders=loader)
    metrics = trainer.callback_metrics
    assert float(metrics["perf/tokens_per_sec"]) > 0
    assert 0 < float(metrics["perf/mfu"]) < 1
    assert callback.summary["tokens_per_sec"] > 0 and 0 < callback.summary["mfu"] < 1
