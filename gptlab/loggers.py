"""Weights & Biases runs that researchers can find and compare, one per job, resumable by run directory.

``logger=wandb`` builds its ``WandbLogger`` through :func:`wandb_logger`, which names the run from
the Hydra choices (``model``, ``data``, ``task``, ``trainer``, ``experiment``):

- project: ``gptlab`` (or ``logger.wandb.project``);
- group: the experiment (``experiment=verdict``), else ``<task>-<data>``, so sweeps of one setup sit together;
- name: the job's command-line overrides (``task.optimizer.lr=0.001``) in a sweep, else the run directory's name;
- tags: ``model:nano``, ``data:verdict``, ...;
- id: a hash of the run directory, so ``ckpt_path=last`` in a named run continues the same W&B run.

Without an API key (neither ``WANDB_API_KEY`` nor a ``wandb login``) it logs offline and
:func:`finish_wandb` says how to upload the run.
"""

from __future__ import annotations

import hashlib
import logging
import netrc
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from lightning.pytorch.loggers import WandbLogger

from gptlab.runs import MODEL_DIR

log = logging.getLogger(__name__)

#: The config groups whose choices become tags (and, for experiment/task/data, the group).
TAG_GROUPS = ("model", "data", "task", "trainer", "experiment", "hparams_search", "debug")


def run_id(output_dir: str | os.PathLike[str]) -> str:
    """A W&B run id that is the same whenever the same run directory is used (W&B ids: ``[a-z0-9]``)."""
    return hashlib.sha1(str(Path(output_dir).expanduser().resolve()).encode()).hexdigest()[:16]


def has_api_key() -> bool:
    """Whether W&B could log online: an API key in the environment or saved by ``wandb login``."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai").split("://")[-1].split("/")[0]
    try:
        return netrc.netrc(os.environ.get("NETRC")).authenticators(host) is not None
    except (OSError, netrc.NetrcParseError):
        return False


def run_names(choices: Mapping[str, Any], overrides: str, output_dir: str) -> dict[str, Any]:
    """Group, name and tags of a run from its Hydra choices and command-line overrides."""
    picked = {k: str(v) for k, v in choices.items() if k in TAG_GROUPS and v not in (None, "null")}
    group = picked.get("experiment") or f"{picked.get('task', 'task')}-{picked.get('data', 'data')}"
    name = overrides or Path(output_dir).name
    tags = [f"{k}:{v}" for k, v in picked.items()]
    return {"group": group, "name": name, "tags": tags}


def wandb_logger(
    output_dir: str,
    choices: Mapping[str, Any] | None = None,
    overrides: str = "",
    project: str = "gptlab",
    group: str | None = None,
    name: str | None = None,
    tags: Iterable[str] = (),
    offline: bool | None = None,
    log_model: bool = False,
    log_export: bool = False,
    **kwargs: Any,
) -> WandbLogger:
    """A ``WandbLogger`` named from the run's Hydra choices; explicit ``group``/``name``/``tags`` win.

    ``choices``/``overrides`` default to the running Hydra job's (``hydra.runtime.choices``,
    ``hydra.job.override_dirname``). ``offline=None`` logs online when an API key is available (or ``WANDB_MODE`` says so) and offline
    otherwise. ``log_export`` uploads the exported model directory as an artifact at the end.
    """
    if choices is None:
        choices, overrides = _hydra_job()
    derived = run_names(choices, overrides, output_dir)
    if offline is None:
        mode = os.environ.get("WANDB_MODE", "")
        offline = mode in ("offline", "dryrun") or (mode != "online" and not has_api_key())
        if offline and not mode:
            log.info("W&B: no API key found, logging offline (run `wandb login` to log online)")
    logger = WandbLogger(
        project=project,
        group=group or derived["group"],
        name=name or derived["name"],
        tags=sorted({*derived["tags"], *tags}),
        id=run_id(output_dir),
        save_dir=output_dir,
        offline=offline,
        log_model=log_model and not offline,
        **kwargs,
    )
    logger.log_export = log_export  # type: ignore[attr-defined]
    return logger


def _hydra_job() -> tuple[dict[str, Any], str]:
    """The running Hydra job's group choices and command-line overrides (none outside Hydra)."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return {}, ""
    from hydra.types import RunMode

    hydra_cfg = HydraConfig.get()
    in_sweep = hydra_cfg.mode == RunMode.MULTIRUN
    return dict(hydra_cfg.runtime.choices), str(hydra_cfg.job.override_dirname) if in_sweep else ""


def finish_wandb(loggers: Iterable[Any], output_dir: str | os.PathLike[str] | None = None) -> None:
    """Log the run's plots (and, if asked, the exported model), then close the W&B run.

    Closing matters in a multirun: the next job then starts its own run instead of logging into
    this one. An offline run prints the command that uploads it.
    """
    wandb_loggers = [lg for lg in loggers if isinstance(lg, WandbLogger)]
    if not wandb_loggers:
        return
    import wandb

    run = wandb.run
    if run is not None and output_dir is not None:
        _log_outputs(run, Path(output_dir), any(getattr(lg, "log_export", False) for lg in wandb_loggers))
    offline_dir = Path(run.dir).parent if run is not None and run.settings.mode == "offline" else None
    wandb.finish()
    if offline_dir is not None:
        log.warning(f"W&B run saved offline; upload it with: wandb sync {offline_dir}")


def _log_outputs(run: Any, output_dir: Path, log_export: bool) -> None:
    import wandb

    plots = {f"plots/{p.stem}": wandb.Image(str(p)) for p in sorted(output_dir.glob("*.png"))}
    if plots:
        run.log(plots)
    model_dir = output_dir / MODEL_DIR
    if log_export and model_dir.is_dir():
        artifact = wandb.Artifact(f"model-{run.id}", type="model")
        artifact.add_dir(str(model_dir))
        run.log_artifact(artifact)
