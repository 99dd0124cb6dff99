"""Print a completion of a prompt after each validation (the book's ``generate_and_print_sample``)."""

from __future__ import annotations

from typing import Any

import lightning as L
import torch

from gptlab.generate import generate


def prompt_of(trainer: L.Trainer, prompt: str | None) -> str | None:
    """``prompt`` if set, else the data module's ``sample_prompt`` (text that fits its corpus)."""
    if prompt:
        return prompt
    from_data = getattr(getattr(trainer, "datamodule", None), "sample_prompt", None)
    return from_data if isinstance(from_data, str) and from_data else None


def tokenizer_of(trainer: L.Trainer) -> Any:
    """The data module's tokenizer, or None (no data module, or one without a tokenizer)."""
    return getattr(getattr(trainer, "datamodule", None), "tokenizer", None)


class GenerateSample(L.Callback):
    """Sample ``max_new_tokens`` after a prompt and print them on one line, so progress is readable.

    The prompt is ``prompt``, or when that is null the data module's ``sample_prompt`` (each data
    config sets one that fits its corpus), or when neither is set an unconditional sample started
    from ``<|endoftext|>``. Decoding uses ``temperature`` and ``top_k`` (0: greedy) with a fixed
    ``seed``, so successive samples differ by what the model learned, not by chance; it stops at
    the tokenizer's end-of-text id. Runs of whitespace (code indentation, blank lines) print as
    one space.
    """

    def __init__(
        self,
        prompt: str | None = None,
        max_new_tokens: int = 50,
        temperature: float = 0.8,
        top_k: int | None = 40,
        seed: int = 123,
    ) -> None:
        self.prompt = prompt
        self.max_new_tokens = max_new_tokens
        self.temperature = temperature
        self.top_k = top_k
        self.seed = seed
        self.last_sample: str | None = None

    def sample(self, trainer: L.Trainer, pl_module: L.LightningModule) -> str | None:
        """The prompt and its completion as one line of text; None without a tokenizer."""
        tokenizer = tokenizer_of(trainer)
        if tokenizer is None:
            return None
        prompt = prompt_of(trainer, self.prompt)
        prompt_ids = tokenizer.encode(prompt) if prompt else [tokenizer.eot_id]
        ids = torch.tensor([prompt_ids], device=pl_module.device)[:, -pl_module.gpt.cfg.context_length:]
        generator = torch.Generator(device=pl_module.device).manual_seed(self.seed)
        out = generate(pl_module.gpt, ids, self.max_new_tokens, temperature=self.temperature, top_k=self.top_k,
                       eos_id=tokenizer.eot_id, generator=generator, vocab_limit=tokenizer.vocab_size)
        new = out[0, ids.shape[1]:].tolist()
        if tokenizer.eot_id in new:
            new = new[: new.index(tokenizer.eot_id)]
        return " ".join(f"{prompt or ''}{tokenizer.decode(new)}".split())

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or not getattr(pl_module, "generates_text", False):
            return
        # Every rank decodes, rank zero prints: a sharded model (trainer=fsdp, fully_shard) gathers
        # each block's weights from all ranks, so decoding on rank zero alone would wait forever.
        text = self.sample(trainer, pl_module)
        if text is None or trainer.global_rank != 0:
            return
        self.last_sample = text
        message = f"[step {trainer.global_step}] {text}"
        bar = trainer.progress_bar_callback
        if bar is not None and hasattr(bar, "print"):
            bar.print(message)
        else:
            print(message)
