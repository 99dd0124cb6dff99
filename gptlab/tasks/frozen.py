"""A frozen auxiliary model held beside a task's network, never inside it.

DPO's reference model (and, later, a distillation teacher or a reward model) must take part in
no training: no gradients, no optimizer state, no DDP gradient sync, no bytes in checkpoints. An
``nn.Module`` attribute of a LightningModule would be all of those, so ``FrozenModel`` is a plain
object: ``parameters()``, ``state_dict()``, the optimizer and DDP never see it. It records only
its source (anything ``load_pretrained`` accepts) and builds the model from it on first use, in
eval mode with ``requires_grad=False``, on the device and dtype it is asked for. A resumed run
therefore rebuilds it from the same source; ``fingerprint`` lets the caller check that the source
still holds the weights the run started with.
"""

from __future__ import annotations

import hashlib
from typing import Any

import torch
from torch import nn

from gptlab.errors import CheckpointError
from gptlab.model import GPT, GPTConfig
from gptlab.model.lora import LORA_PARAM_SUFFIXES


def weights_fingerprint(model: nn.Module) -> str:
    """A hash of a network's weights, LoRA adapters left out (so a LoRA policy's base hashes like
    the plain model it wraps). Equal fingerprints mean the same function, whatever the device."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        if name.endswith(LORA_PARAM_SUFFIXES):
            continue
        name = name.replace(".base.", ".")  # LoRALinear keeps its frozen layer under ``base``
        data = tensor.detach().to("cpu", torch.float32).contiguous()
        digest.update(f"{name}:{tuple(data.shape)}".encode())
        digest.update(data.numpy())  # the buffer itself: no copy
    return digest.hexdigest()[:32]


class FrozenModel:
    """A GPT built lazily from ``source`` and kept frozen, outside the module tree.

    Args:
        source: a model name, directory or checkpoint (``gptlab.checkpoints.load_pretrained``).
        config: the architecture to load into (the task's model config), if the source needs one.
        expected_fingerprint: the ``weights_fingerprint`` the source must still have; a source
            that changed since (say its run trained on) raises ``CheckpointError`` on build.
    """

    def __init__(self, source: str, config: GPTConfig | None = None,
                 expected_fingerprint: str | None = None) -> None:
        self.source = str(source)
        self.config = config
        self.expected_fingerprint = expected_fingerprint
        self.fingerprint: str | None = None
        self._model: GPT | None = None

    @property
    def built(self) -> bool:
        return self._model is not None

    def get(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> GPT:
        """The model on ``device`` in ``dtype``, built on the first call."""
        if self._model is None:
            self._model = self._build()
        param = next(self._model.parameters())
        if (device is not None and param.device != torch.device(device)) or (dtype is not None and param.dtype != dtype):
            self._model.to(device=device, dtype=dtype)
        return self._model

    def _build(self) -> GPT:
        from gptlab.checkpoints import load_pretrained

        model = load_pretrained(self.source, self.config)
        model.eval().requires_grad_(False)
        self.fingerprint = weights_fingerprint(model)
        if self.expected_fingerprint is not None and self.fingerprint != self.expected_fingerprint:
            raise CheckpointError(
                f"the reference model's source {self.source} no longer holds the weights this run started "
                f"from (fingerprint {self.fingerprint} vs {self.expected_fingerprint}); restore that model, or "
                "start a new run instead of resuming"
            )
        return model

    def release(self) -> None:
        """Drop the built model (it is rebuilt from ``source`` on the next ``get``)."""
        self._model = None

    def __getstate__(self) -> dict[str, Any]:
        # Spawned or pickled tasks carry the recipe, not the weights.
        return {**self.__dict__, "_model": None}

    def __repr__(self) -> str:
        return f"FrozenModel(source={self.source!r}, built={self.built})"
