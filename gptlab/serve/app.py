"""The OpenAI-compatible HTTP API over a ``DecodeEngine``: FastAPI routes, SSE streams, errors.

Routes: ``POST /v1/completions``, ``POST /v1/chat/completions``, ``GET /v1/models``, ``GET /health``,
the chat page at ``/`` and a text inside the model at ``/inspect``. Every request becomes one
engine job; the engine's deltas reach the request's coroutine through an ``asyncio.Queue``. A
streamed reply is Server-Sent Events (``data: {json}`` frames, a chat stream's first chunk
carrying the role, ``data: [DONE]`` last); a client that goes away cancels its job, which frees
its rows before the next decode step.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError, StarletteHTTPException
from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse

from gptlab.inference import LLM, Sampling
from gptlab.inference.engine import BadRequest, DecodeEngine, Delta, EngineBusy
from gptlab.inference.engine import Request as EngineRequest
from gptlab.inspect.page import served_page
from gptlab.serve.protocol import APIError, ChatCompletionRequest, CompletionRequest, validation_error

#: How often a non-streaming request checks whether its client is still there, in seconds.
DISCONNECT_POLL_S = 0.25
#: OpenAI's default sampling temperature.
DEFAULT_TEMPERATURE = 1.0


@dataclass
class Served:
    """What the routes serve: the model, its engine, the names it answers to, the API key."""

    llm: LLM
    engine: DecodeEngine
    model_id: str
    aliases: frozenset[str] = frozenset()
    api_key: str | None = None
    created: int = field(default_factory=lambda: int(time.time()))

    def check_model(self, name: str | None) -> None:
        if name is not None and name != self.model_id and name not in self.aliases:
            raise APIError(404, f"the model {name!r} does not exist; this server serves {self.model_id!r}",
                           param="model", code="model_not_found")

    def model_card(self) -> dict[str, Any]:
        style = self.llm.style
        example = style.render([{"role": "user", "content": "Hello!"}])
        return {"id": self.model_id, "object": "model", "created": self.created, "owned_by": "gptlab",
                "max_model_len": self.engine.max_seq_len,
                "prompt_format": {"name": style.name, "example": example, "stop": style.stop}}


class Submitted:
    """One job's deltas, delivered on the event loop; ``cancel`` on the way out frees its rows."""

    def __init__(self, engine: DecodeEngine, request: EngineRequest, prompt_param: str) -> None:
        loop = asyncio.get_running_loop()
        self.queue: asyncio.Queue[Delta] = asyncio.Queue()

        def deliver(delta: Delta) -> None:
            try:
                loop.call_soon_threadsafe(self.queue.put_nowait, delta)
            except RuntimeError:  # the event loop has shut down
                pass

        try:
            self.job = engine.submit(request, deliver)
        except BadRequest as err:
            if err.param == "prompt":  # the request's prompt is ``prompt`` or ``messages``
                raise APIError(400, str(err), param=prompt_param, code="context_length_exceeded") from None
            raise APIError(400, str(err), param=err.param, code="invalid_value") from None
        except EngineBusy as err:
            raise APIError(503, f"the server is busy: {err}; retry shortly", type="server_error",
                           code="server_overloaded", retry_after=1) from None
        self.remaining = request.n

    async def deltas(self, poll: Callable[[], Any] | None = None) -> AsyncIterator[Delta]:
        """The job's deltas until every choice has finished; ``poll`` (awaited between deltas,
        returning whether the client left) lets a non-streaming request notice a disconnect."""
        try:
            while self.remaining:
                try:
                    delta = await asyncio.wait_for(self.queue.get(), DISCONNECT_POLL_S)
                except asyncio.TimeoutError:
                    if poll is not None and await poll():
                        return
                    continue
                if delta.error is not None:
                    raise APIError(500, f"generation failed: {delta.error}", type="server_error", code="internal_error")
                if delta.finish_reason is not None:
                    self.remaining -= 1
                yield delta
        finally:
            self.job.cancel()


