"""Continuous batching: every request in flight shares one decode loop over one KV cache.

A server answering one request at a time leaves the hardware idle: one decode step reads every
weight to produce one token, and reading them for 8 or 32 tokens at once costs little more.
``DecodeEngine`` runs that loop on a thread of its own:

1. **Admission.** Waiting requests join the batch as soon as rows are free (not when the batch
   drains). Each prompt is read once, straight into its own row of the cache (``KVCache.rows``),
   and its logits give its first token. A request for ``n`` choices reads its prompt once and
   copies the row ``n - 1`` times.
2. **Decode.** One step feeds every active row its newest token. Rows hold sequences of different
   lengths: each row's token is written at its own position (the row's length) and attends to its
   own positions only (``GPT.static_decode_step`` with one slot per row). No padding is needed, as
   every row's sequence starts at position 0.
3. **Finishing.** A row ends at a stop id, a stop string, or its ``max_tokens``. Its slot is given
   to the last active row (one copy of that row's cache), so the active rows are always the first
   ``len(active)`` rows and a step reads a contiguous slice of the cache.
4. **Cancellation.** ``Job.cancel`` (a client that went away) frees the job's rows before the next
   step.

Each choice turns ids into text with the same ``TextStreamer`` / ``StopStreamer`` as ``LLM``, so a
greedy request alone in the batch gives ``LLM.generate`` / ``LLM.chat``'s text, and a seeded one
the same samples.

Prompts are read one at a time, between decode steps: a long prompt delays the other rows' next
token by its prefill (vLLM splits prefills into chunks to avoid that; this engine does not).
"""

from __future__ import annotations

import dataclasses
import threading
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from gptlab.errors import ConfigError, GptlabError
from gptlab.generate import sample_next_token
from gptlab.inference.llm import LLM, Sampling
from gptlab.inference.streaming import StopStreamer, TextStreamer

#: Why a choice ended, as the OpenAI API names it.
FINISH_STOP, FINISH_LENGTH = "stop", "length"


class EngineBusy(GptlabError):
    """Every slot is taken and the waiting queue is full: try again shortly."""


class BadRequest(ConfigError):
    """A request this engine can never serve; ``param`` names the offending part."""

    def __init__(self, message: str, param: str) -> None:
        super().__init__(message)
        self.param = param


@dataclass(frozen=True)
class Request:
    """What to generate: a prompt's ids, how to sample, and where to stop.

    ``stop`` holds stop strings (the text before the first one is the answer); ``stop_at_eos``
    also ends at the model's stop ids. ``chat`` treats the stop strings as ``LLM.chat_stream``
    does: the output is taken to follow a newline (so ``"\\n### "`` matches at once), and
    whitespace before a stop string or at the end is dropped.
    """

    prompt_ids: tuple[int, ...]
    sampling: Sampling
    stop: tuple[str, ...] = ()
    n: int = 1
    stop_at_eos: bool = True
    chat: bool = False


@dataclass(frozen=True)
class Delta:
    """New text of one choice; ``finish_reason`` is set on its last delta, with the final count.

    ``error`` is set (and everything else empty) when the engine failed on the job.
    """

    index: int
    text: str
    completion_tokens: int
    finish_reason: str | None = None
    error: str | None = None


@dataclass(eq=False)
class Job:
    """A submitted request; ``on_delta`` is called from the engine's thread."""

    request: Request
    on_delta: Callable[[Delta], None]
    prompt_tokens: int = 0
    cancelled: bool = False
    unfinished: int = 0

    def cancel(self) -> None:
        """Stop generating for this job; its rows are freed before the next decode step."""
        self.cancelled = True


@dataclass(eq=False)
class _Row:
    """One choice being decoded: its cache row's length, its next token and its text pipeline."""

    job: Job
    index: int
    sampling: Sampling
    generator: torch.Generator | None
    text: TextStreamer
    stops: StopStreamer | None
    length: int  # cache positions filled
    last: int = 0  # the token to feed next
    generated: int = 0
    done: bool = False
    pending: list[str] = field(default_factory=list)


def check_limits(max_batch: int, max_queue: int, max_seq_len: int | None, context: int | None = None) -> None:
    """Raise ``ConfigError`` for limits no engine can run with; ``context`` (the model's, once
    known) also caps ``max_seq_len``. Callers check before loading a model, the engine after."""
    if max_batch < 1 or max_queue < 0:
        raise ConfigError(f"max_batch must be >= 1 and max_queue >= 0, got {max_batch} and {max_queue}")
    too_long = context is not None and max_seq_len is not None and max_seq_len > context
    if max_seq_len is not None and (max_seq_len < 2 or too_long):
        upper = context if context is not None else "the model's context_length"
        raise ConfigError(f"max_seq_len must lie in 2..{upper} (the model's context_length), got {max_seq_len}")


