"""The causal-LM task under its first name; see ``gptlab.tasks.causal_lm``."""

from gptlab.tasks.causal_lm import IGNORE_INDEX, CausalLMTask, PretrainTask, next_token_loss

__all__ = ["IGNORE_INDEX", "CausalLMTask", "PretrainTask", "next_token_loss"]
