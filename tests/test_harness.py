"""The lm-evaluation-harness backend ``gptlab`` and gptlab's offline tasks, against the harness's own
``hf`` backend (``HFLM`` on ``transformers``) as the independent reference.

Each model is scored twice through ``simple_evaluate`` on every shipped task: by ``gptlab`` on the
gptlab source, and by ``hf`` on gptlab's Hugging Face export of the same weights. Both must give
the same accuracy, log-likelihoods within 1e-4 per request, the same greedy generations and the
same rolling perplexity: for two small random models (GPT-2-shaped with GPT-2's tokenizer, read by
tiktoken on gptlab's side and by ``transformers`` on the other; Llama-shaped with SmolLM2's
tokenizer) and for the real SmolLM2-135M-Instruct (its GGUF, dequantised; fp32).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

import gptlab.harness  # noqa: F401  (registers the model "gptlab")
from gptlab import GPT, GPTConfig
from gptlab.cli.evaluate import main as eval_main
from gptlab.cli.export import export
from gptlab.data.instruction import split_instruction_records
from gptlab.data.sms_spam import SMSSpamDataModule
from gptlab.harness.backend import GptlabLM
from gptlab.harness.run import task_manager
from gptlab.harness.suite import TASKS_DIR, data_files, task_files
from gptlab.inference import LLM
from gptlab.prompts import ALPACA
from gptlab.tokenizer import get_tokenizer
from gptlab.tokenizer.bpe import gpt2_bpe_files
from lm_eval import simple_evaluate
from lm_eval.api.instance import Instance
from lm_eval.models.huggingface import HFLM

SHIPPED = ("gptlab_sms_spam", "gptlab_verdict", "gptlab_instruction")
SMOLLM2 = "smollm2-135m-instruct"
#: Per-request log-likelihood tolerance (the issue's acceptance).
TOLERANCE = 1e-4


# ---------------------------------------------------------------- models and data


def randomised(model: GPT, seed: int = 0) -> GPT:
    """Random weights far from uniform (norm scales in 0.5..1.5, everything else N(0, 0.1)), so greedy
    choices are not near-ties that float noise could flip."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            param.uniform_(0.5, 1.5) if "norm" in name and name.endswith("weight") else param.normal_(0, 0.1)
    return model.eval()


def write_pair(llm: LLM, root: Path) -> tuple[Path, Path]:
    """``llm`` in gptlab's own export (``ours``) and as gptlab's Hugging Face export (``hf``)."""
    ours, hf = root / "gptlab", root / "hf"
    export(llm, "gptlab", "f32", ours)
    export(llm, "hf", "f32", hf)
    if not (hf / "tokenizer.json").is_file():  # GPT-2's BPE files, read by transformers' own GPT-2 tokenizer
        encoder, merges = gpt2_bpe_files()
        shutil.copy(encoder, hf / "vocab.json")
        shutil.copy(merges, hf / "merges.txt")
    return ours, hf


