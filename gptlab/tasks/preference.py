"""Preference tuning with DPO (the book's chapter 7 bonus), after instruction tuning.

The policy starts from an instruction-tuned model (``init``) and is trained with the DPO loss
(``gptlab.tasks.dpo_loss``) against a reference that stays the initial model, held one of three ways:

* ``copy``: a ``FrozenModel`` rebuilt from the recorded source: outside the module tree, so it
  is never trained, synced, optimized or checkpointed;
* ``lora``: the policy itself with its LoRA adapters switched off (``trainable_layers=lora``),
  so no second network exists at all;
* ``precomputed``: the reference's log-probabilities computed once before training and cached
  with the data; no reference model is held while training.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from lightning.pytorch.utilities import rank_zero_info
from torch import nn
from torchmetrics import MeanMetric

from gptlab.errors import ConfigError, DataError
from gptlab.model.lora import adapters_disabled
from gptlab.model.modes import eval_mode
from gptlab.tasks.base import GPTTask
from gptlab.tasks.dpo_loss import LOGP_REDUCTIONS, dpo_loss, pair_logps, reduce_logps
from gptlab.tasks.frozen import FrozenModel, weights_fingerprint
from gptlab.tasks.reference_cache import cache_path, compute_logps, read_cache, write_cache

REFERENCE_MODES = ("copy", "lora", "precomputed")
METRICS = ("loss", "rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies",
           "logps/chosen", "logps/rejected")
REFERENCE_KEYS = ("reference_chosen_logps", "reference_rejected_logps")

Batch = dict[str, torch.Tensor]


class PreferenceTask(GPTTask):
    """Tune a GPT on preference pairs (``gptlab.data.PreferenceDataModule``) with DPO.

    Logs, per step for ``train/`` and per epoch for ``val/`` (and ``test/``), the names TRL users
    know: ``loss``, ``rewards/chosen``, ``rewards/rejected``, ``rewards/margins``,
    ``rewards/accuracies``, ``logps/chosen``, ``logps/rejected``. A reward is
    ``beta * (policy - reference)`` log-probability of a response.

    Args:
        model, optimizer, scheduler, init, compile, initialized_from, trainable_layers, lora: see
            ``GPTTask``. ``init`` names the instruction-tuned starting model; it is also the
            reference's recorded source.
        beta: the DPO temperature: how far the policy may move from the reference (book: 0.1).
        logp_reduction: ``sum`` of a response's token log-probabilities (the paper, TRL) or their
            ``mean`` per token (the book's notebook).
        reference: ``copy``, ``lora`` or ``precomputed`` (see the module docstring); ``lora``
            needs ``trainable_layers=lora``.
    """

    def __init__(self, model: dict[str, Any], beta: float = 0.1, logp_reduction: str = "sum",
                 reference: str = "copy", **kwargs: Any) -> None:
        for setting, value, known in (("reference", reference, REFERENCE_MODES),
                                      ("logp_reduction", logp_reduction, LOGP_REDUCTIONS)):
            if value not in known:
                raise ConfigError(f"task.{setting}={value!r} is unknown; use one of {', '.join(known)}")
        if reference == "lora" and kwargs.get("trainable_layers") != "lora":
            raise ConfigError("task.reference=lora is the policy with its adapters off; "
                              "it needs task.trainable_layers=lora")
        if float(beta) <= 0:
            raise ConfigError(f"task.beta must be positive, got {beta}")
        super().__init__(model, **kwargs)
        self.source: str | None = self.hparams.get("initialized_from")
        if self.source is None:
            raise ConfigError("DPO starts from an instruction-tuned model: set task.init=<run directory, model "
                              "directory or .ckpt> (it is also the reference model)")
        self.beta, self.logp_reduction, self.reference_mode = float(beta), logp_reduction, reference
        self.record_hparams(beta=self.beta, logp_reduction=logp_reduction, reference=reference)
        # Freshly loaded, the policy is the reference (new LoRA adapters start as a no-op and are
        # left out of the fingerprint): its fingerprint identifies the reference for good
        # (checkpoints record it; a resume and the precomputed cache check against it).
        fresh = kwargs.get("init") is not None
        self.reference_fingerprint: str | None = weights_fingerprint(self.model) if fresh else None
        self._policy_is_reference = fresh
        self.frozen: FrozenModel | None = None  # a plain attribute: no parameters, no state_dict entries
        self.eval_metrics = nn.ModuleDict({
            split: nn.ModuleDict({name.replace("/", "_"): MeanMetric() for name in METRICS})
            for split in ("val", "test")
        })

    # ------------------------------------------------------------------------------------------
    # The reference

    def _weights_dtype(self) -> torch.dtype:
        return next(p for p in self.gpt.parameters() if p.is_floating_point()).dtype

    def frozen_reference(self) -> FrozenModel:
        """The ``copy`` reference (built on first use from the recorded source)."""
        if self.frozen is None or self.frozen.expected_fingerprint != self.reference_fingerprint:
            self.frozen = FrozenModel(self.source, self.model_config, self.reference_fingerprint)
        return self.frozen

    @contextmanager
    def reference_network(self) -> Iterator[nn.Module]:
        """A network computing the reference: the policy with its adapters off, or the policy itself
        before it trained, else the frozen copy; always in eval mode and without gradients."""
        with torch.no_grad():
            if self.lora_layers and self.reference_mode in ("lora", "precomputed"):
                with adapters_disabled(self.model), eval_mode(self.model):
                    yield self.model
            elif self.reference_mode == "precomputed" and self._policy_is_reference and self.global_step == 0:
                with eval_mode(self.model):
                    yield self.model
            else:
                yield self.frozen_reference().get(self.device, self._weights_dtype())

    def reference_logps(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """The reference's summed response log-probabilities of a batch, ``(chosen, rejected)``."""
        if self.reference_mode == "precomputed":
            if REFERENCE_KEYS[0] not in batch:
                raise ConfigError("task.reference=precomputed needs batches from gptlab.data.PreferenceDataModule, "
                                  "whose reference log-probabilities are attached when fitting starts")
            return batch[REFERENCE_KEYS[0]], batch[REFERENCE_KEYS[1]]
        with self.reference_network() as network:
            chosen, rejected, _, _ = pair_logps(network, batch)
        return chosen, rejected

    def attach_precomputed(self, splits: tuple[str, ...]) -> None:
        """Give each split's pairs their reference log-probabilities, from the cache or computed now
        (by each node's first process; the others wait, then read its file)."""
        datamodule = getattr(self.trainer, "datamodule", None)
        if self.reference_mode != "precomputed" or not hasattr(datamodule, "reference_cache_dir"):
            return
        if self.reference_fingerprint is None:
            raise ConfigError("task.reference=precomputed needs task.init (or a checkpoint of a run that had one)")
        for split in splits:
            dataset = datamodule.datasets.get(split)
            if dataset is None or len(dataset) == 0 or dataset.reference is not None:
                continue
            path = cache_path(datamodule.reference_cache_dir(), self.reference_fingerprint, dataset.fingerprint())
            if self.trainer.local_rank == 0 and read_cache(path, len(dataset)) is None:
                with self.reference_network() as network:
                    write_cache(path, *compute_logps(network, datamodule.loader(split), self.device), self.source)
                rank_zero_info(f"Reference log-probabilities of the {split} pairs computed once into {path}")
            self.trainer.strategy.barrier()
            cached = read_cache(path, len(dataset))
            if cached is None:
                raise DataError(f"cannot read the reference log-probabilities in {path}; "
                                "point data.cache_dir at a writable directory")
            dataset.attach_reference(*cached)
        if self.frozen is not None:
            self.frozen.release()  # a resumed run needed it to compute; training does not

    # ------------------------------------------------------------------------------------------
    # Steps

    def _step(self, batch: Batch, split: str) -> torch.Tensor:
        policy_chosen, policy_rejected, chosen_count, rejected_count = pair_logps(self.model, batch)
        reference_chosen, reference_rejected = self.reference_logps(batch)

        def reduce(sums: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
            return reduce_logps(sums, counts, self.logp_reduction)

        policy_chosen, policy_rejected = reduce(policy_chosen, chosen_count), reduce(policy_rejected, rejected_count)
        out = dpo_loss(policy_chosen, policy_rejected, reduce(reference_chosen, chosen_count),
                       reduce(reference_rejected, rejected_count), self.beta)
        values = {
            "loss": out.losses.detach(), "rewards/chosen": out.chosen_rewards,
            "rewards/rejected": out.rejected_rewards, "rewards/margins": out.margins,
            "rewards/accuracies": out.accuracies, "logps/chosen": policy_chosen.detach(),
            "logps/rejected": policy_rejected.detach(),
        }
        size = len(out.losses)
        for name, value in values.items():
            if split == "train":
                self.log(f"train/{name}", value.mean(), on_step=True, on_epoch=False, prog_bar=name == "loss",
                         batch_size=size)
            else:
                metric = self.eval_metrics[split][name.replace("/", "_")]
                metric.update(value)
                self.log(f"{split}/{name}", metric, on_step=False, on_epoch=True, batch_size=size,
                         prog_bar=name in ("loss", "rewards/accuracies"))
        return out.loss

    def training_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        prompt_tokens = int(batch["prompt_attention_mask"].sum())
        response_tokens = int(batch["chosen_response_mask"].sum() + batch["rejected_response_mask"].sum())
        self.count_tokens(2 * prompt_tokens + response_tokens)
        return self._step(batch, "train")

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        self._step(batch, "val")

    def test_step(self, batch: Batch, batch_idx: int) -> None:
        self._step(batch, "test")

    # ------------------------------------------------------------------------------------------
    # Hooks

    def describe(self) -> str:
        return (f"DPO beta={self.beta}, logp_reduction={self.logp_reduction}, reference={self.reference_mode} "
                f"(source {self.source}); {super().describe()}")

    def on_fit_start(self) -> None:
        super().on_fit_start()
        if self.reference_mode == "copy":
            # Built now, so a source that changed since the run started fails here, not mid-epoch.
            self.frozen_reference().get(self.device, self._weights_dtype())
        self.attach_precomputed(("train", "val"))

    def on_validation_start(self) -> None:
        self.attach_precomputed(("val",))

    def on_test_start(self) -> None:
        self.attach_precomputed(("test",))

    def task_state(self) -> dict[str, Any]:
        return {"dpo_reference": {"mode": self.reference_mode, "source": self.source,
                                  "fingerprint": self.reference_fingerprint}}

    def load_task_state(self, state: dict[str, Any]) -> None:
        saved = state.get("dpo_reference") or {}
        self.reference_fingerprint = saved.get("fingerprint", self.reference_fingerprint)
        self.source = saved.get("source") or self.source
        self._policy_is_reference = False  # the loaded weights are trained ones
