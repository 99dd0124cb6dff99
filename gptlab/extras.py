"""Optional packages: parts of gptlab that only some runs use are extras of the distribution, not
dependencies (``pip install 'gptlab[EXTRA]'``). A run that picks such a part without its package
stops before any work with one line naming the install, instead of an ImportError deep inside."""

from __future__ import annotations

import importlib.util
from typing import NamedTuple

from gptlab.errors import ConfigError


class OptionalPackage(NamedTuple):
    """One optional package: its import name, what it is to a user, and the extra that installs it."""

    module: str
    what: str
    extra: str


#: Every optional package a run can need, by a short key (pyproject.toml's optional-dependencies).
OPTIONAL = {
    "wandb": OptionalPackage("wandb", "the 'wandb' package", "wandb"),
    "tensorboard": OptionalPackage("tensorboard", "the 'tensorboard' package", "tensorboard"),
    "datasets": OptionalPackage("datasets", "the 'datasets' package", "hf"),
    "optuna": OptionalPackage("hydra_plugins.hydra_optuna_sweeper", "the Optuna sweeper", "sweep"),
    "submitit": OptionalPackage("hydra_plugins.hydra_submitit_launcher", "the submitit launcher", "slurm"),
    "fastapi": OptionalPackage("fastapi", "FastAPI and uvicorn", "serve"),
    "openai": OptionalPackage("openai", "the 'openai' client", "serve"),
    "lm_eval": OptionalPackage("lm_eval", "EleutherAI's lm-evaluation-harness ('lm-eval')", "harness"),
}


def require_extra(key: str, used_by: str) -> None:
    """Raise ``ConfigError`` (one line with the ``pip install``) when ``OPTIONAL[key]`` is missing.

    ``used_by`` names what the user asked for, e.g. ``logger=wandb``.
    """
    package = OPTIONAL[key]
    if importlib.util.find_spec(package.module) is None:
        raise ConfigError(f"{used_by} needs {package.what}: pip install 'gptlab[{package.extra}]'")
