"""Crash safety: stop on a diverged loss, write checkpoints atomically, resume with the same randomness.

- ``StopOnNonFiniteLoss`` stops the run the moment the training loss is NaN or Inf, before the
  optimizer applies the poisoned gradients, naming the step and the last good checkpoint.
- ``AtomicCheckpointIO`` writes each checkpoint to a temporary file beside it and renames it into
  place (``gptlab.fileio.atomic_path``), so a crash or a full disk mid-write leaves the previous
  checkpoint intact; a failed write is one ``CheckpointError`` line.
- ``ExactResume`` restores the data loader's position and the random generators on resume, so a
  run continued with ``ckpt_path=last`` trains on the batches, with the dropout, of an uninterrupted run.
"""

from __future__ import annotations

import errno
import math
import random
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

from gptlab.errors import CheckpointError, GptlabError
from gptlab.fileio import atomic_path


class NonFiniteLossError(GptlabError):
    """The training loss became NaN or Inf; the run stopped before updating the weights with it."""


class StopOnNonFiniteLoss(L.Callback):
    """Stop training at the first NaN or Inf loss, keeping the last good checkpoint.

    Checked in ``on_before_backward``, so the weights are never updated with the bad gradients
    and no checkpoint after this point is written. Under data parallelism every rank learns of
    a bad loss on any rank (one all-reduce of a flag), so no rank is left waiting.
    """

    def on_before_backward(self, trainer: L.Trainer, pl_module: L.LightningModule, loss: torch.Tensor) -> None:
        finite = bool(torch.isfinite(loss.detach()).all())
        if trainer.world_size > 1:
            finite = trainer.strategy.reduce_boolean_decision(finite, all=True)
        if finite:
            return
        value = loss.detach().float().item() if loss.numel() == 1 else float("nan")
        kind = "NaN" if math.isnan(value) else "Inf"
        step = trainer.global_step + 1
        kept = _last_checkpoint(trainer)
        where = f"the last good checkpoint is {kept}" if kept else "no checkpoint was written before it"
        raise NonFiniteLossError(
            f"training loss is {kind} at step {step} (epoch {trainer.current_epoch}); stopped before updating "
            f"the weights, {where}. Lower task.optimizer.lr or set trainer.gradient_clip_val, then resume "
            "with ckpt_path=last"
        )


def _last_checkpoint(trainer: L.Trainer) -> str | None:
    for callback in trainer.checkpoint_callbacks:
        for path in (getattr(callback, "last_model_path", ""), getattr(callback, "best_model_path", "")):
            if path and Path(path).exists():
                return path
    return None


class AtomicCheckpointIO(TorchCheckpointIO):
    """``torch.save`` into a temporary sibling, fsync, rename: the checkpoint at a path is always whole.

    Lightning's own save stages the file in the system temporary directory and moves it, which is a
    copy (not atomic) when that directory is on another filesystem; here the temporary file is
    always beside the target.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options")
        target = Path(path)
        try:
            with atomic_path(target) as tmp:
                torch.save(checkpoint, tmp)
        except OSError as err:
            reason = "no space left on device" if err.errno == errno.ENOSPC else (err.strerror or str(err))
            kept = "the previous checkpoint there is kept" if target.exists() else "nothing was written there"
            raise CheckpointError(
                f"could not write checkpoint {target}: {reason}; {kept}. Free space or write checkpoints "
                "elsewhere (callbacks.model_checkpoint.dirpath=/other/disk), then resume with ckpt_path"
            ) from err


class ExactResume(L.Callback):
    """Make ``ckpt_path=...`` continue exactly: the same next batch and the same random draws.

    - Data position: Lightning saves a stateful training loader's position in the checkpoint
      (``gptlab.data.loaders``), but restores it only when the loader is first built, and
      ``estimated_stepping_batches`` (the learning-rate schedule's length) builds it, and draws its
      first batch, before the checkpoint is read. The saved position is applied here, at the start
      of training, and the iterator rebuilt from it.
    - Randomness: the Python, NumPy and torch generators are stored in the checkpoint and set
      again at the first training batch after resuming, after the loader iterators are built
      (building one draws from the torch generator), which is where the saved run stood.
    """

    def __init__(self) -> None:
        self._pending: dict[str, Any] | None = None

    def state_dict(self) -> dict[str, Any]:
        return {"rng": collect_rng_states()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._pending = state_dict.get("rng")

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Lightning internals (checked by the kill-and-resume test): the states it read from the
        # checkpoint, and the fetcher whose iterator (with one batch drawn ahead) predates them.
        fit_loop = trainer.fit_loop
        if getattr(fit_loop, "_combined_loader_states_to_load", None) and fit_loop._data_fetcher is not None:
            fit_loop._load_combined_loader_states()
            iter(fit_loop._data_fetcher)  # rebuild the iterator from the restored position

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int) -> None:
        if self._pending is not None:
            states, self._pending = self._pending, None
            set_rng_states(states)


def collect_rng_states() -> dict[str, Any]:
    """The generators' states in plain values and tensors (readable with ``torch.load(weights_only=True)``)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state(legacy=True)
    states: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(gauss)],
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: dict[str, Any]) -> None:
    """Inverse of :func:`collect_rng_states`."""
    torch.set_rng_state(states["torch"])
    kind, keys, pos, has_gauss, gauss = states["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    version, internal, gauss_next = states["python"]
    random.setstate((version, tuple(internal), gauss_next))
    if "cuda" in states and torch.cuda.is_available() and len(states["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(states["cuda"])
