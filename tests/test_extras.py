"""Optional packages: the table agrees with pyproject.toml's extras, and a missing one is one line."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import re
import tomllib
from pathlib import Path

import pytest

from gptlab.errors import ConfigError
from gptlab.extras import OPTIONAL, require_extra

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"


def _name(requirement: str) -> str:
    return re.split(r"[<>=!~;\[ ]", requirement, maxsplit=1)[0].lower().replace("_", "-")


@pytest.mark.parametrize("key", sorted(OPTIONAL))
def test_each_optional_package_is_installed_by_the_extra_it_names(key: str):
    package = OPTIONAL[key]
    extras = tomllib.loads(PYPROJECT.read_text())["project"]["optional-dependencies"]
    listed = {_name(r) for r in extras[package.extra]}
    # The distributions (installed here by gptlab[test]) whose files hold the module.
    path = package.module.replace(".", "/")
    top = package.module.split(".")[0]
    shipping = {_name(d) for d in importlib.metadata.packages_distributions().get(top, [])
                if any(str(f).startswith(path) for f in importlib.metadata.distribution(d).files or [])}
    assert shipping & listed, f"{package.module} comes from {shipping}, but gptlab[{package.extra}] lists {listed}"


def test_a_missing_package_is_one_line_naming_the_install(monkeypatch: pytest.MonkeyPatch):
    require_extra("wandb", "logger=wandb")  # installed here: nothing to say
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ConfigError) as err:
        require_extra("datasets", "data.source=hf:imdb")
    assert str(err.value) == "data.source=hf:imdb needs the 'datasets' package: pip install 'gptlab[hf]'"
