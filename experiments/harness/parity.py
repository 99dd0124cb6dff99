"""The gptlab backend against the harness's own hf backend on whole tasks: same documents, same
requests, and how far apart the answers are.

    python experiments/harness/parity.py smollm2-135m-instruct runs/harness/smollm2-hf --tasks gptlab

Runs ``simple_evaluate`` twice (``gptlab`` on SOURCE, ``hf`` on HF_DIR, gptlab's Hugging Face export of
the same weights, fp32 on the CPU) and prints, per task, both scores, the largest difference of a
request's log-likelihood, and how many greedy generations are identical, with each backend's wall time.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import gptlab.harness  # noqa: F401  (registers "gptlab")
from gptlab.harness.backend import GptlabLM
from gptlab.harness.run import task_manager
from lm_eval import simple_evaluate
from lm_eval.models.huggingface import HFLM


def scores(results: dict, task: str) -> dict[str, float]:
    return {k.split(",")[0]: v for k, v in results["results"][task].items()
            if isinstance(v, float) and "stderr" not in k}


def compare(ours: dict, theirs: dict, task: str) -> str:
    pairs = list(zip(ours["samples"][task], theirs["samples"][task], strict=True))
    assert all(a["doc_id"] == b["doc_id"] and a["arguments"] == b["arguments"] for a, b in pairs)
    kind = ours["configs"][task]["output_type"]
    if kind == "generate_until":
        same = sum(a["resps"][0][0] == b["resps"][0][0] for a, b in pairs)
        return f"{same} / {len(pairs)} generations identical"
    values = [(x[0] if isinstance(x, (list, tuple)) else x, y[0] if isinstance(y, (list, tuple)) else y)
              for a, b in pairs for x, y in zip([r[0] for r in a["resps"]], [r[0] for r in b["resps"]], strict=True)]
    worst = max(abs(x - y) for x, y in values)
    return f"{len(values)} log-likelihoods, largest difference {worst:.2e}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source")
    parser.add_argument("hf_dir")
    parser.add_argument("--tasks", nargs="+", default=["gptlab"])
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--work", default="runs/harness/parity")
    args = parser.parse_args()
    manager, _ = task_manager(Path(args.work), args.data_dir, args.tasks)
    runs, seconds = {}, {}
    for name in ("gptlab", "hf"):
        start = time.perf_counter()
        model = (GptlabLM(args.source, batch_size=args.batch_size, device="cpu") if name == "gptlab" else
                 HFLM(pretrained=args.hf_dir, dtype="float32", device="cpu", batch_size=args.batch_size))
        runs[name] = simple_evaluate(model=model, tasks=args.tasks, task_manager=manager, limit=args.limit,
                                     log_samples=True, bootstrap_iters=0)
        seconds[name] = time.perf_counter() - start
    print("| task | gptlab | hf | per request |\n|---|---|---|---|")
    for task in sorted(runs["gptlab"]["results"]):
        print(f"| {task} | {scores(runs['gptlab'], task)} | {scores(runs['hf'], task)} | "
              f"{compare(runs['gptlab'], runs['hf'], task)} |")
    print(f"wall time (model loading included): gptlab {seconds['gptlab']:.0f} s, hf {seconds['hf']:.0f} s")


if __name__ == "__main__":
    main()
