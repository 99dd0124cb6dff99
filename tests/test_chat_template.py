"""Chat templates rendered by ``ChatTemplate`` against ``transformers``' ``apply_chat_template``: the real
SmolLM2-135M-Instruct template read from its GGUF file, and a template that uses every part of the
environment; templates that fail are one ``ConfigError`` line."""

from __future__ import annotations


import pytest

from gptlab.errors import ConfigError
from gptlab.tokenizer import ChatTemplate, GGUFTokenizer


SYSTEM = {"role": "system", "content": "You are a terse assistant. Answer in one line."}
ASK = {"role": "user", "content": "What is the capital of France?"}
ANSWER = {"role": "assistant", "content": "Paris."}
FOLLOW_UP = {"role": "user", "content": "And of Japan? 日本 — «quoted» <b>&amp;</b>"}

CONVERSATIONS = {
    "system and user": [SYSTEM, ASK],
    "user only (default system prompt)": [ASK],
    "multi-turn": [SYSTEM, ASK, ANSWER, FOLLOW_UP],
    "ends with the assistant": [ASK, ANSWER],
}

#: A template that uses the environment: special tokens, tojson, namespace, loop controls, the
#: generation block, tools=None, strftime_now, and trim_blocks/lstrip_blocks whitespace.
EVERYTHING = """{{ bos_token }}
{% set ns = namespace(turns=0) %}
{% for message in messages %}
    {% if loop.index > 4 %}{% break %}{% endif %}
    {% set ns.turns = ns.turns + 1 %}
    [{{ message['role'] | upper }}] {{ message['content'] | tojson }}
    {% if message['role'] == 'assistant' %}
        {% generation %}{{ message['content'] }}{{ eos_token }}{% endgeneration %}
    {% endif %}
{% endfor %}
turns={{ ns.turns }} tools={{ tools is none }} year-digits={{ strftime_now('%Y') | length }}
{{ dict(a=1, b=[2, 3]) | tojson(indent=1) }}
{% if add_generation_prompt %}[ASSISTANT]{% endif %}"""


@pytest.mark.parametrize("generation_prompt", [True, False])
@pytest.mark.parametrize("conversation", list(CONVERSATIONS))
def test_the_real_template_renders_as_transformers(smollm2: GGUFTokenizer, reference, conversation: str,
                                                   generation_prompt: bool):
    messages = CONVERSATIONS[conversation]
    ours = smollm2.chat_template.render(messages, add_generation_prompt=generation_prompt)
    assert ours == reference.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)
    if conversation.startswith("user only"):
        assert "You are a helpful AI assistant named SmolLM" in ours
    assert ours.endswith("<|im_start|>assistant\n") == generation_prompt


def test_the_whole_environment_renders_as_transformers(smollm2: GGUFTokenizer, reference):
    template = ChatTemplate(EVERYTHING, bos_token=reference.bos_token, eos_token=reference.eos_token)
    messages = [*CONVERSATIONS["multi-turn"], {"role": "assistant", "content": "Tokyo."}]
    for generation_prompt in (True, False):
        ours = template.render(messages, add_generation_prompt=generation_prompt)
        assert ours == reference.apply_chat_template(messages, chat_template=EVERYTHING, tokenize=False,
                                                     add_generation_prompt=generation_prompt)
    assert "turns=4 tools=True year-digits=4" in ours and "Tokyo." not in ours  # the loop broke after 4


def test_keyword_arguments_reach_the_template(reference):
    source = "{% if enable_thinking %}<think>{% endif %}{{ messages[0]['content'] }}"
    ours = ChatTemplate(source).render([ASK], enable_thinking=True)
    assert ours == reference.apply_chat_template([ASK], chat_template=source, tokenize=False, enable_thinking=True)
    assert ours.startswith("<think>")


def test_stop_strings():
    chatml = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
              "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
    assert ChatTemplate(chatml).stop_strings == ("<|im_end|>",)
    assert ChatTemplate("{% for m in messages %}{{ m['content'] }}{% endfor %}").stop_strings == ()
    llama3_like = ("{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n"
                   "{{ m['content'] }}<|eot_id|>{% endfor %}")
    assert ChatTemplate(llama3_like).stop_strings == ("<|eot_id|>",)
    assert ChatTemplate("{{ raise_exception('no probes') }}").stop_strings == ()


@pytest.mark.parametrize(("source", "expected"), [
    ("{{ raise_exception('roles must alternate') }}", "chat template failed to render: roles must alternate"),
    ("{% for message in messages %}{{ message.content }", "chat template failed to compile:"),
    ("{{ messages[0].content.no_such_method() }}", "chat template failed to render:"),
    ("{{ messages | no_such_filter }}", "chat template failed to compile:"),
    ("{{ 1 + messages }}", "chat template failed to render:"),
])
def test_a_failing_template_is_one_line(source: str, expected: str):
    with pytest.raises(ConfigError) as err:
        ChatTemplate(source).render([ASK])
    message = str(err.value)
    assert message.startswith(expected) and "\n" not in message


@pytest.mark.parametrize("source", [
    "{{ ''.__class__.__mro__ }}",
    "{{ messages.__class__.__base__.__subclasses__() }}",
    "{% set ns = namespace() %}{% set ns.__dict__ = 1 %}",
    "{{ messages.append({'role': 'user'}) }}",  # the sandbox is immutable
])
def test_the_sandbox_refuses_unsafe_access_in_one_line(source: str):
    with pytest.raises(ConfigError) as err:
        ChatTemplate(source).render([ASK])
    message = str(err.value)
    assert message.startswith("chat template failed to render:") and "\n" not in message


def test_messages_must_be_dicts():
    with pytest.raises(ConfigError) as err:
        ChatTemplate("{{ messages }}").render(["hello"])  # type: ignore[list-item]
    assert "list of messages" in str(err.value)
