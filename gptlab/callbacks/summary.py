"""A few closing lines after fitting: where the run is, how well it did, how fast, what to try next."""

from __future__ import annotations

import shlex
import time
from pathlib import Path

import lightning as L
from lightning.pytorch.utilities import rank_zero_only

from gptlab.callbacks.sample import GenerateSample, prompt_of, tokenizer_of
from gptlab.callbacks.throughput import Throughput
from gptlab.runs import TOKENIZER_FILE
from gptlab.tokenizer import TOKENIZERS


def display_path(path: str | Path) -> str:
    """``path`` relative to the working directory when it lies below it (shorter to copy)."""
    path = Path(path).resolve()
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


class RunSummary(L.Callback):
    """The run directory, the final validation loss and perplexity, the training throughput (tokens
    per second of this fit, validation included) and the ``gptlab-generate`` command that completes
    the run's sample prompt with the model just trained.

    The lines are ready at the end of fitting (``lines``); ``gptlab-train`` prints them once the
    progress bar has closed, so they are the last thing a run shows.
    """

    def __init__(self, run_dir: str, val_key: str = "val/loss") -> None:
        self.run_dir = run_dir
        self.val_key = val_key
        self.lines: list[str] = []
        self._start: tuple[float, int] | None = None

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # After a resumed checkpoint is restored: count only this fit's tokens.
        self._start = (time.perf_counter(), _tokens_seen(pl_module))

    @rank_zero_only
    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        run = display_path(self.run_dir)
        self.lines = [f"Run finished: {run}"]
        val = trainer.callback_metrics.get(self.val_key)
        if val is not None:
            loss = float(val)
            # Only a next-token loss has a perplexity (a DPO loss of log 2 is not one of 2).
            ppl_metric = trainer.callback_metrics.get("val/ppl")
            ppl_text = f", perplexity {float(ppl_metric):,.1f}" if ppl_metric is not None else ""
            bpb_metric = trainer.callback_metrics.get("val/bpb")
            bpb_text = f", {float(bpb_metric):.3f} bits per byte" if bpb_metric is not None else ""
            self.lines.append(f"  final {self.val_key} {loss:.3f}{ppl_text}{bpb_text} at step {trainer.global_step}")
        if self._start is not None:
            seconds = time.perf_counter() - self._start[0]
            tokens = _tokens_seen(pl_module) - self._start[1]
            if tokens > 0 and seconds > 0:
                self.lines.append(f"  {tokens:,} training tokens in {seconds:,.0f} s: {tokens / seconds:,.0f} tokens/s"
                                  f"{_step_throughput(trainer)}")
        if getattr(pl_module, "generates_text", False):
            self.lines.append(f"  try it: {self.generate_command(trainer, run)}")

    def print(self) -> None:
        if self.lines:
            print("\n".join(self.lines))

    @staticmethod
    def generate_command(trainer: L.Trainer, run: str) -> str:
        """``gptlab-generate`` on this run with the sample callback's prompt and decoding: it prints
        the same text as the last sample (with the whitespace as generated)."""
        sampler = next((c for c in trainer.callbacks if isinstance(c, GenerateSample)), None)  # type: ignore[attr-defined]
        prompt = prompt_of(trainer, sampler.prompt if sampler else None) or "The"
        length = str(sampler.max_new_tokens if sampler else 50)
        words = ["gptlab-generate", run, "--prompt", prompt, "--max-new-tokens", length]
        if sampler is not None and sampler.temperature > 0:
            words += ["--temperature", f"{sampler.temperature:g}"]
            if sampler.top_k:
                words += ["--top-k", str(sampler.top_k)]
            words += ["--seed", str(sampler.seed)]
        tokenizer = tokenizer_of(trainer)
        # A model directory's tokenizer.json, unless the run keeps a copy (data.tokenizer=train).
        if getattr(tokenizer, "name", "gpt2") not in TOKENIZERS and not (Path(run) / TOKENIZER_FILE).is_file():
            words += ["--tokenizer", str(tokenizer.name)]
        return " ".join(shlex.quote(word) for word in words)


def _tokens_seen(pl_module: L.LightningModule) -> int:
    tokens = getattr(pl_module, "tokens_seen", None)
    return int(tokens) if tokens is not None else 0



def _step_throughput(trainer: L.Trainer) -> str:
    """The training steps alone (no validation), as the ``Throughput`` callback measured them."""
    meter = next((c for c in trainer.callbacks if isinstance(c, Throughput)), None)  # type: ignore[attr-defined]
    if meter is None or "tokens_per_sec" not in meter.summary:
        return ""
    mfu = meter.summary.get("mfu")
    peak = f", MFU {100 * mfu:.1f}% of {meter.peak / 1e9:,.0f} GFLOP/s" if mfu is not None and meter.peak else ""
    return f" (training steps alone: {meter.summary['tokens_per_sec']:,.0f} tokens/s{peak})"