def _engine_request(body: CompletionRequest | ChatCompletionRequest, prompt_ids: list[int], budget: int | None,
                    stops: tuple[str, ...], chat: bool, max_seq_len: int) -> EngineRequest:
    unsupported = body.unsupported()
    if unsupported is not None:
        raise APIError(400, f"{unsupported} is not supported by gptlab-serve", param=unsupported,
                       code="unsupported_parameter")
    if budget is None:  # as much as the context allows (at least one token, so a too-long prompt is refused)
        budget = max(max_seq_len - len(prompt_ids), 1)
    temperature = DEFAULT_TEMPERATURE if body.temperature is None else body.temperature
    sampling = Sampling(budget, temperature, body.top_k, body.top_p, body.seed)
    return EngineRequest(tuple(prompt_ids), sampling, stops, body.n, stop_at_eos=True, chat=chat)


def _usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def _sse(payload: dict[str, Any] | str) -> str:
    return f"data: {payload if isinstance(payload, str) else json.dumps(payload)}\n\n"


async def _stream(submitted: Submitted, chunk: Callable[[Delta | None, bool], dict[str, Any]],
                  include_usage: bool) -> AsyncIterator[str]:
    """SSE frames: each choice's opening chunk (``chunk(None, ...)``), its deltas, usage, ``[DONE]``."""
    opened: set[int] = set()
    counts: dict[int, int] = {}
    try:
        async for delta in submitted.deltas():
            if delta.index not in opened:
                opened.add(delta.index)
                opening = chunk(Delta(delta.index, "", 0), True)
                if opening:
                    yield _sse(opening)
            counts[delta.index] = delta.completion_tokens
            yield _sse(chunk(delta, False))
    except APIError as err:  # the status line has been sent: report in the stream, then end it
        yield _sse(err.body)
    if include_usage:
        yield _sse(chunk(None, False) | {"choices": [], "usage": _usage(submitted.job.prompt_tokens,
                                                                          sum(counts.values()))})
    yield _sse("[DONE]")


class _JobStream(StreamingResponse):
    """An SSE response that cancels its job however the response ends: finished, failed, or cut off
    by a client that left before the frames' generator ever ran (whose own ``finally`` then never runs)."""

    def __init__(self, submitted: Submitted, frames: AsyncIterator[str]) -> None:
        super().__init__(frames, media_type="text/event-stream",
                         headers={"cache-control": "no-cache", "x-accel-buffering": "no"})
        self.job = submitted.job

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.job.cancel()


