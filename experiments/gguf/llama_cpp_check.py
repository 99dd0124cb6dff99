"""gptlab's GGUF exports in llama.cpp itself: tokens, logits and the chat answer against gptlab's.

One script, two modes, two virtual environments (llama.cpp's Python binding is not a gptlab
dependency and is never installed beside it):

``reference`` (the gptlab venv) opens each GGUF file with gptlab (``LLM.load``: the weights
dequantised to float32, the file's own tokenizer and chat template) and writes into ``DIR``
what llama.cpp must reproduce: ``reference.json`` (each text's token ids, the evaluated ids,
gptlab's greedy continuation and chat answer, the rendered chat prompt) and one
``<name>.logits.npy`` per file (float32, ``(positions, vocab)``). For a file with block-quantised
matrices it also writes ``<name>.logits_q8act.npy``: gptlab again, with the 8-bit rounding that
llama.cpp's CPU matrix products apply to the activations, to explain the quantised files'
differences (see README.md)::

    /work/venv/bin/python experiments/gguf/llama_cpp_check.py reference --out /tmp/llamacpp-check/ref \\
        smollm2-f32=/tmp/llamacpp-check/smollm2.f32.gguf  gpt2-f32=/tmp/llamacpp-check/gpt2.f32.gguf ...

``check`` (a venv with ``llama-cpp-python`` and numpy, no gptlab, no torch) opens the same files
with ``llama_cpp.Llama`` and compares: the load, ``tokenize(text, add_bos=False, special=True)``
against gptlab's ids (and, for GPT-2-shaped files, tiktoken's), the logits of the same ids
(``eval``, then ``scores``) with llama.cpp's default f16 KV cache and with a float32 one, the
top-1 token at every position, a greedy continuation, and ``create_chat_completion`` with the
file's own chat template (the prompt it renders must be gptlab's, the answer is compared with
``LLM.chat``). It prints a markdown table and writes ``results.json`` into ``DIR``::

    /work/llamacpp-venv/bin/python experiments/gguf/llama_cpp_check.py check /tmp/llamacpp-check/ref
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

#: Texts whose token ids must agree: English, code, non-Latin scripts, a ChatML conversation, GPT-2's separator.
TEXTS = {
    "english": "The quick brown fox jumps over the lazy dog. It's 3:45 p.m. on Tuesday, isn't it?",
    "code": 'def greet(name: str) -> str:\n    """Say hello."""\n    return f"Hello, {name}!"\n\n'
            "for i in range(10):\n\tprint(greet(str(i)))  # tabs, spaces   and\r\n line ends\n",
    "non_latin": "Привет, мир! 你好，世界。こんにちは世界 — مرحبا بالعالم. Ελληνικά 🤖🎉 naïve café",
    "chatml": "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
              "What is 2+2?<|im_end|>\n<|im_start|>assistant\n4<|im_end|>\n",
    "endoftext": "First document.<|endoftext|>Second document.",
}
#: The passage whose logits are compared, position by position (cut to ``POSITIONS`` tokens).
PASSAGE = (
    "The Eiffel Tower is a wrought-iron lattice tower on the Champ de Mars in Paris, France. It is named "
    "after the engineer Gustave Eiffel, whose company designed and built the tower from 1887 to 1889. "
    "Locally nicknamed \"La dame de fer\", it was constructed as the centrepiece of the 1889 World's Fair. "
    "def fibonacci(n):\n    a, b = 0, 1\n    for _ in range(n):\n        a, b = b, a + b\n    return a\n"
    "Although initially criticised by some of France's leading artists and intellectuals for its design, "
    "it has since become a global cultural icon of France and one of the most recognisable structures."
)
POSITIONS = 100
#: Greedy continuation: the first PROMPT_TOKENS of the passage, then CONTINUATION new tokens.
PROMPT_TOKENS = 20
CONTINUATION = 40
QUESTION = [{"role": "user", "content": "What is the capital of France?"}]
CHAT_TOKENS = 30
#: More conversations, with room to finish: does each end at the end-of-turn token, with gptlab's words?
MORE_QUESTIONS = ["Name the three primary colors.", "What is 12 times 7?", "Write one sentence about the sea."]
MORE_TOKENS = 80
N_CTX = 512
THREADS = 2


# --- reference: gptlab's side ------------------------------------------------------------------------


def _llama_cpp_rounding(x):
    """What llama.cpp's CPU matrix product does to the activations of a quantised weight: blocks of 32
    along the input features rounded to int8 with one f16 scale each (``quantize_row_q8_0``; Q4_1
    weights take ``q8_1``, the same rounding), then multiplied by the dequantised weights."""
    import torch

    shape = x.shape
    blocks = x.reshape(*shape[:-1], shape[-1] // 32, 32)
    amax = blocks.abs().amax(-1, keepdim=True)
    inverse = torch.where(amax > 0, 127.0 / amax, torch.zeros_like(amax))
    return (torch.round(blocks * inverse) * (amax / 127).half().float()).reshape(shape)


def _top3(logits, decode) -> list[list]:
    """The three likeliest next tokens of a torch vector of logits: id, text, logit."""
    values, ids = logits.float().topk(3)
    return [[int(i), decode([int(i)]), round(float(v), 3)] for i, v in zip(ids, values)]


def _quantized_linears(model, path: str):
    """The ``nn.Linear`` layers whose weight the file stores block-quantised (the 2-D tensors not f32/f16)."""
    import gguf
    import torch

    types = {t.tensor_type for t in gguf.GGUFReader(path).tensors if len(t.shape) == 2}
    if not types - {gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16, gguf.GGMLQuantizationType.BF16}:
        return []
    return [m for m in model.modules() if isinstance(m, torch.nn.Linear) and m.in_features % 32 == 0]


def reference(out: Path, files: list[str]) -> None:
    import numpy as np
    import torch

    import gptlab
    from gptlab.inference import LLM
    from gptlab.inference.llm import Sampling
    from gptlab.tokenizer import get_tokenizer

    torch.set_num_threads(THREADS)
    out.mkdir(parents=True, exist_ok=True)
    tiktoken_gpt2 = get_tokenizer("gpt2").encoding  # gptlab's GPT-2 tokenizer is tiktoken's encoding
    models = []
    for spec in files:
        name, path = spec.split("=", 1)
        started = time.perf_counter()
        llm = LLM.load(path, device="cpu")
        load_s = time.perf_counter() - started
        tok = llm.tokenizer
        gpt2_shaped = llm.model.cfg.pos_emb == "learned"
        ids = {key: tok.encode(text) for key, text in TEXTS.items()}
        positions = min(POSITIONS, llm.model.cfg.context_length)
        passage = tok.encode(PASSAGE)[:positions]
        with torch.no_grad():
            logits = llm.model(torch.tensor([passage]))[0].float().numpy()
        np.save(out / f"{name}.logits.npy", logits.astype(np.float32))
        prompt = passage[:PROMPT_TOKENS]
        greedy = list(llm.stream_ids(prompt, Sampling(max_new_tokens=CONTINUATION, temperature=0.0), stop=False))
        entry: dict[str, Any] = {
            "name": name, "path": str(Path(path).resolve()), "bytes": Path(path).stat().st_size,
            "architecture": "gpt2" if gpt2_shaped else "llama", "vocab_size": llm.model.cfg.vocab_size,
            "gptlab_load_s": round(load_s, 2), "ids": ids, "passage_ids": passage,
            "greedy_prompt": prompt, "greedy_ids": greedy, "stop_ids": list(llm.stop_ids),
        }
        if gpt2_shaped:
            entry["tiktoken_ids"] = {key: tiktoken_gpt2.encode(text, allowed_special="all") for key, text in TEXTS.items()}
        if getattr(tok, "chat_template", None) is not None:
            rendered = llm.style.render(QUESTION)
            entry["chat_prompt"] = rendered
            entry["chat_prompt_ids"] = tok.encode(rendered)
            with torch.no_grad():
                entry["chat_first_top3"] = _top3(llm.model(torch.tensor([entry["chat_prompt_ids"]]))[0, -1], tok.decode)
            entry["chat_answer"] = llm.chat(QUESTION, max_new_tokens=CHAT_TOKENS, temperature=0.0)
            entry["more_answers"] = [llm.chat([{"role": "user", "content": q}], max_new_tokens=MORE_TOKENS, temperature=0.0)
                                     for q in MORE_QUESTIONS]
        layers = _quantized_linears(llm.model, path)
        if layers:  # gptlab again, with llama.cpp's 8-bit rounding of the activations (an explanation, not the reference)
            hooks = [layer.register_forward_pre_hook(lambda _, args: (_llama_cpp_rounding(args[0]),)) for layer in layers]
            with torch.no_grad():
                rounded = llm.model(torch.tensor([passage]))[0].float().numpy()
            np.save(out / f"{name}.logits_q8act.npy", rounded.astype(np.float32))
            if "chat_answer" in entry:
                entry["chat_answer_q8act"] = llm.chat(QUESTION, max_new_tokens=CHAT_TOKENS, temperature=0.0)
                with torch.no_grad():
                    last = llm.model(torch.tensor([entry["chat_prompt_ids"]]))[0, -1]
                entry["chat_first_top3_q8act"] = _top3(last, tok.decode)
            for hook in hooks:
                hook.remove()
        models.append(entry)
        print(f"{name}: gptlab loaded in {load_s:.1f} s, {len(passage)} positions, "
              f"chat {entry.get('chat_answer', '-')!r}", flush=True)
        del llm
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], check=False, capture_output=True, text=True,
                            cwd=Path(__file__).parent).stdout.strip()
    meta = {"gptlab_commit": commit, "gptlab": getattr(gptlab, "__version__", "?"), "torch": torch.__version__,
            "python": platform.python_version()}
    (out / "reference.json").write_text(json.dumps({"meta": meta, "models": models}, ensure_ascii=False, indent=1))
    print(f"wrote {out / 'reference.json'}")


# --- check: llama.cpp's side ---------------------------------------------------------------------------


def _load_error(path: str) -> str:
    """llama.cpp's own log of a failed load (``verbose=False`` hides it): the same load, verbose, in a child."""
    code = ("import llama_cpp,sys\n"
            f"llama_cpp.Llama(model_path={path!r}, n_ctx={N_CTX}, verbose=True)\n")
    run = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True)
    lines = [line for line in (run.stderr + run.stdout).splitlines() if line.strip()]
    interesting = [line for line in lines if any(w in line.lower() for w in ("error", "fail", "invalid", "wrong", "missing"))]
    return "\n".join(interesting[-8:] or lines[-8:])