@pytest.fixture(scope="module")
def random_gpt2(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    cfg = GPTConfig.from_preset("micro", n_layers=2, emb_dim=64, n_heads=4, context_length=128)
    tok = get_tokenizer("gpt2")
    return write_pair(LLM(randomised(GPT(cfg)), tok, ALPACA, (tok.eot_id,), "random-gpt2"),
                      tmp_path_factory.mktemp("random-gpt2"))


@pytest.fixture(scope="module")
def random_llama(smollm2: Any, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    cfg = GPTConfig.from_preset("llama-micro", vocab_size=smollm2.vocab_size, n_layers=2, emb_dim=64,
                                hidden_dim=172, context_length=128)
    return write_pair(LLM(randomised(GPT(cfg)), smollm2, ALPACA, smollm2.stop_ids, "random-llama"),
                      tmp_path_factory.mktemp("random-llama"))


@pytest.fixture(scope="module")
def short_data(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The shared data with the Verdict cut to its first 1,500 characters: one quick rolling
    document (several windows of the random models' 128-token context)."""
    folder = tmp_path_factory.mktemp("data")
    for name in ("SMSSpamCollection", "instruction-data.json"):
        (folder / name).symlink_to(shared_data / name)
    (folder / "the-verdict.txt").write_text((shared_data / "the-verdict.txt").read_text(encoding="utf-8")[:1500],
                                            encoding="utf-8")
    return folder


def both_backends(ours: Any, hf: Path, data: Path, tmp_path: Path, limit: int, max_gen_toks: int,
                  batch_size: int = 4) -> tuple[dict, dict]:
    """The harness's results (with samples) for the shipped tasks: ``gptlab`` on ``ours``, ``hf`` on ``hf``."""
    manager, _ = task_manager(tmp_path, data, SHIPPED)
    options = dict(tasks=list(SHIPPED), task_manager=manager, limit=limit, log_samples=True,
                   gen_kwargs={"max_gen_toks": max_gen_toks}, bootstrap_iters=0)
    model = ours if isinstance(ours, GptlabLM) else GptlabLM(str(ours), batch_size=batch_size, device="cpu")
    theirs = HFLM(pretrained=str(hf), dtype="float32", device="cpu", batch_size=batch_size)
    return simple_evaluate(model=model, **options), simple_evaluate(model=theirs, **options)


def assert_same_results(ours: dict, theirs: dict) -> dict[str, float]:
    """The acceptance checks; returns the largest differences seen, for the record."""
    seen = {}
    # Accuracy and ROUGE-L exactly; perplexities to float noise.
    assert ours["results"]["gptlab_sms_spam"]["acc,none"] == theirs["results"]["gptlab_sms_spam"]["acc,none"]
    assert ours["results"]["gptlab_instruction"]["rougeL,none"] == theirs["results"]["gptlab_instruction"]["rougeL,none"]
    for metric in ("word_perplexity,none", "byte_perplexity,none", "bits_per_byte,none"):
        assert math.isclose(ours["results"]["gptlab_verdict"][metric], theirs["results"]["gptlab_verdict"][metric],
                            rel_tol=1e-6)
    # Per request: both choices' log-likelihoods and greedy flags, each generation.
    spam = zip(ours["samples"]["gptlab_sms_spam"], theirs["samples"]["gptlab_sms_spam"], strict=True)
    differences = []
    for a, b in spam:
        assert a["doc"] == b["doc"] and a["arguments"] == b["arguments"]
        for (ll_a, greedy_a), (ll_b, greedy_b) in zip([r[0] for r in a["resps"]], [r[0] for r in b["resps"]], strict=True):
            differences.append(abs(ll_a - ll_b))
            assert greedy_a == greedy_b
    seen["loglikelihood"] = max(differences)
    assert seen["loglikelihood"] < TOLERANCE
    texts = [(a["resps"][0][0], b["resps"][0][0]) for a, b in
             zip(ours["samples"]["gptlab_instruction"], theirs["samples"]["gptlab_instruction"], strict=True)]
    assert all(a == b for a, b in texts), texts
    assert any(a.strip() for a, _ in texts)  # something was generated
    (rolling_a,), (rolling_b,) = ([s["resps"][0][0] for s in run["samples"]["gptlab_verdict"]] for run in (ours, theirs))
    seen["rolling"] = abs(rolling_a - rolling_b)
    assert seen["rolling"] < TOLERANCE * max(1.0, abs(rolling_a) / 1000)  # a sum over thousands of tokens
    return seen


# ---------------------------------------------------------------- parity


@pytest.mark.parametrize("pair", ["random_gpt2", "random_llama"])
def test_random_models_score_as_the_harness_hf_backend_scores_their_export(pair: str, request: pytest.FixtureRequest,
                                                                          short_data: Path, tmp_path: Path):
    ours, hf = request.getfixturevalue(pair)
    assert_same_results(*both_backends(ours, hf, short_data, tmp_path, limit=8, max_gen_toks=16))


@pytest.fixture(scope="module")
def smollm2_pair(smollm2_gguf: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[GptlabLM, Path]:
    llm = LLM.load(SMOLLM2, device="cpu")  # loaded once: the backend and the export share it
    hf = tmp_path_factory.mktemp("smollm2") / "hf"
    export(llm, "hf", "f32", hf)
    return GptlabLM(llm, batch_size=8), hf


@pytest.mark.slow
def test_smollm2_scores_as_the_harness_hf_backend_scores_its_export(smollm2_pair: tuple[GptlabLM, Path],
                                                                    short_data: Path, tmp_path: Path):
    ours, hf = smollm2_pair
    results = both_backends(ours, hf, short_data, tmp_path, limit=6, max_gen_toks=24, batch_size=8)
    assert_same_results(*results)
    # The real model reads English: far below a random model's byte perplexity of about 16.
    assert results[0]["results"]["gptlab_verdict"]["byte_perplexity,none"] < 3.0


@pytest.mark.slow
def test_smollm2_chat_template_is_the_one_hf_applies(smollm2_pair: tuple[GptlabLM, Path]):
    """``--apply_chat_template``: the model's prompt format renders a conversation as ``HFLM`` does."""
    ours, hf = smollm2_pair
    theirs = HFLM(pretrained=str(hf), dtype="float32", device="cpu")
    chat = [{"role": "user", "content": "What is the capital of France?"}]
    assert ours.apply_chat_template(chat) == theirs.apply_chat_template(chat)
    assert ours.apply_chat_template(chat).endswith("<|im_start|>assistant\n")


#: One or two documents in the fields each stock task's YAML reads (its data cannot be downloaded here).
STOCK_DOCS = {
    "lambada_openai": [{"text": "The cat sat on the mat and looked at the dog"},
                       {"text": "She opened the door and walked into the garden"}],
    "arc_easy": [{"id": "1", "question": "Which of these is a liquid at room temperature?",
                  "choices": {"text": ["iron", "water", "salt"], "label": ["A", "B", "C"]}, "answerKey": "B"},
                 {"id": "2", "question": "What do plants need to make food?",
                  "choices": {"text": ["sunlight", "sand", "plastic"], "label": ["A", "B", "C"]}, "answerKey": "A"}],
    "hellaswag": [{"ind": 1, "activity_label": "Cooking", "ctx_a": "A man cracks two eggs into a bowl.",
                   "ctx_b": "he", "ctx": "", "endings": ["whisks them with a fork.", "paints the wall.",
                                                         "drives to work.", "sings a song."],
                   "source_id": "x", "split": "val", "split_type": "indomain", "label": "0"}],
}


def stock_task(name: str, folder: Path) -> dict[str, Any]:
    """The harness's own YAML of ``name``, unchanged but for where its documents come from."""
    import lm_eval.tasks
    from lm_eval.tasks._yaml_loader import load_yaml  # the loader the harness's own CLI uses

    (path,) = Path(lm_eval.tasks.__file__).parent.rglob(f"{name}.yaml")
    config = load_yaml(path)
    data = folder / f"{name}.json"
    data.write_text(json.dumps(STOCK_DOCS[name]), encoding="utf-8")
    config.pop("tag", None)
    return {**config, "dataset_path": "json", "dataset_name": None,
            "dataset_kwargs": {"data_files": {split: str(data) for split in ("train", "validation", "test")}}}


def test_stock_tasks_score_as_the_hf_backend_scores_them(random_gpt2: tuple[Path, Path], tmp_path: Path):
    """lambada_openai, arc_easy and hellaswag, their own prompts and metrics on local documents."""
    from lm_eval.tasks import TaskManager

    tasks = [stock_task(name, tmp_path) for name in STOCK_DOCS]
    options = dict(tasks=tasks, task_manager=TaskManager(include_defaults=False), log_samples=True, bootstrap_iters=0)
    ours = simple_evaluate(model=GptlabLM(str(random_gpt2[0]), batch_size=4, device="cpu"), **options)
    theirs = simple_evaluate(model=HFLM(pretrained=str(random_gpt2[1]), dtype="float32", device="cpu", batch_size=4),
                             **options)
    for name in STOCK_DOCS:
        for metric, value in ours["results"][name].items():
            if isinstance(value, float) and "stderr" not in metric:
                assert math.isclose(value, theirs["results"][name][metric], rel_tol=1e-6), (name, metric)
        for a, b in zip(ours["samples"][name], theirs["samples"][name], strict=True):
            assert a["arguments"] == b["arguments"]
            for (ll_a, greedy_a), (ll_b, greedy_b) in zip([r[0] for r in a["resps"]], [r[0] for r in b["resps"]]):
                assert abs(ll_a - ll_b) < TOLERANCE and greedy_a == greedy_b
    assert ours["results"]["hellaswag"]["sample_len"] == 1 and len(ours["samples"]["arc_easy"][0]["resps"]) == 3


def test_context_and_continuation_are_sliced_as_the_harness_slices_them(random_llama: tuple[Path, Path]):
    """Trailing spaces move to the continuation, an empty context becomes the prefix token (BOS), a
    continuation that starts with that token keeps only the rest, and a context too long for the
    window is cut from the left: the same tokens and scores as ``HFLM``'s."""
    ours, hf = random_llama
    model, reference = GptlabLM(str(ours), batch_size=3), HFLM(pretrained=str(hf), dtype="float32", device="cpu",
                                                                 batch_size=3)
    long_context = " ".join(["word"] * 300)  # beyond the 128-token context
    pairs = [("The cat sat on the ", "mat."), ("", "Hello there"), ("", "<|im_start|>user"), ("Question:", " yes"),
             (long_context, " end")]
    requests = [Instance("loglikelihood", {}, pair, i) for i, pair in enumerate(pairs)]
    assert model.prefix_token_id == reference.prefix_token_id == 1  # <|im_start|>, the tokenizer's BOS
    got, expected = model.loglikelihood(requests, disable_tqdm=True), reference.loglikelihood(requests, disable_tqdm=True)
    for (a, greedy_a), (b, greedy_b) in zip(got, expected, strict=True):
        assert abs(a - b) < TOLERANCE and greedy_a == greedy_b


def test_rolling_windows_predict_every_token_once(random_gpt2: tuple[Path, Path], verdict_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch):
    model = GptlabLM(str(random_gpt2[0]), max_length=50)
    text = verdict_path.read_text(encoding="utf-8")[:3000]
    seen: list[tuple[list[int], list[int]]] = []
    score = model._loglikelihood_tokens

    def record(requests, **kwargs):
        seen.extend((context, continuation) for _, context, continuation in requests)
        return score(requests, **kwargs)

    monkeypatch.setattr(model, "_loglikelihood_tokens", record)
    (total,) = model.loglikelihood_rolling([Instance("loglikelihood_rolling", {}, (text,), 0)], disable_tqdm=True)
    tokens = model.tok_encode(text)
    assert [t for _, continuation in seen for t in continuation] == tokens  # each token once, in order
    assert all(len(context) + len(continuation) <= 51 for context, continuation in seen)  # one window each
    assert len(seen) > 10 and seen[0][0] == [model.prefix_token_id]
    # The sum over windows is the model's own cross-entropy over the same windows.
    expected = 0.0
    for context, continuation in seen:
        ids = torch.tensor([(context + continuation)[:-1]])
        logprobs = torch.log_softmax(model.llm.model(ids)[0, -len(continuation):], dim=-1)
        expected += float(logprobs.gather(1, torch.tensor(continuation)[:, None]).sum())
    assert abs(total - expected) < 1e-3


def test_generate_until_stops_at_until_and_at_max_gen_toks(random_llama: tuple[Path, Path]):
    ours, hf = random_llama
    model, reference = GptlabLM(str(ours), batch_size=2), HFLM(pretrained=str(hf), dtype="float32", device="cpu",
                                                                 batch_size=2)
    prompts = [ALPACA.prompt({"instruction": "Name a colour."}), "Once upon a time"]

    def requests(settings: dict[str, Any]) -> list[Instance]:
        return [Instance("generate_until", {}, (p, settings), i) for i, p in enumerate(prompts)]

    free = model.generate_until(requests({"max_gen_toks": 12, "do_sample": False}), disable_tqdm=True)
    assert free == reference.generate_until(requests({"max_gen_toks": 12, "do_sample": False}), disable_tqdm=True)
    assert 8 <= len(model.tok_encode(free[0])) <= 12  # a random model writes to the limit (text re-encoded)
    cut = free[0].split()[2]  # a word inside the first generation
    settings = {"until": [cut], "max_gen_toks": 12, "do_sample": False}
    stopped = model.generate_until(requests(settings), disable_tqdm=True)
    assert stopped[0] == free[0].split(cut)[0] and len(stopped[0]) < len(free[0])
    assert stopped == reference.generate_until(requests(settings), disable_tqdm=True)


# ---------------------------------------------------------------- the tasks' documents


def test_spam_task_reads_the_books_test_split(shared_data: Path, tmp_path: Path):
    task = task_manager(tmp_path, shared_data, SHIPPED)[0].load(["gptlab_sms_spam"])["tasks"]["gptlab_sms_spam"]
    docs = task.test_docs()
    test = SMSSpamDataModule(path=str(shared_data / "SMSSpamCollection")).load_frames()["test"]
    assert [d["text"] for d in docs] == test["text"].tolist() and [d["label"] for d in docs] == test["label"].tolist()
    assert len(docs) == 300 and task.doc_to_choice(docs[0]) == ["no", "yes"]


def test_instruction_task_reads_gptlabs_test_split_in_alpaca(shared_data: Path, tmp_path: Path):
    task = task_manager(tmp_path, shared_data, SHIPPED)[0].load(["gptlab_instruction"])["tasks"]["gptlab_instruction"]
    docs = list(task.test_docs())
    records = json.loads((shared_data / "instruction-data.json").read_text(encoding="utf-8"))
    assert docs == split_instruction_records(records)["test"] and len(docs) == 110
    assert task.doc_to_text(docs[0]) == ALPACA.prompt(docs[0])
    assert task.config.generation_kwargs["until"] == [ALPACA.stop]  # the YAML repeats gptlab's constant


def test_the_shipped_yamls_read_shared_data_and_a_data_dir_rewrites_them(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv("GPTLAB_DATA", raising=False)
    assert set(task_files()) == set(SHIPPED)
    for name, path in task_files().items():
        assert [p.parent for p in data_files(path)] == [Path("../shared/data")]
    _, copies = task_manager(tmp_path / "out", tmp_path / "elsewhere", SHIPPED)
    for name, path in task_files().items():
        assert [p.parent for p in data_files(copies / path.name)] == [(tmp_path / "elsewhere").resolve()]
    assert task_manager(tmp_path / "out2", None, SHIPPED)[1] == TASKS_DIR


# ---------------------------------------------------------------- the command lines


def test_gptlab_eval_harness_writes_results_into_the_run(random_gpt2: tuple[Path, Path], shared_data: Path,
                                                         tmp_path: Path, capsys: pytest.CaptureFixture):
    run = tmp_path / "run"
    shutil.copytree(random_gpt2[0], run / "model")  # a run directory: its model/ export
    assert eval_main(["harness", str(run), "--tasks", "gptlab_sms_spam", "--limit", "4", "--data-dir",
                      str(shared_data), "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    results = json.loads((run / "harness" / "results.json").read_text())
    accuracy = results["results"]["gptlab_sms_spam"]["acc,none"]
    assert f"gptlab_sms_spam: acc {accuracy:.4f}" in out and results["config"]["limit"] == 4
    table = (run / "harness" / "results.md").read_text()
    row = next(line for line in table.splitlines() if line.startswith("|gptlab_sms_spam"))
    assert [cell.strip() for cell in row.split("|")][5:8] == ["acc", "↑", f"{accuracy:.4g}"]


def test_gptlab_data_names_the_data_folder(random_gpt2: tuple[Path, Path], shared_data: Path, tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("GPTLAB_DATA", str(shared_data))
    monkeypatch.chdir(tmp_path)  # ../shared/data is not beside this folder: only $GPTLAB_DATA finds the file
    out = tmp_path / "out"
    assert eval_main(["harness", str(random_gpt2[0]), "--tasks", "gptlab_verdict", "--out", str(out),
                      "--device", "cpu", "--log-samples"]) == 0
    (sample,) = [json.loads(line) for line in (out / "samples" / "gptlab_verdict.jsonl").read_text().splitlines()]
    assert sample["doc"]["text"] == (shared_data / "the-verdict.txt").read_text(encoding="utf-8")


@pytest.mark.parametrize("problem, expected", [
    (["--tasks", "no_such_task"], "unknown task(s) no_such_task: gptlab's are "),
    (["--tasks", "gptlab_sms_spam", "--data-dir", "EMPTY"], "task gptlab_sms_spam reads EMPTY/SMSSpamCollection, which "
                                                            "does not exist; pass --data-dir"),
    (["--tasks", "gptlab_verdict", "--limit", "0"], "--limit must be positive, got 0.0"),
])
def test_bad_input_is_one_line(problem: list[str], expected: str, random_gpt2: tuple[Path, Path], tmp_path: Path,
                               capsys: pytest.CaptureFixture):
    empty = tmp_path / "empty"
    empty.mkdir()
    args = [str(empty.resolve()) if a == "EMPTY" else a for a in problem]
    assert eval_main(["harness", str(random_gpt2[0]), "--out", str(tmp_path / "out"), "--device", "cpu", *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("gptlab-eval: error: " + expected.replace("EMPTY", str(empty.resolve()))), err
    assert err.count("\n") == 1


def test_a_source_outside_a_run_needs_out_and_a_bad_source_is_one_line(random_gpt2: tuple[Path, Path], tmp_path: Path,
                                                                       capsys: pytest.CaptureFixture):
    assert eval_main(["harness", str(random_gpt2[0]), "--tasks", "gptlab_verdict"]) == 2
    assert capsys.readouterr().err == (f"gptlab-eval: error: {random_gpt2[0]} is not a run directory; "
                                       "pass --out DIR for the results\n")
    assert eval_main(["harness", str(tmp_path / "missing"), "--tasks", "gptlab_verdict", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("gptlab-eval: error: ") and "missing" in err and err.count("\n") == 1


def test_without_lm_eval_the_command_names_the_install(monkeypatch: pytest.MonkeyPatch, random_gpt2: tuple[Path, Path],
                                                       tmp_path: Path, capsys: pytest.CaptureFixture):
    import importlib.util

    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    assert eval_main(["harness", str(random_gpt2[0]), "--tasks", "gptlab", "--out", str(tmp_path)]) == 2
    assert capsys.readouterr().err == ("gptlab-eval: error: gptlab-eval harness needs EleutherAI's "
                                       "lm-evaluation-harness ('lm-eval'): pip install 'gptlab[harness]'\n")


@pytest.mark.slow
def test_lm_eval_command_line_scores_a_gptlab_source(random_gpt2: tuple[Path, Path], shared_data: Path, tmp_path: Path):
    """The harness's own command line, flags as lm-eval documents them, through ``gptlab-lm-eval``."""
    env = {**os.environ, "GPTLAB_DATA": str(shared_data)}
    command = [sys.executable, "-m", "gptlab.cli.harness", "--model", "gptlab", "--model_args",
               f"source={random_gpt2[0]}", "--tasks", "gptlab_sms_spam,gptlab_verdict", "--limit", "2",
               "--output_path", str(tmp_path / "out")]
    done = subprocess.run(command, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "gptlab_sms_spam" in done.stdout and "word_perplexity" in done.stdout
    (written,) = (tmp_path / "out").rglob("results_*.json")
    assert json.loads(written.read_text())["results"]["gptlab_sms_spam"]["sample_len"] == 2
