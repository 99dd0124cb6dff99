#!/usr/bin/env python
"""The architecture ablation's table and plot from its multirun directory.

    python experiments/architectures/summarize.py multirun/2026-11-25/23-30-00 [--plot ablation.png]

One row per job: the variant, its parameter count (built from the job's own ``config.yaml``), the
final validation loss and perplexity, training tokens/s and MFU, each also as a ratio to the
``gpt2`` baseline.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

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


def markdown(table: list[dict[str, float | str]]) -> str:
    base = next((r for r in table if r["variant"] == "gpt2"), table[0])
    lines = ["| variant | parameters | val loss | Δ val loss | perplexity | tokens/s | vs gpt2 | MFU |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in table:
        lines.append(
            f"| {r['variant']} | {r['params']:,} | {r['val_loss']:.3f} | {r['val_loss'] - base['val_loss']:+.3f} | "
            f"{math.exp(r['val_loss']):.1f} | {r['tokens_per_sec']:,.0f} | "
            f"{r['tokens_per_sec'] / base['tokens_per_sec']:.2f}x | {100 * r['mfu']:.1f}% |"
        )
    return "\n".join(lines)


def plot(table: list[dict[str, float | str]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [str(r["variant"]) for r in table]
    fig, (loss_ax, speed_ax) = plt.subplots(1, 2, figsize=(9, 3.2))
    loss_ax.bar(names, [r["val_loss"] for r in table], color="tab:blue")
    loss_ax.set_ylim(min(r["val_loss"] for r in table) - 0.2, max(r["val_loss"] for r in table) + 0.1)
    loss_ax.set_title("validation loss (lower is better)")
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
    table = [row for sweep in args.sweep_dirs for row in rows(sweep)]
    print(markdown(table))
    plot(table, args.plot)
    print(f"plot: {args.plot}")
