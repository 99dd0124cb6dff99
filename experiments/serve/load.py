"""Load on ``gptlab-serve``: concurrent streaming chat clients for a fixed time, on 127.0.0.1 only.

For each model and each ``--max-batch`` the server is started as its own process (the real
``gptlab-serve`` command), ``--clients`` clients of the official ``openai`` client stream chat
completions back to back for ``--duration`` seconds, and the server is stopped. Reported per run:
requests and errors, p50/p95 time to first token and total latency, aggregate completion tokens/s
(the streamed ``usage``), and the mean number of rows per decode step (tokens over the server's
decode steps). The batched speed-up is tokens/s at ``--max-batch`` over tokens/s at 1.

After the timed load, a disconnect phase: every client opens a long stream, reads a few tokens
and closes it; the server's in-flight count must return to 0, and how many decode steps that took
is reported.

    python experiments/serve/load.py                       # a random micro model, then SmolLM2
    python experiments/serve/load.py --models micro --duration 10 --clients 8
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import openai
import torch

from gptlab import GPT, GPTConfig
from gptlab.callbacks.throughput import cpu_name
from gptlab.checkpoints import save_model

#: The user messages the clients take turns with.
MESSAGES = (
    "What is the capital of France?", "Write a haiku about the sea.", "Explain gravity to a child.",
    "Name three primary colours.", "What is 12 times 7?", "Give me a synonym for 'happy'.",
    "Translate 'good morning' into Spanish.", "Why is the sky blue?", "Summarise the water cycle.",
    "Suggest a name for a pet turtle.", "What does a compiler do?", "List the planets of the solar system.",
)
#: The served model's id, whatever it is.
MODEL_ID = "bench"


@dataclass
class Completed:
    """One request that streamed to its end."""

    ttft_s: float  # until the first chunk with text (or a finish reason)
    latency_s: float
    tokens: int  # completion tokens, from the streamed usage


@dataclass
class LoadResult:
    model: str
    max_batch: int
    clients: int
    duration_s: float
    requests: int = 0
    errors: list[str] = field(default_factory=list)
    ttft_p50_s: float = 0.0
    ttft_p95_s: float = 0.0
    latency_p50_s: float = 0.0
    latency_p95_s: float = 0.0
    completion_tokens: int = 0
    wall_s: float = 0.0
    tokens_per_s: float = 0.0
    rows_per_step: float = 0.0
    disconnect: dict[str, Any] = field(default_factory=dict)


def health(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(f"{url}/health", timeout=10) as response:
        return dict(json.loads(response.read()))


async def _client(client: openai.AsyncOpenAI, index: int, deadline: float, max_tokens: int, temperature: float,
                  done: list[Completed], errors: list[str]) -> None:
    """Stream chat completions one after another until ``deadline``."""
    turn = 0
    while time.monotonic() < deadline:
        message = MESSAGES[(index + turn) % len(MESSAGES)]
        start = time.perf_counter()
        first: float | None = None
        tokens = 0
        try:
            stream = await client.chat.completions.create(
                model=MODEL_ID, messages=[{"role": "user", "content": message}], max_tokens=max_tokens,
                temperature=temperature, seed=1000 * index + turn, stream=True, stream_options={"include_usage": True})
            async for chunk in stream:
                if first is None and chunk.choices and (chunk.choices[0].delta.content
                                                        or chunk.choices[0].finish_reason):
                    first = time.perf_counter()
                if chunk.usage is not None:
                    tokens = chunk.usage.completion_tokens
        except openai.OpenAIError as err:
            errors.append(f"{type(err).__name__}: {err}")
            continue
        finally:
            turn += 1
        end = time.perf_counter()
        done.append(Completed((first or end) - start, end - start, tokens))


async def timed_load(url: str, clients: int, duration_s: float, max_tokens: int,
                     temperature: float) -> tuple[list[Completed], list[str], float]:
    """``clients`` clients streaming for ``duration_s``; requests under way at the end finish."""
    done: list[Completed] = []
    errors: list[str] = []
    client = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0, timeout=600)
    start = time.monotonic()
    deadline = start + duration_s
    await asyncio.gather(*(_client(client, i, deadline, max_tokens, temperature, done, errors)
                           for i in range(clients)))
    wall = time.monotonic() - start
    await client.close()
    return done, errors, wall


async def _leave_early(client: openai.AsyncOpenAI, index: int, read_chunks: int, max_tokens: int) -> None:
    stream = await client.chat.completions.create(
        model=MODEL_ID, messages=[{"role": "user", "content": MESSAGES[index % len(MESSAGES)]}],
        max_tokens=max_tokens, temperature=0.8, seed=index, stream=True)
    received = 0
    async for _ in stream:
        received += 1
        if received == read_chunks:
            break
    await stream.close()


async def disconnect_phase(url: str, clients: int, max_tokens: int, max_batch: int, read_chunks: int = 3,
                           timeout_s: float = 60.0) -> dict[str, Any]:
    """Every client opens a long stream and leaves after ``read_chunks`` chunks; then until in_flight is 0.

    ``decode_steps`` is what the phase cost; streams run to ``max_tokens`` would have needed up to
    ``decode_steps_run_to_end`` (``max_tokens`` per batch of ``max_batch`` rows).
    """
    client = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0, timeout=600)
    start_steps = health(url)["decode_steps"]
    await asyncio.gather(*(_leave_early(client, i, read_chunks, max_tokens) for i in range(clients)))
    left, steps = time.monotonic(), health(url)["decode_steps"]
    while (state := health(url))["in_flight"] and time.monotonic() - left < timeout_s:
        await asyncio.sleep(0.02)
    await client.close()
    return {"clients": clients, "max_tokens": max_tokens, "in_flight_after": state["in_flight"],
            "seconds_to_idle": round(time.monotonic() - left, 3),
            "decode_steps_to_idle": state["decode_steps"] - steps,
            "decode_steps": state["decode_steps"] - start_steps,
            "decode_steps_run_to_end": -(-clients // max_batch) * (max_tokens - 1)}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class ServerProcess:
    """``gptlab-serve SOURCE`` on a free 127.0.0.1 port, until the block ends."""

    def __init__(self, source: str, max_batch: int, max_seq_len: int, extra: tuple[str, ...] = ()) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.command = [sys.executable, "-m", "gptlab.cli.serve", source, "--model-name", MODEL_ID,
                        "--port", str(self.port), "--max-batch", str(max_batch), "--max-queue", "256",
                        "--max-seq-len", str(max_seq_len), "--device", "cpu", *extra]
        self.log = tempfile.NamedTemporaryFile("w+", prefix="gptlab-serve-", suffix=".log")  # noqa: SIM115

    def __enter__(self) -> ServerProcess:
        env = {**os.environ}
        env.pop("GPTLAB_API_KEY", None)
        self.process = subprocess.Popen(self.command, stdout=subprocess.DEVNULL, stderr=self.log, env=env)
        deadline = time.monotonic() + 300
        while True:
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.log.seek(0)
                raise RuntimeError(f"gptlab-serve did not start: {self.log.read()[-2000:]}")
            try:
                health(self.url)
                return self
            except OSError:
                time.sleep(0.2)

    def __exit__(self, *_: object) -> None:
        self.process.terminate()
        self.process.wait(timeout=60)
        self.log.close()


def run_load(source: str, name: str, max_batch: int, clients: int, duration_s: float, max_tokens: int,
             max_seq_len: int, extra: tuple[str, ...] = (), disconnect_tokens: int = 0,
             temperature: float = 0.8) -> LoadResult:
    """One server, one timed load, then (with ``disconnect_tokens``) the disconnect phase."""
    result = LoadResult(name, max_batch, clients, duration_s)
    with ServerProcess(source, max_batch, max_seq_len, extra) as server:
        steps = health(server.url)["decode_steps"]
        done, result.errors, result.wall_s = asyncio.run(timed_load(server.url, clients, duration_s, max_tokens,
                                                                            temperature))
        steps = health(server.url)["decode_steps"] - steps
        if disconnect_tokens:
            result.disconnect = asyncio.run(disconnect_phase(server.url, clients, disconnect_tokens, max_batch))
    result.requests = len(done)
    if done:
        ttft, latency = [c.ttft_s for c in done], [c.latency_s for c in done]
        result.ttft_p50_s, result.ttft_p95_s = (float(v) for v in np.percentile(ttft, [50, 95]))
        result.latency_p50_s, result.latency_p95_s = (float(v) for v in np.percentile(latency, [50, 95]))
    result.completion_tokens = sum(c.tokens for c in done)
    result.tokens_per_s = result.completion_tokens / result.wall_s
    # Each request's first token comes from its prefill, not a decode step.
    result.rows_per_step = (result.completion_tokens - result.requests) / max(steps, 1)
    return result


def random_model(directory: Path, preset: str = "micro", context_length: int = 256) -> Path:
    """A randomly initialised ``preset`` model exported to ``directory`` (served with GPT-2's tokenizer)."""
    torch.manual_seed(0)
    return save_model(GPT(GPTConfig.from_dict({"preset": preset, "context_length": context_length})), directory)


def table(results: list[LoadResult]) -> str:
    lines = ["| model | max batch | requests | errors | TTFT p50 / p95 (s) | latency p50 / p95 (s) | tokens/s | rows per step |",
             "|---|---|---|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r.model} | {r.max_batch} | {r.requests} | {len(r.errors)} | {r.ttft_p50_s:.2f} / "
                     f"{r.ttft_p95_s:.2f} | {r.latency_p50_s:.2f} / {r.latency_p95_s:.2f} | {r.tokens_per_s:.0f} | "
                     f"{r.rows_per_step:.1f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["micro", "smollm2-135m-instruct"],
                        help="micro (random weights, GPT-2 tokenizer) and/or any gptlab-serve SOURCE")
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of load per run")
    parser.add_argument("--max-batch", type=int, default=32, help="the batched run's slots (against 1)")
    parser.add_argument("--max-tokens", type=int, default=64, help="max_tokens per request")
    parser.add_argument("--max-seq-len", type=int, default=256)
    parser.add_argument("--temperature", type=float, default=0.8, help="0 is greedy")
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("load.json"))
    args = parser.parse_args()

    torch.set_num_threads(1)  # the clients' process; the server has the cores
    results: list[LoadResult] = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            source, extra = name, ()
            if name == "micro":
                source, extra = str(random_model(Path(tmp) / "micro")), ("--tokenizer", "gpt2")
            for max_batch in (args.max_batch, 1):
                result = run_load(source, name, max_batch, args.clients, args.duration, args.max_tokens,
                                  args.max_seq_len, extra, disconnect_tokens=args.max_seq_len // 2,
                                  temperature=args.temperature)
                results.append(result)
                print(table([result]).splitlines()[-1], "disconnect:", result.disconnect, flush=True)
    speedups = {}
    for name in args.models:
        batched, single = (r for r in results if r.model == name)
        speedups[name] = round(batched.tokens_per_s / single.tokens_per_s, 2)
    args.out.write_text(json.dumps({"cpu": cpu_name(), "cores": os.cpu_count(), "speedup": speedups,
                                    "runs": [asdict(r) for r in results]}, indent=2) + "\n")
    print(table(results))
    print("speed-up of batched decoding over one request at a time:", speedups)


if __name__ == "__main__":
    main()
