"""Clients of ``gptlab-serve``: ``gptlab-chat --url``, the ``gptlab-eval`` judge, and the command as a process.

The real SmolLM2 model is served in a thread; ``gptlab-chat --url`` must print, greedy, exactly what
the local ``gptlab-chat`` prints and what ``LLM.chat`` returns for the same conversation. The judge
path scores a responses file against the server, each reply checked against ``LLM.chat`` of the
judge's prompt. ``gptlab-serve`` itself runs as a subprocess on a tiny saved model.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from helpers.serving import LiveServer, free_port, live_server
from test_inference import tiny

from gptlab.checkpoints import save_model
from gptlab.cli.chat import main as chat_main
from gptlab.cli.evaluate import main as eval_main
from gptlab.cli.serve import main as serve_main
from gptlab.evaluation.judge import judge_prompt, parse_score
from gptlab.inference import LLM

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group(__name__)]

MODEL = "smollm2-135m-instruct"
MODEL_ID = "smollm2-served"
LINES = ["Name a color.", "Name an animal."]
SYSTEM = "You are a concise assistant."
MAX_NEW = 20  # tokens per reply: short, and still cut at length, so --max-new-tokens is checked too


@pytest.fixture(scope="module")
def llm(smollm2_gguf: Path) -> LLM:
    return LLM.load(MODEL)


@pytest.fixture(scope="module")
def server(llm: LLM) -> Iterator[LiveServer]:
    with live_server(llm, model_id=MODEL_ID, max_batch=4, max_seq_len=512) as live:
        yield live


@pytest.fixture(autouse=True)
def _no_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    """Keys of the environment never reach the tests' servers unless a test sets them."""
    for name in ("GPTLAB_API_KEY", "OPENAI_API_KEY", "GPTLAB_JUDGE_API_KEY", "GPTLAB_JUDGE_URL", "GPTLAB_JUDGE_MODEL"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture(scope="module")
def alone(llm: LLM) -> list[str]:
    """``LLM.chat``'s greedy reply to each line on its own, after the system message."""
    return [llm.chat([{"role": "system", "content": SYSTEM}, {"role": "user", "content": line}], MAX_NEW)
            for line in LINES]


@pytest.fixture(scope="module")
def with_history(llm: LLM, alone: list[str]) -> str:
    """The second line's reply when the first exchange precedes it."""
    return llm.chat([{"role": "system", "content": SYSTEM}, {"role": "user", "content": LINES[0]},
                     {"role": "assistant", "content": alone[0]}, {"role": "user", "content": LINES[1]}], MAX_NEW)


def chat(args: list[str], stdin: str, monkeypatch: pytest.MonkeyPatch,
         capsys: pytest.CaptureFixture) -> tuple[int, str, str]:
    """``gptlab-chat ARGS`` with ``stdin`` piped in: its status, stdout and stderr."""
    monkeypatch.setattr("sys.stdin", io.StringIO(stdin))
    code = chat_main(args)
    out, err = capsys.readouterr()
    return code, out, err


def one_error_line(err: str, prog: str = "gptlab-chat") -> str:
    assert err.startswith(f"{prog}: error: ") and err.count("\n") == 1, err
    return err


def test_remote_chat_prints_the_local_chat_and_llm_chat(llm: LLM, server: LiveServer, monkeypatch, capsys):
    stdin = "".join(f"{line}\n" for line in LINES)
    options = ["--max-new-tokens", str(MAX_NEW)]
    code, remote, err = chat(["--url", server.base_url, *options], stdin, monkeypatch, capsys)
    assert (code, err) == (0, "")
    code, local, err = chat([MODEL, *options], stdin, monkeypatch, capsys)
    assert (code, err) == (0, "")
    # The growing conversation: the second turn sees the first exchange.
    messages = [{"role": "user", "content": LINES[0]}]
    first = llm.chat(messages, MAX_NEW)
    messages += [{"role": "assistant", "content": first}, {"role": "user", "content": LINES[1]}]
    second = llm.chat(messages, MAX_NEW)
    assert remote == local == f"{first}\n{second}\n"


@pytest.mark.parametrize(("flags", "stdin"), [
    (["--no-history"], "".join(f"{line}\n" for line in LINES)),
    (["--no-stream"], f"{LINES[0]}\n\n{'/reset'}\n{LINES[1]}\n"),  # a blank line is skipped, /reset starts over
], ids=["no-history", "reset-no-stream"])
def test_remote_chat_sends_each_line_alone(server: LiveServer, alone: list[str], with_history: str,
                                           flags: list[str], stdin: str, monkeypatch, capsys):
    code, out, err = chat(["--url", server.base_url, "--system", SYSTEM, "--max-new-tokens", str(MAX_NEW), *flags],
                          stdin, monkeypatch, capsys)
    assert (code, err) == (0, "")
    assert out == f"{alone[0]}\n{alone[1]}\n"
    assert with_history != alone[1]  # so the output above shows the history was left out


@pytest.mark.parametrize(("flags", "reference"), [
    # top_k 1 leaves one candidate, so a hot temperature still gives the greedy reply: top_k reached the server
    (["--temperature", "1.5", "--top-k", "1", "--seed", "3"], {}),
    (["--temperature", "1.0", "--top-p", "0.9", "--seed", "5"], {"temperature": 1.0, "top_p": 0.9, "seed": 5}),
], ids=["top-k", "top-p-seed"])
def test_remote_chat_maps_the_sampling_options(server: LiveServer, llm: LLM, flags: list[str], reference: dict,
                                               monkeypatch, capsys):
    # The bare URL (no /v1) is the server's root; the client adds /v1.
    code, out, err = chat(["--url", server.url, "--max-new-tokens", str(MAX_NEW), *flags], f"{LINES[0]}\n",
                          monkeypatch, capsys)
    assert (code, err) == (0, "")
    assert out == llm.chat([{"role": "user", "content": LINES[0]}], MAX_NEW, **reference) + "\n"


def test_remote_chat_api_key_and_model_errors(llm: LLM, server: LiveServer, monkeypatch, capsys):
    with live_server(llm, model_id=MODEL_ID, max_batch=1, max_seq_len=128, api_key="secret") as guarded:
        code, out, err = chat(["--url", guarded.base_url, "--api-key", "wrong"], "Hi.\n", monkeypatch, capsys)
        assert code == 2 and out == ""
        line = one_error_line(err)
        assert guarded.base_url in line and "HTTP 401" in line and "--api-key" in line
        # Without --api-key: $OPENAI_API_KEY alone, then $GPTLAB_API_KEY over a wrong $OPENAI_API_KEY.
        expected = llm.chat([{"role": "user", "content": "Hi."}], 3) + "\n"
        for name in ("OPENAI_API_KEY", "GPTLAB_API_KEY"):
            monkeypatch.setenv(name, "secret")
            assert chat(["--url", guarded.base_url, "--max-new-tokens", "3"], "Hi.\n", monkeypatch, capsys) == \
                (0, expected, "")
            monkeypatch.setenv("OPENAI_API_KEY", "wrong")
    code, out, err = chat(["--url", server.base_url, "--model", "no-such-model"], "Hi.\n", monkeypatch, capsys)
    assert code == 2 and out == ""
    line = one_error_line(err)
    assert "HTTP 404" in line and "no-such-model" in line and "--model" in line


def test_remote_chat_unreachable_server_is_one_line(monkeypatch, capsys):
    url = f"http://127.0.0.1:{free_port()}/v1"  # nothing listens there
    code, out, err = chat(["--url", url], "Hi.\n", monkeypatch, capsys)
    assert code == 2 and out == ""
    line = one_error_line(err)
    assert f"cannot reach the server at {url}" in line and "--url" in line


@pytest.mark.parametrize(("args", "expected"), [
    ([MODEL, "--url", "http://127.0.0.1:1/v1"], "either SOURCE"),
    ([], "give SOURCE"),
    (["--url", "127.0.0.1:8000"], "must be an http(s) URL"),
    (["--url", "http://127.0.0.1:1/v1", "--device", "cpu", "--no-eos"], "--device, --no-eos only apply to a local"),
    (["--url", "http://127.0.0.1:1/v1", "--tokenizer", "gpt2"], "--tokenizer only apply to a local"),
    (["--url", "http://127.0.0.1:1/v1", "--prompt-style", "alpaca"], "--prompt-style only apply to a local"),
    ([MODEL, "--model", "x"], "--model only apply with --url"),
    (["--url", "http://127.0.0.1:1/v1", "--top-p", "1.5"], "top_p must lie in"),
])
def test_remote_chat_usage_errors_are_one_line(args: list[str], expected: str, monkeypatch, capsys):
    code, out, err = chat(args, "Hi.\n", monkeypatch, capsys)
    assert code == 2 and out == ""
    assert expected in one_error_line(err)


def test_judge_scores_responses_through_the_server(llm: LLM, server: LiveServer, shared_data: Path, tmp_path: Path,
                                                   capsys):
    # Three records of the book's data in gptlab-respond's format: two right answers, one wrong.
    data = json.loads((shared_data / "instruction-data.json").read_text(encoding="utf-8"))
    given = {32: "The atomic number of oxygen is 8.", 12: "The capital of Indonesia is Jakarta.",
             27: "The state capital of California is Los Angeles."}
    generation = {"model": MODEL, "prompt_style": "chatml", "max_new_tokens": 64, "temperature": 0.0,
                  "top_k": None, "top_p": None, "seed": None}
    records = [{**data[i], "index": i, "model_response": response, "ended_with_eos": True,
                "response_tokens": len(llm.tokenizer.encode(response)), "generation": generation}
               for i, response in given.items()]
    responses = tmp_path / "responses.jsonl"
    responses.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    steps = server.engine.steps
    # One request at a time: a greedy request alone in the batch is exactly LLM.chat. No retries: a
    # greedy judge repeats its reply, so asking again would only wait.
    code = eval_main(["responses", str(responses), "--judge", "--judge-url", server.base_url, "--judge-model",
                      MODEL_ID, "--judge-concurrency", "1", "--judge-retries", "0"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert server.engine.steps > steps  # the judge's requests were decoded by the served engine
    rows = [json.loads(line) for line in (tmp_path / "responses.eval.jsonl").read_text().splitlines()]
    assert [row["index"] for row in rows] == list(given)
    for row, record in zip(rows, records):
        # The server's raw reply, as SmolLM2 answers the book's judge prompt locally.
        assert row["judge_reply"] == llm.chat([{"role": "user", "content": judge_prompt(record)}], 200)
        assert row["judge_attempts"] == 1
        score = row["judge_score"]
        assert score == parse_score(row["judge_reply"])
        if score is not None:
            assert 0 <= score <= 100 and row["judge_error"] is None
        else:
            assert row["judge_error"] == "the reply holds no single integer in 0..100"
    scores = [row["judge_score"] for row in rows if row["judge_score"] is not None]
    # SmolLM2-135M does not follow the book's judge prompt: it answers the record's question again.
    # The oxygen record's answer is one integer in 0..100, so the scored path (mean, histogram) runs.
    assert scores
    summary = json.loads((tmp_path / "responses.eval.json").read_text())
    assert summary["judge_scored"] == len(scores) and summary["judge_unscored"] == len(rows) - len(scores)
    assert summary["judge_mean"] == pytest.approx(sum(scores) / len(scores))
    assert summary["judge_url"] == f"{server.base_url}/chat/completions" and summary["judge_model"] == MODEL_ID
    assert (tmp_path / "responses.judge.png").stat().st_size > 0
    assert f"judge_scored: {len(scores)}" in out


def http(url: str, headers: dict[str, str] | None = None) -> tuple[int, dict]:
    """``GET url``: the status and the JSON body, for error statuses too."""
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}), timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def serve_command(source: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "gptlab.cli.serve", str(source), "--device", "cpu", *args]


def test_serve_command_as_a_process(tmp_path: Path, monkeypatch, capsys):
    model_dir = save_model(tiny(), tmp_path / "model")
    env = {**os.environ, "GPTLAB_API_KEY": "k"}
    port = free_port()
    log = tmp_path / "serve.log"
    # Both start at once, so their imports overlap.
    refused = subprocess.Popen(serve_command(model_dir, "--max-batch", "0", "--port", str(free_port())), env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    with open(log, "w") as stderr:
        process = subprocess.Popen(serve_command(model_dir, "--tokenizer", "gpt2", "--port", str(port)), env=env,
                                   stdout=subprocess.DEVNULL, stderr=stderr)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 90
        while True:
            assert process.poll() is None, f"gptlab-serve exited: {log.read_text()}"
            assert time.monotonic() < deadline, f"gptlab-serve did not answer: {log.read_text()}"
            try:
                status, health = http(f"{url}/health")
                break
            except (urllib.error.URLError, ConnectionError):
                time.sleep(0.2)
        assert status == 200 and health["status"] == "ok"  # no key needed
        listening = [c.laddr for c in psutil.Process(process.pid).net_connections(kind="inet")
                     if c.status == psutil.CONN_LISTEN]
        assert [(a.ip, a.port) for a in listening] == [("127.0.0.1", port)]  # this machine only, by default
        status, body = http(f"{url}/v1/models")
        assert status == 401 and body["error"]["code"] == "invalid_api_key"
        assert http(f"{url}/v1/models", {"Authorization": "Bearer wrong"})[0] == 401
        status, body = http(f"{url}/v1/models", {"Authorization": "Bearer k"})
        assert status == 200 and [card["id"] for card in body["data"]] == [str(model_dir)]
        # gptlab-chat --url across processes, the key from the same variable the server read.
        monkeypatch.setenv("GPTLAB_API_KEY", "k")
        code, out, err = chat(["--url", url, "--max-new-tokens", "6"], "Hi.\n", monkeypatch, capsys)
        assert (code, err) == (0, "")
        assert out == LLM.load(str(model_dir), device="cpu").chat([{"role": "user", "content": "Hi."}], 6) + "\n"
    finally:
        process.terminate()
        process.wait(timeout=30)
    out, err = refused.communicate(timeout=90)
    assert refused.returncode == 2 and out == ""
    assert "max_batch must be >= 1" in one_error_line(err, "gptlab-serve")


@pytest.mark.parametrize("limit, message", [(("--max-batch", "0"), "max_batch must be >= 1"),
                                            (("--max-queue", "-1"), "max_queue >= 0"),
                                            (("--max-seq-len", "0"), "max_seq_len must lie in 2..")])
def test_bad_serving_limits_are_refused_before_the_model_loads(tmp_path: Path, capsys, limit, message):
    missing = tmp_path / "no-such-model"  # loading it would fail with a different line
    assert serve_main([str(missing), *limit]) == 2
    out, err = capsys.readouterr()
    assert out == "" and message in one_error_line(err, "gptlab-serve")
