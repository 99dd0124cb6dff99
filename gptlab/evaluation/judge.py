"""LLM-as-judge (book section 7.8): another model scores each response from 0 to 100, over HTTP.

Two protocols: Ollama's native ``/api/chat`` (with ``num_ctx`` raised so a long prompt is never
cut) and the OpenAI-compatible ``/v1/chat/completions`` (vLLM, llama.cpp's server, OpenAI).
Requests use temperature 0 and a fixed seed. Transport failures and 5xx/429 replies are retried
with exponential backoff; a reply is scored only when it holds exactly one integer in 0..100,
otherwise the question is asked again and, once retries run out, the record is *unscored* with
the reason. A judge that cannot be reached at all stops the run with one line naming its URL:
no failure ever becomes a silent 0 or a silent skip.

Settings come from arguments or the environment: ``GPTLAB_JUDGE_URL`` (default Ollama's
``http://localhost:11434``), ``GPTLAB_JUDGE_MODEL`` (default ``llama3``, the book's),
``GPTLAB_JUDGE_API_KEY`` (else ``OPENAI_API_KEY``), ``GPTLAB_JUDGE_PROTOCOL``.
"""

from __future__ import annotations

import json
import os
import re
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from gptlab.errors import ConfigError, GptlabError
from gptlab.prompts import format_input

PROTOCOLS = ("ollama", "openai")
DEFAULT_URL = "http://localhost:11434"
DEFAULT_MODEL = "llama3"
#: Reply tokens a judge may write: the prompt asks for one integer, and the cap keeps a judge that
#: explains itself from writing to the end of its context.
JUDGE_MAX_TOKENS = 32
_INTEGER = re.compile(r"(?<![\w.])-?\d+(?:\.\d+)?(?![\w.]*\d)")
_OUT_OF_100 = re.compile(r"\s*(?:/|out of)\s*100\b", re.IGNORECASE)


class JudgeUnreachable(GptlabError):
    """No judge answers at the configured URL."""


def judge_prompt(record: Mapping[str, Any]) -> str:
    """The book's scoring prompt for one record with a ``model_response``."""
    return (f"Given the input `{format_input(record)}` and correct output `{record['output']}`, "
            f"score the model response `{record['model_response']}` on a scale from 0 to 100, "
            "where 100 is the best score. Respond with the integer number only.")


def parse_score(reply: str) -> int | None:
    """The score in ``reply`` if it holds exactly one integer and that integer is in 0..100
    (``85``, ``Score: 85.``, ``85/100``); ``None`` for no number, several, a decimal, or out of range."""
    numbers = _INTEGER.findall(_OUT_OF_100.sub("", reply))
    if len(numbers) != 1 or "." in numbers[0]:
        return None
    value = int(numbers[0])
    return value if 0 <= value <= 100 else None


@dataclass(frozen=True)
class JudgeConfig:
    """Where the judge is and how to ask it; ``from_env`` fills what is not given."""

    url: str = DEFAULT_URL
    model: str = DEFAULT_MODEL
    protocol: str = "ollama"
    api_key: str | None = None
    timeout: float = 120.0
    retries: int = 3
    backoff: float = 1.0
    concurrency: int = 4
    seed: int = 123
    num_ctx: int = 4096

    def __post_init__(self) -> None:
        if self.protocol not in PROTOCOLS:
            raise ConfigError(f"unknown judge protocol {self.protocol!r}; valid: {', '.join(PROTOCOLS)}")
        for name in ("timeout", "concurrency", "num_ctx"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"judge {name} must be positive, got {getattr(self, name)}")
        if self.retries < 0 or self.backoff < 0:
            raise ConfigError(f"judge retries and backoff must be 0 or more, got {self.retries} and {self.backoff}")

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **given: Any) -> JudgeConfig:
        """A config from ``given`` values (``None`` = unset), then ``GPTLAB_JUDGE_*``, then defaults."""
        env = os.environ if env is None else env
        url = given.pop("url", None) or env.get("GPTLAB_JUDGE_URL") or DEFAULT_URL
        protocol = given.pop("protocol", None) or env.get("GPTLAB_JUDGE_PROTOCOL") or \
            ("openai" if "/v1" in url else "ollama")
        values = {
            "url": url.rstrip("/"), "protocol": protocol,
            "model": given.pop("model", None) or env.get("GPTLAB_JUDGE_MODEL") or DEFAULT_MODEL,
            "api_key": given.pop("api_key", None) or env.get("GPTLAB_JUDGE_API_KEY") or env.get("OPENAI_API_KEY"),
        }
        values.update({k: v for k, v in given.items() if v is not None})
        return cls(**values)

    @property
    def endpoint(self) -> str:
        """The chat URL: ``<url>/api/chat`` or ``<url>/chat/completions`` (``<url>`` ends in ``/v1``)."""
        if self.protocol == "ollama":
            return self.url if self.url.endswith("/api/chat") else f"{self.url}/api/chat"
        if self.url.endswith("/chat/completions"):
            return self.url
        return f"{self.url}/chat/completions" if self.url.endswith("/v1") else f"{self.url}/v1/chat/completions"


