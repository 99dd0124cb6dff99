"""Activation checkpointing (``GPT.activation_checkpointing``, ``task.activation_checkpointing``):
the same loss and gradients as storing activations, only in training, off unless asked for."""

from __future__ import annotations

from unittest import mock

import pytest
import torch
from helpers.runs import compose_train
from torch.utils.checkpoint import checkpoint

from gptlab.model import GPT, GPTConfig
from gptlab.model.lora import apply_lora
from gptlab.tasks import CausalLMTask

SHAPES = {
    "gpt2": {"preset": "nano", "vocab_size": 97, "context_length": 16},
    "llama": {"preset": "llama-micro", "n_layers": 2, "vocab_size": 97, "context_length": 16},
}


def _pair(shape: str, lora: bool, drop_rate: float) -> tuple[GPT, GPT]:
    """Two models with the same weights, the second recomputing its activations."""
    torch.manual_seed(0)
    cfg = GPTConfig.from_dict({**SHAPES[shape], "drop_rate": drop_rate})
    plain, recomputed = GPT(cfg), GPT(cfg, activation_checkpointing=True)
    recomputed.load_state_dict(plain.state_dict())
    if lora:
        for model in (plain, recomputed):
            torch.manual_seed(1)  # the same adapter initialisation in both
            apply_lora(model, rank=4, alpha=8)
            for name, param in model.named_parameters():
                if name.endswith("lora_B"):  # non-zero, so the adapters' gradients are not trivial
                    torch.nn.init.normal_(param, std=0.02, generator=torch.Generator().manual_seed(len(name)))
    return plain.train(), recomputed.train()


def _loss_and_grads(model: GPT, idx: torch.Tensor, dropout_seed: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    torch.manual_seed(dropout_seed)
    logits = model(idx[:, :-1])
    loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), idx[:, 1:].flatten())
    loss.backward()
    return loss.detach(), {n: p.grad for n, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("shape", sorted(SHAPES))
@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
@pytest.mark.parametrize("drop_rate", [0.0, 0.1], ids=["no-dropout", "dropout"])
def test_recomputing_gives_the_same_loss_and_gradients(shape: str, lora: bool, drop_rate: float):
    plain, recomputed = _pair(shape, lora, drop_rate)
    idx = torch.randint(0, 97, (2, 13), generator=torch.Generator().manual_seed(2))
    loss, grads = _loss_and_grads(plain, idx, dropout_seed=3)
    with mock.patch("gptlab.model.gpt.checkpoint", wraps=checkpoint) as spy:
        loss_ac, grads_ac = _loss_and_grads(recomputed, idx, dropout_seed=3)
    assert spy.call_count == len(recomputed.trf_blocks)  # one recomputed block per layer
    assert all(call.kwargs["use_reentrant"] is False for call in spy.call_args_list)
    torch.testing.assert_close(loss_ac, loss)  # dropout masks are replayed, not redrawn
    assert grads_ac.keys() == grads.keys() and (not lora or all("lora_" in n for n in grads))
    for name in grads:
        torch.testing.assert_close(grads_ac[name], grads[name], msg=name)


def test_inference_and_the_kv_cache_path_do_not_recompute():
    plain, recomputed = _pair("llama", lora=False, drop_rate=0.0)
    idx = torch.randint(0, 97, (2, 8), generator=torch.Generator().manual_seed(4))
    with mock.patch("gptlab.model.gpt.checkpoint") as spy:
        with torch.no_grad():
            recomputed(idx)  # training mode, but no graph is kept
        recomputed.eval()
        recomputed(idx)  # eval mode
        recomputed.train()
        cache = recomputed.new_kv_cache(batch_size=2)
        cached = recomputed(idx, kv_cache=cache)  # a cache means generation
    spy.assert_not_called()
    torch.testing.assert_close(cached, plain(idx))


def test_off_by_default_in_the_model_the_task_and_the_config():
    cfg = GPTConfig.from_dict(SHAPES["gpt2"])
    assert GPT(cfg).activation_checkpointing is False
    assert compose_train().task.activation_checkpointing is False
    task = CausalLMTask(model=SHAPES["gpt2"])
    assert task.gpt.activation_checkpointing is False and task.hparams["activation_checkpointing"] is False
    on = CausalLMTask(model=SHAPES["gpt2"], activation_checkpointing=True, trainable_layers="lora")
    assert on.gpt.activation_checkpointing is True and on.hparams["activation_checkpointing"] is True
    rebuilt = CausalLMTask(**on.hparams)  # what load_from_checkpoint does
    assert rebuilt.gpt.activation_checkpointing is True
