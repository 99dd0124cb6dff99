#!/usr/bin/env python
"""The architecture ablation's table and plot from its multirun directories (one per seed).

    python experiments/architectures/summarize.py multirun/2026-11-25/23-30-00 [MORE_SEEDS...] [--plot ablation.png]

One row per variant: its parameter count (built from the job's own ``config.yaml``), the final
validation loss of each seed and their mean (with its difference to the ``gpt2`` baseline), and
training tokens/s and MFU averaged over the seeds.
"""

from __future__ import annotations

import argparse
import math
import statistics
from pathlib import Path
from typing import Any

import torch
import yaml

from gptlab.model import GPT, GPTConfig
from gptlab.sweeps import read_trials

ORDER = ("gpt2", "rmsnorm", "swiglu", "rope", "gqa", "llama")


def parameters(job_dir: Path) -> int:
    model = yaml.safe_load((job_dir / "config.yaml").read_text())["model"]
    with torch.device("meta"):
        return sum(p.numel() for p in GPT(GPTConfig.from_dict(model)).parameters())


def rows(sweep_dir: Path) -> list[dict[str, float | str]]:
    table = []
    for trial in read_trials(sweep_dir):
        metrics = trial["metrics"]
        table.append({
            "variant": str(trial["params"].get("+variant", trial["params"].get("variant", trial["job"]))),
            "params": parameters(sweep_dir / trial["job"]),
            "val_loss": metrics.get("val/loss", math.nan),
            "tokens_per_sec": metrics.get("perf/tokens_per_sec", math.nan),
            "mfu": metrics.get("perf/mfu", math.nan),
        })
    return sorted(table, key=lambda r: ORDER.index(r["variant"]) if r["variant"] in ORDER else len(ORDER))


def by_variant(table: list[dict[str, float | str]]) -> list[dict[str, Any]]:
    """The jobs of every seed grouped per variant, with means."""
    grouped: dict[str, list[dict[str, float | str]]] = {}
    for row in table:
        grouped.setdefault(str(row["variant"]), []).append(row)
    return [{
        "variant": name,
        "params": runs[0]["params"],
        "val_losses": [float(r["val_loss"]) for r in runs],
        "val_loss": statistics.fmean(float(r["val_loss"]) for r in runs),
        "tokens_per_sec": statistics.fmean(float(r["tokens_per_sec"]) for r in runs),
        "mfu": statistics.fmean(float(r["mfu"]) for r in runs),
    } for name, runs in grouped.items()]


def markdown(variants: list[dict[str, Any]]) -> str:
    base = next((v for v in variants if v["variant"] == "gpt2"), variants[0])
    lines = ["| variant | parameters | val loss per seed | mean val loss | Δ vs gpt2 | tokens/s | vs gpt2 | MFU |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for v in variants:
        lines.append(
            f"| {v['variant']} | {v['params']:,} | {' / '.join(f'{x:.3f}' for x in v['val_losses'])} | "
            f"{v['val_loss']:.3f} | {v['val_loss'] - base['val_loss']:+.3f} | {v['tokens_per_sec']:,.0f} | "
            f"{v['tokens_per_sec'] / base['tokens_per_sec']:.2f}x | {100 * v['mfu']:.1f}% |"
        )
    return "\n".join(lines)


def plot(table: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [str(r["variant"]) for r in table]
    fig, (loss_ax, speed_ax) = plt.subplots(1, 2, figsize=(9, 3.2))
    loss_ax.bar(names, [r["val_loss"] for r in table], color="tab:blue", alpha=0.6)
    for i, r in enumerate(table):  # every seed as a dot on its variant's mean
        loss_ax.plot([i] * len(r["val_losses"]), r["val_losses"], "k.", markersize=6)
    lows = [x for r in table for x in r["val_losses"]]
    loss_ax.set_ylim(min(lows) - 0.1, max(lows) + 0.05)
    loss_ax.set_title("validation loss (mean, seeds as dots)")
    speed_ax.bar(names, [r["tokens_per_sec"] for r in table], color="tab:orange")
    speed_ax.set_title("training tokens/s (CPU, fp32)")
    for ax in (loss_ax, speed_ax):
        ax.tick_params(axis="x", rotation=30)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sweep_dirs", nargs="+", type=Path)
    parser.add_argument("--plot", type=Path, default=Path(__file__).with_name("ablation.png"))
    args = parser.parse_args()
    variants = by_variant([row for sweep in args.sweep_dirs for row in rows(sweep)])
    print(markdown(variants))
    plot(variants, args.plot)
    print(f"plot: {args.plot}")
