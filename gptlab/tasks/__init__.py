"""One LightningModule per task, each around one GPT."""

from gptlab.tasks.base import GPTTask
from gptlab.tasks.pretrain import PretrainTask

__all__ = ["GPTTask", "PretrainTask"]
