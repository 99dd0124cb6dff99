"""What every task shares: one GPT, the trainable-layers / LoRA policy, the optimizer and schedule,
tokens seen, checkpoint hooks and export.

A task subclasses ``GPTTask`` and writes ``training_step`` / ``validation_step``. If its network
differs from a language model, it overrides ``adapt_model`` (e.g. swap the head) and lists the new
modules in ``new_modules``; state beyond the weights goes through ``task_state`` /
``load_task_state``; extra export files through ``write_export``. Everything comes in as plain
values, so ``Task.load_from_checkpoint(path)`` (or ``Task.from_task_checkpoint``) rebuilds it
outside Hydra.

Frozen auxiliary models (a preference task's reference model, say) are not trained, not in the
optimizer and not saved in checkpoints: they are rebuilt from ``hparams["initialized_from"]``,
the record of where the weights first came from, which checkpoints keep.
"""

from __future__ import annotations

import copy
from dataclasses import asdict
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_info

from gptlab.checkpoints import TaskCheckpoint, load_pretrained, read_task_checkpoint, save_model
from gptlab.checkpoints.state import config_from_dict
from gptlab.errors import CheckpointError
from gptlab.fileio import atomic_directory
from gptlab.model import GPT, GPTConfig
from gptlab.model.config import ARCHITECTURE_FIELDS
from gptlab.model.lora import count_parameters, merge_lora
from gptlab.tasks.optim import OptimizerConfig, SchedulerConfig, build_adamw, lr_lambda
from gptlab.tasks.trainable import LoRAConfig, check_trainable_layers, set_trainable

#: Config fields that fix tensor shapes: a checkpoint must agree with the run on all of them.
_SHAPE_KEYS = ("context_length", *ARCHITECTURE_FIELDS, "qkv_bias", "out_bias", "mlp_bias", "tie_embeddings")
#: Longest sequence the model summary runs through the model (GPT-2's whole context).
SUMMARY_TOKENS = 1024
#: Hooks whose base part must always run; subclasses extend task_state / load_task_state instead.
_SEALED = ("on_save_checkpoint", "on_load_checkpoint")


