"""The chat page at ``/`` in a real browser: Debian's headless Chromium, driven by Playwright,
against ``gptlab-serve``'s app on the real SmolLM2-135M-Instruct.

The page's replies are checked against ``LLM.chat`` of the same conversation (greedy, so the
engine's text and the library's agree token for token), its history against the prompt tokens
the server counted, and its stop button against the engine's own count of jobs in flight.
``GPTLAB_SCREENSHOT=PATH`` writes the screenshot of a streamed conversation to PATH (the one in
``experiments/serve/chat-page.png`` was made so); otherwise it goes to the test's tmp_path.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers.serving import LiveServer, live_server
from playwright.sync_api import Browser, Page, sync_playwright

from gptlab.inference import LLM

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group(__name__)]

NAME = "smollm2-135m-instruct"
CHROMIUM = Path("/usr/bin/chromium")
INSTALL = "apt-get update && apt-get install -y chromium"
MAX_TOKENS = 40
FIRST = "What is the capital of France?"
SECOND = "And what is the capital of Germany?"
LONG = "Write a long, detailed story about a dragon who learns to bake bread, with many chapters."


@pytest.fixture(scope="module")
def llm(smollm2_gguf: Path) -> LLM:
    return LLM.load(NAME)


@pytest.fixture(scope="module")
def server(llm: LLM) -> Iterator[LiveServer]:
    with live_server(llm, model_id=NAME, max_batch=2) as live:
        yield live


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not CHROMIUM.exists():
        pytest.fail(f"Chromium is not installed at {CHROMIUM}: {INSTALL}", pytrace=False)
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True)
        yield launched
        launched.close()


@pytest.fixture(scope="module")
def page(browser: Browser, server: LiveServer) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1200, "height": 800}, color_scheme="light")
    opened = context.new_page()
    opened.set_default_timeout(30_000)
    opened.goto(server.url + "/")
    opened.wait_for_function("document.getElementById('status').textContent === 'Ready'")
    yield opened
    context.close()


def set_controls(page: Page, temperature: str, max_tokens: str) -> None:
    page.fill("#temperature", temperature)
    page.fill("#max_tokens", max_tokens)


def send(page: Page, text: str) -> None:
    page.fill("#message", text)
    page.press("#message", "Enter")


def last_reply(page: Page) -> str:
    return page.locator(".msg.assistant .content").last.text_content() or ""


def stream_lengths(page: Page) -> list[int]:
    """The last reply's text length, sampled while the page streams, until it is idle again."""
    page.wait_for_function("document.body.dataset.state === 'streaming'")
    lengths: list[int] = []
    while True:
        state, text = page.evaluate("""() => {
            const replies = document.querySelectorAll('.msg.assistant .content');
            return [document.body.dataset.state, replies[replies.length - 1].textContent];
        }""")
        if state != "streaming":
            return lengths
        if text and (not lengths or lengths[-1] != len(text)):
            lengths.append(len(text))
        time.sleep(0.01)


def shown_usage(page: Page) -> dict[str, int]:
    usage = page.locator(".msg.assistant").last.locator(".meta .usage")
    return {key: int(usage.get_attribute(f"data-{key}-tokens") or -1) for key in ("prompt", "completion", "total")}


def prompt_tokens(llm: LLM, messages: list[dict[str, str]]) -> int:
    return len(llm.tokenizer.encode(llm.style.render(messages)))


