"""What every task shares: one GPT, the optimizer and schedule, tokens seen, checkpoint checks.

A task subclasses ``GPTTask`` and writes ``training_step`` / ``validation_step`` (and, if its
model differs, ``build_model``). Everything a task needs comes in as plain values, so
``Task.load_from_checkpoint(path)`` rebuilds it outside Hydra.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

import lightning as L
import torch
from torch import nn

from gptlab.errors import CheckpointError
from gptlab.model import GPT, GPTConfig
from gptlab.tasks.optim import OptimizerConfig, SchedulerConfig, build_adamw, lr_lambda


def _plain(value: Any) -> Any:
    """Hydra hands over DictConfig/ListConfig; checkpoints should hold plain Python values."""
    try:
        from omegaconf import DictConfig, ListConfig, OmegaConf

        if isinstance(value, (DictConfig, ListConfig)):
            return OmegaConf.to_container(value, resolve=True)
    except ImportError:  # pragma: no cover
        pass
    return value


class GPTTask(L.LightningModule):
    """Base LightningModule around one ``GPT``.

    ``generates_text`` tells callbacks such as ``GenerateSample`` whether the model's head still
    predicts tokens (a classifier's does not).

    Args:
        model: a model config dict (``preset`` plus overrides, or every ``GPTConfig`` field).
        optimizer: ``OptimizerConfig`` fields.
        scheduler: ``SchedulerConfig`` fields.
        init: where the initial weights come from: ``None`` for random, else anything
            ``gptlab.weights.load_pretrained`` accepts (a model name, a directory, a checkpoint).
        compile: wrap the model in ``torch.compile``.
        initialized_from: a record of where the weights first came from; checkpoints set it in
            place of ``init`` (their weights are the trained ones), nothing loads from it.
    """

    generates_text: bool = True

    def __init__(self, model: dict[str, Any], optimizer: dict[str, Any] | None = None,
                 scheduler: dict[str, Any] | None = None, init: str | None = None,
                 compile: bool = False, initialized_from: str | None = None) -> None:
        super().__init__()
        model, optimizer, scheduler = _plain(model), _plain(optimizer) or {}, _plain(scheduler) or {}
        self.optimizer_config = OptimizerConfig(**optimizer)
        self.scheduler_config = SchedulerConfig(**scheduler)
        self.model = self.build_model(GPTConfig.from_dict(model), init)
        # The architecture actually built: pretrained weights decide qkv_bias and tying, whatever
        # the preset said. Recording it (not the preset name) makes a checkpoint describe its
        # model completely, so load_from_checkpoint rebuilds it outside Hydra.
        self.model_config = self.gpt.cfg
        self.save_hyperparameters(
            {"model": self.model_config.to_dict(), "optimizer": asdict(self.optimizer_config),
             "scheduler": asdict(self.scheduler_config), "init": init, "compile": compile,
             "initialized_from": init or initialized_from}
        )
        self.compile_model = compile
        # One full-length sequence: Lightning's model summary then reports FLOPs per sequence.
        self.example_input_array = torch.zeros((1, self.model_config.context_length), dtype=torch.long)
        self.register_buffer("tokens_seen", torch.zeros((), dtype=torch.long), persistent=True)

    def build_model(self, config: GPTConfig, init: str | None) -> nn.Module:
        """The network this task trains; tasks that change the head override this."""
        if init is None:
            return GPT(config)
        from gptlab.weights import load_pretrained

        return load_pretrained(init, config)

    def configure_model(self) -> None:
        if self.compile_model and not isinstance(self.model, torch._dynamo.eval_frame.OptimizedModule):
            self.model = torch.compile(self.model)

    def forward(self, idx: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        return self.model(idx, **kwargs)

    @property
    def gpt(self) -> GPT:
        """The underlying ``GPT`` (unwrapped from ``torch.compile``), for generation and export."""
        return getattr(self.model, "_orig_mod", self.model)

    def configure_optimizers(self) -> dict[str, Any]:
        optimizer = build_adamw(self, self.optimizer_config)
        total = int(self.trainer.estimated_stepping_batches) if self._trainer is not None else 1
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(self.scheduler_config, total))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def count_tokens(self, num_tokens: int) -> None:
        """Add this step's tokens (summed over all ranks) and log the running total."""
        count = torch.tensor(num_tokens, device=self.device, dtype=torch.long)
        if self.trainer.world_size > 1:
            count = self.trainer.strategy.reduce(count, reduce_op="sum")
        self.tokens_seen += count.long()
        self.log("tokens_seen", self.tokens_seen.float(), on_step=True, on_epoch=False, sync_dist=False)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """The checkpoint holds the weights: rebuilding from it must not load ``init`` again."""
        hparams = checkpoint.get("hyper_parameters")
        if hparams and hparams.get("init") is not None:
            checkpoint["hyper_parameters"] = {**hparams, "init": None}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Refuse, with a clear message, a checkpoint whose architecture differs from this run's."""
        saved = checkpoint.get("hyper_parameters", {}).get("model")
        if saved is None:
            return
        ours = self.model_config.to_dict()
        shape_keys = ("vocab_size", "context_length", "emb_dim", "n_heads", "n_layers", "qkv_bias", "tie_embeddings")
        diff = {k: (saved.get(k), ours.get(k)) for k in shape_keys if saved.get(k) != ours.get(k)}
        if diff:
            detail = ", ".join(f"{k}: checkpoint {a} vs run {b}" for k, (a, b) in diff.items())
            raise CheckpointError(
                f"checkpoint was saved for a different architecture ({detail}); "
                "resume with the model config it was trained with, or start a new run without ckpt_path"
            )
