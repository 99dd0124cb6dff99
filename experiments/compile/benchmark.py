"""``task.compile=true`` against eager, for every task: training steps/s on the run's own code path.

Each task is composed from gptlab's Hydra config as ``gptlab-train`` composes it (the default run
for pretraining, ``experiment=spam_scratch`` / ``instruct_scratch`` / ``dpo_scratch`` for the
others), its data module and task are built by the same functions, and a ``lightning.Trainer`` from
the run's trainer config fits it. Only the run's callbacks and loggers are left out (no validation,
checkpoints, samples or exports), so what is timed is the training step: data loading, forward,
loss, backward, clipping and AdamW.

Per task, an eager and a compiled task start from the same weights. Both first fit ``--warmup``
steps: the compiled one compiles there, and its extra wall time over the eager warm-up is
reported as the compile time (a cold compile: Inductor's on-disk caches are off unless
``--warm-caches``; with them a second run on the same machine compiles in a fraction of it). Then ``--rounds`` rounds alternate the two (the order swapped each
round, so a change in machine load hits both alike), each a fresh ``Trainer`` fitting ``--steps``
steps on the same task object (its compiled graphs are kept). A round's steps/s counts the steps
between its first and last optimizer step; the table shows the median round. ``recompiles`` counts
graphs compiled after the warm-up: they are part of the timed rounds.

    python experiments/compile/benchmark.py --steps 8 --warmup 3 --rounds 3
"""

from __future__ import annotations

import argparse
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra import compose, initialize_config_module
from hydra.utils import instantiate
from omegaconf import DictConfig, open_dict
from torch._dynamo.utils import counters

from gptlab.checkpoints import save_model
from gptlab.cli.train import build_datamodule, check_vocab
from gptlab.model import GPT, GPTConfig

DATA = Path(__file__).resolve().parents[3] / "shared" / "data"
TASKS = ("pretrain", "classify", "instruct", "preference")


def overrides(task: str, data: Path, init: Path) -> list[str]:
    """The command line of each task's run (``gptlab-train`` plus these)."""
    return {
        "pretrain": [],  # the default run: micro on Python's documentation, batch 16 x 128 tokens
        "classify": ["experiment=spam_scratch", f"data.path={data / 'SMSSpamCollection'}"],
        "instruct": ["experiment=instruct_scratch", f"data.path={data / 'instruction-data.json'}"],
        "preference": ["experiment=dpo_scratch", f"task.init={init}",
                       f"data.path={data / 'instruction-data-with-preference.json'}"],
    }[task]


class StepClock(L.Callback):
    """When each optimizer step ended."""

    def __init__(self) -> None:
        self.ends: list[float] = []

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        self.ends.append(time.perf_counter())

    def steps_per_second(self) -> float:
        return (len(self.ends) - 1) / (self.ends[-1] - self.ends[0])


def fit(cfg: DictConfig, task: L.LightningModule, datamodule: L.LightningDataModule, steps: int) -> tuple[float, float]:
    """Fit ``steps`` steps with the run's trainer config; return (wall seconds of fit, steps/s)."""
    clock = StepClock()
    trainer = instantiate(cfg.trainer, max_steps=steps, max_epochs=-1, limit_val_batches=0, val_check_interval=1.0,
                          check_val_every_n_epoch=1, logger=False, callbacks=[clock], enable_checkpointing=False,
                          enable_progress_bar=False, enable_model_summary=False)
    start = time.perf_counter()
    trainer.fit(task, datamodule=datamodule)
    return time.perf_counter() - start, clock.steps_per_second()


def benchmark(name: str, cfg: DictConfig, args: argparse.Namespace) -> dict[str, Any]:
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    datamodule = build_datamodule(cfg)
    tasks = {}
    for compiled in (False, True):
        torch.manual_seed(cfg.seed)  # the same initial weights for both
        tasks[compiled] = instantiate(cfg.task, compile=compiled, _recursive_=False)
        check_vocab(datamodule, tasks[compiled])
    torch._dynamo.reset()  # no graphs (or recompile budget) carried over from the previous task
    counters.clear()
    warmup = {compiled: fit(cfg, tasks[compiled], datamodule, args.warmup)[0] for compiled in (False, True)}
    graphs = counters["stats"]["unique_graphs"]
    rates: dict[bool, list[float]] = {False: [], True: []}
    for round_ in range(args.rounds):
        for compiled in ((False, True) if round_ % 2 == 0 else (True, False)):
            rates[compiled].append(fit(cfg, tasks[compiled], datamodule, args.steps)[1])
    eager, compiled = statistics.median(rates[False]), statistics.median(rates[True])
    return {"task": name, "eager": eager, "compiled": compiled, "ratio": compiled / eager,
            "compile_s": warmup[True] - warmup[False], "graphs": graphs,
            "recompiles": counters["stats"]["unique_graphs"] - graphs,
            "graph_breaks": sum(counters["graph_break"].values()),
            "batch": f"{cfg.data.batch_size} x {cfg.model.context_length}", "rounds": rates}


def loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", default=",".join(TASKS), help=f"comma-separated, of {', '.join(TASKS)}")
    parser.add_argument("--steps", type=int, default=8, help="optimizer steps per timed round")
    parser.add_argument("--warmup", type=int, default=3, help="steps fitted first (the compiled task compiles)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--data", type=Path, default=DATA, help="directory of the book's data files")
    parser.add_argument("--warm-caches", action="store_true", help="let Inductor reuse graphs compiled by earlier runs")
    args = parser.parse_args()
    torch.compiler.config.force_disable_caches = not args.warm_caches

    before = loadavg()
    results = []
    with tempfile.TemporaryDirectory() as tmp, initialize_config_module("gptlab.conf", version_base="1.3"):
        for name in args.tasks.split(","):
            cfg = compose("train", overrides=[*overrides(name, args.data, Path(tmp) / "init"), f"output_dir={tmp}"])
            if name == "preference" and not (Path(tmp) / "init").is_dir():
                # DPO starts from a model of the run's architecture; random weights time the same.
                save_model(GPT(GPTConfig.from_dict(dict(cfg.model))), Path(tmp) / "init")
            with open_dict(cfg):
                cfg.task.compile = False
            results.append(benchmark(name, cfg, args))
            print(f"{name}: eager {results[-1]['rounds'][False]}, compiled {results[-1]['rounds'][True]} steps/s",
                  flush=True)
    after = loadavg()

    print(f"\n{platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}, "
          f"{args.warmup} warm-up steps, median of {args.rounds} rounds of {args.steps} steps; "
          f"load average (1/5/15 min) before {before}, after {after}\n")
    print("| task | batch x context | eager steps/s | compiled steps/s | compiled / eager | compile s "
          "| graphs | recompiles | graph breaks |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in results:
        print(f"| {r['task']} | {r['batch']} | {r['eager']:.3f} | {r['compiled']:.3f} | {r['ratio']:.2f}x "
              f"| {r['compile_s']:.1f} | {r['graphs']} | {r['recompiles']} | {r['graph_breaks']} |")


if __name__ == "__main__":
    main()
