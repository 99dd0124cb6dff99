"""Shared fixtures: the reference data beside the project, and an isolated cache per test session."""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

import pytest
import torch

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


@pytest.fixture(autouse=True, scope="session")
def _one_thread_per_worker() -> None:
    """Under ``pytest -n N`` the workers already use the cores; a thread pool per worker (and per
    run it starts) would only oversubscribe them."""
    if "PYTEST_XDIST_WORKER" not in os.environ:
        yield
        return
    mp = pytest.MonkeyPatch()
    mp.setenv("OMP_NUM_THREADS", "1")  # the runs it starts as subprocesses
    mp.setenv("TORCHINDUCTOR_COMPILE_THREADS", "1")  # torch.compile without a pool of compile processes
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
    mp.undo()


@pytest.fixture
def eager_static_step(monkeypatch: pytest.MonkeyPatch) -> None:
    """``generate(compile=True)`` runs the static-cache step without compiling it (the same function,
    no compile time), for tests of the static cache's logic."""
    import importlib

    from gptlab.model import GPT

    generation = importlib.import_module("gptlab.generate")  # the module, not gptlab.generate()
    monkeypatch.setattr(generation, "compiled_decode_step", lambda: GPT.static_decode_step)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Modules with slow tests first: under ``pytest -n N`` the long runs start at once and the quick
    tests fill in behind them, instead of one long run finishing alone at the end. A module's tests
    stay together, so its module-scoped fixtures are built once per worker."""
    slow = Counter(item.module.__name__ for item in items if item.get_closest_marker("slow"))
    items.sort(key=lambda item: -slow[item.module.__name__])


@pytest.fixture(scope="session")
def smollm2_gguf() -> Path:
    """The real SmolLM2-135M-Instruct GGUF (Q4_1), size and sha256 checked. Missing, it fails with
    the line that installs it: no test that needs the real model is ever skipped."""
    from gptlab.named_models import NAMED_MODELS, packaged_gguf

    path = packaged_gguf("smollm2-135m-instruct")
    if path is None:
        pytest.fail(f"the real SmolLM2 GGUF is not installed: {NAMED_MODELS['smollm2-135m-instruct'].install_line}")
    return path


@pytest.fixture(scope="module")
def smollm2(smollm2_gguf: Path):
    """gptlab's tokenizer of the real GGUF (a ``GGUFTokenizer``)."""
    from gptlab.tokenizer import get_tokenizer

    return get_tokenizer(str(smollm2_gguf))


@pytest.fixture(scope="module")
def reference(smollm2_gguf: Path):
    """``transformers``' tokenizer of the same file, chat template included (no weights are loaded)."""
    import transformers

    return transformers.AutoTokenizer.from_pretrained(smollm2_gguf.parent, gguf_file=smollm2_gguf.name)
