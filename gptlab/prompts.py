"""Prompt formats: how a record or a conversation becomes the text a model completes (book chapter 7).

Training, response generation, chat, preference tuning and serving must format prompts
identically, so all of them ask this module. Every format is one mechanism, a Jinja chat template
(the form Hugging Face and GGUF files carry, rendered in ``tokenizer.chat_template``'s sandbox):

* gptlab's registered styles (``alpaca``, the book's; ``phi3``, its exercise 7.1; ``chatml``) are
  chat templates written here, so a model fine-tuned in gptlab exports its format as a template
  that llama.cpp and ``transformers`` apply too;
* a pretrained model's own template (a GGUF's ``tokenizer.chat_template``) becomes a
  ``PromptStyle`` through ``PromptStyle.from_chat_template``.

A record (``instruction``, optional ``input``) is one user message, its input shown by the
style's ``input_template``; its prompt is that message rendered with the generation prompt, and
the response text follows it directly. Keeping prompt and response apart lets a collate function
tokenize them separately, so a prompt mask ends exactly at the response's first token.

Styles are a registry: ``register_style(PromptStyle(...))`` adds one, and ``data.prompt_style``
names it. ``data.prompt_style=chat_template`` (``CHAT_TEMPLATE``) is the tokenizer's own template
instead (``resolve_style``): records are then formatted as the model's chat, and each response ends
with the template's end-of-turn token (``<|im_end|>`` for ChatML).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from gptlab.errors import ConfigError
from gptlab.tokenizer.bpe import Tokenizer
from gptlab.tokenizer.chat_template import ChatTemplate

ALPACA_PREAMBLE = (
    "Below is an instruction that describes a task. "
    "Write a response that appropriately completes the request."
)
#: The ``prompt_style`` that means the tokenizer's own chat template rather than a registered style.
CHAT_TEMPLATE = "chat_template"
#: Stand in for a message's text while a template's fixed parts are read off a rendering.
_PROBE = "\x00probe\x00"
_REPLY_PROBE = "\x00reply\x00"
Message = Mapping[str, str]


def _section_template(user: str, assistant: str, generation: str, default_system: str = "") -> str:
    """A chat template of plain sections: an optional system text, then each turn as ``user`` or
    ``assistant`` (Jinja expressions over ``message``), then ``generation`` to open the response."""
    return (
        "{%- set ns = namespace(system=" + repr(default_system) + ") -%}"
        "{%- for message in messages if message['role'] == 'system' -%}{%- set ns.system = message['content'] -%}"
        "{%- endfor -%}{{ ns.system }}"
        "{%- for message in messages -%}"
        "{%- if message['role'] == 'user' -%}{{ " + user + " }}"
        "{%- elif message['role'] == 'assistant' -%}{{ " + assistant + " }}{%- endif -%}"
        "{%- endfor -%}"
        "{%- if add_generation_prompt -%}{{ " + repr(generation) + " }}{%- endif -%}"
    )


@functools.lru_cache(maxsize=32)
def _compiled(source: str, bos_token: str | None, eos_token: str | None) -> ChatTemplate:
    return ChatTemplate(source, bos_token=bos_token, eos_token=eos_token)


@dataclass(frozen=True)
class PromptStyle:
    """One prompt format: a chat template, how a record's input is shown, and where a response ends.

    Attributes:
        name: the registry key (``data.prompt_style=NAME``), or the model's name for its own template.
        chat_template: the Jinja template of a conversation (``messages``, ``add_generation_prompt``).
        input_template: how a record's non-empty ``input`` joins its instruction (``{input}``).
        stop: text that ends a response (the next section, or an end-of-turn marker).
        bos_token, eos_token: the values templates may insert as ``bos_token`` / ``eos_token``.
    """

    name: str
    chat_template: str
    input_template: str
    stop: str
    bos_token: str | None = None
    eos_token: str | None = None

    @classmethod
    def from_chat_template(cls, name: str, chat_template: str, bos_token: str | None = None,
                           eos_token: str | None = None) -> PromptStyle:
        """A model's own template as a style: a record's input follows its instruction after a blank
        line, and a response ends where the template closes an assistant turn (e.g. ``<|im_end|>``).

        A template that is a registered style's (a model fine-tuned here, exported to GGUF and read
        back) is that style, with its input sections and stop text.
        """
        registered = next((s for s in PROMPT_STYLES.values() if s.chat_template == chat_template), None)
        if registered is not None:
            return registered
        stops = _compiled(chat_template, bos_token, eos_token).stop_strings
        return cls(name, chat_template, "\n\n{input}", stops[0] if stops else "", bos_token, eos_token)

    @property
    def template(self) -> ChatTemplate:
        return _compiled(self.chat_template, self.bos_token, self.eos_token)

    def render(self, messages: Sequence[Message], add_generation_prompt: bool = True) -> str:
        """A conversation (``role``/``content`` dicts) as the text the model continues."""
        return self.template.render([dict(m) for m in messages], add_generation_prompt=add_generation_prompt)

    def user_message(self, record: Mapping[str, str]) -> dict[str, str]:
        """A record as one user message: its instruction, then its input (if any)."""
        text = record.get("input") or ""
        return {"role": "user", "content": record["instruction"] + (self.input_template.format(input=text) if text else "")}

    def prompt(self, record: Mapping[str, str]) -> str:
        """The prompt for ``record``: everything the model sees before its response."""
        return self.render([self.user_message(record)])

    def prompt_and_response(self, record: Mapping[str, str], response: str | None = None) -> tuple[str, str]:
        """The prompt, and the reply ``response`` (default: the record's ``output``) as the template
        writes it after the prompt, up to its end-of-turn marker (``end_of_turn``, left out: it is
        one token, ``end_id``). Together they are the template's rendering of the conversation."""
        reply = record["output"] if response is None else response
        prompt = self.prompt(record)
        full = self.render([self.user_message(record), {"role": "assistant", "content": reply}],
                           add_generation_prompt=False)
        if not full.startswith(prompt):
            raise ConfigError(f"prompt style {self.name!r}: its chat template does not write a reply after its "
                              "generation prompt, so a response cannot be told from its prompt; use a registered "
                              f"style: {', '.join(PROMPT_STYLES)}")
        closing = self._closing
        text = full[len(prompt):]
        if closing and text.endswith(closing):
            text = text[: -len(closing)] + (closing.split(self.end_of_turn, 1)[0] if self.end_of_turn else "")
        return prompt, text

    def example(self, record: Mapping[str, str], response: str | None = None) -> str:
        """The prompt followed by ``response`` (default: the record's ``output``)."""
        return "".join(self.prompt_and_response(record, response))

    @functools.cached_property
    def _closing(self) -> str:
        """What the template writes after an assistant reply (ChatML: ``<|im_end|>\\n``)."""
        text = self.render([{"role": "user", "content": _PROBE}, {"role": "assistant", "content": _REPLY_PROBE}],
                           add_generation_prompt=False)
        return text.rsplit(_REPLY_PROBE, 1)[1] if _REPLY_PROBE in text else ""

    @property
    def end_of_turn(self) -> str:
        """The text the template itself ends an assistant turn with (``<|im_end|>``), or "" when it
        writes none (Alpaca and Phi-3 start the next section instead)."""
        stops = self.template.stop_strings
        return stops[0] if stops else ""

    def end_id(self, tokenizer: Tokenizer) -> int:
        """The token a trained response ends with: ``end_of_turn`` when ``tokenizer`` has it as one
        token (``<|im_end|>`` in SmolLM2's vocabulary), else the tokenizer's end-of-text (the book's
        ``<|endoftext|>``), so that a model learns to stop where its template stops."""
        ids = tokenizer.encode(self.end_of_turn) if self.end_of_turn else []
        return ids[0] if len(ids) == 1 else tokenizer.eot_id

    @property
    def response_prefix(self) -> str:
        """What the template puts between the last user message and the response."""
        return self.render([{"role": "user", "content": _PROBE}]).rsplit(_PROBE, 1)[1]

    def extract_response(self, text: str) -> str:
        """The response in a generated ``text`` (prompt included or not), up to where it ends."""
        head = self.response_prefix
        if head.strip() and head in text:
            text = text.rsplit(head, 1)[1]
        return (text.split(self.stop, 1)[0] if self.stop else text).strip()

    def to_record(self) -> dict[str, Any]:
        """What a run records of its format (``prompt.json``): the style's name and its template."""
        tokens = {"bos_token": self.bos_token, "eos_token": self.eos_token}
        return {"prompt_style": self.name, "chat_template": self.chat_template, "input_template": self.input_template,
                "stop": self.stop, **{key: text for key, text in tokens.items() if text is not None}}


ALPACA = PromptStyle(
    name="alpaca",
    chat_template=_section_template("'\\n\\n### Instruction:\\n' + message['content']",
                                    "'\\n\\n### Response:\\n' + message['content']",
                                    "\n\n### Response:\n", ALPACA_PREAMBLE),
    input_template="\n\n### Input:\n{input}",
    stop="\n###",
)
#: Phi-3's chat format, the book's exercise 7.1.
PHI3 = PromptStyle(
    name="phi3",
    chat_template=_section_template("'<|user|>\\n' + message['content'] + '\\n'",
                                    "'<|assistant|>\\n' + message['content'] + '\\n'", "<|assistant|>\n"),
    input_template="\n{input}",
    stop="\n<|",
)
#: ChatML (``<|im_start|>role ... <|im_end|>``), the format of SmolLM2, Qwen and many others.
CHATML = PromptStyle(
    name="chatml",
    chat_template=(
        "{%- for message in messages -%}"
        "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
        "{%- endfor -%}"
        "{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\\n' }}{%- endif -%}"
    ),
    input_template="\n\n{input}",
    stop="<|im_end|>",
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
    if name == CHAT_TEMPLATE:
        raise ConfigError(f"prompt style {CHAT_TEMPLATE!r} is a tokenizer's own chat template, and no tokenizer was "
                          f"given to read it from; registered styles: {', '.join(PROMPT_STYLES)}")
    if name not in PROMPT_STYLES:
        raise ConfigError(f"unknown prompt style {name!r}; registered styles: {', '.join(PROMPT_STYLES)} "
                          f"(or {CHAT_TEMPLATE}, the tokenizer's own)")
    return PROMPT_STYLES[name]


def resolve_style(name: str | PromptStyle, tokenizer: Tokenizer) -> PromptStyle:
    """``get_style``, where ``chat_template`` is ``tokenizer``'s own chat template (the registered
    style it is, if it is one): the format a pretrained chat model already answers in."""
    if isinstance(name, PromptStyle) or name != CHAT_TEMPLATE:
        return get_style(name)
    template = getattr(tokenizer, "chat_template", None)
    if template is None:
        raise ConfigError(f"prompt style {CHAT_TEMPLATE!r} formats records in the tokenizer's own chat template, "
                          f"and tokenizer {tokenizer.name!r} has none; use a registered style: "
                          f"{', '.join(PROMPT_STYLES)}")
    return PromptStyle.from_chat_template(CHAT_TEMPLATE, template.source, template.bos_token, template.eos_token)


for _style in (ALPACA, PHI3, CHATML):
    register_style(_style)


def style_from_record(record: Mapping[str, Any]) -> PromptStyle:
    """The style a run recorded (``PromptStyle.to_record``): the registered one of that name, else
    the recorded template (a model's own, fine-tuned further)."""
    name = record.get("prompt_style")
    if isinstance(name, str) and name in PROMPT_STYLES:
        return PROMPT_STYLES[name]
    template = record.get("chat_template")
    if isinstance(name, str) and isinstance(template, str):
        tokens = {key: record[key] for key in ("bos_token", "eos_token") if isinstance(record.get(key), str)}
        return PromptStyle(name, template, str(record.get("input_template") or "\n\n{input}"),
                           str(record.get("stop") or ""), **tokens)
    raise ConfigError(f"unknown prompt style {name!r} and no chat template recorded; "
                      f"registered styles: {', '.join(PROMPT_STYLES)}")


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
