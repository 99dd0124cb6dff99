"""One LightningModule per task, each around one GPT."""

from gptlab.tasks.base import GPTTask
from gptlab.tasks.classify import ClassifyTask
from gptlab.tasks.preference import PreferenceTask
from gptlab.tasks.pretrain import PretrainTask

__all__ = ["ClassifyTask", "GPTTask", "PreferenceTask", "PretrainTask"]
