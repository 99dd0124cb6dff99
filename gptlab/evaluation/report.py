"""The written result of one evaluation: per-record JSONL, a summary JSON, a markdown report and,
when a judge scored the responses, a histogram of its scores. Every file is written atomically."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from gptlab.fileio import atomic_path, atomic_write_text


def summarize_scores(scores: Sequence[int | None]) -> dict[str, float | int | None]:
    """Mean over the scored records, and how many were scored and unscored."""
    scored = [s for s in scores if s is not None]
    return {"judge_mean": sum(scored) / len(scored) if scored else None,
            "judge_scored": len(scored), "judge_unscored": len(scores) - len(scored)}


def write_jsonl(path: Path, rows: Sequence[Mapping[str, Any]]) -> Path:
    return atomic_write_text(path, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))


def draw_histogram(scores: Sequence[int], path: Path, title: str) -> Path:
    """A histogram of judge scores in ten bins of 10 points."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.hist(scores, bins=range(0, 101, 10), edgecolor="black")
    ax.set_xlabel("Judge score (0-100)")
    ax.set_ylabel("Responses")
    ax.set_title(title)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp)
    plt.close(fig)
    return path


def markdown_report(title: str, summary: Mapping[str, Any], settings: Mapping[str, Any],
                    histogram: str | None = None) -> str:
    """A short markdown page: the numbers, then how they were obtained."""
    def fmt(value: Any) -> str:
        return f"{value:.4f}" if isinstance(value, float) else "n/a" if value is None else str(value)

    lines = [f"# {title}", "", "| metric | value |", "|---|---|"]
    lines += [f"| {key} | {fmt(value)} |" for key, value in summary.items()]
    if histogram:
        lines += ["", f"![judge scores]({histogram})"]
    lines += ["", "## Settings", ""]
    lines += [f"- {key}: `{value if isinstance(value, str) else json.dumps(value)}`" for key, value in settings.items()]
    return "\n".join(lines) + "\n"
