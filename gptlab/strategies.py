"""Sharding for the GPT: FSDP wrapping per transformer block.

The unit of sharding is one ``TransformerBlock``: each block's parameters are
gathered just before it runs and freed after, so peak memory holds one block's full weights rather
than the whole model's. Two sharded strategies are offered:

- ``fsdp``: Lightning's ``FSDPStrategy`` (FSDP1), GPU only (Lightning refuses a CPU accelerator);
- ``FullyShardStrategy``: Lightning's ``ModelParallelStrategy`` with PyTorch's FSDP2 ``fully_shard``
  applied per block, which also runs on CPU processes over gloo.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import lightning as L
from lightning.pytorch.strategies import FSDPStrategy, ModelParallelStrategy
from torch import nn

from gptlab.model.gpt import TransformerBlock

#: The modules FSDP wraps one at a time (and FSDP1's own activation checkpointing recomputes).
BLOCK_CLASSES: frozenset[type[nn.Module]] = frozenset({TransformerBlock})


def fsdp(
    sharding_strategy: Literal["FULL_SHARD", "SHARD_GRAD_OP", "HYBRID_SHARD", "NO_SHARD"] = "FULL_SHARD",
    state_dict_type: Literal["sharded", "full"] = "sharded",
    activation_checkpointing: bool = False,
    cpu_offload: bool = False,
    **kwargs: Any,
) -> FSDPStrategy:
    """Lightning's ``FSDPStrategy`` wrapping each ``TransformerBlock`` in its own FSDP unit.

    ``state_dict_type="sharded"`` makes every rank write its own shard into a checkpoint directory
    (fast, no gather on rank zero); ``python -m lightning.pytorch.utilities.consolidate_checkpoint DIR``
    turns it into one file, and FSDP reloads it on any number of devices.
    """
    return FSDPStrategy(
        auto_wrap_policy=set(BLOCK_CLASSES),
        activation_checkpointing_policy=set(BLOCK_CLASSES) if activation_checkpointing else None,
        sharding_strategy=sharding_strategy,
        state_dict_type=state_dict_type,
        cpu_offload=cpu_offload,
        **kwargs,
    )


def shard_blocks(model: nn.Module, mesh: Any, reshard_after_forward: bool = True) -> nn.Module:
    """Apply FSDP2's ``fully_shard`` to every transformer block, then to the whole model.

    Sharding the root last groups what is left (embeddings, final norm, head) into one unit;
    tied embedding and head weights stay one parameter because they live in that same unit.
    """
    from torch.distributed.fsdp import fully_shard

    for module in list(model.modules()):
        if isinstance(module, tuple(BLOCK_CLASSES)):
            fully_shard(module, mesh=mesh, reshard_after_forward=reshard_after_forward)
    fully_shard(model, mesh=mesh, reshard_after_forward=reshard_after_forward)
    return model


class FullyShardStrategy(ModelParallelStrategy):
    """``ModelParallelStrategy`` (FSDP2) that shards the task's GPT per block by itself.

    Lightning's strategy expects the LightningModule's ``configure_model`` to apply the
    parallelism; doing it here keeps every task strategy-agnostic. Checkpoints are written by the
    strategy's own distributed save (a directory of shards) unless ``save_distributed_checkpoint``
    is false, and ``lightning.pytorch.utilities.consolidate_checkpoint`` merges them into one file.
    """

    def __init__(self, reshard_after_forward: bool = True, **kwargs: Any) -> None:
        kwargs.setdefault("data_parallel_size", "auto")
        kwargs.setdefault("tensor_parallel_size", 1)
        super().__init__(**kwargs)
        self.reshard_after_forward = reshard_after_forward

    def setup_environment(self) -> None:
        # Pure sharded data parallelism: every process is one data-parallel rank (no tensor parallel).
        if self._data_parallel_size == "auto":
            self._data_parallel_size = self.num_nodes * self.num_processes
        super().setup_environment()

    def setup(self, trainer: L.Trainer) -> None:
        assert self.lightning_module is not None
        module = self.lightning_module
        target = getattr(module, "model", module)
        inner = getattr(target, "_orig_mod", target)  # shard the model under torch.compile's wrapper
        shard_blocks(inner, self.device_mesh["data_parallel"], self.reshard_after_forward)
        super().setup(trainer)


def consolidate_checkpoint(directory: str | Path, output: str | Path | None = None) -> Path:
    """Merge a sharded checkpoint directory (``trainer=fsdp`` or ``fully_shard``) into one ``.ckpt`` file.

    Uses PyTorch's own converter (``dcp_to_torch_save``) in a single process, so a run sharded
    over N devices can be exported, inspected or resumed on one. Returns the written file
    (``<name>.consolidated.ckpt`` beside the directory unless ``output`` is given).
    """
    import tempfile

    import torch
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    from gptlab.fileio import atomic_path

    directory = Path(directory)
    output = Path(output) if output else directory.with_name(f"{directory.stem}.consolidated.ckpt")
    with tempfile.TemporaryDirectory(dir=directory.parent) as tmp:
        dcp_to_torch_save(directory, Path(tmp) / "state.pt")
        state = torch.load(Path(tmp) / "state.pt", map_location="cpu", weights_only=False)
    meta = torch.load(directory / "meta.pt", map_location="cpu", weights_only=False)
    optimizers = [state[key] for key in sorted(state) if key.startswith("optimizer")]
    checkpoint = {**meta, "state_dict": state.get("state_dict", state.get("model")), "optimizer_states": optimizers}
    with atomic_path(output) as tmp_file:
        torch.save(checkpoint, tmp_file)
    return output


if __name__ == "__main__":  # python -m gptlab.strategies runs/NAME/checkpoints/last.ckpt
    import sys

    for arg in sys.argv[1:]:
        print(consolidate_checkpoint(arg))
