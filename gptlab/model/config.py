"""Model configuration: the book's config dict as a dataclass, plus named presets."""

from __future__ import annotations

import dataclasses
import importlib.resources
from dataclasses import dataclass, field
from typing import Any, Literal

from gptlab.errors import ConfigError

AttentionBackend = Literal["sdpa", "manual"]
WeightInit = Literal["gpt2", "book"]


@dataclass
class GPTConfig:
    """Everything that fixes a GPT's shape and behaviour.

    The first seven fields are the keys of the book's ``GPT_CONFIG_124M`` dict, so
    ``GPTConfig(**GPT_CONFIG_124M)`` works as it is.
    """

    vocab_size: int = 50257
    context_length: int = 1024
    emb_dim: int = 768
    n_heads: int = 12
    n_layers: int = 12
    drop_rate: float = 0.1
    qkv_bias: bool = False
    tie_embeddings: bool = False
    attention: AttentionBackend = "sdpa"
    #: ``gpt2``: GPT-2's initialisation: N(0, 0.02) weights, zero biases, and the residual
    #: projections (attention ``out_proj``, the MLP's output) at 0.02 / sqrt(2 * n_layers). ``book``: PyTorch's
    #: default initialisation, as the book's ``GPTModel`` has it (embeddings N(0, 1)); it
    #: memorises a small corpus such as "The Verdict" much faster.
    weight_init: WeightInit = "gpt2"
    name: str = field(default="custom", compare=False)

    def __post_init__(self) -> None:
        if self.emb_dim % self.n_heads != 0:
            raise ConfigError(
                f"model.emb_dim={self.emb_dim} is not divisible by model.n_heads={self.n_heads}; "
                "pick n_heads that divides emb_dim"
            )
        if self.attention not in ("sdpa", "manual"):
            raise ConfigError(f"model.attention={self.attention!r} is unknown; use 'sdpa' or 'manual'")
        for key in ("vocab_size", "context_length", "emb_dim", "n_heads", "n_layers"):
            if int(getattr(self, key)) <= 0:
                raise ConfigError(f"model.{key} must be a positive integer, got {getattr(self, key)}")
        if self.weight_init not in ("gpt2", "book"):
            raise ConfigError(f"model.weight_init={self.weight_init!r} is unknown; use 'gpt2' or 'book'")
        if not 0.0 <= self.drop_rate < 1.0:
            raise ConfigError(f"model.drop_rate must lie in [0, 1), got {self.drop_rate}")

    @property
    def head_dim(self) -> int:
        return self.emb_dim // self.n_heads

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> GPTConfig:
        """A named preset (see ``PRESETS``) with any field overridden."""
        if name not in PRESETS:
            raise ConfigError(f"unknown model preset {name!r}; valid presets: {', '.join(PRESETS)}")
        return cls(**{**PRESETS[name], "name": name, **overrides})

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> GPTConfig:
        """Build from a plain dict (a Hydra ``model`` node or a saved config).

        A ``preset`` key starts from that preset; the other keys override it, and a ``None``
        value keeps the preset's (configs saved by older versions list fields as ``null``). Unknown
        keys are an error, so a typo in a config never silently falls back to a default.
        """
        values = {key: value for key, value in values.items() if value is not None}
        preset = values.pop("preset", None)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"unknown model config key(s) {unknown}; valid keys: {sorted(known)}")
        if preset is not None:
            return cls.from_preset(str(preset), **values)
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _load_presets() -> dict[str, dict[str, Any]]:
    """Read the presets from ``gptlab/conf/model/*.yaml``, so a preset's values live in one visible place.

    The command line (``model=micro``) and the library (``GPTConfig.from_preset("micro")``) build
    from the same file; each file lists every field. The GPT-2 sizes first, then the tiny ones.
    """
    from omegaconf import OmegaConf

    presets: dict[str, dict[str, Any]] = {}
    for entry in (importlib.resources.files("gptlab.conf") / "model").iterdir():
        if entry.name.endswith(".yaml"):
            values = OmegaConf.to_container(OmegaConf.create(entry.read_text(encoding="utf-8")))
            assert isinstance(values, dict), entry.name
            presets[str(values.pop("preset"))] = values
    return dict(sorted(presets.items(), key=lambda item: (not item[0].startswith("gpt2"), item[1]["emb_dim"])))


#: Named architectures, read from ``conf/model/*.yaml``: the GPT-2 sizes follow the book's table
#: (section 4.6); the tiny ones train on a laptop CPU in minutes.
PRESETS: dict[str, dict[str, Any]] = _load_presets()
