"""Classification fine-tuning (book chapter 6) with optional LoRA (appendix E).

The GPT's vocabulary head is replaced by ``Linear(emb_dim, num_classes)``; the class logits of
one token position (or the mean over the real tokens) are trained with cross-entropy. Every
design choice of the chapter's additional experiments is a constructor argument, so each row of
the book's table is one config override.
"""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.utilities import rank_zero_info, rank_zero_only
from torch import nn
from torch.nn import functional as F
from torchmetrics import Accuracy, ConfusionMatrix, F1Score, MeanMetric

from gptlab.errors import CheckpointError, ConfigError
from gptlab.model import GPT, GPTConfig
from gptlab.model.lora import DEFAULT_TARGETS, apply_lora, count_parameters, has_lora, lora_state_dict, merge_lora
from gptlab.tasks.base import GPTTask, _plain

TOKEN_POSITIONS = ("last", "first", "flexible", "mean")
TRAINABLE_LAYERS = ("last_layer", "last_block", "last_two_blocks", "all", "lora")
CLASSIFIER_FILE = "classifier.json"
ADAPTER_FILE = "lora_adapter.safetensors"

Batch = dict[str, torch.Tensor]


@dataclass
class LoRAConfig:
    """LoRA settings; the update is scaled by ``alpha`` as in the book (see ``gptlab.model.lora``)."""

    rank: int = 16
    alpha: float = 16.0
    dropout: float = 0.0
    targets: list[str] = field(default_factory=lambda: list(DEFAULT_TARGETS))


def pool_logits(logits: torch.Tensor, attention_mask: torch.Tensor | None, position: str) -> torch.Tensor:
    """Per-example class logits ``(B, C)`` from per-token logits ``(B, T, C)``.

    * ``last``: position ``-1``, padding or not (the book's choice; with padding to the longest
      training example it reads a pad token that has seen the whole text through attention);
    * ``first``: position 0, which under the causal mask has seen only the first token;
    * ``flexible``: each example's last real token (right padding: index ``length - 1``);
    * ``mean``: the mean over real tokens. The head is affine, so this equals applying the head to
      the mean of the final hidden states (the book's "average embeddings").

    Without an ``attention_mask`` every position counts as real.
    """
    if position == "last":
        return logits[:, -1, :]
    if position == "first":
        return logits[:, 0, :]
    if attention_mask is None:
        return logits[:, -1, :] if position == "flexible" else logits.mean(dim=1)
    mask = attention_mask.to(logits.dtype)
    if position == "flexible":
        last = (attention_mask.long().sum(dim=1) - 1).clamp(min=0)
        return logits[torch.arange(logits.shape[0], device=logits.device), last]
    if position == "mean":
        return (logits * mask.unsqueeze(-1)).sum(dim=1) / mask.sum(dim=1, keepdim=True).clamp(min=1.0)
    raise ConfigError(f"task.token_position={position!r} is unknown; use one of {', '.join(TOKEN_POSITIONS)}")


def replace_head(model: GPT, num_classes: int) -> GPT:
    """Swap the vocabulary head for ``Linear(emb_dim, num_classes)`` (with bias, PyTorch's default init).

    A head tied to the token embedding is untied by this, and ``model.cfg`` says so, so that an
    export of the model describes it truthfully.
    """
    model.out_head = nn.Linear(model.cfg.emb_dim, num_classes)
    model.cfg = replace(model.cfg, tie_embeddings=False)
    return model


