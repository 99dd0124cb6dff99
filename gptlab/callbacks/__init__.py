"""Callbacks a run needs beside the training loop."""

from gptlab.callbacks.export import ExportModel
from gptlab.callbacks.loss_plot import LossPlot
from gptlab.callbacks.sample import GenerateSample
from gptlab.callbacks.summary import RunSummary
from gptlab.callbacks.throughput import Throughput

__all__ = ["ExportModel", "GenerateSample", "LossPlot", "RunSummary", "Throughput"]
