"""Reference-based scores of responses: ROUGE-L and BLEU (torchmetrics), and how many stopped.

ROUGE-L compares each response with its reference output by their longest common subsequence
of words (lower-cased, punctuation removed); the reported value is the mean F-measure over
records. BLEU-4 is corpus-level. ``eos_share`` is the share of responses that ended with
``<|endoftext|>`` rather than running into ``max_new_tokens``: a model that never learned to
stop shows it here, whatever its ROUGE.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from torchmetrics.text import BLEUScore, ROUGEScore


def rouge_l(predictions: Sequence[str], references: Sequence[str]) -> list[float]:
    """The ROUGE-L F-measure of each prediction against its reference."""
    metric = ROUGEScore(rouge_keys="rougeL", accumulate="best")
    return [float(metric([p], [r])["rougeL_fmeasure"]) for p, r in zip(predictions, references)]


def bleu(predictions: Sequence[str], references: Sequence[str], n_gram: int = 4) -> float:
    """Corpus BLEU-``n_gram`` of the predictions, each with its one reference."""
    return float(BLEUScore(n_gram=n_gram)(list(predictions), [[r] for r in references]))


def text_metrics(rows: Sequence[Mapping[str, Any]]) -> tuple[dict[str, float], list[float]]:
    """``({"rougeL": mean, "bleu4": ..., "eos_share": ..., "records": n}, per-record ROUGE-L)`` of
    rows holding ``model_response`` and ``output`` (and ``ended_with_eos`` when known)."""
    predictions = [row["model_response"] for row in rows]
    references = [row["output"] for row in rows]
    per_record = rouge_l(predictions, references)
    stopped = [row["ended_with_eos"] for row in rows if isinstance(row.get("ended_with_eos"), bool)]
    summary: dict[str, float] = {"records": len(rows), "rougeL": sum(per_record) / len(per_record),
               "bleu4": bleu(predictions, references)}
    if stopped:
        summary["eos_share"] = sum(stopped) / len(stopped)
    return summary, per_record
