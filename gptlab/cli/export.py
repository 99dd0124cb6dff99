"""``gptlab-export``: write any model gptlab opens in another format, with its tokenizer and prompt format.

Examples::

    gptlab-export runs/instruct --to gguf --dtype q8_0 --out instruct.q8_0.gguf   # llama.cpp, Ollama
    gptlab-export smollm2-135m-instruct --to hf --out smollm2-hf                   # transformers
    gptlab-export smollm2-135m-instruct --to gptlab --dtype bf16 --out smollm2     # gptlab's own

A GGUF file carries the tokenizer, the chat template of the model's prompt format and its stop
tokens, so a model fine-tuned in gptlab answers in llama.cpp as it does here. A directory export
(``hf``, ``gptlab``) holds the tokenizer's files where the tokenizer has them (a ``tokenizer.json``)
and ``prompt.json``. The weights appear complete or not at all; the tokenizer's files and
``prompt.json`` join them once they are in place.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Sequence
from pathlib import Path

import torch

from gptlab.callbacks.prompt_style import write_prompt_style
from gptlab.checkpoints import export_gguf, export_hf, save_model
from gptlab.cli import run_command
from gptlab.errors import ConfigError
from gptlab.inference import LLM
from gptlab.tokenizer.gguf import gguf_vocab

PROG = "gptlab-export"
FORMATS = ("gguf", "hf", "gptlab")
#: The dtypes of each format: GGUF quantises to q8_0 too; directories hold torch tensors.
GGUF_DTYPES = ("f32", "f16", "bf16", "q8_0")
TORCH_DTYPES = {"f32": torch.float32, "f16": torch.float16, "bf16": torch.bfloat16}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.splitlines()[0].split(": ", 1)[1])
    parser.add_argument("source", help="a run, an export, a .ckpt, a .gguf, an HF directory, or a model name")
    parser.add_argument("--to", choices=FORMATS, required=True, help="gguf (llama.cpp, Ollama), hf (transformers), "
                                                                     "gptlab (gptlab's own export)")
    parser.add_argument("--dtype", choices=GGUF_DTYPES, default="f32", help="f32 (default), f16, bf16; q8_0 for gguf")
    parser.add_argument("--out", required=True, help="the file (gguf) or directory (hf, gptlab) to write")
    parser.add_argument("--tokenizer", default=None, help="default: the model's own (see gptlab-generate)")
    return parser


def export(llm: LLM, to: str, dtype: str, out: Path) -> Path:
    """Write ``llm`` to ``out`` in format ``to`` (see the module docstring)."""
    if to == "gguf":
        vocab = dataclasses.replace(gguf_vocab(llm.tokenizer), chat_template=llm.style.chat_template,
                                    extra_stop_ids=tuple(i for i in llm.stop_ids if i != llm.tokenizer.eot_id))
        return export_gguf(llm.model, out, dtype, vocab)
    if dtype not in TORCH_DTYPES:
        raise ConfigError(f"--dtype {dtype} is a GGUF quantisation; --to {to} writes {', '.join(TORCH_DTYPES)}")
    model = llm.model.to(TORCH_DTYPES[dtype])
    if to == "hf":
        stops = list(llm.stop_ids)
        bos = getattr(llm.tokenizer, "bos_id", None)
        path = export_hf(model, out, {"eos_token_id": stops[0] if len(stops) == 1 else stops,
                                      **({"bos_token_id": bos} if bos is not None else {})})
    else:
        path = save_model(model, out)
    save = getattr(llm.tokenizer, "save", None)
    if callable(save):
        save(path)
    write_prompt_style(path, llm.style)
    return path


def run(args: argparse.Namespace) -> None:
    llm = LLM.load(args.source, tokenizer=args.tokenizer, device="cpu")
    path = export(llm, args.to, args.dtype, Path(args.out).expanduser())
    print(f"{args.source} -> {path} ({args.to}, {args.dtype}, prompt format {llm.style.name})")


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point; returns the exit status (2 for a problem the user can fix)."""
    args = build_parser().parse_args(argv)
    return run_command(PROG, lambda: run(args))


if __name__ == "__main__":
    sys.exit(main())
