"""``gptlab-generate`` and ``gptlab-chat``, run in-process on tiny exported models."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
import torch

from gptlab import GPT, GPTConfig, generate
from gptlab.checkpoints import load_model, save_model
from gptlab.cli.chat import main as chat_main
from gptlab.cli.generate import main as generate_main
from gptlab.inference import LLM, StopStreamer, TextStreamer
from gptlab.prompts import ALPACA, extract_response, format_example, format_input, format_prompt
from gptlab.tokenizer import get_tokenizer


def export(directory: Path, vocab_size: int) -> Path:
    torch.manual_seed(0)
    model = GPT(GPTConfig.from_preset("nano", vocab_size=vocab_size))
    with torch.no_grad():
        for param in model.parameters():
            param.normal_(0.0, 0.2)
    return save_model(model, directory)


@pytest.fixture(scope="module")
def bpe_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export(tmp_path_factory.mktemp("bpe") / "model", 50257)


@pytest.fixture(scope="module")
def byte_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export(tmp_path_factory.mktemp("byte") / "model", 257)


def reference(model_dir: Path, tokenizer_name: str, prompt: str, n: int) -> str:
    tokenizer = get_tokenizer(tokenizer_name)
    ids = torch.tensor([tokenizer.encode(prompt)])
    out = generate(load_model(model_dir), ids, n)
    return tokenizer.decode(out[0].tolist())


@pytest.mark.parametrize("stream", ["--stream", "--no-stream"])
def test_generate_prints_the_greedy_continuation(bpe_model: Path, capsys: pytest.CaptureFixture, stream: str):
    code = generate_main([str(bpe_model), "--prompt", "Every effort moves you", "--max-new-tokens", "12",
                          "--no-eos", stream])
    out, err = capsys.readouterr()
    assert code == 0 and err == ""
    assert out == reference(bpe_model, "gpt2", "Every effort moves you", 12) + "\n"


def test_generate_byte_model_picks_the_byte_tokenizer(byte_model: Path, capsys: pytest.CaptureFixture):
    assert generate_main([str(byte_model), "--prompt", "Héllo", "--max-new-tokens", "20", "--no-eos",
                          "--no-echo"]) == 0
    out = capsys.readouterr().out
    expected = reference(byte_model, "byte", "Héllo", 20)[len("Héllo"):]
    assert out == expected + "\n"


def test_generate_never_emits_padded_vocabulary_rows(tmp_path: Path, capsys: pytest.CaptureFixture):
    # A byte model whose vocabulary is padded from 257 to 264 rows, with the padded rows made
    # the most likely (the final LayerNorm outputs all ones, so each logit is its row's sum).
    torch.manual_seed(0)
    model = GPT(GPTConfig.from_preset("nano", vocab_size=264))
    with torch.no_grad():
        model.final_norm.scale.zero_()
        model.final_norm.shift.fill_(1.0)
        model.out_head.weight[257:] = 10.0
    model_dir = save_model(model, tmp_path / "model")
    assert generate_main([str(model_dir), "--tokenizer", "byte", "--prompt", "abc", "--max-new-tokens", "6",
                          "--no-eos", "--no-echo"]) == 0
    best_byte = int(model.out_head.weight[:257].sum(dim=-1).argmax())
    assert capsys.readouterr().out == get_tokenizer("byte").decode([best_byte] * 6) + "\n"


def test_generate_seeded_sampling_is_reproducible(bpe_model: Path, capsys: pytest.CaptureFixture):
    args = [str(bpe_model), "--prompt", "Hello", "--max-new-tokens", "15", "--temperature", "1.0",
            "--top-k", "50", "--top-p", "0.95", "--no-eos"]
    generate_main([*args, "--seed", "7"])
    first = capsys.readouterr().out
    generate_main([*args, "--seed", "7"])
    assert capsys.readouterr().out == first
    generate_main([*args, "--seed", "8"])
    assert capsys.readouterr().out != first


def test_generate_reads_the_prompt_from_stdin(bpe_model: Path, capsys: pytest.CaptureFixture,
                                               monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr("sys.stdin", io.StringIO("Every effort moves you"))
    assert generate_main([str(bpe_model), "--max-new-tokens", "5", "--no-eos"]) == 0
    assert capsys.readouterr().out == reference(bpe_model, "gpt2", "Every effort moves you", 5) + "\n"


@pytest.mark.parametrize(
    "args,expected",
    [
        (["/no/such/model", "--prompt", "x"], "does not exist"),
        (["gpt5", "--prompt", "x"], "valid names: gpt2, gpt2-medium"),
        (["{byte}", "--prompt", "x", "--tokenizer", "gpt2"], "tokenizer 'gpt2' has 50257 ids"),
        (["{byte}", "--prompt", "x", "--top-p", "1.5"], "top_p must lie in"),
    ],
)
def test_generate_errors_are_one_line_and_exit_2(byte_model: Path, capsys: pytest.CaptureFixture,
                                                 args: list[str], expected: str):
    args = [a.format(byte=byte_model) for a in args]
    assert generate_main(args) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith("gptlab-generate: error: ") and err.count("\n") == 1
    assert expected in err


def test_text_streamer_holds_back_split_utf8_characters():
    text = "naïve café, 日本語 and 🤖🤖 emoji"
    for name in ("gpt2", "byte"):
        tokenizer = get_tokenizer(name)
        streamer = TextStreamer(tokenizer)
        pieces = [streamer.push(i) for i in tokenizer.encode(text)] + [streamer.flush()]
        assert "".join(pieces) == text
        assert not any("\ufffd" in piece for piece in pieces)
    # the byte tokenizer splits every multi-byte character across tokens
    streamer = TextStreamer(get_tokenizer("byte"))
    assert [streamer.push(b) for b in "🤖".encode()] == ["", "", "", "🤖"]


def test_stop_streamer_cuts_at_the_stop_string_across_pieces():
    def run(pieces: list[str]) -> str:
        stopper = StopStreamer(["\n###"], context="\n")
        out = [stopper.push(p) for p in pieces if not stopper.stopped]
        return "".join(out) + stopper.flush()

    assert run(["The answer", " is 4", ".\n", "\n#", "## Instruction"]) == "The answer is 4."
    assert run(["###", " Response"]) == ""  # a response that starts with a new section is empty
    assert run(["a #", "tag", "\n", "b  \n"]) == "a #tag\nb"  # '#' inside a line is text


def test_prompt_format_is_the_books():
    entry = {"instruction": "Rewrite the sentence.", "input": "The sky is blue.", "output": "Blue is the sky."}
    assert format_input(entry) == (
        "Below is an instruction that describes a task. Write a response that appropriately completes "
        "the request.\n\n### Instruction:\nRewrite the sentence.\n\n### Input:\nThe sky is blue."
    )
    assert "### Input" not in format_input({"instruction": "Say hi.", "input": ""})
    assert format_prompt("Say hi.") == format_input({"instruction": "Say hi.", "input": ""}) + "\n\n### Response:\n"
    assert format_example(entry).endswith("\n\n### Response:\nBlue is the sky.")
    assert extract_response(format_example(entry) + "\n\n### Instruction:\nmore") == "Blue is the sky."


def test_chat_answers_each_piped_line(bpe_model: Path, capsys: pytest.CaptureFixture,
                                      monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr("sys.stdin", io.StringIO("Name a color.\n\nName an animal.\n"))
    prompts: list[str] = []

    def scripted(llm, prompt_ids, sampling, stop, generator):
        prompts.append(llm.tokenizer.decode(prompt_ids))
        yield from ["Blue", ".", "\n\n", "###", " Instruction:"] if len(prompts) % 2 else ["A", " cat", "."]

    monkeypatch.setattr(LLM, "stream_text", scripted)
    assert chat_main([str(bpe_model)]) == 0
    assert capsys.readouterr().out == "Blue.\nA cat.\n"
    # Turn after turn: the second prompt holds the first exchange, as the Alpaca format writes it.
    first = {"role": "user", "content": "Name a color."}
    assert prompts == [format_prompt("Name a color."),
                       ALPACA.render([first, {"role": "assistant", "content": "Blue."},
                                      {"role": "user", "content": "Name an animal."}])]
    assert prompts[1] == format_prompt("Name a color.") + "Blue.\n\n### Instruction:\nName an animal.\n\n### Response:\n"
    monkeypatch.setattr("sys.stdin", io.StringIO("Name a color.\n\nName an animal.\n"))
    assert chat_main([str(bpe_model), "--no-history"]) == 0
    assert prompts[2:] == [format_prompt("Name a color."), format_prompt("Name an animal.")]


def test_chat_runs_a_real_model_end_to_end(byte_model: Path, capsys: pytest.CaptureFixture,
                                           monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr("sys.stdin", io.StringIO("Say something.\n"))
    assert chat_main([str(byte_model), "--max-new-tokens", "10", "--no-eos"]) == 0
    out = capsys.readouterr().out
    prompt = format_prompt("Say something.")
    continuation = reference(byte_model, "byte", prompt, 10)[len(prompt):]
    stopper = StopStreamer([ALPACA.stop], context="\n")
    assert out == stopper.push(continuation) + stopper.flush() + "\n"


def test_chat_error_is_one_line(capsys: pytest.CaptureFixture):
    assert chat_main(["/no/such/model"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("gptlab-chat: error: ") and err.count("\n") == 1
