"""``LLM``, the one object that opens a model for inference, on tiny gptlab models and runs.

Checked against independent references: the model's own ``generate`` on the same ids, the prompt
formats' chat templates against their record prompts, and the stop ids of a decode.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from gptlab import GPT, GPTConfig, generate
from gptlab.callbacks.prompt_style import write_prompt_style
from gptlab.checkpoints import save_model
from gptlab.runs import RunFiles
from gptlab.errors import ConfigError
from gptlab.inference import LLM, Sampling
from gptlab.prompts import ALPACA, CHATML, PHI3, PROMPT_STYLES, PromptStyle, get_style, style_from_record
from gptlab.tokenizer import get_tokenizer

RECORD = {"instruction": "Name a color.", "input": "red or blue", "output": "Blue."}


def tiny(vocab_size: int = 50257, seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    model = GPT(GPTConfig.from_dict({"preset": "nano", "vocab_size": vocab_size, "context_length": 64}))
    with torch.no_grad():
        for param in model.parameters():
            param.normal_(0.0, 0.2)
    return model.eval()


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run directory as gptlab-train leaves it: config.yaml, checkpoints/, model/ with prompt.json."""
    run = tmp_path_factory.mktemp("run")
    save_model(tiny(), run / "model")
    write_prompt_style(run / "model", "phi3")
    (run / "checkpoints").mkdir()
    data = {"tokenizer": "gpt2", "path": "records.json", "train_ratio": 0.5, "test_ratio": 0.25, "shuffle": True,
            "seed": 7, "mask_prompt": True}
    (run / "config.yaml").write_text(yaml.safe_dump({"data": data, "output_dir": "${hydra:runtime.output_dir}"}))
    return run


@pytest.mark.parametrize("style", list(PROMPT_STYLES.values()), ids=list(PROMPT_STYLES))
def test_every_style_is_a_chat_template_whose_single_turn_is_the_record_prompt(style: PromptStyle):
    # The record prompt is the style's chat template rendered for one user message: one mechanism.
    expected_user = RECORD["instruction"] + style.input_template.format(input=RECORD["input"])
    assert style.prompt(RECORD) == style.render([{"role": "user", "content": expected_user}])
    assert style.prompt(RECORD).endswith(style.response_prefix)
    assert style.extract_response(style.example(RECORD) + style.stop + " more") == "Blue."
    assert style_from_record(json.loads(json.dumps(style.to_record()))) == style


def test_the_registered_styles_render_the_formats_they_name():
    assert ALPACA.prompt({"instruction": "Say hi.", "input": ""}) == (
        "Below is an instruction that describes a task. Write a response that appropriately completes the request."
        "\n\n### Instruction:\nSay hi.\n\n### Response:\n")
    assert PHI3.prompt({"instruction": "Say hi."}) == "<|user|>\nSay hi.\n<|assistant|>\n"
    conversation = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                    {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "Bye"}]
    assert CHATML.render(conversation) == ("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
                                           "<|im_start|>assistant\nHello.<|im_end|>\n<|im_start|>user\nBye<|im_end|>\n"
                                           "<|im_start|>assistant\n")
    assert ALPACA.render(conversation).startswith("Be brief.\n\n### Instruction:\nHi\n\n### Response:\nHello.")


def test_a_models_own_template_becomes_a_style_that_stops_at_its_end_of_turn():
    system = "{{ '<|im_start|>system\\nBe brief.<|im_end|>\\n' }}"  # ChatML with a default system prompt
    style = PromptStyle.from_chat_template("mine", system + CHATML.chat_template)
    assert style.stop == "<|im_end|>" and style.name == "mine"
    assert style.prompt(RECORD) == "<|im_start|>system\nBe brief.<|im_end|>\n" + CHATML.prompt(RECORD)
    recorded = style_from_record(style.to_record())  # a fine-tuned model keeps its base's template
    assert recorded == style and recorded.name not in PROMPT_STYLES
    # A registered style's template, read back from an export, is that style again (its stop included).
    assert PromptStyle.from_chat_template("export", ALPACA.chat_template) is ALPACA


def test_a_run_is_found_from_any_path_into_it(run_dir: Path):
    for path in (run_dir, run_dir / "model", run_dir / "checkpoints" / "last.ckpt"):
        found = RunFiles.find(path)
        assert found.root == run_dir and found.export_dir == run_dir / "model"
        assert found.prompt_record()["prompt_style"] == "phi3"
        assert found.data_settings()["seed"] == 7
    assert RunFiles.find("gpt2").root is None and RunFiles.find("gpt2").prompt_record() is None


