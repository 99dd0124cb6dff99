"""``gptlab-export``: write any model gptlab opens in another format, with its tokenizer and prompt format.

Examples::

    gptlab-export runs/instruct --to gguf --dtype q8_0 --out instruct.q8_0.gguf   # llama.cpp, Ollama
    gptlab-export smollm2-135m-instruct --to hf --out smollm2-hf                   # transformers
    gptlab-export smollm2-135m-instruct --to gptlab --dtype bf16 --out smollm2     # gptlab's own
    gptlab-export runs/instruct --to peft --out instruct-lora                       # PEFT adapter

A GGUF file carries the tokenizer, the chat template of the model's prompt format and its stop
tokens, so a model fine-tuned in gptlab answers in llama.cpp as it does here. A directory export
(``hf``, ``gptlab``) holds the tokenizer's files where the tokenizer has them (a ``tokenizer.json``)
and ``prompt.json``. The weights appear complete or not at all; the tokenizer's files and
``prompt.json`` join them once they are in place.

``--to peft`` writes the LoRA adapters of a run trained with ``task.trainable_layers=lora`` (a run
directory, its ``model/`` or one of its ``.ckpt`` files; for a run, the best checkpoint, which its
``model/`` export merges) as a Hugging Face PEFT adapter directory, unmerged:
``adapter_config.json`` and ``adapter_model.safetensors``, beside the tokenizer's files and
``prompt.json``. Its ``base_model_name_or_path`` is the run's ``task.init`` (a named model as its
Hub repository, a local path made absolute), so ``peft.AutoPeftModelForCausalLM`` and
``gptlab-*`` commands both find the base; ``PeftModel.from_pretrained`` on the ``--to hf`` export of
the base computes the run's logits. Llama-family models only (see ``gptlab.checkpoints.peft``).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Sequence
from pathlib import Path

import torch

from gptlab.callbacks.prompt_style import write_prompt_style
from gptlab.checkpoints import (
    export_gguf,
    export_hf,
    export_peft_adapter,
    model_from_task_checkpoint,
    read_task_checkpoint,
    save_model,
)
from gptlab.checkpoints.peft import hub_name
from gptlab.cli import run_command
from gptlab.errors import ConfigError
from gptlab.inference import LLM
from gptlab.model.gpt import GPT
from gptlab.runs import RunFiles
from gptlab.tokenizer.gguf import gguf_vocab

PROG = "gptlab-export"
FORMATS = ("gguf", "hf", "gptlab", "peft")
#: The dtypes of each format: GGUF quantises to q8_0 too; directories hold torch tensors.
GGUF_DTYPES = ("f32", "f16", "bf16", "q8_0")
TORCH_DTYPES = {"f32": torch.float32, "f16": torch.float16, "bf16": torch.bfloat16}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.splitlines()[0].split(": ", 1)[1])
    parser.add_argument("source", help="a run, an export, a .ckpt, a .gguf, an HF directory, or a model name")
    parser.add_argument("--to", choices=FORMATS, required=True,
                        help="gguf (llama.cpp, Ollama), hf (transformers), gptlab (gptlab's own export), "
                             "peft (a LoRA run's adapters, for Hugging Face PEFT)")
    parser.add_argument("--dtype", choices=GGUF_DTYPES, default="f32", help="f32 (default), f16, bf16; q8_0 for gguf")
    parser.add_argument("--out", required=True, help="the file (gguf) or directory (hf, gptlab, peft) to write")
    parser.add_argument("--tokenizer", default=None, help="default: the model's own (see gptlab-generate)")
    return parser


def export(llm: LLM, to: str, dtype: str, out: Path, adapters: tuple[GPT, str | None] | None = None) -> Path:
    """Write ``llm`` to ``out`` in format ``to`` (see the module docstring). ``peft`` writes
    ``adapters`` instead, ``lora_model``'s unmerged model and base, beside ``llm``'s tokenizer and
    prompt format."""
    if to == "gguf":
        vocab = dataclasses.replace(gguf_vocab(llm.tokenizer), chat_template=llm.style.chat_template,
                                    extra_stop_ids=tuple(i for i in llm.stop_ids if i != llm.tokenizer.eot_id))
        return export_gguf(llm.model, out, dtype, vocab)
    if dtype not in TORCH_DTYPES:
        raise ConfigError(f"--dtype {dtype} is a GGUF quantisation; --to {to} writes {', '.join(TORCH_DTYPES)}")
    if to == "peft":
        if adapters is None:
            raise ConfigError("--to peft writes a LoRA run's adapters: pass lora_model's model and base")
        path = export_peft_adapter(adapters[0].to(TORCH_DTYPES[dtype]), out, adapters[1])
    elif to == "hf":
        model = llm.model.to(TORCH_DTYPES[dtype])
        stops = list(llm.stop_ids)
        bos = getattr(llm.tokenizer, "bos_id", None)
        path = export_hf(model, out, {"eos_token_id": stops[0] if len(stops) == 1 else stops,
                                      **({"bos_token_id": bos} if bos is not None else {})})
    else:
        path = save_model(llm.model.to(TORCH_DTYPES[dtype]), out)
    save = getattr(llm.tokenizer, "save", None)
    if callable(save):
        save(path)
    write_prompt_style(path, llm.style)
    return path


def lora_model(source: str) -> tuple[GPT, str | None]:
    """A LoRA run's model with its adapters unmerged, and the base it started from (``task.init``).

    ``source`` is a ``.ckpt`` or a path into a run, whose best checkpoint (else ``last.ckpt``) is
    read: the one its ``model/`` export merged. ``LLM.load`` would merge the adapters, so the
    checkpoint is read here.
    """
    path = Path(source).expanduser()
    checkpoint = path if path.is_file() else _best_checkpoint(RunFiles.find(path))
    if checkpoint is None or checkpoint.suffix != ".ckpt":
        raise ConfigError(f"--to peft exports the adapters of a LoRA run; {source} is not a run directory or a .ckpt")
    ckpt = read_task_checkpoint(checkpoint)
    if not any(key.endswith(".lora_A") for key in ckpt.model_state):
        raise ConfigError(f"{checkpoint} holds no LoRA adapters (its run did not train with "
                          "task.trainable_layers=lora); export the whole model with --to hf or --to gguf")
    model = model_from_task_checkpoint(ckpt, keep_lora=True)
    return model, _base_source(ckpt.hparams.get("initialized_from"))


def _best_checkpoint(run: RunFiles) -> Path | None:
    best = run.checkpoints("best*.ckpt")
    return max(best, key=lambda p: p.stat().st_mtime) if best else run.last_checkpoint()


def _base_source(init: object) -> str | None:
    """``base_model_name_or_path`` for a recorded ``task.init``: a local path made absolute, a named
    model as its Hub repository; ``None`` for random initial weights."""
    if not isinstance(init, str) or not init:
        return None
    path = Path(init).expanduser()
    return str(path.resolve()) if path.exists() else hub_name(init)


def run(args: argparse.Namespace) -> None:
    adapters = lora_model(args.source) if args.to == "peft" else None  # before loading: a plain model fails fast
    llm = LLM.load(args.source, tokenizer=args.tokenizer, device="cpu")
    path = export(llm, args.to, args.dtype, Path(args.out).expanduser(), adapters)
    base = f", base {adapters[1]}" if adapters is not None else ""
    print(f"{args.source} -> {path} ({args.to}, {args.dtype}, prompt format {llm.style.name}{base})")


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point; returns the exit status (2 for a problem the user can fix)."""
    args = build_parser().parse_args(argv)
    return run_command(PROG, lambda: run(args))


if __name__ == "__main__":
    sys.exit(main())
