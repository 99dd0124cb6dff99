"""Reference log-probabilities computed once and cached beside the data (``reference=precomputed``).

A cache file holds, for one split, each pair's summed response log-probabilities under the
reference. Its name hashes the reference's weights fingerprint and the split's token ids, so a
different model, tokenizer, prompt style or truncation computes afresh instead of reusing
stale numbers, and a resumed run finds its file without loading any reference model.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader

from gptlab.fileio import atomic_path
from gptlab.tasks.dpo_loss import pair_logps

#: Bumped when the cached numbers change meaning.
CACHE_VERSION = 1


def cache_path(directory: Path, reference_fingerprint: str, data_fingerprint: str) -> Path:
    """The cache file in ``directory`` (the data module's ``reference_cache_dir()``)."""
    key = hashlib.sha256(f"{reference_fingerprint}\0{data_fingerprint}\0v{CACHE_VERSION}".encode()).hexdigest()[:32]
    return Path(directory) / f"{key}.pt"


def read_cache(path: Path, size: int) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The cached ``(chosen, rejected)`` log-probabilities, or ``None`` if absent or not for ``size`` pairs."""
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, EOFError):
        return None
    chosen, rejected = data.get("chosen"), data.get("rejected")
    if not isinstance(chosen, torch.Tensor) or not isinstance(rejected, torch.Tensor) or len(chosen) != size:
        return None
    return chosen, rejected


def write_cache(path: Path, chosen: torch.Tensor, rejected: torch.Tensor, source: str) -> None:
    with atomic_path(path) as tmp:
        torch.save({"chosen": chosen.cpu(), "rejected": rejected.cpu(), "source": source}, tmp)


@torch.no_grad()
def compute_logps(model: nn.Module, loader: DataLoader, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed response log-probabilities of every pair of ``loader``, in pair order (by ``index``)."""
    size = len(loader.dataset)
    chosen, rejected = torch.zeros(size), torch.zeros(size)
    for batch in loader:
        batch = {k: v.to(device) for k, v in batch.items()}
        c, r, _, _ = pair_logps(model, batch)
        index = batch["index"].cpu()
        chosen[index], rejected[index] = c.float().cpu(), r.float().cpu()
    return chosen, rejected
