"""gptlab: a GPT built from scratch, trained and fine-tuned with PyTorch Lightning and Hydra."""

from gptlab.checkpoints import load_pretrained
from gptlab.generate import generate, stream_tokens
from gptlab.inference import LLM
from gptlab.model import GPT, PRESETS, GPTConfig, KVCache, model_size
from gptlab.tokenizer import get_tokenizer

__all__ = ["GPT", "LLM", "PRESETS", "GPTConfig", "KVCache", "generate", "get_tokenizer", "load_pretrained", "model_size",
           "stream_tokens"]
__version__ = "0.1.0"
