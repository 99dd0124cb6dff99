"""Data loaders: the options every data module shares, and loaders that remember their position.

Batches reach a CUDA device asynchronously when they sit in pinned (page-locked) host memory:
Lightning's default ``transfer_batch_to_device`` (``lightning_fabric.utilities.move_data_to_device``)
already copies every tensor with ``non_blocking=True`` to any device but CPU and MPS, and such a
copy only overlaps with the GPU's work when its source is pinned. So the loaders pin exactly when
the trainer they serve trains on CUDA (``pin_memory``); nothing else needs changing for the copy.

A pretraining loader also remembers its position, so a resumed run sees the batches it would have seen.

torchdata's ``StatefulDataLoader`` is a drop-in ``DataLoader`` with ``state_dict`` /
``load_state_dict``: the shuffling generator and how many batches of the epoch were drawn.
Lightning (>= 2.3) stores that state in every checkpoint, so a run resumed mid-epoch continues
with the next unseen batch instead of restarting the epoch in a new order (applied on resume by
``gptlab.callbacks.faults.ExactResume``).
"""

from __future__ import annotations

import warnings
from typing import Any

import lightning as L
from torch.utils.data import DataLoader, Dataset
from torchdata.stateful_dataloader import StatefulDataLoader

# torchdata calls a torch API that warns it is deprecated each time an iterator starts.
warnings.filterwarnings("ignore", message="'set_vital' is deprecated")


def pin_memory(trainer: L.Trainer | None) -> bool:
    """Whether batches for ``trainer`` should be pinned: only when it trains on a CUDA device.

    The trainer's device decides, not ``torch.cuda.is_available()``: a CPU run on a GPU machine
    would pin (a copy and locked memory per batch) for a transfer that never happens. A data module
    used outside a trainer (``trainer`` None) does not pin: its caller moves batches itself.
    """
    return trainer is not None and trainer.strategy.root_device.type == "cuda"


def loader_options(trainer: L.Trainer | None, num_workers: int) -> dict[str, Any]:
    """The ``DataLoader`` arguments every data module shares: workers kept alive between epochs,
    memory pinned for a CUDA trainer (see ``pin_memory``)."""
    return {"num_workers": num_workers, "persistent_workers": num_workers > 0, "pin_memory": pin_memory(trainer)}


def stateful_loader(dataset: Dataset, batch_size: int, shuffle: bool = False, drop_last: bool = False,
                    num_workers: int = 0, trainer: L.Trainer | None = None, **kwargs: Any) -> DataLoader:
    """A resumable loader with the usual ``DataLoader`` arguments and ``loader_options(trainer, num_workers)``."""
    return StatefulDataLoader(dataset, batch_size=batch_size, shuffle=shuffle, drop_last=drop_last,
                              **loader_options(trainer, num_workers), **kwargs)
