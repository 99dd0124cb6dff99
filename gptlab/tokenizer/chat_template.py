"""A model's chat template: the Jinja program, shipped with its tokenizer, that turns a conversation
into the exact text the model was fine-tuned on.

Templates come with downloaded models, so they are untrusted code: they run in Jinja's immutable
sandbox. The environment is the one Hugging Face ``transformers`` renders chat templates in (the
de facto standard the templates are written for): ``trim_blocks`` and ``lstrip_blocks``, the loop
controls, a ``{% generation %}`` block, and the globals ``raise_exception``, ``strftime_now``,
``namespace`` and ``dict`` and the filter ``tojson``. A template that fails to compile or render is
one ``ConfigError`` line.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping
from datetime import datetime
from typing import Any

import jinja2
import jinja2.ext
import jinja2.nodes
import jinja2.parser
import jinja2.utils
from jinja2.sandbox import ImmutableSandboxedEnvironment

from gptlab.errors import ConfigError, first_line

#: The probe conversation's assistant text; what the template writes after it ends a turn.
_PROBE_REPLY = "GPTLAB-PROBE-REPLY"


class ChatTemplate:
    """A Jinja chat template, compiled on first use and rendered in a sandbox.

    ``bos_token`` and ``eos_token`` are the texts of the tokenizer's BOS and EOS tokens, which
    templates may write (``{{ bos_token }}``); a keyword argument of ``render`` overrides them.
    """

    def __init__(self, source: str, bos_token: str | None = None, eos_token: str | None = None) -> None:
        self.source = source
        self.bos_token = bos_token
        self.eos_token = eos_token

    def __repr__(self) -> str:
        return f"ChatTemplate({len(self.source)} characters)"

    @functools.cached_property
    def _template(self) -> jinja2.Template:
        try:
            return _environment().from_string(self.source)
        except Exception as err:  # noqa: BLE001 - a template's syntax error is the user's to fix
            raise ConfigError(f"chat template failed to compile: {_describe(err)}") from None

    def render(self, messages: list[dict[str, Any]], add_generation_prompt: bool = True, **kwargs: Any) -> str:
        """The conversation as the model's prompt text; with ``add_generation_prompt``, ending
        where the assistant's next reply begins. ``kwargs`` reach the template as variables
        (``tools``, ``documents`` and templates' own options such as ``enable_thinking``)."""
        context = {"tools": None, "documents": None, **self._special_tokens(), **kwargs}
        template = self._template
        try:
            return template.render(messages=_plain_messages(messages), add_generation_prompt=add_generation_prompt,
                                   **context)
        except Exception as err:  # noqa: BLE001 - anything a template does wrong is one line, not a traceback
            raise ConfigError(f"chat template failed to render: {_describe(err)}") from None

    def _special_tokens(self) -> dict[str, str]:
        tokens = {"bos_token": self.bos_token, "eos_token": self.eos_token}
        return {name: text for name, text in tokens.items() if text is not None}

    @functools.cached_property
    def stop_strings(self) -> tuple[str, ...]:
        """The text that ends an assistant turn (``<|im_end|>`` for ChatML, ``<|eot_id|>`` for
        Llama 3), empty when the template writes nothing after a reply or cannot render.

        Found by rendering a probe conversation (a user message, then an assistant reply) and
        taking what the template writes after the reply, up to the end of that line, stripped:
        generation stops there, before the template's next turn begins.
        """
        probe = [{"role": "user", "content": "Hello"}, {"role": "assistant", "content": _PROBE_REPLY}]
        try:
            text = self.render(probe, add_generation_prompt=False)
        except ConfigError:
            return ()
        if _PROBE_REPLY not in text:
            return ()
        after = text.rsplit(_PROBE_REPLY, 1)[1].lstrip()
        end = after.split("\n", 1)[0].strip()
        return (end,) if end else ()


def _describe(err: Exception) -> str:
    """An exception as the user sees it: its first line, and the template line for syntax errors."""
    line = getattr(err, "lineno", None)
    where = f" (template line {line})" if isinstance(err, jinja2.TemplateSyntaxError) and line else ""
    return f"{first_line(err)}{where}"


def _plain_messages(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The messages as fresh dicts without ``None`` values: templates test ``'key' in message``, and
    a ``content=None`` from an API would otherwise render as the text ``None``."""
    if not isinstance(messages, list) or not all(isinstance(m, Mapping) for m in messages):
        raise ConfigError("a conversation must be a list of messages, each a dict with 'role' and 'content'")
    return [{key: value for key, value in message.items() if value is not None} for message in messages]


def _raise_exception(message: str) -> None:
    """What a template calls to refuse a conversation (e.g. roles that do not alternate)."""
    raise jinja2.TemplateError(message)


def _tojson(value: Any, ensure_ascii: bool = False, indent: int | None = None,
            separators: tuple[str, str] | None = None, sort_keys: bool = False) -> str:
    """JSON as templates expect it: unlike Jinja's own ``tojson``, no HTML escaping."""
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _strftime_now(format: str) -> str:
    """Today's date in a system prompt (``Today Date: 26 Jul 2024``)."""
    return datetime.now().strftime(format)


class _SafeNamespace(jinja2.utils.Namespace):
    """``namespace()`` for templates, refusing names that start with an underscore: those would
    reach Python's internals."""

    def __init__(*args: Any, **kwargs: Any) -> None:  # noqa: N805 - Namespace's own signature, so ``self=`` is a name
        self, args = args[0], args[1:]
        attributes = dict(*args, **kwargs)
        for name in attributes:
            _SafeNamespace._check(name)
        jinja2.utils.Namespace.__init__(self, attributes)

    def __setitem__(self, name: str, value: Any) -> None:
        _SafeNamespace._check(name)
        jinja2.utils.Namespace.__setitem__(self, name, value)

    @staticmethod
    def _check(name: Any) -> None:
        if isinstance(name, str) and name.startswith("_"):
            raise jinja2.exceptions.SecurityError(f"a namespace cannot hold the underscore name {name!r}")


class _SafeDict:
    """``dict()`` for templates: builds dicts, but is not the ``dict`` type itself, whose attributes
    would let a template climb to other types."""

    def __call__(self, *args: Any, **kwargs: Any) -> dict[Any, Any]:
        return dict(*args, **kwargs)

    def fromkeys(self, *args: Any) -> dict[Any, Any]:
        return dict.fromkeys(*args)


class _GenerationBlock(jinja2.ext.Extension):
    """``{% generation %}...{% endgeneration %}`` marks the assistant's text for training masks;
    rendering a prompt only needs its body, unchanged."""

    tags = {"generation"}

    def parse(self, parser: jinja2.parser.Parser) -> jinja2.nodes.Node:
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return jinja2.nodes.Scope(body).set_lineno(lineno)


@functools.cache
def _environment() -> ImmutableSandboxedEnvironment:
    """The one sandbox every chat template compiles in."""
    environment = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                                extensions=[_GenerationBlock, jinja2.ext.loopcontrols])
    environment.filters["tojson"] = _tojson
    environment.globals.update(raise_exception=_raise_exception, strftime_now=_strftime_now,
                               namespace=_SafeNamespace, dict=_SafeDict())
    return environment
