"""Model configuration: the book's config dict as a dataclass, plus named presets."""

from __future__ import annotations

import dataclasses
import importlib.resources
from dataclasses import dataclass, field
from typing import Any, Literal

from gptlab.errors import ConfigError

AttentionBackend = Literal["sdpa", "manual"]
WeightInit = Literal["gpt2", "book"]
Norm = Literal["layernorm", "rmsnorm"]
MLP = Literal["gelu", "swiglu"]
PositionEmbedding = Literal["learned", "rope"]

#: The keys of Llama 3's RoPE frequency scaling (``rope_scaling``), as its config names them.
ROPE_SCALING_KEYS = ("factor", "low_freq_factor", "high_freq_factor", "original_context_length")


@dataclass
class GPTConfig:
    """Everything that fixes a GPT's shape and behaviour.

    The first seven fields are the keys of the book's ``GPT_CONFIG_124M`` dict, so
    ``GPTConfig(**GPT_CONFIG_124M)`` works as it is. The architecture switches after them each
    default to GPT-2's choice and flip one at a time, which is how the book's bonus chapters turn
    GPT-2 into Llama: ``norm=rmsnorm``, ``mlp=swiglu``, ``pos_emb=rope``, ``n_kv_heads`` below
    ``n_heads`` (grouped-query attention) and the bias switches off.
    """

    vocab_size: int = 50257
    context_length: int = 1024
    emb_dim: int = 768
    n_heads: int = 12
    n_layers: int = 12
    drop_rate: float = 0.1
    qkv_bias: bool = False
    tie_embeddings: bool = False
    #: ``layernorm`` (GPT-2: scale and shift) | ``rmsnorm`` (Llama: scale only, no mean subtraction).
    norm: Norm = "layernorm"
    norm_eps: float = 1e-5
    #: ``gelu`` (GPT-2: ``Linear, GELU, Linear``) | ``swiglu`` (Llama: ``fc3(silu(fc1(x)) * fc2(x))``).
    mlp: MLP = "gelu"
    #: Width of the feed-forward layer; ``None`` means ``4 * emb_dim``, GPT-2's.
    hidden_dim: int | None = None
    #: ``learned`` (GPT-2: a table of position vectors) | ``rope`` (rotary embeddings on queries and keys).
    pos_emb: PositionEmbedding = "learned"
    rope_base: float = 10000.0
    #: Llama 3's RoPE frequency scaling: a dict of ``ROPE_SCALING_KEYS``, or ``None`` for plain RoPE.
    rope_scaling: dict[str, float] | None = None
    #: Key/value heads; fewer than ``n_heads`` is grouped-query attention, ``None`` means ``n_heads``.
    n_kv_heads: int | None = None
    #: Size of one attention head; ``None`` means ``emb_dim // n_heads`` (Qwen3 sets it larger).
    head_size: int | None = None
    #: RMSNorm on each head's queries and keys before RoPE (Qwen3).
    qk_norm: bool = False
    #: Bias in the attention's output projection and in the feed-forward layers (GPT-2: yes; Llama: no).
    out_bias: bool = True
    mlp_bias: bool = True
    attention: AttentionBackend = "sdpa"
    #: ``gpt2``: GPT-2's initialisation: N(0, 0.02) weights, zero biases, and the residual
    #: projections (attention ``out_proj``, the MLP's output) at 0.02 / sqrt(2 * n_layers). ``book``: PyTorch's
    #: default initialisation, as the book's ``GPTModel`` has it (embeddings N(0, 1)); it
    #: memorises a small corpus such as "The Verdict" much faster.
    weight_init: WeightInit = "gpt2"
    name: str = field(default="custom", compare=False)

    def __post_init__(self) -> None:
        if self.head_size is None and self.emb_dim % self.n_heads != 0:
            raise ConfigError(
                f"model.emb_dim={self.emb_dim} is not divisible by model.n_heads={self.n_heads}; "
                "pick n_heads that divides emb_dim (or set model.head_size)"
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
        self._check_architecture()

    def _check_architecture(self) -> None:
        for key, allowed in (("norm", Norm), ("mlp", MLP), ("pos_emb", PositionEmbedding)):
            if getattr(self, key) not in allowed.__args__:
                raise ConfigError(f"model.{key}={getattr(self, key)!r} is unknown; use one of {list(allowed.__args__)}")
        for key in ("hidden_dim", "n_kv_heads", "head_size"):
            value = getattr(self, key)
            if value is not None and int(value) <= 0:
                raise ConfigError(f"model.{key} must be a positive integer or null, got {value}")
        if self.n_heads % self.kv_heads != 0:
            raise ConfigError(
                f"model.n_kv_heads={self.n_kv_heads} does not divide model.n_heads={self.n_heads}; "
                "each key/value head serves a whole group of query heads"
            )
        if self.pos_emb == "rope" and self.head_dim % 2:
            raise ConfigError(f"pos_emb=rope needs an even head size, got {self.head_dim}")
        if self.rope_scaling is not None:
            keys = sorted(dict(self.rope_scaling))
            if keys != sorted(ROPE_SCALING_KEYS):
                raise ConfigError(f"model.rope_scaling needs exactly the keys {list(ROPE_SCALING_KEYS)}, got {keys}")
            if not self.rope_scaling["high_freq_factor"] > self.rope_scaling["low_freq_factor"] > 0:
                raise ConfigError(
                    "model.rope_scaling's high_freq_factor must be larger than its low_freq_factor, both positive "
                    f"(Llama 3.2: 4.0 and 1.0), got {dict(self.rope_scaling)}"
                )
        if self.norm_eps <= 0 or self.rope_base <= 0:
            raise ConfigError("model.norm_eps and model.rope_base must be positive")

    @property
    def head_dim(self) -> int:
        """Size of one attention head."""
        return self.head_size if self.head_size is not None else self.emb_dim // self.n_heads

    @property
    def kv_heads(self) -> int:
        """Number of key/value heads (``n_heads`` unless grouped-query attention)."""
        return self.n_kv_heads if self.n_kv_heads is not None else self.n_heads

    @property
    def ff_hidden_dim(self) -> int:
        """Width of the feed-forward layer."""
        return self.hidden_dim if self.hidden_dim is not None else 4 * self.emb_dim

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

    def written_out(self) -> GPTConfig:
        """The same architecture with the sizes that ``None`` stands for written in, as a run records it."""
        return dataclasses.replace(self, hidden_dim=self.ff_hidden_dim, n_kv_heads=self.kv_heads, head_size=self.head_dim)


#: What fixes the model's tensors (fields, and properties that resolve a field's ``None``): a
#: checkpoint and the config it loads into must agree on all of them.
ARCHITECTURE_FIELDS = (
    "vocab_size", "emb_dim", "n_heads", "n_layers", "norm", "mlp", "ff_hidden_dim", "pos_emb",
    "kv_heads", "head_dim", "qk_norm",
)


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
