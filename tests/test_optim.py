"""AdamW parameter groups and the warmup + cosine schedule (book appendix D), against values
worked out by hand."""

from __future__ import annotations

import math

import pytest
import torch

from gptlab.errors import ConfigError
from gptlab.model import GPT, GPTConfig
from gptlab.tasks.optim import OptimizerConfig, SchedulerConfig, build_adamw, lr_lambda, parameter_groups

NANO = {"preset": "nano", "vocab_size": 97, "context_length": 16}


def _names(model: torch.nn.Module, params: list[torch.nn.Parameter]) -> set[str]:
    by_id = {id(p): name for name, p in model.named_parameters()}  # a tied tensor: its first name
    return {by_id[id(p)] for p in params}


def test_matrices_decay_biases_and_layernorm_do_not_and_a_tied_head_counts_once():
    model = GPT(GPTConfig.from_dict({**NANO, "tie_embeddings": True, "qkv_bias": True}))
    assert model.out_head.weight is model.tok_emb.weight
    decay, no_decay = parameter_groups(model, weight_decay=0.1)
    assert (decay["weight_decay"], no_decay["weight_decay"]) == (0.1, 0.0)
    decay_names, no_decay_names = _names(model, decay["params"]), _names(model, no_decay["params"])
    # Written out for nano's two blocks: every Linear and embedding weight decays ...
    per_block_matrices = ["att.W_query", "att.W_key", "att.W_value", "att.out_proj", "ff.layers.0", "ff.layers.2"]
    assert decay_names == {"tok_emb.weight", "pos_emb.weight"} | {
        f"trf_blocks.{b}.{m}.weight" for b in range(2) for m in per_block_matrices
    }
    # ... and no bias or LayerNorm parameter does.
    assert all(n.endswith((".bias", ".scale", ".shift")) for n in no_decay_names)
    assert {"final_norm.scale", "final_norm.shift", "trf_blocks.1.att.W_query.bias"} <= no_decay_names
    # The tied embedding/head tensor appears exactly once across both groups.
    every = decay["params"] + no_decay["params"]
    assert len(every) == len({id(p) for p in every}) == len(list(model.parameters()))
    assert sum(p.numel() for p in every) == sum(p.numel() for p in model.parameters())


def test_frozen_parameters_stay_out_of_the_optimizer():
    model = GPT(GPTConfig.from_dict(NANO))
    model.requires_grad_(False)
    model.final_norm.requires_grad_(True)
    optimizer = build_adamw(model, OptimizerConfig(lr=1e-3, weight_decay=0.1))
    assert len(optimizer.param_groups) == 1  # the empty decay group is dropped
    group = optimizer.param_groups[0]
    assert group["weight_decay"] == 0.0 and _names(model, group["params"]) == {"final_norm.scale", "final_norm.shift"}
    assert group["lr"] == 1e-3 and group["betas"] == (0.9, 0.95)


def _lrs(cfg: SchedulerConfig, total: int, peak: float = 2.0) -> list[float]:
    """The learning rate of each optimizer step, read back from a real ``LambdaLR``."""
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=peak)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg, total))
    out = []
    for _ in range(total + 1):
        out.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return out


def test_warmup_then_cosine_to_the_floor():
    lrs = _lrs(SchedulerConfig(name="cosine", warmup_steps=4, min_lr_ratio=0.1), total=20, peak=2.0)
    # Warmup: (step + 1) / 4 of the peak.
    assert lrs[:4] == pytest.approx([0.5, 1.0, 1.5, 2.0])
    # Cosine over the remaining 16 steps: 2 * (0.1 + 0.9 * (1 + cos(pi * (step - 4) / 16)) / 2).
    assert lrs[4] == pytest.approx(2.0)
    assert lrs[8] == pytest.approx(2 * (0.1 + 0.45 * (1 + math.sqrt(0.5))))  # a quarter of the way
    assert lrs[12] == pytest.approx(1.1)  # halfway: the mean of peak and floor
    assert lrs[20] == pytest.approx(0.2) and min(lrs) == pytest.approx(0.2)  # the floor, never below
    assert all(a >= b for a, b in zip(lrs[3:], lrs[4:]))  # no increase after warmup


def test_warmup_ratio_and_the_constant_schedule():
    lrs = _lrs(SchedulerConfig(name="constant", warmup_ratio=0.05), total=100, peak=1.0)
    assert lrs[:6] == pytest.approx([0.2, 0.4, 0.6, 0.8, 1.0, 1.0])  # 5% of 100 steps = 5 warmup steps
    assert set(lrs[4:]) == {1.0}
    assert _lrs(SchedulerConfig(name="constant", warmup_steps=0), total=3) == [2.0] * 4


def test_unknown_schedule_settings_are_config_errors():
    with pytest.raises(ConfigError, match=r"task.scheduler.name='linear' is unknown"):
        SchedulerConfig(name="linear")
    with pytest.raises(ConfigError, match="min_lr_ratio"):
        SchedulerConfig(min_lr_ratio=1.5)


@pytest.mark.parametrize("precision, clip, fused", [("32-true", 1.0, True), ("bf16-mixed", 1.0, None),
                                                    ("bf16-mixed", None, True)])
def test_fused_adamw_unless_mixed_precision_clips(tmp_path, precision: str, clip: float | None, fused: bool | None):
    """Lightning refuses to clip gradients under mixed precision with a fused optimizer."""
    import lightning as L
    from torch.utils.data import DataLoader

    from gptlab.tasks import CausalLMTask

    data = torch.randint(0, 97, (2, 17))
    task = CausalLMTask({"preset": "nano", "vocab_size": 97, "context_length": 16})
    trainer = L.Trainer(max_steps=1, accelerator="cpu", precision=precision, gradient_clip_val=clip, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        default_root_dir=tmp_path)
    trainer.fit(task, DataLoader(list(zip(data[:, :-1], data[:, 1:])), batch_size=2))
    assert trainer.optimizers[0].defaults["fused"] is fused
    assert trainer.global_step == 1