@dataclass
class Judgement:
    """The judge's verdict on one record: a score, or the reason there is none."""

    score: int | None
    reply: str | None = None
    error: str | None = None
    attempts: int = 0
    replies: list[str] = field(default_factory=list)


class _Retry(Exception):
    """A failure worth asking again (timeout, 5xx, 429, dropped connection)."""


class JudgeClient:
    """Ask one judge for scores, over plain ``urllib`` (no dependency beyond the standard library)."""

    def __init__(self, config: JudgeConfig, sleep: Callable[[float], None] = time.sleep) -> None:
        self.config = config
        self.sleep = sleep

    def payload(self, prompt: str) -> dict[str, Any]:
        messages = [{"role": "user", "content": prompt}]
        if self.config.protocol == "ollama":
            # num_ctx: Ollama's default window (2048) would silently cut a long prompt; ~2 chars a token
            # over-estimates the need, so the window always holds the prompt plus a short reply.
            num_ctx = max(self.config.num_ctx, len(prompt) // 2 + 256)
            return {"model": self.config.model, "messages": messages, "stream": False,
                    "options": {"temperature": 0, "seed": self.config.seed, "num_ctx": num_ctx,
                                "num_predict": JUDGE_MAX_TOKENS}}
        return {"model": self.config.model, "messages": messages, "temperature": 0, "seed": self.config.seed,
                "max_tokens": JUDGE_MAX_TOKENS}

    def chat(self, prompt: str) -> str:
        """One request; the reply's text. Raises ``_Retry`` or ``JudgeUnreachable``."""
        url = self.config.endpoint
        headers = {"Content-Type": "application/json"}
        if self.config.api_key:
            headers["Authorization"] = f"Bearer {self.config.api_key}"
        request = urllib.request.Request(url, json.dumps(self.payload(prompt)).encode(), headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=self.config.timeout) as response:
                body = json.loads(response.read().decode("utf-8"))
        except urllib.error.HTTPError as err:
            detail = err.read().decode("utf-8", "replace")[:200].strip()
            if err.code >= 500 or err.code == 429:
                raise _Retry(f"HTTP {err.code} from {url}: {detail}") from None
            raise JudgeUnreachable(f"the judge at {url} refused the request (HTTP {err.code}: {detail}); check "
                                   "GPTLAB_JUDGE_MODEL, GPTLAB_JUDGE_API_KEY and the protocol") from None
        except (TimeoutError, socket.timeout):
            raise _Retry(f"no reply from {url} within {self.config.timeout:g} s") from None
        except urllib.error.URLError as err:
            if isinstance(err.reason, (TimeoutError, socket.timeout)):
                raise _Retry(f"no reply from {url} within {self.config.timeout:g} s") from None
            raise JudgeUnreachable(f"cannot reach the judge at {url} ({err.reason}); start it (e.g. `ollama serve`) "
                                   "or set GPTLAB_JUDGE_URL") from None
        except (ConnectionError, json.JSONDecodeError, UnicodeDecodeError) as err:
            raise _Retry(f"bad reply from {url}: {err}") from None
        try:
            if self.config.protocol == "ollama":
                return str(body["message"]["content"])
            return str(body["choices"][0]["message"]["content"])
        except (KeyError, IndexError, TypeError):
            raise _Retry(f"reply from {url} is not a {self.config.protocol} chat response: {str(body)[:200]}") from None

    def judge(self, record: Mapping[str, Any]) -> Judgement:
        """Score one record, asking up to ``1 + retries`` times."""
        verdict = Judgement(score=None)
        prompt = judge_prompt(record)
        for attempt in range(self.config.retries + 1):
            if attempt:
                self.sleep(self.config.backoff * 2 ** (attempt - 1))
            verdict.attempts = attempt + 1
            try:
                reply = self.chat(prompt)
            except _Retry as err:
                verdict.error = str(err)
                continue
            verdict.reply = reply
            verdict.replies.append(reply)
            verdict.score = parse_score(reply)
            if verdict.score is not None:
                verdict.error = None
                return verdict
            verdict.error = "the reply holds no single integer in 0..100"
        return verdict

    def judge_all(self, records: Sequence[Mapping[str, Any]],
                  progress: Callable[[], None] | None = None) -> list[Judgement]:
        """Verdicts for ``records`` in order, ``concurrency`` requests at a time; the first
        ``JudgeUnreachable`` stops the run."""
        def one(record: Mapping[str, Any]) -> Judgement:
            verdict = self.judge(record)
            if progress is not None:
                progress()
            return verdict

        with ThreadPoolExecutor(max_workers=self.config.concurrency) as pool:
            futures = [pool.submit(one, record) for record in records]
            try:
                return [future.result() for future in futures]
            except JudgeUnreachable:
                for future in futures:
                    future.cancel()
                raise
