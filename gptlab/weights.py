"""Former home of the weight formats, now ``gptlab.checkpoints``; these names are re-exported from there."""

from gptlab.checkpoints import (
    CONFIG_FILE,
    HUB_MODELS,
    WEIGHTS_FILE,
    config_from_hf,
    export_hf,
    load_model,
    load_pretrained,
    save_model,
)

__all__ = ["CONFIG_FILE", "HUB_MODELS", "WEIGHTS_FILE", "config_from_hf", "export_hf", "load_model",
           "load_pretrained", "save_model"]
