"""The one home of weight formats: gptlab's own export, Hugging Face GPT-2 and Llama, GGUF, task checkpoints, the Hub.

``load_pretrained`` reads any of them; ``save_model`` / ``load_model`` are gptlab's own export,
``export_hf`` writes a directory ``transformers`` loads, ``load_gguf`` / ``export_gguf`` read and
write llama.cpp's GGUF files, ``export_peft_adapter`` / ``load_peft_adapter`` write and read LoRA
adapters in PEFT's format, ``read_task_checkpoint`` is the only reader of task ``.ckpt`` files.
One module per job:

* ``load``: the format detection behind ``load_pretrained``;
* ``native``: gptlab's export (``config.json`` + ``model.safetensors``);
* ``hf_names``: the GPT-2 and Llama <-> gptlab tensor-name tables, each used in both directions;
* ``hf``: GPT-2 configs and directories (import and export), and ``export_hf``'s choice of family;
* ``hf_llama``: Llama and Qwen3 configs and directories (import and export);
* ``gguf_names``: the GGUF (llama.cpp) <-> gptlab tensor-name and metadata tables, both directions;
* ``gguf``: GGUF files, Llama and GPT-2 (import with any quantisation gguf reads, export f32 to q8_0);
* ``hub``: GPT-2 checkpoints by name from the Hugging Face Hub;
* ``peft``: Hugging Face PEFT's LoRA adapter directories (export, and import onto a base model);
* ``task``: task checkpoints; ``state``: a ``GPT`` from a checked state dict; ``files``: readers.
"""

from gptlab.checkpoints.files import CONFIG_FILE, WEIGHTS_FILE
from gptlab.checkpoints.gguf import export_gguf, load_gguf
from gptlab.checkpoints.hf import config_from_hf, export_hf, hf_config_dict, load_hf_directory
from gptlab.checkpoints.hf_llama import llama_config_dict, llama_config_from_hf, load_llama_directory
from gptlab.checkpoints.hf_names import GPT2_NAMES, LLAMA_NAMES, from_hf_state_dict, to_hf_state_dict
from gptlab.checkpoints.hub import HUB_MODELS, download_gpt2
from gptlab.checkpoints.load import load_pretrained, model_from_task_checkpoint
from gptlab.checkpoints.native import load_model, save_model
from gptlab.checkpoints.peft import export_peft_adapter, load_peft_adapter
from gptlab.checkpoints.state import model_from_state_dict
from gptlab.checkpoints.task import TaskCheckpoint, read_task_checkpoint

__all__ = [
    "CONFIG_FILE", "GPT2_NAMES", "HUB_MODELS", "LLAMA_NAMES", "WEIGHTS_FILE", "TaskCheckpoint", "config_from_hf",
    "download_gpt2", "export_gguf", "export_hf", "export_peft_adapter", "from_hf_state_dict", "hf_config_dict", "llama_config_dict",
    "llama_config_from_hf", "load_gguf", "load_hf_directory", "load_llama_directory", "load_model",
    "load_peft_adapter", "load_pretrained", "model_from_state_dict", "model_from_task_checkpoint",
    "read_task_checkpoint", "save_model", "to_hf_state_dict",
]
