"""gptlab-eval: perplexity against a hand computation; ROUGE-L/BLEU/eos share; the judge's report."""

from __future__ import annotations

import json
import math
import socket
import threading
from pathlib import Path

import pytest
import torch
from torch.nn import functional as F

from gptlab.checkpoints import save_model
from gptlab.cli.evaluate import main
from gptlab.evaluation.text_metrics import rouge_l
from gptlab.model import GPT, GPTConfig
from gptlab.tokenizer import get_tokenizer
from test_judge import ScriptedJudge  # the same scripted HTTP judge

ROWS = [
    {"index": 0, "instruction": "Where does the cat sit?", "input": "", "output": "The cat sat on the mat.",
     "model_response": "the cat sat", "ended_with_eos": True},
    {"index": 1, "instruction": "Name a colour.", "input": "", "output": "Blue", "model_response": "Blue",
     "ended_with_eos": False},
]


@pytest.fixture
def responses(tmp_path: Path) -> Path:
    path = tmp_path / "test.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in ROWS))
    return path


def error_line(capsys, *args: str) -> str:
    assert main(list(args)) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    return lines[0]


def test_rouge_l_is_the_lcs_f_measure():
    # LCS "the cat sat" = 3 words: precision 3/3, recall 3/6, F = 2/3.
    assert rouge_l(["the cat sat", "x"], ["The cat sat on the mat.", "y"]) == pytest.approx([2 / 3, 0.0])


def test_responses_report_rouge_bleu_and_the_share_that_stopped(responses: Path, capsys):
    assert main(["responses", str(responses)]) == 0
    summary = json.loads(responses.with_suffix(".eval.json").read_text())
    assert summary["rougeL"] == pytest.approx((2 / 3 + 1.0) / 2)
    assert summary["eos_share"] == 0.5 and summary["records"] == 2
    assert 0.0 <= summary["bleu4"] <= 1.0
    per_record = [json.loads(line) for line in responses.with_suffix(".eval.jsonl").read_text().splitlines()]
    assert [r["rougeL"] for r in per_record] == pytest.approx([2 / 3, 1.0])
    assert "| rougeL | 0.8333 |" in responses.with_suffix(".eval.md").read_text()


def test_judge_scores_unscored_records_and_the_histogram(responses: Path, capsys, monkeypatch):
    server = ScriptedJudge()
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()
    try:
        # Record 0 gets "90"; record 1 never gets a number (1 + 1 retry); one request at a time.
        server.script.extend([("reply", "90"), ("reply", "Fine."), ("reply", "Fine.")])
        monkeypatch.setenv("GPTLAB_JUDGE_URL", server.url)
        assert main(["responses", str(responses), "--judge", "--judge-retries", "1", "--judge-concurrency", "1",
                     "--judge-timeout", "5"]) == 0
    finally:
        server.shutdown()
        server.server_close()
    summary = json.loads(responses.with_suffix(".eval.json").read_text())
    assert (summary["judge_mean"], summary["judge_scored"], summary["judge_unscored"]) == (90.0, 1, 1)
    per_record = [json.loads(line) for line in responses.with_suffix(".eval.jsonl").read_text().splitlines()]
    assert [r["judge_score"] for r in per_record] == [90, None]
    assert per_record[1]["judge_reply"] == "Fine." and per_record[1]["judge_attempts"] == 2
    assert "no single integer" in per_record[1]["judge_error"]
    assert responses.with_suffix(".judge.png").stat().st_size > 1000
    report = responses.with_suffix(".eval.md").read_text()
    assert "| judge_unscored | 1 |" in report and "test.judge.png" in report


def test_an_unreachable_judge_stops_with_one_line_naming_its_url(responses: Path, capsys, monkeypatch):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    monkeypatch.setenv("GPTLAB_JUDGE_URL", f"http://127.0.0.1:{port}")
    line = error_line(capsys, "responses", str(responses), "--judge", "--judge-timeout", "2")
    assert f"http://127.0.0.1:{port}/api/chat" in line
    assert not responses.with_suffix(".eval.json").exists()  # no report that looks complete


def test_bad_responses_files_are_one_clear_line(tmp_path: Path, capsys):
    assert "responses file not found" in error_line(capsys, "responses", str(tmp_path / "none.jsonl"))
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"output": "x"}\n')
    assert "line 1 has no 'output' and 'model_response'" in error_line(capsys, "responses", str(bad))


def tiny_export(tmp_path: Path) -> tuple[Path, GPT]:
    torch.manual_seed(0)
    model = GPT(GPTConfig.from_dict({"preset": "nano", "context_length": 128})).eval()
    return save_model(model, tmp_path / "model"), model


@pytest.mark.slow
def test_perplexity_of_a_text_file_is_exp_of_the_mean_loss(tmp_path: Path, capsys):
    directory, model = tiny_export(tmp_path)
    text = tmp_path / "text.txt"
    text.write_text("Every effort moves you forward, one small step at a time.")
    assert main(["perplexity", str(directory), "--text", str(text)]) == 0
    ids = torch.tensor([get_tokenizer("gpt2").encode(text.read_text())])
    with torch.no_grad():
        loss = F.cross_entropy(model(ids[:, :-1])[0], ids[0, 1:])
    assert f"perplexity {math.exp(float(loss)):.4f}" in capsys.readouterr().out
    assert "text file not found" in error_line(capsys, "perplexity", str(directory), "--text", str(tmp_path / "no"))


@pytest.mark.slow
def test_perplexity_on_an_instruction_split(tmp_path: Path, capsys, shared_data: Path):
    directory, _ = tiny_export(tmp_path)
    data = str(shared_data / "instruction-data.json")
    assert main(["perplexity", str(directory), "--data", data, "--split", "val", "--batch-size", "16"]) == 0
    full = capsys.readouterr().out
    assert main(["perplexity", str(directory), "--data", data, "--split", "val", "--mask-prompt"]) == 0
    masked = capsys.readouterr().out
    tokens = [int(out.split(" over ")[1].split()[0]) for out in (full, masked)]
    assert tokens[1] < tokens[0]  # responses only
    assert "the val split" in full and "responses only" in masked


def test_perplexity_scores_in_eval_mode_and_gives_the_training_mode_back():
    import torch

    from gptlab.evaluation.perplexity import batches_perplexity
    from gptlab.model import GPT, GPTConfig

    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=50, context_length=8, emb_dim=16, n_heads=2, n_layers=1, drop_rate=0.5)).train()
    ids = torch.randint(0, 50, (2, 8))
    with torch.no_grad():
        expected = torch.nn.functional.cross_entropy(model.eval()(ids[:, :-1]).flatten(0, 1), ids[:, 1:].flatten())
    model.train()
    result = batches_perplexity(model, [(ids[:, :-1], ids[:, 1:])])
    assert result.loss == pytest.approx(float(expected), rel=1e-5)  # dropout off while scoring
    assert model.training and all(m.training for m in model.modules())