def test_the_page_streams_a_conversation_with_its_history(page: Page, server: LiveServer, llm: LLM,
                                                          tmp_path: Path) -> None:
    card = server.served.model_card()
    assert page.text_content("#model-id") == NAME
    assert page.text_content("#prompt-format") == card["prompt_format"]["name"] == llm.style.name
    assert page.text_content("#max-model-len") == str(server.engine.max_seq_len)
    assert page.text_content("#prompt-example") == card["prompt_format"]["example"]
    assert page.locator("details#prompt-example-box").get_attribute("open") is None  # collapsed

    set_controls(page, "0", str(MAX_TOKENS))
    send(page, FIRST)
    lengths = stream_lengths(page)
    assert len(set(lengths)) >= 2, f"the reply did not grow while streaming: {lengths}"
    first = [{"role": "user", "content": FIRST}]
    expected = llm.chat(first, max_new_tokens=MAX_TOKENS, temperature=0)
    assert last_reply(page) == expected
    assert "Paris" in expected
    assert lengths[-1] <= len(expected)
    meta = page.locator(".msg.assistant").last
    finish = meta.get_attribute("data-finish-reason")
    assert finish in ("stop", "length")
    assert meta.locator(".meta .finish").text_content() == f"finish: {finish}"
    usage = shown_usage(page)
    assert usage["prompt"] == prompt_tokens(llm, first)
    assert usage["total"] == usage["prompt"] + usage["completion"] > usage["prompt"]

    # The second request carries the first turn and its reply: the server's prompt is all three.
    send(page, SECOND)
    assert len(set(stream_lengths(page))) >= 2
    conversation = [*first, {"role": "assistant", "content": expected}, {"role": "user", "content": SECOND}]
    assert shown_usage(page)["prompt"] == prompt_tokens(llm, conversation)
    assert last_reply(page) == llm.chat(conversation, max_new_tokens=MAX_TOKENS, temperature=0)
    assert page.text_content("#status") == "Ready"
    assert page.locator(".msg.user").count() == page.locator(".msg.assistant").count() == 2

    page.click("#prompt-example-box summary")  # the screenshot shows the prompt format too
    target = Path(os.environ["GPTLAB_SCREENSHOT"]) if os.environ.get("GPTLAB_SCREENSHOT") else tmp_path / "chat.png"
    target.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(target))
    assert target.stat().st_size > 10_000
    page.click("#prompt-example-box summary")

    page.click("#new-chat")
    assert page.locator(".msg").count() == 0
    assert page.is_visible("#empty")


def test_stop_aborts_the_stream_and_frees_the_engine(page: Page, server: LiveServer, llm: LLM) -> None:
    page.click("#new-chat")
    set_controls(page, "0", "2000")
    send(page, LONG)
    page.wait_for_function("""() => {
        const replies = document.querySelectorAll('.msg.assistant .content');
        return replies.length && replies[replies.length - 1].textContent.length > 20;
    }""")
    assert page.is_visible("#stop") and page.is_disabled("#send")
    assert server.engine.in_flight == 1
    page.click("#stop")
    deadline = time.monotonic() + 5
    while server.engine.in_flight and time.monotonic() < deadline:
        time.sleep(0.02)
    assert server.engine.in_flight == 0, "the stopped request is still decoding on the server"
    page.wait_for_function("document.body.dataset.state === 'idle'")
    assert page.text_content("#status") == "Stopped"
    assert page.locator(".msg.assistant").last.get_attribute("data-finish-reason") == "aborted"
    assert page.is_hidden("#stop") and page.is_enabled("#send")
    partial = last_reply(page)
    assert len(partial) > 20

    # Ready for the next message; the stopped reply, as shown, is part of the conversation.
    set_controls(page, "0", "8")
    send(page, "Thanks!")
    page.wait_for_function("document.body.dataset.state === 'idle' && "
                           "document.querySelectorAll('.msg.assistant').length === 2")
    assert page.text_content("#status") == "Ready"
    conversation = [{"role": "user", "content": LONG}, {"role": "assistant", "content": partial},
                    {"role": "user", "content": "Thanks!"}]
    assert shown_usage(page)["prompt"] == prompt_tokens(llm, conversation)
    assert last_reply(page) == llm.chat(conversation, max_new_tokens=8, temperature=0)


