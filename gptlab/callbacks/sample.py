"""Print a completion of a fixed prompt after each validation (the book's ``generate_and_print_sample``)."""

from __future__ import annotations

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_only

from gptlab.generate import generate


class GenerateSample(L.Callback):
    """Greedy-decode ``max_new_tokens`` after ``prompt`` and print it, so progress is readable."""

    def __init__(self, prompt: str = "Every effort moves you", max_new_tokens: int = 30) -> None:
        self.prompt = prompt
        self.max_new_tokens = max_new_tokens
        self.last_sample: str | None = None

    @rank_zero_only
    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or not getattr(pl_module, "generates_text", False):
            return
        tokenizer = getattr(trainer.datamodule, "tokenizer", None)
        if tokenizer is None:
            return
        ids = torch.tensor([tokenizer.encode(self.prompt)], device=pl_module.device)
        ids = ids[:, -pl_module.gpt.cfg.context_length:]
        out = generate(pl_module.gpt, ids, self.max_new_tokens, vocab_limit=tokenizer.vocab_size)
        self.last_sample = tokenizer.decode(out[0].tolist()).replace("\n", " ")
        message = f"[step {trainer.global_step}] {self.last_sample}"
        bar = trainer.progress_bar_callback
        if bar is not None and hasattr(bar, "print"):
            bar.print(message)
        else:
            print(message)