def _open(path: str, kv_f32: bool):
    import llama_cpp

    extra = {"type_k": llama_cpp.GGML_TYPE_F32, "type_v": llama_cpp.GGML_TYPE_F32} if kv_f32 else {}
    return llama_cpp.Llama(model_path=path, logits_all=True, n_ctx=N_CTX, n_threads=THREADS,
                           n_threads_batch=THREADS, verbose=False, seed=0, **extra)


def _logits(llm, ids: list[int]):
    import numpy as np

    llm.reset()
    llm.eval(ids)
    return np.array(llm.scores[: len(ids)], dtype=np.float32)


def _compare(ours, theirs) -> dict[str, Any]:
    import numpy as np

    diff = np.abs(ours - theirs)
    top_ours, top_theirs = ours.argmax(-1), theirs.argmax(-1)

    def log_softmax(x):
        x = x - x.max(-1, keepdims=True)
        return x - np.log(np.exp(x).sum(-1, keepdims=True))

    return {"max_abs": float(diff.max()), "mean_abs": float(diff.mean()),
            "max_abs_logprob": float(np.abs(log_softmax(ours) - log_softmax(theirs)).max()),
            "logit_range": float(np.abs(theirs).max()),
            "top1_agree": int((top_ours == top_theirs).sum()), "positions": len(top_ours)}


