"""What gptlab's own harness tasks do with their documents, as gptlab does it elsewhere.

The task YAMLs (``gptlab/harness/tasks/``) point here with ``!function``, so that a task's
documents are the very split gptlab trains and tests on, its prompts are gptlab's prompt format and
its score is the ROUGE-L that ``gptlab-eval responses`` reports:

* ``sms_spam_test``: the book's test split of the SMS Spam Collection (chapter 6: balanced to 747
  per class, shuffled with seed 123, the last 20%: 300 messages), by ``SMSSpamDataModule``'s rule;
* ``instruction_test``: the book's test split of the instruction data (chapter 7: 110 of 1,100),
  by ``split_instruction_records``;
* ``alpaca_prompt`` and ``instruction_results``: the Alpaca prompt of a record, and the ROUGE-L
  F-measure of a generated response against the record's output.

ROUGE-L is gptlab's (``gptlab.evaluation.text_metrics``, torchmetrics) rather than one of the
harness's: harness scores of a model's responses then equal the ones ``gptlab-eval responses``
writes for the same responses, and the project keeps one definition of the metric.
"""

from __future__ import annotations

from typing import Any

from gptlab.data import tables
from gptlab.data.instruction import split_instruction_records
from gptlab.data.sms_spam import SMS_SPAM_MEMBER, SMSSpamDataModule
from gptlab.evaluation.text_metrics import rouge_l
from gptlab.prompts import ALPACA


def sms_spam_test(dataset: Any) -> Any:
    """The test split of the whole collection (``label``, ``text``), labels as ids (ham 0, spam 1)."""
    spam = SMSSpamDataModule()  # the book's settings: label names, balance, ratios and seed
    frame = tables.labelled_texts(dataset.to_pandas(), "text", "label", SMS_SPAM_MEMBER)
    frame["label"] = tables.label_ids(frame["label"], spam.label_names, SMS_SPAM_MEMBER)
    test = spam.split_one_file(frame)["test"]
    return type(dataset).from_list(test.to_dict("records"))


def instruction_test(dataset: Any) -> Any:
    """The test split of the instruction records, with the book's ratios (``split_instruction_records``)."""
    return type(dataset).from_list(split_instruction_records([dict(row) for row in dataset])["test"])


def alpaca_prompt(doc: dict[str, str]) -> str:
    """A record's prompt in the book's Alpaca format, up to and with ``### Response:``."""
    return ALPACA.prompt(doc)


def instruction_results(doc: dict[str, str], results: list[str]) -> dict[str, float]:
    """``rougeL``: the generated response's ROUGE-L F-measure against the record's ``output``."""
    return {"rougeL": rouge_l([ALPACA.extract_response(results[0])], [doc["output"]])[0]}
