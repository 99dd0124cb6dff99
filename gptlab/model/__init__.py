"""The GPT network, written from scratch in PyTorch."""

from gptlab.model.attention import KVCache, MultiHeadAttention
from gptlab.model.config import PRESETS, GPTConfig
from gptlab.model.gpt import GPT, TransformerBlock
from gptlab.model.layers import GELU, FeedForward, LayerNorm, RMSNorm, SwiGLUFeedForward
from gptlab.model.rope import RotaryEmbedding
from gptlab.model.summary import ModelSize, model_size
from gptlab.model.trace import Trace

__all__ = [
    "GELU", "GPT", "PRESETS", "FeedForward", "GPTConfig", "KVCache", "LayerNorm", "ModelSize",
    "MultiHeadAttention", "RMSNorm", "RotaryEmbedding", "SwiGLUFeedForward", "Trace", "TransformerBlock",
    "model_size",
]
