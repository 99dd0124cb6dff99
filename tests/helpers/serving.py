"""A ``gptlab-serve`` app on a free 127.0.0.1 port, in a thread of the test process.

The same ``create_app`` and uvicorn server the command runs, so tests speak real HTTP to it (the
``openai`` client, a browser, raw sockets); only the process is shared.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import uvicorn

from gptlab.inference import LLM
from gptlab.inference.engine import DecodeEngine
from gptlab.serve.app import Served, create_app


@dataclass
class LiveServer:
    served: Served
    url: str  # http://127.0.0.1:PORT

    @property
    def engine(self) -> DecodeEngine:
        return self.served.engine

    @property
    def base_url(self) -> str:
        return f"{self.url}/v1"

    def wait_idle(self, timeout: float = 30.0) -> None:
        """Until no job is in flight (a cancelled job is dropped at the engine's next step)."""
        deadline = time.monotonic() + timeout
        while self.engine.in_flight and time.monotonic() < deadline:
            time.sleep(0.02)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def live_server(llm: LLM, model_id: str = "test-model", api_key: str | None = None, max_batch: int = 4,
                max_queue: int = 8, max_seq_len: int | None = None, start_engine: bool = True) -> Iterator[LiveServer]:
    """Serve ``llm`` until the block ends; ``start_engine=False`` leaves requests waiting until the
    test calls ``engine.start()``."""
    engine = DecodeEngine(llm, max_batch, max_queue, max_seq_len)
    if start_engine:
        engine.start()
    served = Served(llm, engine, model_id, api_key=api_key)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(served), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the test server did not start")
        time.sleep(0.02)
    try:
        yield LiveServer(served, f"http://127.0.0.1:{port}")
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        engine.close()
