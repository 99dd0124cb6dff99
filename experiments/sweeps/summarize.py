"""Summarize a finished sweep: summary.csv, summary.md (best first) and summary.png in its directory.

    python experiments/sweeps/summarize.py multirun/2026-01-01/12-00-00

Sweeps started with ``hparams_search=...`` write this summary by themselves when they end.
"""

import sys

from gptlab.sweeps import summarize_sweep

if __name__ == "__main__":
    for sweep_dir in sys.argv[1:] or ["."]:
        best = summarize_sweep(sweep_dir)[0]
        print(f"{sweep_dir}: best job {best['job']} {best['metric']}={best['objective']} {best['params']}")
