"""gptlab-respond: batched left-padded generation equals one-by-one generation; resumable JSONL; clear errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from gptlab.callbacks.prompt_style import write_prompt_style
from gptlab.runs import RunFiles
from gptlab.checkpoints import save_model
from gptlab.cli.respond import main
from gptlab.generate import generate
from gptlab.model import GPT, GPTConfig
from gptlab.inference import LLM
from gptlab.prompts import get_style
from gptlab.tokenizer import get_tokenizer

RECORDS = [
    {"instruction": "Name the capital of France.", "input": "", "output": "Paris."},
    {"instruction": "Convert to passive voice.", "input": "The cat chased the mouse.", "output": "The mouse was chased."},
    {"instruction": "Give a synonym.", "input": "happy", "output": "joyful"},
    {"instruction": "Add the numbers and explain each step of the addition.", "input": "2, 3", "output": "5"},
    {"instruction": "Spell 'cat' backwards.", "input": "", "output": "tac"},
]


def tiny_model(seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    return GPT(GPTConfig.from_dict({"preset": "nano", "context_length": 128})).eval()


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    directory = save_model(tiny_model(), tmp_path / "run" / "model")
    write_prompt_style(directory.parent, "phi3")  # recorded in the run directory
    return directory


@pytest.fixture
def data_file(tmp_path: Path) -> Path:
    path = tmp_path / "records.json"
    path.write_text(json.dumps(RECORDS))
    return path


def respond(model_dir: Path, data_file: Path, out: Path, *extra: str) -> int:
    return main([str(model_dir), "--data", str(data_file), "--split", "all", "--out", str(out),
                 "--max-new-tokens", "6", "--no-progress", *extra])


def rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.slow
def test_batched_responses_equal_one_by_one_greedy_generation(model_dir: Path, data_file: Path, tmp_path: Path):
    out = tmp_path / "responses.jsonl"
    assert respond(model_dir, data_file, out, "--batch-size", "3") == 0
    got = rows(out)
    model, tokenizer, style = tiny_model(), get_tokenizer("gpt2"), get_style("phi3")
    for i, record in enumerate(RECORDS):
        ids = torch.tensor([tokenizer.encode(style.prompt(record))])
        new = generate(model, ids, 6, use_cache=False)[0, ids.shape[1]:].tolist()  # no padding, no cache
        expected = style.extract_response(tokenizer.decode(new))
        assert got[i]["model_response"] == expected
        assert got[i]["index"] == i and got[i]["instruction"] == record["instruction"]
        assert got[i]["ended_with_eos"] is (tokenizer.eot_id in new)
    assert got[0]["generation"] == {"model": str(model_dir), "prompt_style": "phi3", "max_new_tokens": 6,
                                    "temperature": 0.0, "top_k": None, "top_p": None, "seed": None}


def test_a_model_that_stops_at_once_gives_empty_responses_ending_with_eos(tmp_path: Path, data_file: Path):
    model = GPT(GPTConfig.from_dict({"preset": "nano", "context_length": 128, "tie_embeddings": False}))
    with torch.no_grad():  # the final norm outputs ones; only <|endoftext|>'s head row sees them
        model.final_norm.scale.zero_()
        model.final_norm.shift.fill_(1.0)
        model.out_head.weight.zero_()
        model.out_head.weight[50256] = 1.0
    out = tmp_path / "stop.jsonl"
    assert respond(save_model(model, tmp_path / "stopper"), data_file, out) == 0
    assert [(r["model_response"], r["ended_with_eos"], r["response_tokens"]) for r in rows(out)] == [("", True, 0)] * 5


@pytest.mark.slow
def test_a_rerun_after_a_crash_answers_only_the_missing_records(model_dir: Path, data_file: Path, tmp_path: Path):
    out = tmp_path / "responses.jsonl"
    assert respond(model_dir, data_file, out, "--batch-size", "2") == 0
    complete = out.read_text().splitlines()
    # A crash mid-write: two complete rows and half of the third.
    out.write_text("\n".join(complete[:2]) + "\n" + complete[2][:20])
    assert respond(model_dir, data_file, out, "--batch-size", "2") == 0
    assert out.read_text().splitlines() == complete
    assert respond(model_dir, data_file, out) == 0  # nothing left: unchanged
    assert out.read_text().splitlines() == complete


def test_the_prompt_style_is_read_from_the_run(model_dir: Path):
    assert RunFiles.find(model_dir).prompt_record()["prompt_style"] == "phi3"
    assert RunFiles.find(model_dir.parent).prompt_record()["prompt_style"] == "phi3"
    assert RunFiles.find("gpt2").prompt_record() is None
    assert LLM.load(model_dir).style == get_style("phi3")


def test_bad_input_is_one_clear_line(model_dir: Path, data_file: Path, tmp_path: Path, capsys):
    def error(*args: str) -> str:
        assert main(list(args)) == 2
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1, lines
        return lines[0]

    out = str(tmp_path / "o.jsonl")
    assert "data file not found" in error(str(model_dir), "--data", str(tmp_path / "none.json"), "--out", out)
    assert "does not exist" in error(str(tmp_path / "nomodel"), "--data", str(data_file), "--split", "all", "--out", out)
    bad = tmp_path / "bad.json"
    bad.write_text("[{")
    assert "is not valid JSON" in error(str(model_dir), "--data", str(bad), "--out", out)
    assert "max_new_tokens must be >= 0" in error(str(model_dir), "--data", str(data_file), "--split", "all",
                                                    "--out", out, "--max-new-tokens", "-1")
    respond(model_dir, data_file, tmp_path / "o.jsonl")
    message = error(str(model_dir), "--data", str(data_file), "--split", "all", "--out", out,
                    "--max-new-tokens", "9", "--no-progress")
    assert "holds responses generated with other settings" in message


def test_chat_uses_the_prompt_style_recorded_with_the_model(model_dir: Path, capsys, monkeypatch):
    import io

    from gptlab.cli import chat

    monkeypatch.setattr("sys.stdin", io.StringIO("Name a color.\n"))
    prompts: list[str] = []

    def scripted(llm, prompt_ids, sampling, stop, generator):
        prompts.append(llm.tokenizer.decode(prompt_ids))
        yield from ["Blue", ".", "\n", "<|user|>", "\nmore"]

    monkeypatch.setattr(LLM, "stream_text", scripted)
    assert chat.main([str(model_dir)]) == 0
    assert capsys.readouterr().out == "Blue.\n"
    assert prompts == [get_style("phi3").prompt({"instruction": "Name a color.", "input": ""})]