class GPTTask(L.LightningModule):
    """Base LightningModule around one ``GPT``.

    ``generates_text`` tells callbacks such as ``GenerateSample`` whether the model's head still
    predicts tokens (a classifier's does not).

    Args:
        model: a model config dict (``preset`` plus overrides, or every ``GPTConfig`` field).
        optimizer: ``OptimizerConfig`` fields.
        scheduler: ``SchedulerConfig`` fields.
        init: where the initial weights come from: ``None`` for random, else anything
            ``gptlab.checkpoints.load_pretrained`` accepts (a model name, a directory, a checkpoint).
            Checkpoints store ``None`` here: their weights are the trained ones.
        compile: wrap the model in ``torch.compile``.
        initialized_from: where the weights first came from (``init`` when given); kept in every
            checkpoint, nothing loads the trained model from it.
        trainable_layers: ``all``, ``last_layer``, ``last_block``, ``last_two_blocks`` or ``lora``
            (see ``gptlab.tasks.trainable.set_trainable``).
        lora: ``LoRAConfig`` fields (``rank``, ``alpha``, ``dropout``, ``targets``).
        activation_checkpointing: recompute each transformer block's activations in the backward
            pass instead of storing them (``GPT.activation_checkpointing``): less memory, about a
            third more compute per step.
    """

    generates_text: bool = True
    #: Submodules that ``adapt_model`` creates: trained under every ``trainable_layers`` option.
    new_modules: tuple[str, ...] = ()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        for name in _SEALED:
            if name in vars(cls):
                raise TypeError(f"{cls.__name__} must not override {name}; extend task_state / load_task_state")

    def __init__(self, model: dict[str, Any], optimizer: dict[str, Any] | None = None,
                 scheduler: dict[str, Any] | None = None, init: str | None = None,
                 compile: bool = False, initialized_from: str | None = None,
                 trainable_layers: str = "all", lora: dict[str, Any] | None = None,
                 activation_checkpointing: bool = False) -> None:
        super().__init__()
        check_trainable_layers(trainable_layers)  # before any weights are loaded
        self.optimizer_config = OptimizerConfig(**(optimizer or {}))
        self.scheduler_config = SchedulerConfig(**(scheduler or {}))
        self.lora_config = LoRAConfig(**(lora or {}))
        gpt = self.build_model(GPTConfig.from_dict(model), init)
        # The architecture actually built: pretrained weights decide qkv_bias and tying, whatever
        # the preset said. Recording it (not the preset name) makes a checkpoint describe its
        # model completely, so load_from_checkpoint rebuilds it outside Hydra.
        self.model_config = gpt.cfg
        self.model = self.adapt_model(gpt)
        self.model.activation_checkpointing = bool(activation_checkpointing)
        self.trainable_layers = trainable_layers
        self.lora_layers = set_trainable(self.model, trainable_layers, self.lora_config, self.new_modules)
        self.save_hyperparameters({
            "model": self.model_config.to_dict(), "optimizer": asdict(self.optimizer_config),
            "scheduler": asdict(self.scheduler_config), "init": init, "compile": compile,
            "initialized_from": init or initialized_from, "trainable_layers": trainable_layers,
            "lora": asdict(self.lora_config), "activation_checkpointing": bool(activation_checkpointing),
        })
        self.compile_model = compile
        # One sequence for Lightning's model summary, which reports FLOPs per sequence of this length.
        # Capped: a forward over a long-context model's whole window (131,072 tokens for Llama 3.2)
        # would hold more logits than the device has memory.
        summary_tokens = min(self.model_config.context_length, SUMMARY_TOKENS)
        self.example_input_array = torch.zeros((1, summary_tokens), dtype=torch.long)
        self.register_buffer("tokens_seen", torch.zeros((), dtype=torch.long), persistent=True)

    def record_hparams(self, **values: Any) -> None:
        """Add a subclass's own constructor arguments to the checkpointed hyperparameters."""
        self.save_hyperparameters({**self.hparams, **values})

    # ------------------------------------------------------------------------------------------
    # The model

    def build_model(self, config: GPTConfig, init: str | None) -> GPT:
        """The GPT before adaptation: random, or loaded from ``init``."""
        return GPT(config) if init is None else load_pretrained(init, config)

    def adapt_model(self, model: GPT) -> GPT:
        """Change the loaded GPT for this task (e.g. a new head); runs before ``trainable_layers``."""
        return model

    def configure_model(self) -> None:
        if self.compile_model and not isinstance(self.model, torch._dynamo.eval_frame.OptimizedModule):
            self.model = torch.compile(self.model)

    def forward(self, idx: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        return self.model(idx, **kwargs)

    @property
    def gpt(self) -> GPT:
        """The underlying ``GPT`` (unwrapped from ``torch.compile``), for generation and export."""
        return getattr(self.model, "_orig_mod", self.model)

    # ------------------------------------------------------------------------------------------
    # Training

    def configure_optimizers(self) -> dict[str, Any]:
        # Lightning refuses gradient clipping under mixed precision with a fused optimizer (it
        # unscales internally), so mixed-precision runs that clip use the default kernel.
        trainer = self._trainer
        clips = trainer is not None and bool(trainer.gradient_clip_val) and "mixed" in str(trainer.precision)
        optimizer = build_adamw(self, self.optimizer_config, allow_fused=not clips)
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

    def describe(self) -> str:
        """One line on what this task trains, printed when fitting starts."""
        trainable, total = count_parameters(self.model)
        detail = f", LoRA on {len(self.lora_layers)} layers" if self.lora_layers else ""
        return (f"trainable_layers={self.trainable_layers}{detail}; "
                f"{trainable:,} of {total:,} parameters trainable ({100.0 * trainable / total:.2f}%)")

    def on_fit_start(self) -> None:
        rank_zero_info(f"{type(self).__name__}: {self.describe()}")

    # ------------------------------------------------------------------------------------------
    # Checkpoints (sealed: subclasses extend task_state / load_task_state)

    def task_state(self) -> dict[str, Any]:
        """Plain values beyond the weights that a checkpoint must keep (tensors, lists, dicts)."""
        return {}

    def load_task_state(self, state: dict[str, Any]) -> None:
        """Restore what ``task_state`` returned."""

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """The checkpoint holds the weights: rebuilding from it must not load ``init`` again."""
        hparams = checkpoint.get("hyper_parameters")
        if hparams and hparams.get("init") is not None:
            checkpoint["hyper_parameters"] = {**hparams, "init": None}
        checkpoint["task_state"] = self.task_state()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Refuse, with a clear message, a checkpoint whose architecture differs from this run's."""
        saved = checkpoint.get("hyper_parameters", {}).get("model")
        if saved is not None:
            theirs, ours = config_from_dict(dict(saved), "checkpoint"), self.model_config
            diff = {k: (getattr(theirs, k), getattr(ours, k)) for k in _SHAPE_KEYS
                    if getattr(theirs, k) != getattr(ours, k)}
            if diff:
                detail = ", ".join(f"{k}: checkpoint {a} vs run {b}" for k, (a, b) in diff.items())
                raise CheckpointError(
                    f"checkpoint was saved for a different architecture ({detail}); "
                    "resume with the model config it was trained with, or start a new run without ckpt_path"
                )
        self.load_task_state(checkpoint.get("task_state") or {})

    @classmethod
    def from_task_checkpoint(cls, source: str | Path | TaskCheckpoint) -> GPTTask:
        """This task with the weights and state of a checkpoint, read by ``read_task_checkpoint``."""
        ckpt = source if isinstance(source, TaskCheckpoint) else read_task_checkpoint(source)
        try:
            task = cls(**{**ckpt.hparams, "init": None})
        except TypeError as err:
            raise CheckpointError(f"{ckpt.path} is not a checkpoint of a {cls.__name__}: {err}") from None
        task.on_load_checkpoint(ckpt.raw)
        try:
            task.gpt.load_state_dict(ckpt.model_state)
        except RuntimeError as err:
            raise CheckpointError(f"{ckpt.path} does not fit a {cls.__name__}: {err}") from None
        task.tokens_seen.fill_(int(ckpt.raw["state_dict"].get("tokens_seen", 0)))
        return task

    # ------------------------------------------------------------------------------------------
    # Export

    def export(self, directory: str | Path, tokenizer: Any = None) -> Path:
        """Write the trained model to ``directory`` atomically (an older export there is replaced).

        A ``tokenizer`` with files of its own (a model directory's ``tokenizer.json``: one with a
        ``save(directory)`` method) goes beside the model, so the export needs no other directory.
        """

        def write(target: Path) -> None:
            self.write_export(target)
            if callable(save := getattr(tokenizer, "save", None)):
                save(target)

        return atomic_directory(directory, write, replaceable=_holds_export)

    def write_export(self, directory: Path) -> None:
        """The files of the export: a gptlab model (``save_model``), LoRA adapters merged.

        Subclasses extend it (calling ``super()``) to add their own files beside the model.
        """
        gpt = merge_lora(copy.deepcopy(self.gpt).cpu().float())
        save_model(gpt, directory)


def _holds_export(directory: Path) -> bool:
    return (directory / "config.json").is_file()

