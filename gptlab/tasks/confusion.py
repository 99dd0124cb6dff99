"""Confusion matrices of a classifier, written beside the run as JSON and a torchmetrics plot."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import torch
from lightning.pytorch.utilities import rank_zero_info, rank_zero_only
from torchmetrics.classification import MulticlassConfusionMatrix

from gptlab.fileio import atomic_path, atomic_write_text


def format_confusion(matrix: list[list[int]], names: Sequence[str]) -> str:
    """The matrix as a text table: rows are true labels, columns predicted ones."""
    width = max(6, *(len(n) for n in names), *(len(str(v)) for row in matrix for v in row))
    lines = [" " * width + " " + " ".join(n.rjust(width) for n in names)]
    for name, row in zip(names, matrix):
        lines.append(name.rjust(width) + " " + " ".join(str(v).rjust(width) for v in row))
    return "\n".join(lines)


@rank_zero_only
def save_confusion(metric: MulticlassConfusionMatrix, matrix: torch.Tensor, split: str, names: Sequence[str],
                   directory: str | Path, step: int, echo: bool = False) -> None:
    """Write ``confusion_matrix_<split>.json`` and ``.png`` into ``directory`` (rank zero only).

    ``matrix`` is ``metric``'s computed value; ``echo`` also prints it as a table.
    """
    counts = matrix.long().cpu().tolist()
    if echo:
        rank_zero_info(f"Confusion matrix ({split}; rows: true label, columns: predicted):\n"
                       + format_confusion(counts, names))
    directory = Path(directory)
    payload = {"split": split, "labels": list(names), "matrix": counts, "step": int(step)}
    atomic_write_text(directory / f"confusion_matrix_{split}.json", json.dumps(payload, indent=2) + "\n")

    import matplotlib.pyplot as plt

    fig, ax = metric.plot(val=matrix.long().cpu(), labels=list(names))
    ax.set_title(f"{split} split")
    with atomic_path(directory / f"confusion_matrix_{split}.png") as tmp:
        fig.savefig(tmp)
    plt.close(fig)
