"""``gptlab-chat``: talk to an instruction-tuned or chat model, one message per line, turn after turn.

Each line read from standard input is the user's next message. The conversation so far is
rendered in the model's prompt format (``LLM``: the style its run recorded, else its own chat
template such as SmolLM2's ChatML, else Alpaca), and the reply streams back until the model's
stop token (``<|endoftext|>``, ``<|im_end|>``) or its format's end of turn. ``/reset`` starts a new
conversation. Works interactively and with piped input::

    gptlab-chat smollm2-135m-instruct
    gptlab-chat runs/instruct --no-history        # each line on its own, as the book's chapter 7
    echo "Name the capital of France." | gptlab-chat runs/instruct

With ``--url`` instead of SOURCE, the replies come from a running OpenAI-compatible server
(``gptlab-serve``, vLLM, llama.cpp's server, OpenAI) through the ``openai`` client; the server
renders the prompt format. ``--model`` defaults to the first id the server lists, ``--api-key``
to ``$GPTLAB_API_KEY``, else ``$OPENAI_API_KEY``::

    gptlab-serve smollm2-135m-instruct --port 8000 &
    gptlab-chat --url http://127.0.0.1:8000/v1
    echo "Name the capital of France." | gptlab-chat --url http://127.0.0.1:8000 --temperature 0.7 --seed 1
"""

from __future__ import annotations

import argparse
import os
import sys
import urllib.parse
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from gptlab.cli import run_command
from gptlab.cli.generate import add_sampling_arguments, emit, open_model, sampling_of
from gptlab.cli.respond import add_prompt_style_argument
from gptlab.errors import ConfigError, first_line
from gptlab.extras import require_extra
from gptlab.inference import Sampling

PROG = "gptlab-chat"
EXIT_WORDS = ("exit", "quit", ":q")
RESET = "/reset"
#: Where ``--api-key`` comes from when not given, first set wins.
API_KEY_ENVS = ("GPTLAB_API_KEY", "OPENAI_API_KEY")
#: The key sent when none is set: the client needs one, and a server without keys ignores it.
PLACEHOLDER_API_KEY = "none"
#: Options that only change how a local model runs, by ``args`` name, as the user writes them.
LOCAL_ONLY = {"tokenizer": "--tokenizer", "device": "--device", "prompt_style": "--prompt-style", "eos": "--no-eos"}

Messages = list[dict[str, str]]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG, description="Chat with an instruction-tuned GPT: one message per line on standard input.",
    )
    add_sampling_arguments(parser, max_new_tokens=256, source_required=False)
    add_prompt_style_argument(parser)
    parser.add_argument("--system", default=None, help="a system message to open the conversation with")
    parser.add_argument("--history", action=argparse.BooleanOptionalAction, default=True,
                        help="keep earlier turns in the prompt (default: on); off answers each line alone")
    remote = parser.add_argument_group("a running OpenAI-compatible server, instead of SOURCE")
    remote.add_argument("--url", default=None,
                        help="the API's base URL, e.g. http://127.0.0.1:8000/v1 (a URL without a path gets /v1)")
    remote.add_argument("--model", default=None, help="the model id to request (default: the first the server lists)")
    remote.add_argument("--api-key", default=None,
                        help=f"sent as 'Authorization: Bearer KEY' (default: ${API_KEY_ENVS[0]}, else "
                             f"${API_KEY_ENVS[1]}, else none)")
    return parser