def test_llm_opens_a_run_with_its_tokenizer_format_stops_and_data_settings(run_dir: Path):
    llm = LLM.load(run_dir)
    assert llm.tokenizer.name == "gpt2" and llm.style == get_style("phi3") and llm.stop_ids == (50256,)
    assert llm.data["train_ratio"] == 0.5 and llm.data["shuffle"] is True
    assert not llm.model.training
    ids = llm.tokenizer.encode("Every effort moves you")
    expected = generate(llm.model, torch.tensor([ids]), 8)[0, len(ids):].tolist()
    assert llm.generate("Every effort moves you", max_new_tokens=8, stop=False) == llm.tokenizer.decode(expected)
    assert LLM.load(run_dir, prompt_style="alpaca").style == ALPACA


def test_llm_picks_the_byte_tokenizer_for_a_byte_vocabulary(tmp_path: Path):
    save_model(tiny(257), tmp_path / "byte")
    llm = LLM.load(tmp_path / "byte")
    assert llm.tokenizer.name == "byte" and llm.style == ALPACA and llm.stop_ids == (256,)
    with pytest.raises(ConfigError, match="tokenizer 'gpt2' has 50257 ids but the model's vocab_size is 257"):
        LLM.load(tmp_path / "byte", tokenizer="gpt2")


def test_several_stop_ids_each_end_a_row():
    model = tiny()
    prompt = torch.tensor([get_tokenizer("gpt2").encode("Every effort moves you")])
    free = generate(model, prompt, 12)[0, prompt.shape[1]:].tolist()
    first, second = free[3], free[6]
    stopped = generate(model, prompt, 12, eos_id=[second, first])[0, prompt.shape[1]:].tolist()
    end = min(free.index(first), free.index(second))
    assert stopped == free[:end + 1]  # whichever stop id comes first ends it
    # A batch: each row stops at its own stop id and is filled with it afterwards.
    batch = torch.cat([prompt, torch.tensor([get_tokenizer("gpt2").encode("Every effort moves me")])])
    out = generate(model, batch, 12, eos_id=[first])[:, prompt.shape[1]:]
    assert out[0, free.index(first):].eq(first).all()


def test_sampling_settings_are_checked_in_one_line():
    with pytest.raises(ConfigError, match="top_k must be a positive integer"):
        Sampling(top_k=0)
    with pytest.raises(ConfigError, match="temperature must be >= 0"):
        Sampling(temperature=-1)


def test_respond_and_eval_split_as_the_run_recorded_unless_told_otherwise(run_dir: Path):
    from gptlab.cli.respond import build_parser, data_path, split_settings

    llm = LLM.load(run_dir)
    recorded = build_parser().parse_args([str(run_dir), "--out", "x.jsonl"])
    assert split_settings(recorded, llm) == {"train_ratio": 0.5, "test_ratio": 0.25, "shuffle": True, "seed": 7}
    assert data_path(recorded, llm) == "records.json"
    told = build_parser().parse_args([str(run_dir), "--out", "x.jsonl", "--no-shuffle", "--split-seed", "1",
                                      "--data", "other.json"])
    assert split_settings(told, llm) == {"train_ratio": 0.5, "test_ratio": 0.25, "shuffle": False, "seed": 1}
    assert data_path(told, llm) == "other.json"
    outside = LLM.load(run_dir / "model")  # the export alone still belongs to its run
    assert outside.data == llm.data
    # A DPO run records its split as shuffle_split / split_seed; its own `shuffle` reorders epochs.
    llm.data = {"path": "pairs.json", "shuffle": True, "shuffle_split": False, "split_seed": 123}
    assert split_settings(recorded, llm) == {"train_ratio": 0.85, "test_ratio": 0.1, "shuffle": False, "seed": 123}


def test_a_chat_template_that_fails_to_render_is_one_line(tmp_path: Path, capsys, monkeypatch):
    import io

    from gptlab.cli.chat import main as chat_main

    save_model(tiny(), tmp_path / "model")
    (tmp_path / "model" / "prompt.json").write_text(json.dumps(
        {"prompt_style": "broken", "chat_template": "{{ raise_exception('roles must alternate') }}", "stop": ""}))
    monkeypatch.setattr("sys.stdin", io.StringIO("hi\n"))
    assert chat_main([str(tmp_path / "model")]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1
    assert err == "gptlab-chat: error: chat template failed to render: roles must alternate\n"
