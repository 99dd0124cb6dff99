"""The OpenAI API's request bodies and error shape, as ``gptlab-serve`` accepts and answers them.

Requests are checked by pydantic against the fields and ranges OpenAI documents; anything that
fails becomes a 400 whose body is OpenAI's ``{"error": {"message", "type", "param", "code"}}``.
Fields the API defines but gptlab does not implement (``logprobs``, penalties, tools, ...) are
refused with a 400 when set to anything but their neutral value, rather than silently ignored;
fields the API does not define are ignored, as OpenAI-compatible servers do.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

#: At most this many stop strings, as the OpenAI API allows.
MAX_STOP_STRINGS = 4


class APIError(Exception):
    """An error answered in OpenAI's shape. ``retry`` marks errors a client may retry (429, 5xx);
    every other one is sent with ``x-should-retry: false``."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 type: str = "invalid_request_error", retry_after: int | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.type = status, message, param, code, type
        self.retry_after = retry_after

    @property
    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    @property
    def headers(self) -> dict[str, str]:
        if self.retry_after is not None:
            return {"retry-after": str(self.retry_after)}
        return {"x-should-retry": "false"}


class StreamOptions(BaseModel):
    include_usage: bool = False


class _Generation(BaseModel):
    """The fields both endpoints share."""

    model_config = ConfigDict(extra="ignore")

    model: str | None = None
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    top_k: int | None = Field(None, ge=1)  # not OpenAI's, but vLLM's and llama.cpp's
    seed: int | None = None
    n: int = Field(1, ge=1)
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    # Defined by the API, not implemented: refused unless neutral.
    logprobs: bool | int | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    logit_bias: dict[str, float] | None = None

    @field_validator("stop")
    @classmethod
    def _stop_strings(cls, stop: str | list[str] | None) -> str | list[str] | None:
        if isinstance(stop, list) and len(stop) > MAX_STOP_STRINGS:
            raise ValueError(f"at most {MAX_STOP_STRINGS} stop strings are allowed, got {len(stop)}")
        return stop

    def stop_strings(self) -> tuple[str, ...]:
        stops = [self.stop] if isinstance(self.stop, str) else (self.stop or [])
        return tuple(s for s in stops if s)

    def unsupported(self) -> str | None:
        """The first field set to something gptlab does not implement, if any."""
        for name in ("logprobs", "presence_penalty", "frequency_penalty", "logit_bias"):
            if getattr(self, name) not in (None, False, 0, 0.0, {}):
                return name
        return None


class CompletionRequest(_Generation):
    """``POST /v1/completions``: continue a prompt (text, or token ids)."""

    prompt: str | list[str] | list[int]
    max_tokens: int | None = Field(16, ge=1)  # the API's default for completions
    echo: bool = False
    suffix: str | None = None
    best_of: int | None = None

    def unsupported(self) -> str | None:
        if self.echo:
            return "echo"
        if self.suffix:
            return "suffix"
        if self.best_of not in (None, 1):
            return "best_of"
        return super().unsupported()


class TextPart(BaseModel):
    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    """One message; ``developer`` is OpenAI's newer name for ``system``."""

    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart] | None = None

    def as_dict(self) -> dict[str, str]:
        role = "system" if self.role == "developer" else self.role
        content = self.content if isinstance(self.content, str) else "".join(p.text for p in self.content or [])
        return {"role": role, "content": content}


class ChatCompletionRequest(_Generation):
    """``POST /v1/chat/completions``: the assistant's next turn, in the model's prompt format."""

    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)  # the API's default: as much as the context allows
    max_completion_tokens: int | None = Field(None, ge=1)
    tools: list[Any] | None = None
    response_format: dict[str, Any] | None = None

    def token_budget(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens

    def unsupported(self) -> str | None:
        if self.tools:
            return "tools"
        if self.response_format not in (None, {"type": "text"}):
            return "response_format"
        return super().unsupported()


def validation_error(errors: list[dict[str, Any]]) -> APIError:
    """FastAPI's list of validation errors as one OpenAI error: the first, with its field as ``param``."""
    first = errors[0] if errors else {"loc": (), "msg": "invalid request", "type": ""}
    loc = [str(part) for part in first.get("loc", ()) if part != "body"]
    if first.get("type") == "json_invalid":
        return APIError(400, f"the request body is not valid JSON: {first.get('ctx', {}).get('error', first['msg'])}",
                        code="invalid_json")
    if first.get("type") == "missing" and loc:
        return APIError(400, f"missing required parameter: {loc[0]!r}", param=loc[0], code="missing_required_parameter")
    # A field's own name, or a message's (``messages.0.role``); never a union member's type name.
    param = ".".join(loc[:3] if loc[:1] == ["messages"] else loc[:1]) or None
    message = _UNION_MESSAGES.get(param or "", first.get("msg", "invalid request"))
    if first.get("type") == "literal_error" and loc[-1:] == ["role"]:
        message = f"unknown role {first.get('input')!r}; expected one of system, developer, user, assistant"
    return APIError(400, f"{param}: {message}" if param else message, param=param, code="invalid_value")


#: What a field that takes one of several types should be (pydantic reports each member's failure).
_UNION_MESSAGES = {
    "stop": f"must be a string or a list of at most {MAX_STOP_STRINGS} strings",
    "prompt": "must be a string or a list of token ids",
}
