"""LoRA (book appendix E): identity at start, merging, adapter-only state dicts, target selection."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from gptlab.errors import ConfigError
from gptlab.model import GPT, GPTConfig
from gptlab.model.lora import (
    LoRALinear,
    apply_lora,
    count_parameters,
    has_lora,
    load_lora_state_dict,
    lora_state_dict,
    merge_lora,
)
from gptlab.tasks.classify import ClassifyTask

NANO = {"preset": "nano", "vocab_size": 97, "context_length": 16}


def _gpt(seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    return GPT(GPTConfig.from_dict(NANO)).eval()


def _randomise_adapters(model: nn.Module, seed: int = 1) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, LoRALinear):
                module.lora_B.copy_(torch.randn(module.lora_B.shape, generator=gen) * 0.05)


@pytest.mark.parametrize(("scaling", "scale"), [("alpha_over_rank", 2.0 / 3), ("alpha", 2.0)])
def test_lora_linear_scales_the_update_by_alpha_over_rank_or_the_printed_books_alpha(scaling, scale):
    torch.manual_seed(0)
    base = nn.Linear(8, 5)
    layer = LoRALinear(base, rank=3, alpha=2.0, scaling=scaling)
    x = torch.randn(4, 8)
    assert torch.equal(layer(x), base(x))  # B starts at zero
    assert not base.weight.requires_grad and layer.lora_A.requires_grad and layer.lora_B.requires_grad
    with torch.no_grad():
        layer.lora_B.normal_()
    expected = base(x) + scale * (x @ layer.lora_A @ layer.lora_B)
    assert torch.allclose(layer(x), expected, atol=1e-6)
    assert torch.allclose(layer.merged()(x), expected, atol=1e-5)


def test_lora_scaling_defaults_to_the_fields_convention_and_rejects_unknown_names():
    assert LoRALinear(nn.Linear(4, 4), rank=8, alpha=16).scale == 2.0
    with pytest.raises(ConfigError, match="alpha_over_rank"):
        apply_lora(_gpt(), rank=2, alpha=1, scaling="alpha/rank")


def test_apply_lora_leaves_outputs_unchanged_and_freezes_the_base():
    model = _gpt()
    idx = torch.randint(0, 97, (2, 12))
    before = model(idx)
    wrapped = apply_lora(model, rank=4, alpha=4)
    assert len(wrapped) == 2 * 6  # six linear layers in each of nano's two blocks
    assert all(not name.startswith("out_head") for name in wrapped)
    assert torch.equal(model(idx), before)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(n.endswith((".lora_A", ".lora_B")) for n in trainable)
    n_trainable, n_total = count_parameters(model)
    emb = 64
    per_block = 4 * (emb * 4 + 4 * emb) + 2 * (emb * 4 + 4 * 4 * emb)  # A: in x r, B: r x out
    assert n_trainable == 2 * per_block < n_total


def test_merge_gives_the_same_logits_as_the_adapters():
    model = _gpt()
    apply_lora(model, rank=4, alpha=8, dropout=0.1, targets=["W_query", "W_value", "ff.layers.*"])
    _randomise_adapters(model)
    model.eval()  # adapter dropout off
    idx = torch.randint(0, 97, (3, 16))
    with_adapters = model(idx)
    assert not torch.allclose(with_adapters, _gpt()(idx), atol=1e-4)  # the adapters do something
    merge_lora(model)
    assert not has_lora(model)
    assert torch.allclose(model(idx), with_adapters, atol=1e-5)
    # The merged model has the original architecture: it loads into a fresh GPT.
    fresh = _gpt(seed=5)
    fresh.load_state_dict(model.state_dict())
    assert torch.allclose(fresh(idx), with_adapters, atol=1e-5)


def test_target_patterns_select_by_suffix_and_glob():
    model = _gpt()
    names = apply_lora(model, rank=2, alpha=1, targets=["trf_blocks.1.*"], exclude=["*.ff.*"])
    assert sorted(names) == sorted(f"trf_blocks.1.att.{n}" for n in ("W_query", "W_key", "W_value", "out_proj"))
    with pytest.raises(ConfigError, match="match no linear layer"):
        apply_lora(_gpt(), rank=2, alpha=1, targets=["W_qery"])
    with pytest.raises(ConfigError, match="rank"):
        LoRALinear(nn.Linear(2, 2), rank=0, alpha=1)


def test_adapter_state_dict_holds_only_adapters_and_head():
    task = ClassifyTask(NANO, num_classes=3, trainable_layers="lora", lora={"rank": 2, "alpha": 2})
    state = lora_state_dict(task.gpt)
    assert state and all(k.endswith((".lora_A", ".lora_B")) or k.startswith("out_head.") for k in state)
    assert {"out_head.weight", "out_head.bias"} <= set(state)
    full = sum(p.numel() for p in task.gpt.state_dict().values())
    assert sum(t.numel() for t in state.values()) < 0.1 * full

    # Restoring the adapters into a model with the same base weights gives the same classifier.
    _randomise_adapters(task.gpt)
    state = lora_state_dict(task.gpt)
    other = ClassifyTask(NANO, num_classes=3, trainable_layers="lora", lora={"rank": 2, "alpha": 2})
    other.gpt.load_state_dict({k: v for k, v in task.gpt.state_dict().items() if k not in state}, strict=False)
    load_lora_state_dict(other.gpt, state)
    idx = torch.randint(0, 97, (2, 10))
    task.eval(), other.eval()
    assert torch.allclose(task.classify(idx), other.classify(idx), atol=1e-6)

    with pytest.raises(ConfigError, match="rank"):
        smaller = ClassifyTask(NANO, num_classes=3, trainable_layers="lora", lora={"rank": 1, "alpha": 2})
        load_lora_state_dict(smaller.gpt, state)
    with pytest.raises(ConfigError, match="do not exist"):
        load_lora_state_dict(_gpt(), state)
