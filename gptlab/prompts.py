"""The Alpaca prompt format of the book's instruction fine-tuning (chapter 7).

Training and chatting must format prompts identically, so both use these functions.
"""

from __future__ import annotations

from collections.abc import Mapping

PREAMBLE = (
    "Below is an instruction that describes a task. "
    "Write a response that appropriately completes the request."
)
RESPONSE_PREFIX = "\n\n### Response:\n"
#: A response ends where the model starts a new ``### ...`` section of the format.
SECTION_MARKER = "\n###"


def format_input(entry: Mapping[str, str]) -> str:
    """The prompt for ``entry`` (``instruction`` plus optional ``input``), without the response part."""
    instruction_text = f"{PREAMBLE}\n\n### Instruction:\n{entry['instruction']}"
    input_text = f"\n\n### Input:\n{entry['input']}" if entry.get("input") else ""
    return instruction_text + input_text


def format_prompt(instruction: str, input: str = "") -> str:
    """The full prompt that a fine-tuned model completes: ``format_input`` plus the response prefix."""
    return format_input({"instruction": instruction, "input": input}) + RESPONSE_PREFIX


def format_example(entry: Mapping[str, str]) -> str:
    """A complete training example: the prompt followed by ``entry['output']``."""
    return format_input(entry) + RESPONSE_PREFIX + entry["output"]


def extract_response(text: str) -> str:
    """The response in a generated ``text``: after the response prefix, up to the next section."""
    if RESPONSE_PREFIX in text:
        text = text.split(RESPONSE_PREFIX, 1)[1]
    return text.split(SECTION_MARKER, 1)[0].strip()
