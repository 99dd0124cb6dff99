"""``DecodeEngine``: continuous batching gives what one request at a time gives.

The reference is the library's own decode (``LLM.generate``, ``gptlab.generate``: one prompt, its
own KV cache) on the same ids: rows of different lengths decoded together, rows that join while
others decode, rows freed and reused, ``n`` copies of one prompt, and seeded sampling.
"""

from __future__ import annotations

import threading

import pytest
import torch

from gptlab import GPT, GPTConfig
from gptlab.inference import LLM, Sampling
from gptlab.inference.engine import BadRequest, DecodeEngine, Delta, EngineBusy, Request, generate_batch
from gptlab.prompts import ALPACA
from gptlab.tokenizer import get_tokenizer

GPT2_EOT = 50256


def tiny_llm(pos_emb: str = "learned", seed: int = 0) -> LLM:
    """A random nano model (learned positions, or RoPE with grouped-query attention) with GPT-2's tokenizer."""
    torch.manual_seed(seed)
    settings = {"preset": "nano", "vocab_size": 50257, "context_length": 64}
    if pos_emb == "rope":
        settings |= {"pos_emb": "rope", "n_kv_heads": 1, "norm": "rmsnorm", "mlp": "swiglu"}
    model = GPT(GPTConfig.from_dict(settings))
    with torch.no_grad():
        for param in model.parameters():
            param.normal_(0.0, 0.2)
    return LLM(model.eval(), get_tokenizer("gpt2"), ALPACA, (GPT2_EOT,), "tiny")


PROMPTS = ["Every effort moves you", "I had always thought", "The", "Once upon a time there was a cat that",
           "1 2 3"]


@pytest.mark.parametrize("pos_emb", ["learned", "rope"])
def test_prompts_of_different_lengths_decode_together_as_they_do_alone(pos_emb: str) -> None:
    llm = tiny_llm(pos_emb)
    alone = [llm.generate(p, max_new_tokens=20) for p in PROMPTS]
    together = generate_batch(llm, [llm.tokenizer.encode(p) for p in PROMPTS], Sampling(max_new_tokens=20))
    assert together == alone


def test_rows_freed_early_are_reused_by_waiting_requests() -> None:
    """Two slots, five requests with different budgets: rows finish at different steps, the last
    row moves into the freed one, and waiting requests join mid-decode."""
    llm = tiny_llm()
    budgets = [3, 17, 6, 11, 9]
    expected = [llm.generate(p, max_new_tokens=b) for p, b in zip(PROMPTS, budgets)]
    results: dict[int, list[Delta]] = {k: [] for k in range(len(PROMPTS))}
    done = threading.Semaphore(0)
    engine = DecodeEngine(llm, max_batch=2, max_queue=8).start()
    try:
        for k, (prompt, budget) in enumerate(zip(PROMPTS, budgets)):
            def on_delta(delta: Delta, k: int = k) -> None:
                results[k].append(delta)
                if delta.finish_reason:
                    done.release()
            engine.submit(Request(tuple(llm.tokenizer.encode(prompt)), Sampling(max_new_tokens=budget)), on_delta)
        for _ in PROMPTS:
            assert done.acquire(timeout=60)
    finally:
        engine.close()
    for k, budget in enumerate(budgets):
        assert "".join(d.text for d in results[k]) == expected[k]
        assert results[k][-1].finish_reason == "length"
        assert results[k][-1].completion_tokens == budget
    assert engine.in_flight == 0


def test_n_choices_share_one_prompt_read_and_seeds_follow_the_library() -> None:
    llm = tiny_llm()
    ids = tuple(llm.tokenizer.encode(PROMPTS[0]))
    deltas: list[Delta] = []
    done = threading.Event()

    def on_delta(delta: Delta) -> None:
        deltas.append(delta)
        if sum(d.finish_reason is not None for d in deltas) == 3:
            done.set()

    engine = DecodeEngine(llm, max_batch=4).start()
    try:
        engine.submit(Request(ids, Sampling(max_new_tokens=12, temperature=1.0, top_k=50, seed=11), n=3), on_delta)
        assert done.wait(60)
    finally:
        engine.close()
    texts = ["".join(d.text for d in deltas if d.index == i) for i in range(3)]
    # Choice i samples with seed + i, exactly as the library does alone with that seed.
    assert texts == [llm.generate(PROMPTS[0], 12, temperature=1.0, top_k=50, seed=11 + i) for i in range(3)]
    assert len(set(texts)) > 1


def test_stop_ids_and_stop_strings_end_a_choice_with_true_counts() -> None:
    llm = tiny_llm()
    full_ids = list(llm.stream_ids(llm.tokenizer.encode(PROMPTS[1]), Sampling(max_new_tokens=30), stop=False))
    full = llm.tokenizer.decode(full_ids)
    # A stop string from the middle of the greedy text: the completion is exactly what precedes it.
    stop = full[len(full) // 2:len(full) // 2 + 3]
    cut = full.index(stop)
    deltas: list[Delta] = []
    done = threading.Event()
    engine = DecodeEngine(llm).start()
    try:
        engine.submit(Request(tuple(llm.tokenizer.encode(PROMPTS[1])), Sampling(max_new_tokens=30), stop=(stop,)),
                      lambda d: (deltas.append(d), d.finish_reason and done.set()))
        assert done.wait(60)
    finally:
        engine.close()
    assert "".join(d.text for d in deltas) == full[:cut]
    assert deltas[-1].finish_reason == "stop"
    # Tokens generated up to the one that completed the stop string.
    produced = next(k for k in range(1, len(full_ids) + 1) if stop in llm.tokenizer.decode(full_ids[:k]))
    assert deltas[-1].completion_tokens == produced


def test_a_cancelled_job_frees_its_row_before_the_next_step() -> None:
    llm = tiny_llm()
    engine = DecodeEngine(llm, max_batch=1, max_queue=0).start()
    first = threading.Event()
    try:
        job = engine.submit(Request((1, 2, 3), Sampling(max_new_tokens=50)), lambda d: first.set())
        assert first.wait(30)
        steps = engine.steps
        job.cancel()
        for _ in range(500):
            if engine.in_flight == 0:
                break
            threading.Event().wait(0.01)
        assert engine.in_flight == 0
        assert engine.steps - steps <= 2  # the step under way when it was cancelled, at most one more
        # The slot is free again: a new job starts at once even with no waiting room.
        engine.submit(Request((4, 5), Sampling(max_new_tokens=2)), lambda d: None)
    finally:
        engine.close()


def test_limits_are_refused_with_what_to_change() -> None:
    llm = tiny_llm()
    engine = DecodeEngine(llm, max_batch=1, max_queue=1, max_seq_len=32)
    with pytest.raises(BadRequest, match="maximum context length is 32 tokens.*30 in the prompt, 5 in the completion"):
        engine.submit(Request(tuple(range(30)), Sampling(max_new_tokens=5)), lambda d: None)
    with pytest.raises(BadRequest, match=r"n must lie in 1\.\.1"):
        engine.submit(Request((1,), Sampling(max_new_tokens=5), n=2), lambda d: None)
    with pytest.raises(BadRequest, match="max_new_tokens must be at least 1"):
        engine.submit(Request((1,), Sampling(max_new_tokens=0)), lambda d: None)
    # Not started, so the first job stays in the one waiting place and the second finds none.
    engine.submit(Request((1,), Sampling(max_new_tokens=5)), lambda d: None)
    with pytest.raises(EngineBusy, match="1 requests are waiting"):
        engine.submit(Request((1,), Sampling(max_new_tokens=5)), lambda d: None)
    engine.close()
