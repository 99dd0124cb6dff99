"""``gptlab-serve``'s HTTP API through the official ``openai`` client and raw HTTP.

The real SmolLM2 model is served; greedy replies are checked against the library's ``LLM.generate``
/ ``LLM.chat`` and the ``gptlab-generate`` command on the same prompt, and usage against the ids
the library decodes. Every bad input of the API gets its 4xx and OpenAI's error shape, and the
server answers the next request.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest

from gptlab.cli import generate as generate_cli
from gptlab.inference import LLM, Sampling
from tests.helpers.serving import LiveServer, live_server
from tests.test_serve_engine import tiny_llm

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group(__name__)]

MODEL = "smollm2-135m-instruct"
QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def llm(smollm2_gguf) -> LLM:
    return LLM.load(MODEL)


@pytest.fixture(scope="module")
def server(llm: LLM) -> Iterator[LiveServer]:
    with live_server(llm, model_id=MODEL, max_batch=4, max_seq_len=1024) as live:
        yield live


@pytest.fixture(scope="module")
def client(server: LiveServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.base_url, api_key="unused", max_retries=0)


def test_the_client_lists_the_served_model(client: openai.OpenAI, server: LiveServer) -> None:
    models = client.models.list().data
    assert [m.id for m in models] == [MODEL]
    card = httpx.get(f"{server.base_url}/models").json()["data"][0]
    assert card["max_model_len"] == 1024
    assert "<|im_start|>user\nHello!<|im_end|>" in card["prompt_format"]["example"]


def test_a_streamed_greedy_chat_is_the_librarys_reply_with_true_usage(client: openai.OpenAI, llm: LLM) -> None:
    stream = client.chat.completions.create(model=MODEL, messages=QUESTION, temperature=0, max_tokens=48,
                                            stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    first, usage_chunk = chunks[0], chunks[-1]
    assert first.choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == llm.chat(QUESTION, max_new_tokens=48, temperature=0)
    assert len([c for c in chunks if c.choices and c.choices[0].delta.content]) > 1  # streamed, not one piece
    finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finish == ["stop"]
    prompt_ids = llm.tokenizer.encode(llm.style.render(QUESTION))
    generated = list(llm.stream_ids(prompt_ids, Sampling(max_new_tokens=48)))
    assert usage_chunk.choices == []
    # The ids before the stop id, and the stop id (<|im_end|>) that ended the turn.
    assert usage_chunk.usage.prompt_tokens == len(prompt_ids)
    assert usage_chunk.usage.completion_tokens == len(generated) + 1
    assert usage_chunk.usage.total_tokens == len(prompt_ids) + len(generated) + 1


def test_a_greedy_completion_is_gptlab_generates_and_the_librarys(client: openai.OpenAI, llm: LLM, capsys) -> None:
    prompt = "The three primary colors are"
    reply = client.completions.create(model=MODEL, prompt=prompt, max_tokens=24, temperature=0)
    assert generate_cli.main([MODEL, "--prompt", prompt, "--max-new-tokens", "24", "--no-echo"]) == 0
    printed = capsys.readouterr().out
    assert reply.choices[0].text == llm.generate(prompt, max_new_tokens=24) == printed.removesuffix("\n")
    ids = list(llm.stream_ids(llm.tokenizer.encode(prompt), Sampling(max_new_tokens=24)))
    assert reply.usage.completion_tokens == len(ids) + (reply.choices[0].finish_reason == "stop")
    assert reply.choices[0].finish_reason == ("length" if len(ids) == 24 else "stop")


def test_max_tokens_stop_and_n_behave_as_the_api_documents(client: openai.OpenAI, llm: LLM) -> None:
    prompt = "Here is a list of fruits: apples, bananas,"
    full = llm.generate(prompt, max_new_tokens=40, stop=False)
    # max_tokens: exactly that many tokens, finish_reason "length".
    short = client.completions.create(model=MODEL, prompt=prompt, max_tokens=5, temperature=0)
    assert short.choices[0].finish_reason == "length"
    assert short.usage.completion_tokens == 5
    assert full.startswith(short.choices[0].text)
    # stop: the text before the first stop string, which is not included; finish_reason "stop".
    word = full.split()[1]
    stopped = client.completions.create(model=MODEL, prompt=prompt, max_tokens=40, temperature=0,
                                        stop=["zzz", word])
    assert stopped.choices[0].text == full[:full.index(word)]
    assert stopped.choices[0].finish_reason == "stop"
    # n: that many choices, indexed 0..n-1; greedy choices agree, and usage adds them up.
    many = client.completions.create(model=MODEL, prompt=prompt, max_tokens=6, temperature=0, n=3)
    assert [c.index for c in many.choices] == [0, 1, 2]
    assert [c.text for c in many.choices] == [llm.generate(prompt, max_new_tokens=6)] * 3
    assert many.usage.completion_tokens == 3 * 6
    # Sampled choices with a seed: choice i is the library's sample with seed + i.
    sampled = client.completions.create(model=MODEL, prompt=prompt, max_tokens=8, temperature=1.0, seed=5, n=2)
    assert [c.text for c in sampled.choices] == [llm.generate(prompt, 8, temperature=1.0, seed=5 + i)
                                                 for i in range(2)]


def test_a_chat_stream_of_several_choices_opens_each_with_its_role(client: openai.OpenAI) -> None:
    chunks = list(client.chat.completions.create(model=MODEL, messages=QUESTION, temperature=0, max_tokens=8, n=2,
                                                 stream=True))
    roles = [(c.choices[0].index, c.choices[0].delta.role) for c in chunks if c.choices and c.choices[0].delta.role]
    assert sorted(roles) == [(0, "assistant"), (1, "assistant")]
    texts = ["".join(c.choices[0].delta.content or "" for c in chunks if c.choices and c.choices[0].index == i)
             for i in range(2)]
    assert texts[0] == texts[1] != ""


def test_the_stream_is_sse_and_ends_with_done(server: LiveServer) -> None:
    body = {"model": MODEL, "messages": QUESTION, "max_tokens": 4, "temperature": 0, "stream": True}
    with httpx.stream("POST", f"{server.base_url}/chat/completions", json=body, timeout=60) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in response.iter_lines() if line]
    assert all(line.startswith("data: ") for line in lines)
    assert lines[-1] == "data: [DONE]"
    assert json.loads(lines[0].removeprefix("data: "))["choices"][0]["delta"] == {"role": "assistant", "content": ""}


def test_a_client_that_disconnects_mid_stream_frees_its_slot(server: LiveServer) -> None:
    body = {"model": MODEL, "prompt": "Write a long story about a dragon.", "max_tokens": 400, "stream": True}
    with httpx.stream("POST", f"{server.base_url}/completions", json=body, timeout=60) as response:
        received = 0
        for line in response.iter_lines():
            received += bool(line.startswith("data: {"))
            if received == 3:
                break
        assert server.engine.in_flight == 1
    start, steps = time.monotonic(), server.engine.steps
    server.wait_idle(timeout=10)
    assert server.engine.in_flight == 0
    assert time.monotonic() - start < 5
    assert server.engine.steps - steps < 20  # far fewer than the 397 tokens the job had left
    assert httpx.get(f"{server.url}/health").json()["in_flight"] == 0


@pytest.mark.parametrize("stream", [True, False])
def test_a_client_that_leaves_before_its_first_token_frees_its_slot(stream: bool) -> None:
    """The request is sent and the socket closed while the job still waits for a row."""
    body = json.dumps({"model": "tiny", "prompt": "Hi", "max_tokens": 60, "stream": stream}).encode()
    with live_server(tiny_llm(), model_id="tiny", max_batch=1, start_engine=False) as live:
        port = int(live.url.rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port)) as sock:
            sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                         + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
            deadline = time.monotonic() + 10
            while live.engine.in_flight == 0 and time.monotonic() < deadline:
                time.sleep(0.01)
            assert live.engine.in_flight == 1
        time.sleep(0.5)  # the server sees the closed socket
        live.engine.start()
        live.wait_idle(timeout=10)
        assert live.engine.in_flight == 0
        assert live.engine.steps < 20  # the job had 59 more tokens to decode


# -- bad input: every case gets its 4xx in OpenAI's shape, and the server carries on -------------

@pytest.fixture(scope="module")
def tiny_server() -> Iterator[LiveServer]:
    with live_server(tiny_llm(), model_id="tiny", max_batch=2, max_queue=0) as live:
        yield live


GOOD_CHAT = {"model": "tiny", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 3}
GOOD_COMPLETION = {"model": "tiny", "prompt": "Hi", "max_tokens": 3}
BAD_REQUESTS = {
    "malformed JSON": ("chat/completions", b'{"model": "tiny", "messages": [', 400, None),
    "missing messages": ("chat/completions", {"model": "tiny"}, 400, "messages"),
    "empty messages": ("chat/completions", {"model": "tiny", "messages": []}, 400, "messages"),
    "missing prompt": ("completions", {"model": "tiny", "max_tokens": 3}, 400, "prompt"),
    "unknown model": ("chat/completions", GOOD_CHAT | {"model": "gpt-9"}, 404, "model"),
    "prompt longer than the context": ("completions", GOOD_COMPLETION | {"prompt": "word " * 80}, 400, "prompt"),
    "conversation longer than the context": ("chat/completions",
                                             GOOD_CHAT | {"messages": [{"role": "user", "content": "word " * 80}]},
                                             400, "messages"),
    "prompt plus max_tokens over the context": ("completions", GOOD_COMPLETION | {"max_tokens": 64}, 400, "prompt"),
    "zero max_tokens": ("completions", GOOD_COMPLETION | {"max_tokens": 0}, 400, "max_tokens"),
    "negative max_tokens": ("chat/completions", GOOD_CHAT | {"max_tokens": -5}, 400, "max_tokens"),
    "zero max_completion_tokens": ("chat/completions", GOOD_CHAT | {"max_completion_tokens": 0}, 400,
                                   "max_completion_tokens"),
    "temperature above 2": ("chat/completions", GOOD_CHAT | {"temperature": 2.5}, 400, "temperature"),
    "negative temperature": ("completions", GOOD_COMPLETION | {"temperature": -0.1}, 400, "temperature"),
    "top_p of 0": ("chat/completions", GOOD_CHAT | {"top_p": 0}, 400, "top_p"),
    "top_p above 1": ("completions", GOOD_COMPLETION | {"top_p": 1.5}, 400, "top_p"),
    "unknown role": ("chat/completions", GOOD_CHAT | {"messages": [{"role": "robot", "content": "Hi"}]}, 400,
                     "messages.0.role"),
    "stop as a number": ("chat/completions", GOOD_CHAT | {"stop": 5}, 400, "stop"),
    "stop as a list of numbers": ("completions", GOOD_COMPLETION | {"stop": [1, 2]}, 400, "stop"),
    "five stop strings": ("completions", GOOD_COMPLETION | {"stop": list("abcde")}, 400, "stop"),
    "n over the limit": ("chat/completions", GOOD_CHAT | {"n": 3}, 400, "n"),
    "n of 0": ("completions", GOOD_COMPLETION | {"n": 0}, 400, "n"),
    "unsupported logprobs": ("chat/completions", GOOD_CHAT | {"logprobs": True}, 400, "logprobs"),
    "token ids outside the vocabulary": ("completions", GOOD_COMPLETION | {"prompt": [1, 99999]}, 400, "prompt"),
}


@pytest.mark.parametrize("case", list(BAD_REQUESTS))
def test_bad_input_gets_an_openai_error_and_the_next_request_succeeds(tiny_server: LiveServer, case: str) -> None:
    route, body, status, param = BAD_REQUESTS[case]
    url = f"{tiny_server.base_url}/{route}"
    if isinstance(body, bytes):
        response = httpx.post(url, content=body, headers={"content-type": "application/json"})
    else:
        response = httpx.post(url, json=body)
    assert response.status_code == status
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["param"] == param
    assert error["message"] and "\n" not in error["message"]
    assert response.headers["x-should-retry"] == "false"
    good = GOOD_CHAT if route == "chat/completions" else GOOD_COMPLETION
    assert httpx.post(url, json=good).status_code == 200


def test_the_openai_client_raises_the_servers_message_without_retrying(tiny_server: LiveServer) -> None:
    client = openai.OpenAI(base_url=tiny_server.base_url, api_key="unused")  # the default: 2 retries
    with pytest.raises(openai.BadRequestError, match="temperature") as raised:
        client.chat.completions.create(model="tiny", messages=GOOD_CHAT["messages"], temperature=7)
    assert raised.value.code == "invalid_value"


def test_a_full_server_answers_503_with_retry_after() -> None:
    """One slot, no waiting room: while a request holds the slot, the next one is told to come back."""
    with live_server(tiny_llm(), model_id="tiny", max_batch=1, max_queue=0, start_engine=False) as live:
        url = f"{live.base_url}/completions"
        with ThreadPoolExecutor(1) as pool:
            first = pool.submit(httpx.post, url, json=GOOD_COMPLETION, timeout=60)
            while not live.engine.waiting:  # the engine has not started: the request holds the slot
                time.sleep(0.01)
            response = httpx.post(url, json=GOOD_COMPLETION)
            assert response.status_code == 503
            assert response.headers["retry-after"] == "1"
            assert "x-should-retry" not in response.headers
            assert response.json()["error"]["code"] == "server_overloaded"
            live.engine.start()
            assert first.result().status_code == 200
        assert httpx.post(url, json=GOOD_COMPLETION).status_code == 200


def test_an_api_key_is_required_when_set() -> None:
    with live_server(tiny_llm(), model_id="tiny", api_key="s3cret") as live:
        missing = httpx.get(f"{live.base_url}/models")
        wrong = httpx.get(f"{live.base_url}/models", headers={"authorization": "Bearer nope"})
        right = httpx.get(f"{live.base_url}/models", headers={"authorization": "Bearer s3cret"})
        assert missing.status_code == wrong.status_code == 401
        assert missing.json()["error"]["code"] == "invalid_api_key"
        assert right.status_code == 200
        assert httpx.get(f"{live.url}/health").status_code == 200  # for load balancers, without the key
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=live.base_url, api_key="nope").models.list()
        assert openai.OpenAI(base_url=live.base_url, api_key="s3cret").models.list().data[0].id == "tiny"
