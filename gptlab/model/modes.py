"""Module modes for a block of code: whatever runs inside sees the mode it needs, and the caller's
mode comes back afterwards (a training loop that samples or scores midway keeps its dropout)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from torch import nn


@contextmanager
def eval_mode(module: nn.Module) -> Iterator[nn.Module]:
    """``module`` in eval mode (no dropout) inside the block; afterwards every submodule is back in
    the mode it had, even when the block raises or a generator using it is closed early.

    Each submodule's own flag is restored, not the root's copied down: a part kept in eval mode
    while the rest trains (a frozen one, say) stays so.
    """
    modes = [(sub, sub.training) for sub in module.modules()]
    module.eval()
    try:
        yield module
    finally:
        for sub, training in modes:
            sub.training = training
