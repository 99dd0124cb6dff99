"""Prompt styles for instruction data (book chapter 7): how a record becomes a prompt and a response.

Training, response generation, chat and preference tuning must format prompts identically, so
all of them ask this module. A style turns a record (``instruction``, optional ``input``) into the
prompt text, everything up to where the response starts; the response text follows it directly.
Keeping the two apart lets a collate function tokenize them separately, so a prompt mask ends
exactly at the response's first token.

Styles are a registry: ``register_style(PromptStyle(...))`` adds one, and ``data.prompt_style``
names it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from gptlab.errors import ConfigError

ALPACA_PREAMBLE = (
    "Below is an instruction that describes a task. "
    "Write a response that appropriately completes the request."
)


@dataclass(frozen=True)
class PromptStyle:
    """One prompt format.

    Attributes:
        name: the registry key (``data.prompt_style=NAME``).
        template: the prompt with ``{instruction}`` and ``{input_block}`` fields; ends where the
            response begins.
        input_template: how a non-empty ``input`` is shown (``{input}``); empty inputs show nothing.
        stop: text that marks the start of a new section: a response ends before it.
    """

    name: str
    template: str
    input_template: str
    stop: str

    def prompt(self, record: Mapping[str, str]) -> str:
        """The prompt for ``record``: everything the model sees before its response."""
        text = record.get("input") or ""
        input_block = self.input_template.format(input=text) if text else ""
        return self.template.format(instruction=record["instruction"], input_block=input_block)

    def example(self, record: Mapping[str, str], response: str | None = None) -> str:
        """The prompt followed by ``response`` (default: the record's ``output``)."""
        return self.prompt(record) + (record["output"] if response is None else response)

    def extract_response(self, text: str) -> str:
        """The response in a generated ``text`` (prompt included or not), up to the next section."""
        head = self.template.split("{input_block}")[-1].format(instruction="")
        if head and head in text:
            text = text.rsplit(head, 1)[1]
        return text.split(self.stop, 1)[0].strip()


ALPACA = PromptStyle(
    name="alpaca",
    template=f"{ALPACA_PREAMBLE}\n\n### Instruction:\n{{instruction}}{{input_block}}\n\n### Response:\n",
    input_template="\n\n### Input:\n{input}",
    stop="\n###",
)
#: Phi-3's chat format, the book's exercise 7.1.
PHI3 = PromptStyle(
    name="phi3",
    template="<|user|>\n{instruction}{input_block}\n<|assistant|>\n",
    input_template="\n{input}",
    stop="\n<|",
)

PROMPT_STYLES: dict[str, PromptStyle] = {}


def register_style(style: PromptStyle) -> PromptStyle:
    """Add (or replace) a style in the registry; returns it, so it can decorate a definition."""
    PROMPT_STYLES[style.name] = style
    return style


def get_style(name: str | PromptStyle) -> PromptStyle:
    """The registered style ``name`` (a ``PromptStyle`` passes through)."""
    if isinstance(name, PromptStyle):
        return name
    if name not in PROMPT_STYLES:
        raise ConfigError(f"unknown prompt style {name!r}; registered styles: {', '.join(PROMPT_STYLES)}")
    return PROMPT_STYLES[name]


for _style in (ALPACA, PHI3):
    register_style(_style)


# The Alpaca functions chat and older callers use; each is the ``alpaca`` style.
RESPONSE_PREFIX = "\n\n### Response:\n"
SECTION_MARKER = ALPACA.stop


def format_input(entry: Mapping[str, str]) -> str:
    """The Alpaca prompt for ``entry`` without the response prefix (the book's ``format_input``)."""
    return ALPACA.prompt(entry).removesuffix(RESPONSE_PREFIX)


def format_prompt(instruction: str, input: str = "") -> str:
    """The full Alpaca prompt that a fine-tuned model completes."""
    return ALPACA.prompt({"instruction": instruction, "input": input})


def format_example(entry: Mapping[str, str]) -> str:
    """A complete Alpaca training example: the prompt followed by ``entry['output']``."""
    return ALPACA.example(entry)


def extract_response(text: str) -> str:
    """The response in an Alpaca-formatted generated ``text``."""
    return ALPACA.extract_response(text)