def set_trainable(model: GPT, trainable_layers: str, lora: LoRAConfig) -> list[str]:
    """Freeze or unfreeze parameters (and add adapters) as the book's ``trainable_layers`` options do.

    Returns the names of the layers given LoRA adapters (empty unless ``lora``).
    """
    if trainable_layers not in TRAINABLE_LAYERS:
        raise ConfigError(
            f"task.trainable_layers={trainable_layers!r} is unknown; use one of {', '.join(TRAINABLE_LAYERS)}"
        )
    wrapped: list[str] = []
    model.requires_grad_(trainable_layers == "all")
    if trainable_layers == "lora":
        wrapped = apply_lora(model, lora.rank, lora.alpha, lora.dropout, targets=lora.targets)
    elif trainable_layers in ("last_block", "last_two_blocks"):
        count = 1 if trainable_layers == "last_block" else 2
        if len(model.trf_blocks) < count:
            raise ConfigError(f"trainable_layers={trainable_layers} needs at least {count} transformer blocks")
        for block in list(model.trf_blocks)[-count:]:
            block.requires_grad_(True)
        model.final_norm.requires_grad_(True)
    model.out_head.requires_grad_(True)
    return wrapped


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
        model, optimizer, scheduler, init, compile: see ``GPTTask``; ``init`` loads the base model
            (e.g. ``gpt2``) before its head is replaced.
        num_classes: size of the new head; must match the data module's.
        trainable_layers: ``last_layer`` (head only), ``last_block`` (head, last block and the
            final LayerNorm: the book's choice), ``last_two_blocks``, ``all``, or ``lora``
            (everything frozen, adapters on ``lora.targets``, the head trainable).
        token_position: ``last``, ``first``, ``flexible`` (last real token) or ``mean``.
        causal_mask: ``False`` removes the causal mask, so every token sees the whole text.
        mask_padding: hide padding tokens from attention (the book does not; they are ordinary
            ``<|endoftext|>`` tokens there). Pair it with ``flexible`` or ``mean``.
        lora: ``LoRAConfig`` fields (``rank``, ``alpha``, ``dropout``, ``targets``).
    """

    generates_text = False

    def __init__(self, model: dict[str, Any], num_classes: int = 2, trainable_layers: str = "last_block",
                 token_position: str = "last", causal_mask: bool = True, mask_padding: bool = False,
                 lora: dict[str, Any] | None = None, **kwargs: Any) -> None:
        if token_position not in TOKEN_POSITIONS:
            raise ConfigError(
                f"task.token_position={token_position!r} is unknown; use one of {', '.join(TOKEN_POSITIONS)}"
            )
        if int(num_classes) < 2:
            raise ConfigError(f"task.num_classes must be at least 2, got {num_classes}")
        if mask_padding and token_position == "last":
            raise ConfigError(
                "task.mask_padding=true hides the padding that token_position=last reads; use "
                "token_position=flexible or mean with it"
            )
        super().__init__(model, **kwargs)
        self.num_classes = int(num_classes)
        self.trainable_layers = trainable_layers
        self.token_position = token_position
        self.causal_mask = bool(causal_mask)
        self.mask_padding = bool(mask_padding)
        self.lora_config = LoRAConfig(**(_plain(lora) or {}))
        self.save_hyperparameters({
            **self.hparams, "num_classes": self.num_classes, "trainable_layers": trainable_layers,
            "token_position": token_position, "causal_mask": self.causal_mask,
            "mask_padding": self.mask_padding, "lora": asdict(self.lora_config),
        })
        replace_head(self.model, self.num_classes)
        self.lora_layers = set_trainable(self.model, trainable_layers, self.lora_config)
        #: How new texts are preprocessed (tokenizer, padding, label names): taken from the data
        #: module when fitting, stored in checkpoints and exports.
        self.inference: dict[str, Any] | None = None

        self.split_metrics = nn.ModuleDict({f"{split}_split": self._split_metrics() for split in ("train", "val", "test")})
        self.confusion = nn.ModuleDict({
            f"{split}_split": ConfusionMatrix(task="multiclass", num_classes=self.num_classes)
            for split in ("train", "val", "test")
        })
        self._confusion_seen: set[str] = set()

    def _split_metrics(self) -> nn.ModuleDict:
        if self.num_classes == 2:
            f1: nn.Module = F1Score(task="binary")
        else:
            f1 = F1Score(task="multiclass", num_classes=self.num_classes, average="macro")
        return nn.ModuleDict({
            "loss": MeanMetric(),
            "acc": Accuracy(task="multiclass", num_classes=self.num_classes),
            "f1": f1,
        })

    # ------------------------------------------------------------------------------------------
    # Forward

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
        self._step(batch, self._test_split(dataloader_idx))

    def _test_split(self, dataloader_idx: int) -> str:
        splits = getattr(getattr(self._trainer, "datamodule", None), "test_splits", None) or ["test"]
        return splits[dataloader_idx]

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
            context = self.model_config.context_length
            if spec.get("pad_length") is not None and spec["pad_length"] > context:
                raise ConfigError(
                    f"examples are padded to {spec['pad_length']} tokens but the model's context is {context}; "
                    f"set data.max_length={context} or a smaller data.pad_to"
                )
            if spec.get("pad_length") is None and (spec.get("max_length") is None or spec["max_length"] > context):
                raise ConfigError(
                    f"unpadded examples must be cut to the model's context: set data.max_length={context}"
                )
            if self.inference is None or stage == "fit":
                self.inference = spec

    def on_fit_start(self) -> None:
        trainable, total = count_parameters(self.model)
        detail = f", LoRA on {len(self.lora_layers)} layers" if self.lora_layers else ""
        rank_zero_info(
            f"Classifier: {self.num_classes} classes, trainable_layers={self.trainable_layers}{detail}, "
            f"token_position={self.token_position}, causal_mask={self.causal_mask}; "
            f"{trainable:,} of {total:,} parameters trainable ({100.0 * trainable / total:.2f}%)"
        )

    def on_validation_epoch_end(self) -> None:
        if not self.trainer.sanity_checking:
            self._write_confusion(["val"], echo=False)
        self._confusion_seen.clear()

    def on_test_epoch_end(self) -> None:
        self._write_confusion(sorted(self._confusion_seen, key=("train", "val", "test").index), echo=True)
        self._confusion_seen.clear()

    def _write_confusion(self, splits: Sequence[str], echo: bool) -> None:
        for split in splits:
            if split not in self._confusion_seen:
                continue
            metric = self.confusion[f"{split}_split"]
            matrix = metric.compute().long().cpu().tolist()
            metric.reset()
            self._save_confusion(split, matrix, echo)

    @rank_zero_only
    def _save_confusion(self, split: str, matrix: list[list[int]], echo: bool) -> None:
        names = self.label_names
        if echo:
            rank_zero_info(f"Confusion matrix ({split}; rows: true label, columns: predicted):\n"
                           + format_confusion(matrix, names))
        root = Path(self.trainer.default_root_dir)
        root.mkdir(parents=True, exist_ok=True)
        payload = {"split": split, "labels": names, "matrix": matrix, "step": int(self.global_step)}
        tmp = root / f".confusion_matrix_{split}.json.tmp"
        tmp.write_text(json.dumps(payload, indent=2) + "\n")
        os.replace(tmp, root / f"confusion_matrix_{split}.json")
        plot_confusion(matrix, names, root / f"confusion_matrix_{split}.png", title=f"{split} split")

    @property
    def label_names(self) -> list[str]:
        names = (self.inference or {}).get("label_names")
        return list(names) if names else [str(i) for i in range(self.num_classes)]

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["classifier"] = self.inference

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_load_checkpoint(checkpoint)
        self.inference = checkpoint.get("classifier") or self.inference

    # ------------------------------------------------------------------------------------------
    # Export

    def export_model(self, directory: str | Path, checkpoint: str | None = None) -> Path:
        """Write the classifier (``checkpoint``'s weights if given) for ``gptlab-classify``.

        The directory is a gptlab model export (``config.json`` + ``model.safetensors``, with
        LoRA adapters merged into the weights) plus ``classifier.json``: the head size, label
        names, token position, masking and the preprocessing of training.
        """
        task = self
        if checkpoint:
            task = type(self).load_from_checkpoint(checkpoint, map_location="cpu", init=None)
        return export_classifier(task, directory)


def classifier_meta(task: ClassifyTask) -> dict[str, Any]:
    return {
        "num_classes": task.num_classes,
        "label_names": task.label_names,
        "token_position": task.token_position,
        "causal_mask": task.causal_mask,
        "mask_padding": task.mask_padding,
        "preprocessing": {k: v for k, v in (task.inference or {}).items() if k != "label_names"},
    }


def export_classifier(task: ClassifyTask, directory: str | Path) -> Path:
    """Save ``task``'s classifier (adapters merged) with ``save_model`` plus ``classifier.json``.

    A LoRA classifier also gets ``lora_adapter.safetensors`` (``lora_state_dict``: adapters and head).
    """
    from safetensors.torch import save_file

    from gptlab.weights import save_model

    gpt = copy.deepcopy(task.gpt).cpu().float()
    adapter = lora_state_dict(gpt) if has_lora(gpt) else None
    merge_lora(gpt)
    path = Path(save_model(gpt, directory))
    (path / CLASSIFIER_FILE).write_text(json.dumps(classifier_meta(task), indent=2) + "\n")
    if adapter is not None:
        # The adapters and head alone: a few percent of the model, for sharing or re-use on the same base.
        save_file({k: v.contiguous() for k, v in adapter.items()}, str(path / ADAPTER_FILE))
    return path


def format_confusion(matrix: list[list[int]], names: Sequence[str]) -> str:
    width = max(6, *(len(n) for n in names), *(len(str(v)) for row in matrix for v in row))
    lines = [" " * width + " " + " ".join(n.rjust(width) for n in names)]
    for name, row in zip(names, matrix):
        lines.append(name.rjust(width) + " " + " ".join(str(v).rjust(width) for v in row))
    return "\n".join(lines)


def plot_confusion(matrix: list[list[int]], names: Sequence[str], path: Path, title: str = "") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    size = max(3.0, 0.6 * len(names) + 2.0)
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(len(names)), labels=names, rotation=45 if len(names) > 4 else 0)
    ax.set_yticks(range(len(names)), labels=names)
    ax.set_xlabel("Predicted")
    ax.set_ylabel("True")
    ax.set_title(title)
    peak = max((v for row in matrix for v in row), default=0)
    for i, row in enumerate(matrix):
        for j, value in enumerate(row):
            ax.text(j, i, str(value), ha="center", va="center", color="white" if value > peak / 2 else "black")
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    os.replace(tmp, path)


# ----------------------------------------------------------------------------------------------
# Inference


class Classifier:
    """A trained classifier ready for new texts: the model plus the preprocessing of training."""

    def __init__(self, model: GPT, meta: dict[str, Any]) -> None:
        from gptlab.tokenizer import get_tokenizer

        self.model = model.eval()
        self.meta = meta
        prep = meta.get("preprocessing") or {}
        self.tokenizer = get_tokenizer(prep.get("tokenizer", "gpt2"))
        self.max_length = prep.get("max_length") or model.cfg.context_length
        self.max_length = min(self.max_length, model.cfg.context_length)
        self.pad_length = prep.get("pad_length")
        self.pad_token_id = prep.get("pad_token_id")
        self.label_names = list(meta.get("label_names") or [str(i) for i in range(meta["num_classes"])])

    @torch.no_grad()
    def predict_proba(self, texts: Sequence[str], batch_size: int = 32) -> torch.Tensor:
        """Class probabilities ``(len(texts), num_classes)``, each text preprocessed as in training."""
        from gptlab.data.classification import encode_texts

        # Without fixed padding each text runs alone, so no example ever sees padding it was not trained with.
        step = batch_size if self.pad_length is not None else 1
        device = next(self.model.parameters()).device
        out = []
        for start in range(0, len(texts), step):
            batch = encode_texts(texts[start:start + step], self.tokenizer, self.max_length, self.pad_length,
                                 self.pad_token_id)
            ids, mask = batch["input_ids"].to(device), batch["attention_mask"].to(device)
            logits = self.model(ids, attention_mask=mask if self.meta.get("mask_padding") else None,
                                causal=bool(self.meta.get("causal_mask", True)))
            pooled = pool_logits(logits, mask, self.meta.get("token_position", "last"))
            out.append(torch.softmax(pooled.float(), dim=-1).cpu())
        return torch.cat(out) if out else torch.empty(0, len(self.label_names))

    def predict(self, texts: Sequence[str]) -> list[tuple[str, float]]:
        """``(label, probability)`` of the most likely class of each text."""
        probs = self.predict_proba(texts)
        best = probs.argmax(dim=-1)
        return [(self.label_names[int(i)], float(probs[row, i])) for row, i in enumerate(best)]


def load_classifier(source: str | Path) -> Classifier:
    """A classifier from a run directory, its ``model/`` export, or a ``.ckpt`` of a ``ClassifyTask``.

    A run directory is read from ``model/`` when it was exported, else from its best checkpoint
    (``checkpoints/best*.ckpt``), else ``checkpoints/last.ckpt``.
    """
    path = Path(source).expanduser()
    if not path.exists():
        raise CheckpointError(f"{path} does not exist; pass a run directory, its model/ directory or a .ckpt file")
    if path.is_dir():
        if (path / CLASSIFIER_FILE).is_file():
            return _load_export(path)
        if (path / "model" / CLASSIFIER_FILE).is_file():
            return _load_export(path / "model")
        checkpoints = sorted((path / "checkpoints").glob("best*.ckpt")) or sorted((path / "checkpoints").glob("last.ckpt"))
        if not checkpoints:
            raise CheckpointError(
                f"{path} holds no classifier: expected {CLASSIFIER_FILE}, model/{CLASSIFIER_FILE} or "
                "checkpoints/*.ckpt of a classification run"
            )
        path = checkpoints[-1]
    return _load_checkpoint(path)


def _load_export(directory: Path) -> Classifier:
    from safetensors.torch import load_file

    from gptlab.weights import CONFIG_FILE, WEIGHTS_FILE

    try:
        meta = json.loads((directory / CLASSIFIER_FILE).read_text())
        saved = json.loads((directory / CONFIG_FILE).read_text())
    except (OSError, ValueError) as err:
        raise CheckpointError(f"cannot read the classifier in {directory}: {err}") from None
    saved.pop("format", None)
    try:
        config = GPTConfig.from_dict(saved)
        model = replace_head(GPT(config), int(meta["num_classes"]))
        model.load_state_dict(load_file(str(directory / WEIGHTS_FILE)))
    except (KeyError, RuntimeError, ConfigError, OSError) as err:
        raise CheckpointError(f"{directory} is not a complete classifier export: {err}") from None
    return Classifier(model, meta)


def _load_checkpoint(path: Path) -> Classifier:
    try:  # tensors and plain containers only: reading a checkpoint never runs code
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - unpickling raises many types
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(f"cannot read {path} as a checkpoint: {first}") from None
    hparams = checkpoint.get("hyper_parameters") or {}
    if "num_classes" not in hparams or "token_position" not in hparams:
        raise CheckpointError(f"{path} is not a checkpoint of a classification run (task=classify)")
    task = ClassifyTask(**{**hparams, "init": None})
    task.load_state_dict(checkpoint["state_dict"])
    task.inference = checkpoint.get("classifier")
    gpt = merge_lora(task.gpt) if has_lora(task.gpt) else task.gpt
    return Classifier(gpt, classifier_meta(task))
