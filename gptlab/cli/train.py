"""``gptlab-train``: compose the Hydra config, build data, task, trainer; fit; export.

Every piece is built by ``hydra.utils.instantiate`` from its config group, so a new task, data
module, logger or callback needs a config file naming its class, not a change here.
"""

from __future__ import annotations

import importlib.resources
import inspect
import json
import logging
import sys
import warnings
from pathlib import Path
from typing import Any

import hydra
import lightning as L
import torch
from hydra.utils import get_class, instantiate
from lightning.pytorch.accelerators import CUDAAccelerator
from lightning.pytorch.callbacks import LearningRateMonitor
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf

from gptlab.callbacks import RunSummary
from gptlab.checkpoints import read_task_checkpoint
from gptlab.errors import ConfigError, GptlabError
from gptlab.extras import require_extra
from gptlab.fileio import atomic_write_text
from gptlab.loggers import finish_wandb
from gptlab.model import GPTConfig
from gptlab.runs import CHECKPOINT_DIR, LAST_CHECKPOINT, RUN_CONFIG_FILE, TOKENIZER_FILE
from gptlab.sweeps import require_plugins


class _HideTips(logging.Filter):
    """Lightning advertises cloud services at every start; keep the console to the run itself."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("💡 Tip")


def check_extras(cfg: DictConfig) -> None:
    """Stop with the ``pip install`` line when the config uses an optional part that is not installed."""
    targets = " ".join(str(node.get("_target_", "")) for node in (cfg.get("logger") or {}).values() if node).lower()
    needs = {  # key in gptlab.extras.OPTIONAL: (used, by what)
        "wandb": ("wandb" in targets, "logger=wandb"),  # Lightning's WandbLogger or gptlab.loggers.wandb_logger
        "tensorboard": ("tensorboard" in targets, "logger=tensorboard"),
        "datasets": (str(cfg.get("data", {}).get("source", "")).startswith("hf:"),
                     "a Hugging Face dataset (data.source=hf:...)"),
    }
    for key, (used, used_by) in needs.items():
        if used:
            require_extra(key, used_by)


def build_datamodule(cfg: DictConfig) -> Any:
    """The configured data module, with ``data.sample_prompt`` as its ``sample_prompt`` attribute.

    ``sample_prompt`` is the text the sample callback completes, chosen per data config to fit its
    corpus; it goes to the class's constructor only if that takes it.
    """
    node: Any = cfg.data
    prompt = node.get("sample_prompt")
    if "sample_prompt" in node:
        params = inspect.signature(get_class(node._target_)).parameters.values()
        if not any(p.name == "sample_prompt" or p.kind is p.VAR_KEYWORD for p in params):
            node = {k: v for k, v in OmegaConf.to_container(node, resolve=True).items() if k != "sample_prompt"}
    datamodule = instantiate(node, _recursive_=False)
    if prompt and not getattr(datamodule, "sample_prompt", None):
        datamodule.sample_prompt = prompt
    return datamodule


def build_callbacks(cfg: DictConfig) -> list[L.Callback]:
    return [instantiate(c) for c in (cfg.get("callbacks") or {}).values() if c is not None and "_target_" in c]


def build_loggers(cfg: DictConfig) -> list[Any]:
    return [instantiate(c) for c in (cfg.get("logger") or {}).values() if c is not None and "_target_" in c]


def resolve_ckpt_path(ckpt_path: str | None, output_dir: Path) -> str | None:
    """``last`` means this run directory's ``checkpoints/last.ckpt``; other paths must exist."""
    if ckpt_path is None:
        return None
    if ckpt_path == "last":
        path = output_dir / CHECKPOINT_DIR / LAST_CHECKPOINT
        if not path.exists():
            raise ConfigError(
                f"ckpt_path=last but {path} does not exist; name the run directory to resume "
                "(hydra.run.dir=runs/NAME) or pass the checkpoint file, ckpt_path=/path/to/last.ckpt"
            )
        ckpt_path = str(path)
    path = Path(ckpt_path).expanduser()
    if path.is_dir():  # a sharded checkpoint (trainer=fsdp / fully_shard): its strategy reads it
        return str(path)
    if not path.is_file():
        raise ConfigError(f"checkpoint not found: {path}; check ckpt_path (a .ckpt file, or `last`)")
    read_task_checkpoint(path)  # a corrupt or foreign file stops here, in one line naming it
    return str(path)


