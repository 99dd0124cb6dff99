"""The GPU check's dry pass (experiments/gpu/check.py on the CPU): every section runs, none errs,
and the JSON has the keys a GPU run writes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

CHECK = Path(__file__).resolve().parents[1] / "experiments" / "gpu" / "check.py"
SECTIONS = ["environment", "gpt2_train_eager", "gpt2_train_compile", "smollm2_lora", "smollm2_full",
            "fully_shard", "generation"]


@pytest.mark.slow
def test_the_dry_pass_runs_every_section_and_writes_the_json(tmp_path: Path, smollm2_gguf: Path):
    out = tmp_path / "results.json"
    done = subprocess.run([sys.executable, str(CHECK), "--dry-run", "--out", str(out)],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    record = json.loads(out.read_text())
    assert record["dry_run"] is True
    assert list(record["sections"]) == SECTIONS
    errors = {name: entry["error"] or entry["skipped"] for name, entry in record["sections"].items() if not entry["ok"]}
    assert not errors
    sections = record["sections"]
    for name in ("gpt2_train_eager", "gpt2_train_compile", "smollm2_lora", "smollm2_full"):
        assert sections[name]["tokens_per_s"] > 0 and 0 < sections[name]["mfu"]
    assert sections["smollm2_lora"]["trainable_params"] < sections["smollm2_full"]["trainable_params"]
    assert sections["fully_shard"]["steps_logged"] >= 1 and sections["fully_shard"]["tokens_per_s"] > 0
    for batch in ("batch_1", "batch_2"):
        generation = sections["generation"][batch]
        assert generation["same_tokens"] is True  # float32 on the CPU: both decode the same tokens
        assert {"transformers", "gptlab", "gptlab_compile", "gptlab_vs_transformers"} <= set(generation)
