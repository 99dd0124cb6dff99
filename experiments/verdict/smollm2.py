"""Book chapter 5 on the real SmolLM2-135M-Instruct: perplexity against ``transformers``, val loss
and samples before and after continued pretraining on "The Verdict".

``perplexity``: the same token ids, in consecutive non-overlapping windows, scored by gptlab's
model (``load_pretrained`` of the GGUF) and by ``transformers``' own model read from the same GGUF
file (``from_pretrained(dir, gguf_file=...)``), both float32. Texts: ``the-verdict.txt`` whole, and
the default corpus's validation split (Python's reference docs, the last 10% of its tokens, as
``gptlab-train`` splits it).

``compare``: for each source (the pretrained model and the runs' exports), the loss over the
Verdict's validation windows exactly as ``experiment=verdict_smollm2`` validates, and a sample from
the book's prompt with the same seed and sampling settings.

    python experiments/verdict/smollm2.py perplexity --verdict ../shared/data/the-verdict.txt
    python experiments/verdict/smollm2.py compare --verdict ../shared/data/the-verdict.txt \\
        smollm2-135m-instruct runs/verdict_full/model runs/verdict_lora/model
"""

from __future__ import annotations

import argparse
import json
import math
import time
from collections.abc import Callable, Iterable

import torch
from torch.nn import functional as F

from gptlab import LLM
from gptlab.data import PretrainDataModule
from gptlab.evaluation.perplexity import batches_perplexity, token_windows
from gptlab.named_models import resolve_named_model
from gptlab.tokenizer import get_tokenizer

MODEL = "smollm2-135m-instruct"
PROMPT = "Every effort moves you"


def token_losses(logits_of: Callable[[torch.Tensor], torch.Tensor],
                 batches: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
    """Every scored token's next-token loss, in float64 so that two models' sums compare exactly."""
    losses = []
    with torch.inference_mode():
        for inputs, targets in batches:
            logits = logits_of(inputs).double()
            loss = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=-100, reduction="none")
            losses.append(loss[targets.flatten() != -100])
    return torch.cat(losses)


def corpus_val_ids(source: str, tokenizer: str, window: int) -> list[int]:
    """The validation tokens of a pretraining corpus, split as ``gptlab-train`` splits it."""
    data = PretrainDataModule(source=source, tokenizer=tokenizer, max_length=window, stride=window)
    data.setup()
    return [int(t) for t in data.val_dataset.tokens]


def perplexity(args: argparse.Namespace) -> None:
    from transformers import AutoModelForCausalLM

    path = resolve_named_model(MODEL)
    llm = LLM.load(MODEL)
    reference = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32).eval()
    tokenizer = get_tokenizer(MODEL)
    texts = {
        "the-verdict.txt (whole)": tokenizer.encode(open(args.verdict, encoding="utf-8").read()),
        "default corpus, val split": corpus_val_ids("embedded", MODEL, args.window),
    }
    rows = []
    for name, ids in texts.items():
        windows = list(token_windows(ids, args.window, args.batch_size))
        start = time.perf_counter()
        ours = batches_perplexity(llm.model, windows)  # what gptlab-eval perplexity reports
        ours_s = time.perf_counter() - start
        start = time.perf_counter()
        theirs = token_losses(lambda x: reference(input_ids=x).logits, windows)
        theirs_s = time.perf_counter() - start
        ours64 = token_losses(llm.model, windows)
        assert len(theirs) == len(ours64) == ours.tokens
        rows.append({"text": name, "tokens": ours.tokens, "gptlab_loss": ours.loss, "gptlab_ppl": ours.perplexity,
                     "transformers_loss": float(theirs.mean()), "transformers_ppl": math.exp(float(theirs.mean())),
                     "mean_difference": float(ours64.mean() - theirs.mean()),
                     "max_token_difference": float((ours64 - theirs).abs().max()),
                     "gptlab_s": ours_s, "transformers_s": theirs_s})
    print("| text | tokens | gptlab loss (ppl) | transformers loss (ppl) | mean loss difference | "
          "largest per-token difference | time gptlab / transformers |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['text']} | {r['tokens']:,} | {r['gptlab_loss']:.5f} ({r['gptlab_ppl']:.3f}) | "
              f"{r['transformers_loss']:.5f} ({r['transformers_ppl']:.3f}) | {r['mean_difference']:.1e} | "
              f"{r['max_token_difference']:.1e} | {r['gptlab_s']:.1f} s / {r['transformers_s']:.1f} s |")
    print(json.dumps(rows))


def compare(args: argparse.Namespace) -> None:
    print("| model | Verdict val loss (ppl) | sample |")
    print("|---|---|---|")
    for source in args.sources:
        llm = LLM.load(source, tokenizer=MODEL)
        data = PretrainDataModule(path=args.verdict, tokenizer=MODEL, max_length=256, stride=256, batch_size=2)
        data.setup()
        val = batches_perplexity(llm.model, data.val_dataloader())
        text = llm.generate(PROMPT, max_new_tokens=args.new_tokens, temperature=0.8, top_k=40, seed=123)
        sample = (PROMPT + text).replace("\n", " ").replace("|", "\\|")
        print(f"| `{source}` | {val.loss:.3f} ({val.perplexity:.1f}) | {sample} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    ppl = commands.add_parser("perplexity")
    ppl.add_argument("--verdict", required=True)
    ppl.add_argument("--window", type=int, default=1024)
    ppl.add_argument("--batch-size", type=int, default=4)
    cmp = commands.add_parser("compare")
    cmp.add_argument("--verdict", required=True)
    cmp.add_argument("--new-tokens", type=int, default=40)
    cmp.add_argument("sources", nargs="+")
    args = parser.parse_args()
    perplexity(args) if args.command == "perplexity" else compare(args)


if __name__ == "__main__":
    main()
