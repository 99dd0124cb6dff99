"""Data loaders pin host memory exactly when their trainer trains on CUDA, for every data module,
and Lightning's batch transfer is the non-blocking copy that pinned memory makes asynchronous."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import lightning as L
import torch
from lightning.fabric.utilities import move_data_to_device
from torch.overrides import TorchFunctionMode

from gptlab.data import InstructionDataModule, PreferenceDataModule, PretrainDataModule, SMSSpamDataModule
from gptlab.data.loaders import pin_memory


def _modules(data: Path) -> dict[str, L.LightningDataModule]:
    return {
        "pretrain": PretrainDataModule(path=str(data / "the-verdict.txt"), max_length=32, batch_size=2),
        "classification": SMSSpamDataModule(path=str(data / "SMSSpamCollection"), max_length=32),
        "instruction": InstructionDataModule(path=str(data / "instruction-data.json"), allowed_max_length=64),
        "preference": PreferenceDataModule(path=str(data / "instruction-data-with-preference.json"),
                                           max_length=64),
    }


def _cuda_trainer() -> SimpleNamespace:
    """What the loaders read of a trainer on GPU 0 (no GPU is needed to build a loader)."""
    return SimpleNamespace(strategy=SimpleNamespace(root_device=torch.device("cuda", 0)))


def test_the_trainers_device_decides_pinning():
    assert pin_memory(None) is False  # a data module used on its own: its caller moves batches
    assert pin_memory(L.Trainer(accelerator="cpu", logger=False)) is False
    assert pin_memory(_cuda_trainer()) is True  # type: ignore[arg-type]


def test_every_data_module_pins_only_for_a_cuda_trainer(shared_data: Path):
    cpu = L.Trainer(accelerator="cpu", logger=False)
    for name, module in _modules(shared_data).items():
        module.setup("fit")
        module.trainer = cpu  # as Trainer.fit attaches it
        assert not module.train_dataloader().pin_memory and not module.val_dataloader().pin_memory, name
        module.trainer = _cuda_trainer()
        assert module.train_dataloader().pin_memory and module.val_dataloader().pin_memory, name


class _RecordCopies(TorchFunctionMode):
    def __init__(self) -> None:
        super().__init__()
        self.calls: list[dict] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func is torch.Tensor.to:
            self.calls.append(dict(kwargs or {}))
        return func(*args, **(kwargs or {}))


def test_lightning_copies_batches_to_an_accelerator_without_blocking():
    batch = {"input_ids": torch.ones(2, 3, dtype=torch.long), "labels": torch.zeros(2, dtype=torch.long)}
    with _RecordCopies() as copies:
        moved = move_data_to_device(batch, torch.device("meta"))  # any device but CPU / MPS, as CUDA
    assert all(t.device.type == "meta" for t in moved.values())
    assert copies.calls == [{"non_blocking": True}] * 2
    with _RecordCopies() as copies:
        move_data_to_device(batch, torch.device("cpu"))
    assert copies.calls == [{}] * 2  # to the CPU, a plain blocking copy