def adopt_trained_tokenizer(cfg: DictConfig, datamodule: Any, output_dir: Path) -> None:
    """With ``data.tokenizer=train``: the model gets the learned vocabulary's size
    (``model.vocab_size``, so the two cannot disagree, and ``config.yaml`` records it), and the run
    directory gets its ``tokenizer.json``, where ``gptlab-generate`` and the others find it."""
    trained = getattr(datamodule, "trained_tokenizer", None)
    if trained is None:
        return
    if "model" in cfg:
        cfg.model.vocab_size = datamodule.tokenizer.vocab_size
    save_tokenizer(trained.directory, output_dir)


@rank_zero_only
def save_tokenizer(directory: Path, output_dir: Path) -> None:
    output_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(output_dir / TOKENIZER_FILE, (directory / TOKENIZER_FILE).read_text(encoding="utf-8"))


def check_vocab(datamodule: Any, task: Any) -> None:
    """A tokenizer whose ids exceed the model's embedding table would crash mid-step; stop now."""
    tokenizer = getattr(datamodule, "tokenizer", None)
    vocab = getattr(getattr(task, "model_config", None), "vocab_size", None)
    if tokenizer is not None and vocab is not None and tokenizer.vocab_size > vocab:
        raise ConfigError(
            f"tokenizer {tokenizer.name!r} has {tokenizer.vocab_size} ids but model.vocab_size={vocab}; "
            f"set model.vocab_size={tokenizer.vocab_size} or pick another tokenizer (data.tokenizer)"
        )


def run_config(cfg: DictConfig) -> DictConfig:
    """The config as ``config.yaml`` keeps it: every value resolved, except where the run is written.

    ``output_dir`` and the paths under it stay ``${...}`` references, and the file carries the
    ``hydra.run``/``hydra.sweep`` settings, so ``--config-path RUN_DIR --config-name config`` starts a
    new run directory instead of writing into this one. ``task.model: ${model}`` stays a reference,
    so that ``model.*`` overrides of a re-run reach the task. The model's sizes that a preset leaves
    to a rule (``hidden_dim: null`` for ``4 * emb_dim``) are written out as numbers.
    """

    def keep(raw: Any, resolved: Any) -> Any:
        if isinstance(raw, str) and ("output_dir" in raw or (raw.startswith("${") and isinstance(resolved, dict))):
            return raw
        if isinstance(raw, dict):
            return {key: keep(value, resolved[key]) for key, value in raw.items()}
        if isinstance(raw, list):
            return [keep(a, b) for a, b in zip(raw, resolved)]
        return resolved

    out = OmegaConf.create(keep(OmegaConf.to_container(cfg), OmegaConf.to_container(cfg, resolve=True)))
    if "model" in out:
        model = OmegaConf.to_container(out.model)
        written = GPTConfig.from_dict(model).written_out().to_dict()
        out.model = {key: written.get(key, value) for key, value in model.items()}
    defaults = OmegaConf.create((importlib.resources.files("gptlab.conf") / "train.yaml").read_text())
    out.hydra = {key: defaults.hydra[key] for key in ("run", "sweep", "job")}
    return out


@rank_zero_only
def save_config(cfg: DictConfig, output_dir: Path) -> None:
    """The config beside the checkpoints, so the run can be read and repeated (see ``run_config``)."""
    output_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(output_dir / RUN_CONFIG_FILE, OmegaConf.to_yaml(run_config(cfg)))


