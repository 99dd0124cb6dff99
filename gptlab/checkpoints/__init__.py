"""The one home of weight formats: gptlab's own export, Hugging Face GPT-2, task checkpoints, the Hub."""

from gptlab.checkpoints.task import TaskCheckpoint, read_task_checkpoint
from gptlab.weights import HUB_MODELS, export_hf, load_model, load_pretrained, save_model

__all__ = ["HUB_MODELS", "TaskCheckpoint", "export_hf", "load_model", "load_pretrained", "read_task_checkpoint",
           "save_model"]
