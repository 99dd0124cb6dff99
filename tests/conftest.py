"""Shared fixtures: the reference data beside the project, and an isolated cache per test session."""

from __future__ import annotations

from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data``: real data sets (the-verdict.txt, SMSSpamCollection, instruction data)."""
    if not SHARED_DATA.is_dir():
        raise FileNotFoundError(f"reference data not found at {SHARED_DATA}; clone the project beside ../shared")
    return SHARED_DATA


@pytest.fixture(scope="session")
def verdict_path(shared_data: Path) -> Path:
    return shared_data / "the-verdict.txt"


@pytest.fixture(autouse=True, scope="session")
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Downloads and token caches of the tests go to a temporary directory, not ~/.cache."""
    mp = pytest.MonkeyPatch()
    mp.setenv("GPTLAB_CACHE", str(tmp_path_factory.mktemp("gptlab-cache")))
    mp.setenv("WANDB_MODE", "offline")
    yield
    mp.undo()


@pytest.fixture
def eager_static_step(monkeypatch: pytest.MonkeyPatch) -> None:
    """``generate(compile=True)`` runs the static-cache step without compiling it (the same function,
    no compile time), for tests of the static cache's logic."""
    import importlib

    generation = importlib.import_module("gptlab.generate")  # the module, not gptlab.generate()
    monkeypatch.setattr(generation, "compiled_decode_step", lambda: generation.static_decode_step)
