"""``experiments/serve/load.py`` measures what it says, on a short load against a real server process.

No timing is asserted: the benchmark's numbers are recorded in ``experiments/serve/README.md``.
What is checked is that the counts come out right (tokens against usage, percentiles in order)
and that clients that leave mid-stream free their rows.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

pytestmark = pytest.mark.slow

SCRIPT = Path(__file__).resolve().parents[1] / "experiments" / "serve" / "load.py"


@pytest.fixture(scope="module")
def load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("serve_load", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["serve_load"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_a_short_load_counts_every_token_and_leaves_no_job_behind(load: ModuleType, tmp_path: Path) -> None:
    source = load.random_model(tmp_path / "nano", preset="nano", context_length=128)
    max_tokens, clients = 8, 4
    result = load.run_load(str(source), "nano", max_batch=clients, clients=clients, duration_s=3.0,
                           max_tokens=max_tokens, max_seq_len=128, extra=("--tokenizer", "gpt2"),
                           disconnect_tokens=60)
    assert result.errors == []
    assert result.requests >= clients
    # A random model rarely ends its reply before max_tokens; no reply is longer.
    assert result.requests <= result.completion_tokens <= result.requests * max_tokens
    assert result.ttft_p50_s <= result.ttft_p95_s <= result.latency_p95_s
    assert result.latency_p50_s <= result.latency_p95_s
    assert result.tokens_per_s == pytest.approx(result.completion_tokens / result.wall_s)
    assert 1.0 < result.rows_per_step <= clients  # concurrent requests shared decode steps
    leave = result.disconnect
    assert leave["in_flight_after"] == 0
    assert leave["decode_steps_run_to_end"] == 59  # four rows at once, 59 steps after each prefill
    assert leave["decode_steps_to_idle"] <= leave["decode_steps"] < 20  # cancelled, not run to their end