def _greedy(llm, prompt: list[int], n: int) -> list[int]:
    llm.reset()
    out = []
    for token in llm.generate(prompt, temp=0.0, top_k=1, top_p=1.0, min_p=0.0, repeat_penalty=1.0, reset=True):
        out.append(int(token))
        if len(out) == n:
            break
    return out


def _first_divergence(a: list[int], b: list[int]) -> int | None:
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return i
    return None if len(a) == len(b) else min(len(a), len(b))


def _chat_prompt(llm) -> str | None:
    """The prompt llama-cpp-python renders from the file's ``tokenizer.chat_template`` (as its default handler)."""
    from llama_cpp import llama_chat_format

    template = llm.metadata.get("tokenizer.chat_template")
    if template is None:
        return None
    eos = llm._model.token_get_text(llm.token_eos())
    bos = llm._model.token_get_text(llm.token_bos()) if llm.token_bos() >= 0 else ""
    formatter = llama_chat_format.Jinja2ChatFormatter(template=template, eos_token=eos, bos_token=bos)
    return formatter(messages=QUESTION).prompt


def check(directory: Path) -> None:
    import llama_cpp
    import numpy as np

    ref = json.loads((directory / "reference.json").read_text())
    results = []
    for model in ref["models"]:
        name, path = model["name"], model["path"]
        row: dict[str, Any] = {"name": name, "bytes": model["bytes"], "architecture": model["architecture"]}
        results.append(row)
        started = time.perf_counter()
        try:
            llm = _open(path, kv_f32=True)
        except Exception as err:  # noqa: BLE001 - the failure is the result
            row["load"] = f"FAILED: {type(err).__name__}: {err}"
            row["load_log"] = _load_error(path)
            print(f"{name}: {row['load']}\n{row['load_log']}", flush=True)
            continue
        row["load"] = "ok"
        row["load_s"] = round(time.perf_counter() - started, 2)
        row["n_vocab"] = llm.n_vocab()
        row["arch"] = llm.metadata.get("general.architecture")
        row["file_type"] = llm.metadata.get("general.file_type")
        row["eos"] = llm._model.token_get_text(llm.token_eos())

        # tokenization
        tok = {}
        for key, ids in model["ids"].items():
            theirs = llm.tokenize(TEXTS[key].encode("utf-8"), add_bos=False, special=True)
            tok[key] = {"equal": theirs == ids, "n": len(ids)}
            if theirs != ids:
                tok[key]["first_diff"] = _first_divergence(theirs, ids)
                tok[key]["llama_cpp"] = theirs[:40]
                tok[key]["gptlab"] = ids[:40]
            if "tiktoken_ids" in model:
                tok[key]["equal_tiktoken"] = theirs == model["tiktoken_ids"][key]
        row["tokens"] = tok

        # logits, float32 KV cache, then the default f16 one
        ours = np.load(directory / f"{name}.logits.npy")
        theirs = _logits(llm, model["passage_ids"])
        row["logits_kv_f32"] = _compare(ours, theirs)
        rounded_file = directory / f"{name}.logits_q8act.npy"
        if rounded_file.exists():
            rounded = np.load(rounded_file)
            row["q8act"] = {**_compare(rounded, theirs),
                            "corr": float(np.corrcoef((theirs - ours).ravel(), (rounded - ours).ravel())[0, 1]),
                            "rounding_alone_mean_abs": float(np.abs(rounded - ours).mean()),
                            "chat_answer": model.get("chat_answer_q8act"),
                            "chat_first_top3": model.get("chat_first_top3_q8act")}
        if "chat_prompt_ids" in model:  # the first answer token of the chat: how close is the race?
            last = _logits(llm, model["chat_prompt_ids"])[-1]
            row["chat_first_top3"] = [[int(i), llm.detokenize([int(i)]).decode("utf-8", "replace"), round(float(last[i]), 3)]
                                      for i in np.argsort(-last)[:3]]
        greedy = _greedy(llm, model["greedy_prompt"], len(model["greedy_ids"]))
        row["greedy"] = {"n": len(model["greedy_ids"]), "equal": greedy == model["greedy_ids"],
                         "first_diff": _first_divergence(greedy, model["greedy_ids"])}
        del llm
        llm = _open(path, kv_f32=False)
        row["logits_kv_f16"] = _compare(ours, _logits(llm, model["passage_ids"]))

        # the chat, with the file's own template (llama-cpp-python's default handler when a file has one)
        if "chat_answer" in model:
            prompt = _chat_prompt(llm)
            prompt_ids = llm.tokenize(prompt.encode("utf-8"), add_bos=False, special=True) if prompt else None
            llm.reset()
            reply = llm.create_chat_completion(messages=QUESTION, temperature=0, max_tokens=CHAT_TOKENS)
            choice = reply["choices"][0]
            content = choice["message"]["content"]
            row["chat"] = {
                "answer": content, "finish_reason": choice["finish_reason"], "paris": "Paris" in content,
                "same_as_gptlab": content.strip() == model["chat_answer"].strip(),
                "gptlab_answer": model["chat_answer"], "gptlab_first_top3": model.get("chat_first_top3"),
                "prompt_equal": prompt == model["chat_prompt"], "prompt_ids_equal": prompt_ids == model["chat_prompt_ids"],
                "completion_tokens": reply["usage"]["completion_tokens"], "chat_format": llm.chat_format,
            }
            more = []
            for question, ours_answer in zip(MORE_QUESTIONS, model["more_answers"]):
                llm.reset()
                reply = llm.create_chat_completion(messages=[{"role": "user", "content": question}], temperature=0,
                                                   max_tokens=MORE_TOKENS)
                choice = reply["choices"][0]
                more.append({"question": question, "answer": choice["message"]["content"],
                             "finish_reason": choice["finish_reason"], "gptlab_answer": ours_answer,
                             "same_as_gptlab": choice["message"]["content"].strip() == ours_answer.strip()})
            row["more_chats"] = more
        del llm
        print(f"{name}: {json.dumps(row, ensure_ascii=False)}", flush=True)

    meta = {**ref["meta"], "llama_cpp_python": llama_cpp.__version__, "numpy": np.__version__,
            "python_llama_cpp_side": platform.python_version(), "cpu": _cpu(), "threads": THREADS}
    (directory / "results.json").write_text(json.dumps({"meta": meta, "results": results}, ensure_ascii=False, indent=1))
    print(json.dumps(meta))
    print(table(results))