def create_app(served: Served) -> FastAPI:
    """The FastAPI application for ``served``."""
    app = FastAPI(title="gptlab-serve", docs_url="/docs", redoc_url=None)
    app.state.served = served
    llm, engine = served.llm, served.engine

    @app.exception_handler(APIError)
    async def api_error(_: Request, err: APIError) -> JSONResponse:
        return JSONResponse(err.body, status_code=err.status, headers=err.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, err: RequestValidationError) -> JSONResponse:
        return await api_error(_, validation_error(list(err.errors())))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, err: StarletteHTTPException) -> JSONResponse:
        return await api_error(_, APIError(err.status_code, str(err.detail), code=f"http_{err.status_code}"))

    async def authorize(request: Request) -> None:
        if served.api_key is None:
            return
        given = request.headers.get("authorization", "")
        if not hmac.compare_digest(given.encode(), f"Bearer {served.api_key}".encode()):
            raise APIError(401, "invalid or missing API key: send the header 'Authorization: Bearer <key>'",
                           code="invalid_api_key")

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def chat_page() -> str:
        return resources.files("gptlab.serve").joinpath("chat.html").read_text(encoding="utf-8")

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "model": served.model_id, "in_flight": engine.in_flight,
                "waiting": len(engine.waiting), "active_rows": len(engine.active), "max_batch": engine.max_batch,
                "decode_steps": engine.steps}

    @app.get("/v1/models", dependencies=[Depends(authorize)])
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [served.model_card()]}

    @app.post("/v1/completions", dependencies=[Depends(authorize)])
    async def completions(body: CompletionRequest, request: Request) -> Any:
        served.check_model(body.model)
        prompt_ids = _completion_prompt(llm, body.prompt)
        submitted = Submitted(engine, _engine_request(body, prompt_ids, body.max_tokens, body.stop_strings(), False,
                                                      engine.max_seq_len), "prompt")
        ident, created = f"cmpl-{uuid.uuid4().hex}", int(time.time())

        def chunk(delta: Delta | None, opening: bool) -> dict[str, Any]:
            choices = [] if delta is None or opening else [
                {"index": delta.index, "text": delta.text, "logprobs": None, "finish_reason": delta.finish_reason}]
            return {"id": ident, "object": "text_completion", "created": created, "model": served.model_id,
                    "choices": choices} if not opening else {}

        if body.stream:
            include = body.stream_options is not None and body.stream_options.include_usage
            return _JobStream(submitted, _stream(submitted, chunk, include))
        texts, finish, counts = await _collect(submitted, request)
        return {"id": ident, "object": "text_completion", "created": created, "model": served.model_id,
                "choices": [{"index": i, "text": texts[i], "logprobs": None, "finish_reason": finish[i]}
                            for i in sorted(texts)],
                "usage": _usage(submitted.job.prompt_tokens, sum(counts.values()))}

    @app.post("/v1/chat/completions", dependencies=[Depends(authorize)])
    async def chat_completions(body: ChatCompletionRequest, request: Request) -> Any:
        served.check_model(body.model)
        prompt_ids = llm.tokenizer.encode(llm.style.render([m.as_dict() for m in body.messages]))
        stops = (llm.style.stop, *body.stop_strings())
        submitted = Submitted(engine, _engine_request(body, prompt_ids, body.token_budget(), stops, True,
                                                      engine.max_seq_len), "messages")
        ident, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())

        def chunk(delta: Delta | None, opening: bool) -> dict[str, Any]:
            choices = []
            if delta is not None:
                content = {"role": "assistant", "content": ""} if opening else (
                    {"content": delta.text} if delta.text else {})
                choices = [{"index": delta.index, "delta": content, "logprobs": None,
                            "finish_reason": None if opening else delta.finish_reason}]
            return {"id": ident, "object": "chat.completion.chunk", "created": created, "model": served.model_id,
                    "choices": choices}

        if body.stream:
            include = body.stream_options is not None and body.stream_options.include_usage
            return _JobStream(submitted, _stream(submitted, chunk, include))
        texts, finish, counts = await _collect(submitted, request)
        return {"id": ident, "object": "chat.completion", "created": created, "model": served.model_id,
                "choices": [{"index": i, "message": {"role": "assistant", "content": texts[i]}, "logprobs": None,
                             "finish_reason": finish[i]} for i in sorted(texts)],
                "usage": _usage(submitted.job.prompt_tokens, sum(counts.values()))}

    @app.get("/inspect", response_class=HTMLResponse, include_in_schema=False, dependencies=[Depends(authorize)])
    def inspect_page(prompt: str | None = None, top_k: int = 5) -> HTMLResponse:
        """A text inside the model (``gptlab.inspect``); a plain ``def``, so the pass runs off the event loop."""
        status, page = served_page(llm.model, llm.tokenizer, served.model_id, prompt, top_k)
        return HTMLResponse(page, status_code=status)

    return app


def _completion_prompt(llm: LLM, prompt: str | list[str] | list[int]) -> list[int]:
    """A completion request's prompt as ids: a string, a one-string list, or token ids."""
    if isinstance(prompt, str):
        return llm.tokenizer.encode(prompt)
    if prompt and all(isinstance(p, str) for p in prompt):
        if len(prompt) != 1:
            raise APIError(400, f"a list of {len(prompt)} prompts is not supported; send one request per prompt",
                           param="prompt", code="unsupported_parameter")
        return llm.tokenizer.encode(str(prompt[0]))
    ids = [int(p) for p in prompt]
    vocab = llm.tokenizer.vocab_size
    if not ids or not all(0 <= i < vocab for i in ids):
        raise APIError(400, f"prompt token ids must be a non-empty list of ids in 0..{vocab - 1}", param="prompt",
                       code="invalid_value")
    return ids


async def _collect(submitted: Submitted, request: Request) -> tuple[dict[int, str], dict[int, str | None], dict[int, int]]:
    """A non-streaming reply: each choice's whole text, finish reason and token count."""
    texts: dict[int, list[str]] = {}
    finish: dict[int, str | None] = {}
    counts: dict[int, int] = {}
    async for delta in submitted.deltas(poll=request.is_disconnected):
        texts.setdefault(delta.index, []).append(delta.text)
        finish[delta.index] = delta.finish_reason
        counts[delta.index] = delta.completion_tokens
    return {i: "".join(parts) for i, parts in texts.items()}, finish, counts