class DecodeEngine:
    """Continuous batching over ``llm`` (see the module's docstring) on a background thread.

    ``max_batch`` rows decode together; ``max_queue`` more requests may wait for rows, and beyond
    that ``submit`` raises ``EngineBusy``. ``max_seq_len`` bounds prompt plus completion per row;
    the cache holds ``max_batch x max_seq_len`` positions (default: the model's context).
    """

    def __init__(self, llm: LLM, max_batch: int = 8, max_queue: int = 64, max_seq_len: int | None = None) -> None:
        context = llm.model.cfg.context_length
        check_limits(max_batch, max_queue, max_seq_len, context)
        self.llm = llm
        self.max_batch, self.max_queue = max_batch, max_queue
        self.max_seq_len = max_seq_len or context
        self.cache = llm.model.new_kv_cache(max_batch, self.max_seq_len)
        self.active: list[_Row] = []
        self.waiting: deque[Job] = deque()
        self._running: set[Job] = set()  # admitted jobs with a choice still decoding
        self.steps = 0  # decode steps run, for monitoring
        self._wake = threading.Condition()
        self._closed = False
        self._thread: threading.Thread | None = None

    # -- the caller's side (any thread) ---------------------------------------------------------

    @property
    def cache_bytes(self) -> int:
        return sum(layer.keys.nbytes + layer.values.nbytes for layer in self.cache.layers)

    @property
    def in_flight(self) -> int:
        """Jobs waiting or decoding."""
        with self._wake:
            return len(self.waiting) + len(self._running)

    def check(self, request: Request) -> None:
        """Raise ``BadRequest`` for a request this engine can never serve (its length, its ``n``)."""
        prompt, budget = len(request.prompt_ids), request.sampling.max_new_tokens
        if budget < 1:
            raise BadRequest(f"max_new_tokens must be at least 1, got {budget}", "max_new_tokens")
        if not 1 <= request.n <= self.max_batch:
            raise BadRequest(f"n must lie in 1..{self.max_batch} (the decode slots), got {request.n}", "n")
        if prompt + budget > self.max_seq_len:
            raise BadRequest(
                f"this model's maximum context length is {self.max_seq_len} tokens; the request asks for "
                f"{prompt + budget} ({prompt} in the prompt, {budget} in the completion)", "prompt")

    def submit(self, request: Request, on_delta: Callable[[Delta], None]) -> Job:
        """Queue ``request``; its deltas go to ``on_delta``. Raises ``BadRequest`` (see ``check``)
        or ``EngineBusy``."""
        if not request.prompt_ids:
            request = dataclasses.replace(request, prompt_ids=(self.llm.tokenizer.eot_id,))
        self.check(request)
        job = Job(request, on_delta, prompt_tokens=len(request.prompt_ids), unfinished=request.n)
        with self._wake:
            if self._closed:
                raise EngineBusy("the engine is shutting down")
            starts_now = not self.waiting and len(self.active) + request.n <= self.max_batch
            if len(self.waiting) >= self.max_queue and not starts_now:
                raise EngineBusy(f"all {self.max_batch} slots are busy and {len(self.waiting)} requests are waiting")
            self.waiting.append(job)
            self._wake.notify()
        return job

    def start(self) -> DecodeEngine:
        self._thread = threading.Thread(target=self._loop, name="gptlab-decode", daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        with self._wake:
            self._closed = True
            self._wake.notify()
        if self._thread is not None:
            self._thread.join()

    # -- the engine's thread ----------------------------------------------------------------------

    def _loop(self) -> None:
        with torch.inference_mode():
            while True:
                with self._wake:
                    while not self._closed and not self.active and not self.waiting:
                        self._wake.wait()
                    if self._closed:
                        return
                    self._drop_cancelled()
                    admitted = []
                    while self.waiting and len(self.active) + sum(j.request.n for j in admitted) + \
                            self.waiting[0].request.n <= self.max_batch:
                        admitted.append(self.waiting.popleft())
                        self._running.add(admitted[-1])  # in flight from here on, for ``in_flight``
                try:
                    for job in admitted:
                        self._admit(job)
                    if self.active:
                        self._step()
                except Exception as err:  # noqa: BLE001 - one bad step fails its jobs, not the server
                    self._fail_all(f"{type(err).__name__}: {err}")

    def _drop_cancelled(self) -> None:
        self.waiting = deque(job for job in self.waiting if not job.cancelled)
        for i in reversed(range(len(self.active))):
            if self.active[i].job.cancelled:
                self._free(i)
        self._running = {job for job in self._running if not job.cancelled}

    def _fail_all(self, message: str) -> None:
        for job in self._running:
            job.on_delta(Delta(0, "", 0, error=message))
        while self.active:
            self._free(len(self.active) - 1)
        self._running = set()

    def _admit(self, job: Job) -> None:
        """Read the job's prompt into the next free row, copy it for each further choice, and
        give every choice its first token."""
        request, first = job.request, len(self.active)
        prompt = torch.tensor([request.prompt_ids], dtype=torch.long, device=self.llm.device)
        logits = self.llm.model(prompt, kv_cache=self.cache.rows(first, first + 1))[:, -1]
        length = prompt.shape[1]
        for layer in self.cache.layers:
            for tensor in (layer.keys, layer.values):
                tensor[first + 1:first + request.n, :, :length] = tensor[first:first + 1, :, :length]
        for index in range(request.n):
            sampling = request.sampling
            seed = None if sampling.seed is None else sampling.seed + index
            stops = (StopStreamer(request.stop, context="\n" if request.chat else "", trim=request.chat)
                     if request.stop else None)
            row = _Row(job, index, sampling, self.llm.generator(seed), TextStreamer(self.llm.tokenizer), stops, length)
            self.active.append(row)
            self._accept(len(self.active) - 1, self._sample(row, logits))
        self._flush_finished()

    def _sample(self, row: _Row, logits: torch.Tensor) -> int:
        s = row.sampling
        token = sample_next_token(logits[:, :self.llm.tokenizer.vocab_size], s.temperature, s.top_k, s.top_p,
                                  row.generator)
        return int(token[0, 0])

    def _step(self) -> None:
        """One decode step over every active row: feed each its newest token, sample the next."""
        rows, device = self.active, self.llm.device
        tokens = torch.tensor([[row.last] for row in rows], dtype=torch.long, device=device)
        lengths = torch.tensor([row.length for row in rows], dtype=torch.long, device=device)
        width = int(lengths.max()) + 1
        visible = torch.arange(width, device=device)[None, :] <= lengths[:, None]
        count = len(rows)
        keys = [layer.keys[:count, :, :width] for layer in self.cache.layers]
        values = [layer.values[:count, :, :width] for layer in self.cache.layers]
        logits = self.llm.model.static_decode_step(tokens, lengths[:, None], lengths, visible, keys, values)
        self.steps += 1
        greedy = logits[:, :self.llm.tokenizer.vocab_size].argmax(dim=-1).tolist()
        for i, row in enumerate(rows):
            row.length += 1
            token = greedy[i] if row.sampling.temperature <= 0 else self._sample(row, logits[i:i + 1])
            self._accept(i, token)
        self._flush_finished()

    def _accept(self, i: int, token: int) -> None:
        """Record row ``i``'s new token: its text, and whether the choice has finished."""
        row = self.active[i]
        row.generated += 1
        row.last = token
        finish = None
        if row.job.request.stop_at_eos and token in self.llm.stop_ids:
            finish = FINISH_STOP
        else:
            text = row.text.push(token)
            if text and row.stops is not None:
                text = row.stops.push(text)
                finish = FINISH_STOP if row.stops.stopped else None
            if text:
                row.pending.append(text)
            if finish is None and row.generated >= row.sampling.max_new_tokens:
                finish = FINISH_LENGTH
        if finish is not None:
            tail = row.text.flush()
            if row.stops is not None:
                tail = row.stops.push(tail) + row.stops.flush()
            row.pending.append(tail)
            row.done = True
            row.job.unfinished -= 1
            if row.job.unfinished == 0:
                self._running.discard(row.job)
            row.job.on_delta(Delta(row.index, "".join(row.pending), row.generated, finish))
        elif row.pending:
            row.job.on_delta(Delta(row.index, "".join(row.pending), row.generated))
            row.pending.clear()

    def _flush_finished(self) -> None:
        for i in reversed(range(len(self.active))):
            if self.active[i].done:
                self._free(i)

    def _free(self, i: int) -> None:
        """Give row ``i``'s slot to the last active row, so the active rows stay the first ones."""
        last = len(self.active) - 1
        if i != last:
            moved = self.active[last]
            for layer in self.cache.layers:
                for tensor in (layer.keys, layer.values):
                    tensor[i, :, :moved.length] = tensor[last, :, :moved.length]
            self.active[i] = moved
        self.active.pop()


def generate_batch(llm: LLM, prompts: Sequence[Sequence[int]], sampling: Sampling, max_batch: int = 8) -> list[str]:
    """The completions of ``prompts`` (ids), decoded together with continuous batching."""
    texts: list[list[str]] = [[] for _ in prompts]
    done = threading.Semaphore(0)

    def collector(k: int) -> Callable[[Delta], None]:
        def on_delta(delta: Delta) -> None:
            texts[k].append(delta.text)
            if delta.finish_reason is not None or delta.error is not None:
                done.release()
        return on_delta

    longest = max((len(p) for p in prompts), default=1)
    engine = DecodeEngine(llm, max_batch, max_queue=len(prompts),
                          max_seq_len=min(llm.model.cfg.context_length, longest + max(sampling.max_new_tokens, 1)))
    engine.start()
    try:
        for k, prompt in enumerate(prompts):
            engine.submit(Request(tuple(prompt), sampling), collector(k))
        for _ in prompts:
            done.acquire()
    finally:
        engine.close()
    return ["".join(parts) for parts in texts]