@rank_zero_only
def print_config(cfg: DictConfig) -> None:
    from rich.console import Console
    from rich.syntax import Syntax
    from rich.tree import Tree

    tree = Tree("config", guide_style="dim")
    for key, value in cfg.items():
        text = OmegaConf.to_yaml(value, resolve=True) if isinstance(value, DictConfig) else str(value)
        tree.add(str(key)).add(Syntax(text.rstrip(), "yaml", theme="ansi_dark"))
    Console().print(tree)


@rank_zero_only
def save_metrics(metrics: dict[str, float], output_dir: Path) -> None:
    atomic_write_text(output_dir / "metrics.json", json.dumps(metrics, indent=2, sort_keys=True) + "\n")


def train(cfg: DictConfig) -> dict[str, float]:
    """Fit (and optionally test) the configured task; return the final metrics."""
    output_dir = Path(cfg.output_dir)
    logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(_HideTips())
    # The run directory already holds config.yaml when the CSV logger opens it; nothing is lost.
    warnings.filterwarnings("ignore", message=r"Experiment logs directory .* exists and is not empty")
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)` is deprecated")
    L.seed_everything(cfg.seed, workers=True)

    check_extras(cfg)
    datamodule = build_datamodule(cfg)
    adopt_trained_tokenizer(cfg, datamodule, output_dir)
    task = instantiate(cfg.task, _recursive_=False)
    check_vocab(datamodule, task)
    ckpt_path = resolve_ckpt_path(cfg.get("ckpt_path"), output_dir)

    loggers = build_loggers(cfg)
    callbacks = build_callbacks(cfg)
    if not loggers:  # with logger=none there is nothing to record the learning rate in
        callbacks = [c for c in callbacks if not isinstance(c, LearningRateMonitor)]
    trainer: L.Trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)
    if isinstance(trainer.accelerator, CUDAAccelerator):
        torch.set_float32_matmul_precision(cfg.get("cuda_matmul_precision") or "high")
    for logger in loggers:
        logger.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))
    if cfg.get("print_config", True):
        print_config(cfg)
    save_config(cfg, output_dir)

    try:
        trainer.fit(task, datamodule=datamodule, ckpt_path=ckpt_path)
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
        if cfg.get("test"):
            best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
            results = trainer.test(task, datamodule=datamodule, ckpt_path=best or None)
            metrics.update({k: float(v) for r in results for k, v in r.items()})
    finally:
        finish_wandb(loggers, output_dir)
    save_metrics(metrics, output_dir)
    for callback in callbacks:
        if isinstance(callback, RunSummary):
            callback.print()
    return metrics


def objective(cfg: DictConfig, metrics: dict[str, float]) -> float | None:
    """The value a sweep optimizes: ``metrics[cfg.optimized_metric]``."""
    name = cfg.get("optimized_metric")
    if name is None or not metrics:  # nothing logged: e.g. resuming a run that had already finished
        return None
    if name not in metrics:
        raise ConfigError(f"optimized_metric={name!r} was not logged; the run logged {sorted(metrics)}")
    return metrics[name]


@hydra.main(version_base="1.3", config_path="pkg://gptlab.conf", config_name="train")
def _hydra_main(cfg: DictConfig) -> float | None:
    try:
        metrics = train(cfg)
        return objective(cfg, metrics)
    except Exception as err:
        problem = user_error(err)
        if problem is None:
            raise
        print(f"gptlab-train: error: {problem}", file=sys.stderr)
        raise SystemExit(2) from None


def user_error(err: BaseException) -> GptlabError | None:
    """The ``GptlabError`` behind ``err``, if any (Hydra's instantiate wraps what a class raises)."""
    seen: BaseException | None = err
    while seen is not None:
        if isinstance(seen, GptlabError):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


def main() -> None:
    """Console entry point (``gptlab-train``)."""
    try:
        require_plugins(sys.argv[1:])
    except ConfigError as err:
        print(f"gptlab-train: error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    _hydra_main()


if __name__ == "__main__":
    main()
