"""The text sample printed at each validation: its prompt, decoding, end-of-text stop and display."""

from __future__ import annotations

from types import SimpleNamespace

import torch

from gptlab.callbacks import GenerateSample, RunSummary
from gptlab.model import GPT, GPTConfig
from gptlab.tokenizer import get_tokenizer

BYTE = get_tokenizer("byte")  # ids 0-255 are bytes, 256 is <|endoftext|>


def byte_model(always: int | None = None) -> GPT:
    """A nano GPT over bytes; with ``always``, every position predicts that id by a wide margin."""
    torch.manual_seed(0)
    model = GPT(GPTConfig.from_preset("nano", vocab_size=BYTE.vocab_size, tie_embeddings=False))
    if always is not None:
        with torch.no_grad():
            # final_norm outputs its shift whatever the input; only row `always` of the head sees it.
            model.final_norm.scale.zero_()
            model.final_norm.shift.fill_(1.0)
            model.out_head.weight.zero_()
            model.out_head.weight[always] = 10.0
    return model.eval()


def fake_run(model: GPT, sample_prompt: str | None = None, callbacks: list | None = None) -> tuple:
    datamodule = SimpleNamespace(tokenizer=BYTE, sample_prompt=sample_prompt)
    trainer = SimpleNamespace(datamodule=datamodule, callbacks=callbacks or [])
    return trainer, SimpleNamespace(gpt=model, device=torch.device("cpu"), generates_text=True)


def test_prompt_comes_from_the_data_module_unless_the_callback_sets_one():
    trainer, module = fake_run(byte_model(), sample_prompt="Every effort")
    assert GenerateSample(max_new_tokens=3).sample(trainer, module).startswith("Every effort")
    assert GenerateSample(prompt="The with", max_new_tokens=3).sample(trainer, module).startswith("The with")


def test_generation_stops_at_end_of_text_and_does_not_print_it():
    trainer, module = fake_run(byte_model(always=BYTE.eot_id), sample_prompt="Hello")
    assert GenerateSample(max_new_tokens=20, temperature=0.0).sample(trainer, module) == "Hello"


def test_runs_of_whitespace_print_as_one_space():
    trainer, module = fake_run(byte_model(always=ord("\n")), sample_prompt="def f():\n    return  1")
    assert GenerateSample(max_new_tokens=5, temperature=0.0).sample(trainer, module) == "def f(): return 1"


def test_sampling_is_seeded_and_uses_the_configured_decoding():
    trainer, module = fake_run(byte_model(), sample_prompt="a")
    first = GenerateSample(max_new_tokens=40, temperature=1.0, top_k=None, seed=7).sample(trainer, module)
    again = GenerateSample(max_new_tokens=40, temperature=1.0, top_k=None, seed=7).sample(trainer, module)
    other = GenerateSample(max_new_tokens=40, temperature=1.0, top_k=None, seed=8).sample(trainer, module)
    assert first == again
    assert first != other
    # temperature 0 is greedy decoding: no randomness left for the seed to fix.
    greedy = [GenerateSample(max_new_tokens=40, temperature=0.0, seed=s).sample(trainer, module) for s in (7, 8)]
    assert greedy[0] == greedy[1] != first


def test_without_any_prompt_the_sample_starts_from_end_of_text():
    trainer, module = fake_run(byte_model(always=ord("x")))
    assert GenerateSample(max_new_tokens=4, temperature=0.0).sample(trainer, module) == "xxxx"


def test_summary_command_repeats_the_sample_prompt_and_decoding():
    sampler = GenerateSample(temperature=0.8, top_k=40, seed=123)
    trainer, _ = fake_run(byte_model(), sample_prompt="The with statement", callbacks=[sampler])
    command = RunSummary.generate_command(trainer, "runs/a b")
    assert command == ("gptlab-generate 'runs/a b' --prompt 'The with statement' --max-new-tokens 50 "
                       "--temperature 0.8 --top-k 40 --seed 123")


def test_summary_command_of_greedy_sampling_has_no_sampling_flags():
    trainer, _ = fake_run(byte_model(), callbacks=[GenerateSample(prompt="Hi", temperature=0.0)])
    assert RunSummary.generate_command(trainer, "run") == "gptlab-generate run --prompt Hi --max-new-tokens 50"


def test_every_rank_decodes_and_only_rank_zero_prints(capsys):
    # A sharded model gathers its weights from all ranks: each rank must run the same forwards.
    calls = []
    model = byte_model()
    model.register_forward_hook(lambda *_: calls.append(1))
    sampler = GenerateSample(max_new_tokens=3, temperature=0.0)
    for rank in (1, 0):
        trainer, module = fake_run(model, sample_prompt="Hi")
        trainer.sanity_checking, trainer.global_rank, trainer.global_step = False, rank, 2
        trainer.progress_bar_callback = None
        sampler.on_validation_end(trainer, module)
        assert len(calls) == 3 * (2 - rank)  # three one-token steps per rank
        assert capsys.readouterr().out == ("" if rank else f"[step 2] {sampler.last_sample}\n")
