"""Classification fine-tuning (book chapter 6), LoRA included (appendix E, via ``GPTTask``).

The GPT's vocabulary head is replaced by ``Linear(emb_dim, num_classes)``; the class logits of
one token position (or the mean over the real tokens) are trained with cross-entropy. Every
design choice of the chapter's additional experiments is a constructor argument, so each row of
the book's table is one config override. The inference runtime for new texts is
``gptlab.tasks.classifier_runtime``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F
from torchmetrics import Accuracy, ConfusionMatrix, F1Score, MeanMetric

from gptlab.errors import ConfigError
from gptlab.model import GPT
from gptlab.model.lora import has_lora, lora_state_dict
from gptlab.tasks.base import GPTTask
from gptlab.tasks.classifier_export import write_classifier_files
from gptlab.tasks.classifier_head import check_token_position, pool_logits, replace_head
from gptlab.tasks.confusion import save_confusion
from gptlab.tokenizer import TextEncoding

SPLITS = ("train", "val", "test")
Batch = dict[str, torch.Tensor]


class ClassifyTask(GPTTask):
    """Fine-tune a GPT to classify texts.

    Batches are dicts with ``input_ids``, ``attention_mask`` and ``labels`` (see
    ``gptlab.data.classification``). Logs ``train/loss`` (per step), and per split
    ``<split>/loss``, ``<split>/acc``, ``<split>/f1`` (binary F1 of class 1 for two classes, macro
    F1 otherwise). ``trainer.test`` evaluates every split the data module lists in ``test_splits``
    under that split's keys, so after a run with ``test: true`` the final ``train/acc``,
    ``val/acc`` and ``test/acc`` are the eval-mode accuracies of one checkpoint, as in the book.
    Confusion matrices go to ``confusion_matrix_<split>.json`` / ``.png`` in the run directory.

    Args:
        model, optimizer, scheduler, init, compile, lora: see ``GPTTask``; ``init`` loads the base
            model (e.g. ``gpt2``) before its head is replaced.
        num_classes: size of the new head; must match the data module's.
        trainable_layers: as ``GPTTask``; the new head is trained under every option. The
            default, ``last_block`` (head, last block and final norm), is the book's choice.
        token_position: ``last``, ``first``, ``flexible`` (last real token) or ``mean``.
        causal_mask: ``False`` removes the causal mask, so every token sees the whole text.
        mask_padding: hide padding tokens from attention (the book does not; they are ordinary
            ``<|endoftext|>`` tokens there). Pair it with ``flexible`` or ``mean``.
    """

    generates_text = False
    new_modules = ("out_head",)

    def __init__(self, model: dict[str, Any], num_classes: int = 2, trainable_layers: str = "last_block",
                 token_position: str = "last", causal_mask: bool = True, mask_padding: bool = False,
                 **kwargs: Any) -> None:
        check_token_position(token_position)
        if int(num_classes) < 2:
            raise ConfigError(f"task.num_classes must be at least 2, got {num_classes}")
        if mask_padding and token_position == "last":
            raise ConfigError(
                "task.mask_padding=true hides the padding that token_position=last reads; use "
                "token_position=flexible or mean with it"
            )
        # Set before the base constructor, whose call of adapt_model reads it.
        self.num_classes = int(num_classes)
        super().__init__(model, trainable_layers=trainable_layers, **kwargs)
        self.token_position = token_position
        self.causal_mask = bool(causal_mask)
        self.mask_padding = bool(mask_padding)
        self.record_hparams(num_classes=self.num_classes, token_position=token_position,
                            causal_mask=self.causal_mask, mask_padding=self.mask_padding)
        #: How new texts are preprocessed (tokenizer, padding, label names): taken from the data
        #: module when fitting, stored in checkpoints and exports.
        self.inference: dict[str, Any] | None = None
        self.split_metrics = nn.ModuleDict({f"{split}_split": self._split_metrics() for split in SPLITS})
        self.confusion = nn.ModuleDict({
            f"{split}_split": ConfusionMatrix(task="multiclass", num_classes=self.num_classes) for split in SPLITS
        })
        self._confusion_seen: set[str] = set()

    def adapt_model(self, model: GPT) -> GPT:
        return replace_head(model, self.num_classes)

    def _split_metrics(self) -> nn.ModuleDict:
        if self.num_classes == 2:
            f1: nn.Module = F1Score(task="binary")
        else:
            f1 = F1Score(task="multiclass", num_classes=self.num_classes, average="macro")
        return nn.ModuleDict({
            "loss": MeanMetric(), "acc": Accuracy(task="multiclass", num_classes=self.num_classes), "f1": f1,
        })

    # ------------------------------------------------------------------------------------------
    # Forward and steps

    def classify(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Class logits ``(B, num_classes)`` of a batch of right-padded token ids."""
        logits = self.model(input_ids, attention_mask=attention_mask if self.mask_padding else None,
                            causal=self.causal_mask)
        return pool_logits(logits, attention_mask, self.token_position)

    def _step(self, batch: Batch, split: str) -> torch.Tensor:
        logits = self.classify(batch["input_ids"], batch.get("attention_mask"))
        labels = batch["labels"]
        loss = F.cross_entropy(logits, labels)
        metrics = self.split_metrics[f"{split}_split"]
        preds = logits.argmax(dim=-1)
        metrics["acc"].update(preds, labels)
        metrics["f1"].update(preds, labels)
        names = ["acc", "f1"]
        if self.training:
            # Training loss per step (as pretraining logs it); accuracy and F1 per epoch.
            self.log("train/loss", loss.detach(), on_step=True, on_epoch=False, prog_bar=True)
        else:
            metrics["loss"].update(loss.detach(), weight=labels.numel())
            names.insert(0, "loss")
        for name in names:
            self.log(f"{split}/{name}", metrics[name], on_step=False, on_epoch=True,
                     prog_bar=name == "acc" and split != "train", add_dataloader_idx=False,
                     batch_size=labels.numel())
        if not self.training:
            self.confusion[f"{split}_split"].update(preds, labels)
            self._confusion_seen.add(split)
        return loss

    def training_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        mask = batch.get("attention_mask")
        self.count_tokens(int(mask.sum()) if mask is not None else batch["input_ids"].numel())
        return self._step(batch, "train")

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        self._step(batch, "val")

    def test_step(self, batch: Batch, batch_idx: int, dataloader_idx: int = 0) -> None:
        splits = getattr(getattr(self._trainer, "datamodule", None), "test_splits", None) or ["test"]
        self._step(batch, splits[dataloader_idx])

    def predict_step(self, batch: Batch, batch_idx: int, dataloader_idx: int = 0) -> torch.Tensor:
        return torch.softmax(self.classify(batch["input_ids"], batch.get("attention_mask")), dim=-1)

    # ------------------------------------------------------------------------------------------
    # Hooks

    def setup(self, stage: str) -> None:
        """Check the data against the head and the model, and keep its preprocessing for export."""
        datamodule = getattr(self._trainer, "datamodule", None) if self._trainer is not None else None
        if datamodule is None:
            return
        classes = getattr(datamodule, "num_classes", None)
        if classes is not None and classes != self.num_classes:
            raise ConfigError(
                f"the data has {classes} classes ({', '.join(datamodule.label_names)}) but "
                f"task.num_classes={self.num_classes}; set task.num_classes={classes}"
            )
        if hasattr(datamodule, "inference_spec"):
            spec = datamodule.inference_spec()
            TextEncoding.from_dict(spec).check_context(self.model_config.context_length)
            if self.inference is None or stage == "fit":
                self.inference = spec

    def describe(self) -> str:
        return (f"{self.num_classes} classes, token_position={self.token_position}, "
                f"causal_mask={self.causal_mask}, {super().describe()}")

    def on_validation_epoch_end(self) -> None:
        if not self.trainer.sanity_checking:
            self._write_confusion(["val"], echo=False)
        self._confusion_seen.clear()

    def on_test_epoch_end(self) -> None:
        self._write_confusion(sorted(self._confusion_seen, key=SPLITS.index), echo=True)
        self._confusion_seen.clear()

    def _write_confusion(self, splits: list[str], echo: bool) -> None:
        for split in splits:
            if split in self._confusion_seen:
                metric = self.confusion[f"{split}_split"]
                matrix = metric.compute()  # on every rank: it gathers across processes
                metric.reset()
                save_confusion(metric, matrix, split, self.label_names, self.trainer.default_root_dir,
                               self.global_step, echo=echo)

    @property
    def label_names(self) -> list[str]:
        names = (self.inference or {}).get("label_names")
        return list(names) if names else [str(i) for i in range(self.num_classes)]

    def task_state(self) -> dict[str, Any]:
        return {"inference": self.inference}

    def load_task_state(self, state: dict[str, Any]) -> None:
        self.inference = state.get("inference") or self.inference

    # ------------------------------------------------------------------------------------------
    # Export

    def classifier_meta(self) -> dict[str, Any]:
        """What ``classifier.json`` records: the head, the pooling and the preprocessing of training."""
        return {
            "num_classes": self.num_classes,
            "label_names": self.label_names,
            "token_position": self.token_position,
            "causal_mask": self.causal_mask,
            "mask_padding": self.mask_padding,
            "preprocessing": {k: v for k, v in (self.inference or {}).items() if k != "label_names"},
        }

    def write_export(self, directory: Path) -> None:
        """The model (adapters merged) plus ``classifier.json`` and, under LoRA, the adapter file."""
        adapter = lora_state_dict(self.gpt) if has_lora(self.gpt) else None
        super().write_export(directory)
        write_classifier_files(directory, self.classifier_meta(), adapter)
