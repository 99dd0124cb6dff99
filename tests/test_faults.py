"""Crash safety: atomic checkpoints, a full disk, a NaN loss, a bad ckpt_path, and kill-then-resume."""

from __future__ import annotations

import csv
import errno
import os
from pathlib import Path

import pytest
import torch
from helpers.runs import train_command, train_here, user_error_of

from gptlab.callbacks.faults import AtomicCheckpointIO
from gptlab.errors import CheckpointError

FAST = ["model=nano", "trainer=debug", "data.batch_size=4", "print_config=false", "callbacks.sample=null",
        "callbacks.export=null", "callbacks.loss_plot=null"]


def train_losses(run_dir: Path) -> dict[int, float]:
    rows = csv.DictReader((run_dir / "metrics.csv").open())
    return {int(r["step"]): float(r["train/loss"]) for r in rows if r.get("train/loss")}


def test_a_failed_write_leaves_the_previous_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    path = tmp_path / "last.ckpt"
    io = AtomicCheckpointIO()
    io.save_checkpoint({"global_step": 1, "w": torch.ones(3)}, path)
    real_save = torch.save

    def crash_mid_write(obj, f, *args, **kwargs):
        real_save(obj, f, *args, **kwargs)  # the bytes are out ...
        with open(f, "r+b") as handle:      # ... but only half of them when the crash comes
            handle.truncate(os.path.getsize(f) // 2)
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", crash_mid_write)
    with pytest.raises(KeyboardInterrupt):
        io.save_checkpoint({"global_step": 2, "w": torch.zeros(3)}, path)
    monkeypatch.undo()
    assert torch.load(path, weights_only=True)["global_step"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]  # no temporary file left behind


def test_a_full_disk_is_one_clear_error_and_the_previous_checkpoint_survives(tmp_path: Path,
                                                                             monkeypatch: pytest.MonkeyPatch):
    path = tmp_path / "last.ckpt"
    io = AtomicCheckpointIO()
    io.save_checkpoint({"global_step": 1}, path)

    def disk_full(obj, f, *args, **kwargs):
        Path(f).write_bytes(b"partial")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(torch, "save", disk_full)
    with pytest.raises(CheckpointError, match=r"could not write checkpoint .*last\.ckpt: no space left on device; "
                                              r"the previous checkpoint there is kept"):
        io.save_checkpoint({"global_step": 2}, path)
    monkeypatch.undo()
    assert torch.load(path, weights_only=True)["global_step"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]


@pytest.mark.slow
def test_a_nan_loss_stops_with_one_line_naming_the_step_and_keeps_the_good_checkpoint(tmp_path: Path):
    run_dir = tmp_path / "nan"
    line = user_error_of(run_dir, *FAST, "+callbacks.nan._target_=helpers.inject.NanLossAtStep",
                         "+callbacks.nan.step=3")
    last = run_dir / "checkpoints" / "last.ckpt"
    assert "training loss is NaN at step 3" in line and str(last) in line, line
    ckpt = torch.load(last, map_location="cpu", weights_only=True)
    assert ckpt["global_step"] == 2  # saved at the validation after step 2; nothing after the NaN
    assert all(torch.isfinite(v).all() for v in ckpt["state_dict"].values() if v.is_floating_point())


@pytest.mark.parametrize("content, expected", [(b"not a checkpoint at all", "cannot read"),
                                               (None, "not a Lightning checkpoint of a gptlab task")])
def test_a_corrupt_or_foreign_ckpt_path_is_one_line_naming_it(tmp_path: Path, content: bytes | None, expected: str):
    bad = tmp_path / "bad.ckpt"
    if content is None:
        torch.save({"weights": torch.ones(2)}, bad)  # a PyTorch file, but no Lightning checkpoint
    else:
        bad.write_bytes(content)
    line = user_error_of(tmp_path / "run", *FAST, f"ckpt_path={bad}")
    assert expected in line and str(bad) in line, line


@pytest.mark.slow
def test_a_run_killed_with_sigkill_resumes_at_its_saved_step_with_the_same_losses(verdict_path: Path,
                                                                                   tmp_path: Path):
    # Dropout on and shuffled data over a full (unlimited) epoch: exact only if the data position
    # and the random generators are restored along with the weights and the optimizer.
    setup = [*FAST, f"data.path={verdict_path}", "model.drop_rate=0.1", "trainer.max_steps=8",
             "trainer.max_epochs=2", "trainer.limit_train_batches=null", "trainer.val_check_interval=2"]
    reference = tmp_path / "uninterrupted"
    train_here(reference, *setup)

    run = tmp_path / "killed"
    killed = train_command(run, *setup, "+callbacks.kill._target_=inject.KillAtStep", "+callbacks.kill.step=5",
                           check=False)
    assert killed.returncode == -9, killed.stderr[-2000:]
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 4
    train_here(run, *setup, "ckpt_path=last")

    expected, got = train_losses(reference), train_losses(run)
    later = [step for step in expected if step >= 4]
    assert later == [4, 5, 6, 7] and all(step in got for step in later), (expected, got)
    assert [got[s] for s in later] == pytest.approx([expected[s] for s in later], rel=1e-5, abs=1e-6)
    final = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    ref_final = torch.load(reference / "checkpoints" / "last.ckpt", weights_only=True)
    assert final["global_step"] == ref_final["global_step"] == 8
    for key, value in ref_final["state_dict"].items():
        torch.testing.assert_close(final["state_dict"][key], value, rtol=1e-5, atol=1e-6)
