"""The first run's tokenizer and shape, chosen by measurement: each variant of ``gptlab-train``'s
default gets the default's own training time, and is scored in bits per byte on the same text.

The baseline is the quickstart exactly (``gptlab-train``: micro, GPT-2's tokenizer, one epoch).
Every other variant changes the tokenizer (a BPE learned from the training split,
``data.tokenizer=train``, or bytes) or the model preset, and trains for as long as the baseline
took (``trainer.max_time``, validating once an epoch, exporting its final weights). Then each
export is scored on the validation text, which is the same for every variant: the last 10% of
the corpus by tokens for GPT-2, and the text after the tokenizer's training text for trained
tokenizers, which differ by at most a few hundred characters at the cut. Bits per byte
(``val/bpb``) compare tokenizers fairly; loss per token does not.

    python experiments/quickstart/sweep.py              # ~15 min on 2 cores
    python experiments/quickstart/sweep.py --only gpt2 bpe-4k --budget 20   # a quick look
"""

from __future__ import annotations

import argparse
import json
import math
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import yaml

from gptlab.data import PretrainDataModule
from gptlab.evaluation.perplexity import batches_perplexity
from gptlab.inference import LLM

#: name -> overrides of gptlab-train's default; the baseline trains as the quickstart does.
VARIANTS: dict[str, list[str]] = {
    "gpt2": [],
    "bpe-1k": ["data.tokenizer=train", "data.vocab_size=1024"],
    "bpe-2k": ["data.tokenizer=train", "data.vocab_size=2048"],
    "bpe-4k": ["data.tokenizer=train", "data.vocab_size=4096"],
    "bpe-8k": ["data.tokenizer=train", "data.vocab_size=8192"],
    "byte": ["data.tokenizer=byte", "model.vocab_size=257"],
    "bpe-4k-mini": ["data.tokenizer=train", "data.vocab_size=4096", "model=mini"],
}
BASELINE = "gpt2"
SAMPLE = {"max_new_tokens": 50, "temperature": 0.8, "top_k": 40, "seed": 123}  # the sample callback's


def duration(seconds: float) -> str:
    """``trainer.max_time``'s DD:HH:MM:SS."""
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"00:{hours:02d}:{minutes:02d}:{secs:02d}"


def train(run: Path, overrides: list[str]) -> tuple[float, str]:
    """Run ``gptlab-train`` into ``run``; its training time in seconds (from its summary line) and
    the end of what it printed: the last sample and the summary."""
    command = [sys.executable, "-m", "gptlab.cli.train", f"hydra.run.dir={run}", "print_config=false", *overrides]
    result = subprocess.run(command, capture_output=True, text=True, timeout=1800)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}")
    found = re.search(r"training tokens in ([\d,.]+) s", result.stdout)
    if found is None:
        raise RuntimeError(f"no summary line in the output of {' '.join(command)}")
    return float(found.group(1).replace(",", "")), "\n".join(result.stdout.rstrip().splitlines()[-5:])


def score(run: Path) -> dict[str, Any]:
    """Bits per byte of the run's export on its validation split, its sample, and what it trained."""
    config = yaml.safe_load((run / "config.yaml").read_text())
    data = {k: v for k, v in config["data"].items() if k not in ("_target_", "sample_prompt")}
    data["max_length"] = config["model"]["context_length"]
    dm = PretrainDataModule(**data)
    dm.setup("fit")
    llm = LLM.load(str(run / "model"), device="cpu")
    windows = torch.utils.data.DataLoader(dm.val_dataset, batch_size=16)
    loss = batches_perplexity(llm.model, windows).loss
    metrics = json.loads((run / "metrics.json").read_text())
    sample = llm.generate(config["data"]["sample_prompt"], **SAMPLE)
    return {"val_loss": loss, "val_bpb": loss / math.log(2) / dm.val_bytes_per_token,
            "bytes_per_token": dm.val_bytes_per_token, "vocab_size": llm.tokenizer.vocab_size,
            "parameters": sum(p.numel() for p in llm.model.parameters()),
            "tokens_seen": metrics.get("tokens_seen"), "sample": config["data"]["sample_prompt"] + sample}


def table(results: dict[str, dict[str, Any]]) -> str:
    lines = ["| variant | vocab | parameters | bytes/token | training s | tokens seen | val loss (nats/token) "
             "| **val bits/byte** | last sample |", "|---|---|---|---|---|---|---|---|---|"]
    for name, r in results.items():
        sample = " ".join(r["sample"].split()).replace("|", "\\|")
        seen = f"{r['tokens_seen']:,.0f}" if r["tokens_seen"] is not None else "–"
        lines.append(f"| {name} | {r['vocab_size']:,} | {r['parameters'] / 1e6:.1f}M | {r['bytes_per_token']:.2f} | "
                     f"{r['train_s']:.0f} | {seen} | {r['val_loss']:.3f} | **{r['val_bpb']:.3f}** | {sample} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    parser.add_argument("--budget", type=float, default=None,
                        help="seconds of training per variant (default: what the baseline took)")
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("sweep.json"))
    args = parser.parse_args()
    results: dict[str, dict[str, Any]] = {}
    budget = args.budget
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.only:
            overrides = list(VARIANTS[name])
            if name != BASELINE or args.budget is not None:
                if budget is None:
                    raise SystemExit("--budget is needed when the baseline is not run first")
                overrides += ["trainer.max_epochs=1000", f"+trainer.max_time='{duration(budget)}'",
                              "trainer.val_check_interval=1.0", "+callbacks.export.best=false"]
            start = time.perf_counter()
            train_s, printed = train(Path(tmp) / name, overrides)
            results[name] = {"overrides": overrides, "train_s": train_s, "wall_s": time.perf_counter() - start,
                             "printed": printed, **score(Path(tmp) / name)}
            if name == BASELINE and budget is None:
                budget = train_s
            print(table({name: results[name]}).splitlines()[-1], flush=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(table(results))


if __name__ == "__main__":
    main()
