"""Opening any model for inference: ``LLM`` holds its model, tokenizer, prompt format and stop ids."""

from gptlab.inference.llm import LLM, Sampling, pick_device
from gptlab.inference.streaming import StopStreamer, TextStreamer

__all__ = ["LLM", "Sampling", "StopStreamer", "TextStreamer", "pick_device"]
