"""Training throughput: gptlab's Lightning task against a plain PyTorch loop on the same model.

Both train the same GPT on the same batches with the same optimizer (AdamW with decay groups,
the warmup-cosine schedule, gradient clipping at 1.0), so the difference is what the framework
costs per step. Timing starts after warm-up steps and stops after the last optimizer step.

    python experiments/train_throughput/framework_overhead.py --preset micro --batch-size 16 --steps 40
"""

from __future__ import annotations

import argparse
import platform
import time

import lightning as L
import torch
from torch.utils.data import DataLoader, TensorDataset

from gptlab import GPT, GPTConfig
from gptlab.tasks import PretrainTask
from gptlab.tasks.optim import OptimizerConfig, SchedulerConfig, build_adamw, lr_lambda
from gptlab.tasks.causal_lm import next_token_loss


def make_batches(cfg: GPTConfig, batch_size: int, steps: int, seed: int = 0) -> DataLoader:
    generator = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, cfg.vocab_size, (batch_size * steps, cfg.context_length + 1), generator=generator)
    dataset = TensorDataset(tokens[:, :-1].contiguous(), tokens[:, 1:].contiguous())
    return DataLoader(dataset, batch_size=batch_size, shuffle=False, drop_last=True)


def plain_pytorch(cfg: GPTConfig, loader: DataLoader, warmup: int) -> float:
    """The loop a researcher would write by hand (book section 5.2 plus appendix D)."""
    torch.manual_seed(0)
    model = GPT(cfg).train()
    optimizer = build_adamw(model, OptimizerConfig())
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(SchedulerConfig(), len(loader)))
    start, tokens = 0.0, 0
    for step, (inputs, targets) in enumerate(loader):
        if step == warmup:
            start, tokens = time.perf_counter(), 0
        optimizer.zero_grad(set_to_none=True)
        loss = next_token_loss(model(inputs), targets)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        tokens += inputs.numel()
    return tokens / (time.perf_counter() - start)


class StepTimer(L.Callback):
    def __init__(self, warmup: int) -> None:
        self.warmup, self.start, self.tokens = warmup, 0.0, 0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if batch_idx == self.warmup:
            self.start, self.tokens = time.perf_counter(), 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if batch_idx >= self.warmup:
            self.tokens += batch[0].numel()
            self.end = time.perf_counter()

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / (self.end - self.start)


def gptlab_lightning(cfg: GPTConfig, loader: DataLoader, warmup: int) -> float:
    torch.manual_seed(0)
    task = PretrainTask(model=cfg.to_dict())
    timer = StepTimer(warmup)
    trainer = L.Trainer(
        accelerator="cpu", devices=1, precision="32-true", max_epochs=1, gradient_clip_val=1.0,
        callbacks=[timer], logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, log_every_n_steps=5,
    )
    trainer.fit(task, train_dataloaders=loader)
    return timer.tokens_per_second


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="micro")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()

    cfg = GPTConfig.from_preset(args.preset)
    loader = make_batches(cfg, args.batch_size, args.steps)
    results: dict[str, list[float]] = {"plain PyTorch": [], "gptlab (Lightning)": []}
    for _ in range(args.repeats):  # interleave so drift in machine load hits both alike
        results["plain PyTorch"].append(plain_pytorch(cfg, loader, args.warmup))
        results["gptlab (Lightning)"].append(gptlab_lightning(cfg, loader, args.warmup))

    print(f"\n{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
          f"torch {torch.__version__}, preset {args.preset}, batch {args.batch_size} x {cfg.context_length} "
          f"tokens, {args.steps - args.warmup} timed steps, best of {args.repeats}\n")
    print("| loop | tokens/s |")
    print("|---|---:|")
    for name, values in results.items():
        print(f"| {name} | {max(values):,.0f} |")
    ratio = max(results["gptlab (Lightning)"]) / max(results["plain PyTorch"])
    print(f"\ngptlab / plain PyTorch: {ratio:.3f}")


if __name__ == "__main__":
    main()
