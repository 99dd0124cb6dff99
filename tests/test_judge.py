"""The LLM-judge client against a real HTTP server on 127.0.0.1 speaking Ollama's and OpenAI's protocols."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections import deque
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from gptlab.evaluation.judge import (JUDGE_MAX_TOKENS, JudgeClient, JudgeConfig, JudgeUnreachable, judge_prompt,
                                     parse_score)
from gptlab.prompts import format_input

RECORD = {"instruction": "Name the capital of France.", "input": "", "output": "Paris.", "model_response": "Paris"}


class ScriptedJudge(ThreadingHTTPServer):
    """Answers each request with the next scripted action: ("reply", text), ("status", code) or
    ("sleep", seconds); records every request's path, headers and JSON body."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.script: deque[tuple[str, object]] = deque()
        self.requests: list[dict] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _Handler(BaseHTTPRequestHandler):
    server: ScriptedJudge

    def log_message(self, *args) -> None:  # keep test output clean
        pass

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.server.requests.append({"path": self.path, "headers": dict(self.headers), "body": body})
        kind, value = self.server.script.popleft() if self.server.script else ("reply", "50")
        if kind == "sleep":
            time.sleep(value)
            kind, value = "reply", "50"
        if kind == "status":
            self.send_response(value)
            self.end_headers()
            self.wfile.write(b"overloaded")
            return
        if self.path == "/api/chat":
            payload = {"model": body["model"], "message": {"role": "assistant", "content": value}, "done": True}
        elif self.path == "/v1/chat/completions":
            payload = {"choices": [{"index": 0, "message": {"role": "assistant", "content": value}}]}
        else:
            self.send_response(404)
            self.end_headers()
            return
        data = json.dumps(payload).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


@pytest.fixture
def server() -> Iterator[ScriptedJudge]:
    srv = ScriptedJudge()
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


def client(url: str, protocol: str, **kwargs) -> JudgeClient:
    config = JudgeConfig(url=url, model="judge-model", protocol=protocol,
                         **{"timeout": 2.0, "retries": 2, "backoff": 0.0, **kwargs})
    return JudgeClient(config)


@pytest.mark.parametrize("protocol, base", [("ollama", ""), ("openai", "/v1")])
def test_a_bare_integer_is_the_score_and_the_request_is_deterministic(server, protocol, base):
    verdict = client(server.url + base, protocol, api_key="sk-test").judge(RECORD)
    assert (verdict.score, verdict.attempts, verdict.error) == (50, 1, None)
    request = server.requests[0]
    body = request["body"]
    assert body["model"] == "judge-model" and body["messages"] == [{"role": "user", "content": judge_prompt(RECORD)}]
    assert request["headers"]["Authorization"] == "Bearer sk-test"
    if protocol == "ollama":
        assert request["path"] == "/api/chat" and body["stream"] is False
        assert body["options"]["temperature"] == 0 and body["options"]["seed"] == 123
        assert body["options"]["num_ctx"] >= 4096
        assert body["options"]["num_predict"] == JUDGE_MAX_TOKENS
    else:
        assert request["path"] == "/v1/chat/completions"
        assert body["temperature"] == 0 and body["seed"] == 123
        assert body["max_tokens"] == JUDGE_MAX_TOKENS


@pytest.mark.parametrize("protocol, base", [("ollama", ""), ("openai", "/v1")])
def test_an_integer_inside_prose_is_the_score(server, protocol, base):
    server.script.append(("reply", "I would rate this response 85/100 since it is correct."))
    assert client(server.url + base, protocol).judge(RECORD).score == 85


@pytest.mark.parametrize("protocol, base", [("ollama", ""), ("openai", "/v1")])
def test_a_reply_without_a_number_is_retried_then_counted_unscored(server, protocol, base):
    server.script.extend([("reply", "The response is good.")] * 3)
    verdict = client(server.url + base, protocol).judge(RECORD)
    assert verdict.score is None and verdict.attempts == 3 and len(server.requests) == 3
    assert verdict.reply == "The response is good." and "no single integer" in verdict.error


@pytest.mark.parametrize("protocol, base", [("ollama", ""), ("openai", "/v1")])
def test_a_server_error_then_a_success(server, protocol, base):
    server.script.extend([("status", 500), ("reply", "72")])
    verdict = client(server.url + base, protocol).judge(RECORD)
    assert (verdict.score, verdict.attempts) == (72, 2)


def test_the_backoff_doubles_between_tries(server):
    server.script.extend([("status", 503)] * 3)
    waits: list[float] = []
    config = JudgeConfig(url=server.url, protocol="ollama", timeout=2.0, retries=2, backoff=0.5)
    verdict = JudgeClient(config, sleep=waits.append).judge(RECORD)
    assert waits == [0.5, 1.0]
    assert verdict.score is None and "HTTP 503" in verdict.error


@pytest.mark.parametrize("protocol, base", [("ollama", ""), ("openai", "/v1")])
def test_a_timeout_is_retried_and_reported(server, protocol, base):
    server.script.extend([("sleep", 0.6), ("sleep", 0.6)])
    verdict = client(server.url + base, protocol, timeout=0.2, retries=1).judge(RECORD)
    assert verdict.score is None and verdict.attempts == 2
    assert "no reply from" in verdict.error and "within 0.2 s" in verdict.error


def test_no_server_at_all_is_one_clear_line_naming_the_url():
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    for protocol, endpoint in (("ollama", f"{url}/api/chat"), ("openai", f"{url}/v1/chat/completions")):
        with pytest.raises(JudgeUnreachable) as err:
            client(url, protocol).judge_all([RECORD, RECORD])
        message = str(err.value)
        assert endpoint in message and "\n" not in message


def test_concurrent_judging_keeps_record_order(server):
    records = [{**RECORD, "model_response": str(i)} for i in range(6)]
    verdicts = client(server.url, "ollama", concurrency=3).judge_all(records)
    assert [v.score for v in verdicts] == [50] * 6 and len(server.requests) == 6
    asked = sorted(r["body"]["messages"][0]["content"] for r in server.requests)
    assert asked == sorted(judge_prompt(r) for r in records)


def test_parse_score_takes_exactly_one_integer_in_range():
    assert [parse_score(s) for s in ("85", "Score: 85.", "85 out of 100", "**92**")] == [85, 85, 85, 92]
    assert [parse_score(s) for s in ("none", "70 or 80", "85.5", "101", "-5")] == [None] * 5


def test_prompt_is_the_books_and_settings_come_from_the_environment():
    assert judge_prompt(RECORD).startswith(f"Given the input `{format_input(RECORD)}` and correct output `Paris.`")
    env = {"GPTLAB_JUDGE_URL": "http://judge:8000/v1/", "GPTLAB_JUDGE_MODEL": "qwen", "OPENAI_API_KEY": "k"}
    config = JudgeConfig.from_env(env, timeout=5.0, retries=None)
    assert (config.protocol, config.model, config.api_key, config.timeout, config.retries) == ("openai", "qwen", "k", 5.0, 3)
    assert config.endpoint == "http://judge:8000/v1/chat/completions"
    assert JudgeConfig.from_env({}).endpoint == "http://localhost:11434/api/chat"
    with pytest.raises(ValueError, match="unknown judge protocol 'grpc'"):
        JudgeConfig.from_env({}, protocol="grpc")
