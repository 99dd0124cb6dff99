"""Data loaders that remember their position, so a resumed run sees the batches it would have seen.

torchdata's ``StatefulDataLoader`` is a drop-in ``DataLoader`` with ``state_dict`` /
``load_state_dict``: the shuffling generator and how many batches of the epoch were drawn.
Lightning (>= 2.3) stores that state in every checkpoint, so a run resumed mid-epoch continues
with the next unseen batch instead of restarting the epoch in a new order (applied on resume by
``gptlab.callbacks.faults.ExactResume``).
"""

from __future__ import annotations

import warnings
from typing import Any

from torch.utils.data import DataLoader, Dataset
from torchdata.stateful_dataloader import StatefulDataLoader

# torchdata calls a torch API that warns it is deprecated each time an iterator starts.
warnings.filterwarnings("ignore", message="'set_vital' is deprecated")


def stateful_loader(dataset: Dataset, batch_size: int, shuffle: bool = False, drop_last: bool = False,
                    num_workers: int = 0, **kwargs: Any) -> DataLoader:
    """A resumable loader with the usual ``DataLoader`` arguments (workers kept alive between epochs)."""
    return StatefulDataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        drop_last=drop_last,
        num_workers=num_workers,
        persistent_workers=num_workers > 0,
        **kwargs,
    )
