"""Generation: the KV cache, both attention backends, sampling options, EOS, left padding, streaming."""

from __future__ import annotations


import pytest
import torch
from helpers.decoding import left_padded

from gptlab import GPT, GPTConfig, generate, stream_tokens
from gptlab.generate import sample_next_token
from gptlab.model.modes import eval_mode

VOCAB, CTX = 96, 32
BACKENDS = ["sdpa", "manual"]


def tiny_gpt(attention: str = "sdpa", seed: int = 1) -> GPT:
    """A random model with weights large enough that greedy choices are never near-ties."""
    cfg = GPTConfig(vocab_size=VOCAB, context_length=CTX, emb_dim=32, n_heads=4, n_layers=2,
                    drop_rate=0.0, qkv_bias=True, attention=attention)
    model = GPT(cfg)
    torch.manual_seed(seed)  # after construction: the weights do not depend on the init scheme
    with torch.no_grad():
        for param in model.parameters():
            param.normal_(0.0, 0.3)
    return model.eval()


def prompt(length: int, seed: int = 1) -> torch.Tensor:
    return torch.randint(1, VOCAB, (1, length), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("attention", BACKENDS)
@pytest.mark.parametrize("new_tokens", [10, 40])  # 40: past the context length, the window slides
def test_kv_cache_greedy_equals_recomputing_the_window(attention: str, new_tokens: int):
    model = tiny_gpt(attention)
    idx = prompt(9)
    cached = generate(model, idx, new_tokens, use_cache=True)
    uncached = generate(model, idx, new_tokens, use_cache=False)
    assert cached.shape == (1, 9 + new_tokens)
    assert torch.equal(cached, uncached)
    assert len(set(cached[0, 9:].tolist())) > 1  # a real continuation, not one repeated token


def test_backends_agree_on_logits():
    sdpa, manual = tiny_gpt("sdpa"), tiny_gpt("manual")
    manual.load_state_dict(sdpa.state_dict())
    x = torch.randint(0, VOCAB, (3, CTX))
    mask = torch.ones_like(x)
    mask[1, :5] = 0
    mask[2, :17] = 0
    with torch.no_grad():
        torch.testing.assert_close(manual(x), sdpa(x), atol=1e-5, rtol=0)
        torch.testing.assert_close(manual(x, attention_mask=mask), sdpa(x, attention_mask=mask), atol=1e-5, rtol=0)
    idx = prompt(7)
    assert torch.equal(generate(manual, idx, 30), generate(sdpa, idx, 30))


def test_top_k_one_and_tiny_top_p_are_greedy():
    model = tiny_gpt()
    idx = prompt(6)
    greedy = generate(model, idx, 20)
    gen = torch.Generator().manual_seed(0)
    assert torch.equal(generate(model, idx, 20, temperature=1.5, top_k=1, generator=gen), greedy)
    assert torch.equal(generate(model, idx, 20, temperature=1.5, top_p=1e-6, generator=gen), greedy)


def test_sample_next_token_filters():
    logits = torch.tensor([[0.0, 3.0, 2.0, 1.0]])
    gen = torch.Generator().manual_seed(0)
    picks = {int(sample_next_token(logits, 1.0, top_k=2, generator=gen)) for _ in range(200)}
    assert picks == {1, 2}
    # p = softmax = [0.032, 0.644, 0.237, 0.087]: top_p 0.7 keeps the two most likely tokens
    picks = {int(sample_next_token(logits, 1.0, top_p=0.7, generator=gen)) for _ in range(200)}
    assert picks == {1, 2}


def test_seeded_sampling_is_reproducible():
    model = tiny_gpt()
    idx = prompt(5)

    def sample(seed: int) -> torch.Tensor:
        return generate(model, idx, 25, temperature=1.0, top_k=40, generator=torch.Generator().manual_seed(seed))

    assert torch.equal(sample(123), sample(123))
    assert not torch.equal(sample(123), sample(124))


def test_eos_stops_generation():
    model = tiny_gpt()
    idx = prompt(8)
    greedy = generate(model, idx, 20)
    eos = int(greedy[0, 8 + 4])  # the fifth generated token
    first = int((greedy[0, 8:] == eos).nonzero()[0])
    out = generate(model, idx, 20, eos_id=eos)
    assert torch.equal(out, greedy[:, : 8 + first + 1])  # stops right after producing eos


def test_eos_fills_finished_rows_of_a_batch():
    model = tiny_gpt()
    a, b = prompt(6, seed=1), prompt(6, seed=2)
    solo_a = generate(model, a, 12)
    eos = int(solo_a[0, 6 + 2])
    out = generate(model, torch.cat([a, b]), 12, eos_id=eos)
    first = int((out[0, 6:] == eos).nonzero()[0])
    assert (out[0, 6 + first:] == eos).all()


@pytest.mark.parametrize("attention", BACKENDS)
@pytest.mark.parametrize("use_cache", [True, False])
@pytest.mark.parametrize("new_tokens", [12, 30])  # 30: the longest row passes the context length
def test_left_padded_batch_matches_each_prompt_alone(attention: str, use_cache: bool, new_tokens: int):
    model = tiny_gpt(attention)
    prompts = [prompt(n, seed=n) for n in (3, 7, 12)]
    width = max(p.shape[1] for p in prompts)
    pad_id = 0
    batch = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros_like(batch)
    for row, p in enumerate(prompts):
        batch[row, width - p.shape[1]:] = p[0]
        mask[row, width - p.shape[1]:] = 1

    out = generate(model, batch, new_tokens, attention_mask=mask, use_cache=use_cache)
    for row, p in enumerate(prompts):
        alone = generate(model, p, new_tokens, use_cache=use_cache)
        assert torch.equal(out[row, width:], alone[0, p.shape[1]:]), f"row {row} (prompt of {p.shape[1]} tokens)"


def test_stream_tokens_yields_one_token_per_step():
    model = tiny_gpt()
    idx = prompt(5)
    calls = []
    handle = model.register_forward_hook(lambda module, args, output: calls.append(args[0].shape[1]))
    try:
        stream = stream_tokens(model, idx, 6)
        first = next(stream)
        assert first.shape == (1, 1) and calls == [5]  # only the prompt has been processed so far
        rest = list(stream)
    finally:
        handle.remove()
    assert calls == [5, 1, 1, 1, 1, 1]  # then one new token per forward pass
    assert torch.equal(torch.cat([idx, first, *rest], dim=1), generate(model, idx, 6))


def test_generation_runs_in_eval_mode_and_restores_every_module_mode():
    model = tiny_gpt().train()
    model.trf_blocks[0].eval()  # a part kept in eval mode while the rest trains stays so
    before = [m.training for m in model.modules()]
    stream = stream_tokens(model, prompt(4), 5)
    next(stream)
    assert not any(m.training for m in model.modules())  # no dropout while decoding
    stream.close()  # a stream abandoned midway (a chat cut short) restores the modes too
    assert [m.training for m in model.modules()] == before
    generate(model, prompt(4), 3)
    assert [m.training for m in model.modules()] == before


def test_eval_mode_restores_modes_when_the_block_raises():
    model = tiny_gpt().train()
    with pytest.raises(RuntimeError), eval_mode(model):
        assert not model.training
        raise RuntimeError("stop")
    assert all(m.training for m in model.modules())


def padded_vocab_gpt(padded_rows: int) -> GPT:
    """A model whose last ``padded_rows`` vocabulary rows win every step unless they are excluded.

    The final LayerNorm is set to output all ones, so each logit is the sum of its output row.
    """
    model = tiny_gpt()
    with torch.no_grad():
        model.final_norm.scale.zero_()
        model.final_norm.shift.fill_(1.0)
        model.out_head.weight[-padded_rows:] = 10.0
    return model


def test_vocab_limit_keeps_padded_rows_out():
    real = VOCAB - 8
    model = padded_vocab_gpt(8)
    idx = prompt(4)
    assert (generate(model, idx, 5)[0, 4:] >= real).all()  # without the limit the padding wins
    best_real_id = int(model.out_head.weight[:real].sum(dim=-1).argmax())
    assert generate(model, idx, 5, vocab_limit=real)[0, 4:].tolist() == [best_real_id] * 5
    sampled = generate(model, idx, 20, temperature=1.0, vocab_limit=real,
                       generator=torch.Generator().manual_seed(0))
    assert (sampled[0, 4:] < real).all()




@pytest.mark.parametrize("attention", BACKENDS)
@pytest.mark.parametrize("new_tokens", [12, 30])  # 30: the window slides and the prompt is re-read
def test_static_cache_step_matches_the_kv_cache(eager_static_step: None, attention: str, new_tokens: int):
    model = tiny_gpt(attention)
    batch, mask = left_padded([prompt(n, seed=n) for n in (3, 7, 12, 1)])
    static = generate(model, batch, new_tokens, attention_mask=mask, compile=True)
    assert torch.equal(static, generate(model, batch, new_tokens, attention_mask=mask))
    assert torch.equal(static, generate(model, batch, new_tokens, attention_mask=mask, use_cache=False))
    single = prompt(9)  # no attention mask at all
    assert torch.equal(generate(model, single, new_tokens, compile=True), generate(model, single, new_tokens))


def test_static_cache_step_logits_equal_the_model_forward():
    model = tiny_gpt()
    batch, mask = left_padded([prompt(n, seed=n) for n in (4, 9)])
    extended = torch.cat([batch, prompt(2, seed=5).expand(2, -1)], dim=1)
    full_mask = torch.cat([mask, torch.ones(2, 2, dtype=torch.long)], dim=1)
    positions = (full_mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        expected = model(extended, attention_mask=full_mask, position_ids=positions)[:, -1]
        cache = model.new_kv_cache(2, 16)
        width = extended.shape[1]
        model(extended[:, :-1], attention_mask=full_mask[:, :-1], position_ids=positions[:, :-1], kv_cache=cache)
        visible = torch.zeros(2, 16, dtype=torch.bool)
        visible[:, :width] = full_mask.bool()
        got = model.static_decode_step(extended[:, -1:], positions[:, -1:], torch.tensor([width - 1]), visible,
                                       [layer.keys for layer in cache.layers], [layer.values for layer in cache.layers])
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.slow
def test_compiled_static_decoding_equals_eager():
    model = tiny_gpt()
    batch, mask = left_padded([prompt(n, seed=n) for n in (2, 6, 11)])
    compiled = generate(model, batch, 15, attention_mask=mask, compile=True)
    assert torch.equal(compiled, generate(model, batch, 15, attention_mask=mask))