def test_errors_reach_the_page(page: Page) -> None:
    page.click("#new-chat")
    set_controls(page, "0", "8")
    page.fill("#top_p", "0")  # the server refuses it with a 400
    send(page, FIRST)
    page.wait_for_function("document.body.dataset.state === 'idle' && document.querySelector('.msg.assistant')")
    error = page.locator(".msg.assistant .error").text_content() or ""
    assert "top_p" in error
    assert page.text_content("#status") == f"Error: {error}"
    assert page.locator(".msg.user").last.get_attribute("class") == "msg user failed"
    assert page.input_value("#message") == FIRST  # given back to send again
    page.fill("#top_p", "1")

    # An error frame inside a 200 stream (the server failed after the status line was sent).
    frames = ['{"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": null}]}',
              '{"choices": [{"index": 0, "delta": {"content": "Par"}, "finish_reason": null}]}',
              '{"error": {"message": "generation failed: boom", "type": "server_error", "param": null, '
              '"code": "internal_error"}}', "[DONE]"]
    page.route("**/v1/chat/completions", lambda route: route.fulfill(
        status=200, content_type="text/event-stream", body="".join(f"data: {f}\n\n" for f in frames)))
    try:
        page.click("#new-chat")
        send(page, FIRST)
        page.wait_for_function("document.body.dataset.state === 'idle' && document.querySelector('.msg.assistant')")
    finally:
        page.unroute("**/v1/chat/completions")
    assert last_reply(page) == "Par"
    assert page.locator(".msg.assistant .error").text_content() == "generation failed: boom"
    assert page.text_content("#status") == "Error: generation failed: boom"
    page.click("#new-chat")


def test_the_stream_reader_joins_frames_split_anywhere(page: Page) -> None:
    """Every frame split byte by byte (inside UTF-8 characters too), CRLF and LF line ends, a
    comment, a two-line data field; nothing after ``[DONE]`` is read."""
    seen = page.evaluate(r"""async () => {
        const text = 'data: {"a": "\u00e9\u20ac\ud83d\ude00"}\r\n\r\n: keep-alive\n\n'
                   + 'data: one\ndata: two\n\ndata:[DONE]\n\ndata: {"late": 1}\n\n';
        const bytes = new TextEncoder().encode(text);
        const body = new ReadableStream({ start(c) { for (const b of bytes) c.enqueue(new Uint8Array([b])); c.close(); } });
        const seen = [];
        await window.gptlabChat.readEvents(body, (data) => { seen.push(data); return data !== '[DONE]'; });
        return seen;
    }""")
    assert seen == ['{"a": "\u00e9\u20ac\U0001f600"}', "one\ntwo", "[DONE]"]


def test_the_api_key_is_kept_and_sent(browser: Browser, llm: LLM) -> None:
    with live_server(llm, model_id=NAME, api_key="sekrit", max_batch=1, max_seq_len=512) as keyed:
        context = browser.new_context(viewport={"width": 1200, "height": 800})
        try:
            page = context.new_page()
            page.goto(keyed.url + "/")
            page.wait_for_function("document.getElementById('status').textContent.startsWith('Set the API key')")
            page.fill("#api-key", "sekrit")
            page.locator("#api-key").blur()  # a change event: stored, the model card fetched again
            page.wait_for_function("document.getElementById('status').textContent === 'Ready'")
            assert page.text_content("#model-id") == NAME
            assert page.text_content("#max-model-len") == "512"
            page.reload()  # the key comes back from localStorage
            page.wait_for_function("document.getElementById('status').textContent === 'Ready'")
            assert page.input_value("#api-key") == "sekrit"
            set_controls(page, "0", "4")
            send(page, FIRST)
            page.wait_for_function("document.body.dataset.state === 'idle' && document.querySelector('.msg.assistant')")
            assert page.text_content("#status") == "Ready"
            assert last_reply(page) == llm.chat([{"role": "user", "content": FIRST}], max_new_tokens=4)
        finally:
            context.close()