def check_source(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    """Exactly one of SOURCE and ``--url``, and only the options that mean something for it."""
    if args.source is not None and args.url is not None:
        raise ConfigError(f"give either SOURCE ({args.source!r}, a model to load) or --url (a running server), "
                          "not both")
    if args.source is None and args.url is None:
        raise ConfigError("give SOURCE (a model to load, e.g. smollm2-135m-instruct) or --url URL (a running "
                          "OpenAI-compatible server, e.g. http://127.0.0.1:8000/v1)")
    if args.url is None:
        remote_only = [flag for flag, value in (("--model", args.model), ("--api-key", args.api_key))
                       if value is not None]
        if remote_only:
            raise ConfigError(f"{' and '.join(remote_only)} only apply with --url; a local model is SOURCE itself")
        return
    local = [flag for name, flag in LOCAL_ONLY.items() if getattr(args, name) != parser.get_default(name)]
    if local:
        raise ConfigError(f"{', '.join(local)} only apply to a local model (SOURCE); with --url the server "
                          "decides them: drop them")


def api_url(url: str) -> str:
    """``url`` as the client's base URL: checked, without a trailing slash, ``/v1`` added to a bare host."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ConfigError(f"--url must be an http(s) URL such as http://127.0.0.1:8000/v1, got {url!r}")
    base = url.rstrip("/")
    return base if parts.path.strip("/") else f"{base}/v1"


def api_key_of(given: str | None) -> str:
    """``--api-key``, else the first key set in the environment, else the placeholder."""
    return given or next((os.environ[name] for name in API_KEY_ENVS if os.environ.get(name)), PLACEHOLDER_API_KEY)


class RemoteChat:
    """Replies from a server's ``/chat/completions``; every failure is one ``ConfigError`` line
    naming the URL and what to do, never a traceback."""

    def __init__(self, url: str, api_key: str, model: str | None, sampling: Sampling, stream: bool) -> None:
        require_extra("openai", f"{PROG} --url")
        import openai

        self.url = api_url(url)
        self.client = openai.OpenAI(base_url=self.url, api_key=api_key)
        self.sampling, self.stream = sampling, stream
        self.model = model or self.first_model()

    def first_model(self) -> str:
        """The first id ``GET /models`` lists: the server's model when it serves one."""
        with self.errors():
            ids = [card.id for card in self.client.models.list().data]
        if not ids:
            raise ConfigError(f"the server at {self.url} lists no models; pass --model ID")
        return ids[0]

    def options(self) -> dict[str, Any]:
        """The sampling options as the API names them; unset ones are left to the server."""
        s = self.sampling
        options: dict[str, Any] = {"max_tokens": s.max_new_tokens, "temperature": s.temperature}
        if s.top_p is not None:
            options["top_p"] = s.top_p
        if s.seed is not None:
            options["seed"] = s.seed
        if s.top_k is not None:  # not OpenAI's; vLLM, llama.cpp and gptlab-serve read it from the body
            options["extra_body"] = {"top_k": s.top_k}
        return options

    def reply(self, messages: Messages) -> Iterator[str]:
        """The assistant's next turn, in pieces as they arrive when streaming, else whole."""
        with self.errors():
            if not self.stream:
                completion = self.client.chat.completions.create(model=self.model, messages=messages,
                                                                 stream=False, **self.options())
                yield (completion.choices[0].message.content or "") if completion.choices else ""
                return
            chunks = self.client.chat.completions.create(model=self.model, messages=messages, stream=True,
                                                         **self.options())
            for chunk in chunks:
                if chunk.choices and chunk.choices[0].delta.content:
                    yield chunk.choices[0].delta.content

    @contextmanager
    def errors(self) -> Iterator[None]:
        """The client's exceptions as one line each."""
        import openai

        try:
            yield
        except openai.APIConnectionError as err:  # refused, unknown host, timed out
            reason = first_line(err.__cause__) if err.__cause__ is not None else err.message
            raise ConfigError(f"cannot reach the server at {self.url} ({reason}); start it (e.g. gptlab-serve "
                              "SOURCE) or fix --url") from None
        except openai.APIStatusError as err:
            status, detail = err.status_code, _detail(err)
            if status in (401, 403):
                hint = f"pass the server's key with --api-key or ${API_KEY_ENVS[0]}"
            elif status == 404:
                hint = f"check --model (GET {self.url}/models lists the ids) and that --url is the API's base (.../v1)"
            elif status in (400, 422):
                hint = "change the option it names (max_tokens is --max-new-tokens)"
            elif status in (429, 503):
                hint = "the server is busy: retry shortly"
            else:
                hint = "see the server's log"
            raise ConfigError(f"the server at {self.url} refused the request (HTTP {status}: {detail}); "
                              f"{hint}") from None
        except openai.APIError as err:  # an error reported inside a stream
            raise ConfigError(f"the server at {self.url} failed: {_detail(err)}") from None


def _detail(err: Any) -> str:
    """The server's own message in an OpenAI error body, else the client's."""
    message = err.body.get("message") if isinstance(err.body, dict) else None
    if isinstance(message, str) and message.strip():
        return message.strip().splitlines()[0]
    return first_line(err)


def converse(reply: Callable[[Messages], Iterator[str]], system: str | None, history: bool, stream: bool,
             greeting: str) -> None:
    """The conversation on standard input and output: one message per line, ``/reset``, exit words."""
    opening = [{"role": "system", "content": system}] if system else []
    messages = list(opening)
    interactive = sys.stdin.isatty()
    if interactive:
        print(f"{greeting}; type a message ({RESET} to start over, Ctrl-D or 'exit' to quit).")
    while True:
        if interactive:
            sys.stdout.write("> ")
            sys.stdout.flush()
        line = sys.stdin.readline()
        if not line:
            break
        text = line.strip()
        if not text:
            continue
        if interactive and text.lower() in EXIT_WORDS:
            break
        if text == RESET:
            messages = list(opening)
            continue
        if not history:
            messages = list(opening)
        messages.append({"role": "user", "content": text})
        answer = emit(reply(messages), sys.stdout, stream)
        sys.stdout.write("\n")
        sys.stdout.flush()
        messages.append({"role": "assistant", "content": answer})


def run(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    check_source(args, parser)
    sampling = sampling_of(args)
    if args.url is not None:
        remote = RemoteChat(args.url, api_key_of(args.api_key), args.model, sampling, args.stream)
        converse(remote.reply, args.system, args.history, args.stream, f"{remote.model} at {remote.url} ready")
        return
    llm = open_model(args, prompt_style=args.prompt_style)
    generator = llm.generator(args.seed)
    converse(lambda messages: llm.chat_stream(messages, sampling, generator, args.eos), args.system, args.history,
             args.stream, f"{llm.model.cfg.name} ready ({llm.style.name} format)")


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point; returns the exit status (2 for a problem the user can fix)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    return run_command(PROG, lambda: run(args, parser))


if __name__ == "__main__":
    sys.exit(main())
