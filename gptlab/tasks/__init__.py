"""One LightningModule per task, each around one GPT."""

from gptlab.tasks.base import GPTTask
from gptlab.tasks.causal_lm import CausalLMTask, PretrainTask
from gptlab.tasks.classify import ClassifyTask
from gptlab.tasks.preference import PreferenceTask
from gptlab.tasks.trainable import LoRAConfig

__all__ = ["CausalLMTask", "ClassifyTask", "GPTTask", "LoRAConfig", "PreferenceTask", "PretrainTask"]