def _cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip() + f" ({os.cpu_count()} cores)"
    except OSError:
        pass
    return platform.processor()


def table(results: list[dict[str, Any]]) -> str:
    head = ("| file | MB | loads | tokens equal | max abs logit diff (KV f32 / f16) | mean abs (KV f32) "
            "| top-1 agree | greedy 40 | chat (finish) | 3 more chats: stop / = gptlab |\n"
            "|---|---:|---|---|---:|---:|---:|---|---|---|")
    lines = [head]
    for r in results:
        if r["load"] != "ok":
            lines.append(f"| {r['name']} | {r['bytes'] / 1e6:.0f} | **no**: {r['load']} | | | | | | | |")
            continue
        toks = r["tokens"]
        equal = sum(t["equal"] for t in toks.values())
        tok_cell = f"{equal}/{len(toks)}"
        if any("equal_tiktoken" in t for t in toks.values()):
            tok_cell += f" (tiktoken {sum(t['equal_tiktoken'] for t in toks.values())}/{len(toks)})"
        f32, f16 = r["logits_kv_f32"], r["logits_kv_f16"]
        g = r["greedy"]
        greedy = "same" if g["equal"] else f"differs at {g['first_diff']}"
        chat, more = "-", "-"
        if "more_chats" in r:
            m = r["more_chats"]
            more = f"{sum(c['finish_reason'] == 'stop' for c in m)}/{len(m)} / {sum(c['same_as_gptlab'] for c in m)}/{len(m)}"
        if "chat" in r:
            c = r["chat"]
            chat = f"{c['answer']!r} ({c['finish_reason']}{', = gptlab' if c['same_as_gptlab'] else ''})"
        lines.append(f"| {r['name']} | {r['bytes'] / 1e6:.0f} | yes | {tok_cell} | {f32['max_abs']:.2e} / {f16['max_abs']:.2e} "
                     f"| {f32['mean_abs']:.1e} | {f32['top1_agree']}/{f32['positions']} | {greedy} | {chat} | {more} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="mode", required=True)
    ref = sub.add_parser("reference", help="gptlab's side (the gptlab venv)")
    ref.add_argument("--out", type=Path, required=True)
    ref.add_argument("files", nargs="+", help="NAME=PATH.gguf")
    chk = sub.add_parser("check", help="llama.cpp's side (the llama-cpp-python venv)")
    chk.add_argument("directory", type=Path)
    args = parser.parse_args(argv)
    if args.mode == "reference":
        reference(args.out, args.files)
    else:
        check(args.directory)


if __name__ == "__main__":
    main()
