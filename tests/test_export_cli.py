"""``gptlab-export``: a model fine-tuned here leaves in every format with its tokenizer, prompt format
and stop ids, and comes back the same; the references are the source model's own logits and the
format's own prompt."""

from __future__ import annotations

from pathlib import Path

import gguf
import pytest
import safetensors
import torch

from gptlab import GPT, GPTConfig
from gptlab.callbacks.prompt_style import write_prompt_style
from gptlab.checkpoints import save_model
from gptlab.cli.export import main as export_main
from gptlab.inference import LLM
from gptlab.prompts import ALPACA, PHI3

RECORD = {"instruction": "Name a color.", "input": ""}


@pytest.fixture(scope="module")
def tuned(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A GPT-2-shaped model with GPT-2's tokenizer, recorded as tuned in the Phi-3 format."""
    torch.manual_seed(0)
    model = GPT(GPTConfig.from_dict({"preset": "nano", "context_length": 64}))
    directory = save_model(model, tmp_path_factory.mktemp("tuned") / "model")
    write_prompt_style(directory, "phi3")
    return directory


def logits(llm: LLM) -> torch.Tensor:
    ids = torch.tensor([llm.tokenizer.encode(llm.style.prompt(RECORD))])
    with torch.no_grad():
        return llm.model(ids)


@pytest.mark.parametrize("dtype", ["f32", "q8_0"])
def test_a_gguf_export_carries_the_tokenizer_the_prompt_format_and_the_stop(tuned: Path, tmp_path: Path, dtype: str):
    out = tmp_path / f"tuned.{dtype}.gguf"
    assert export_main([str(tuned), "--to", "gguf", "--dtype", dtype, "--out", str(out)]) == 0
    fields = gguf.GGUFReader(out).fields
    assert fields["tokenizer.chat_template"].contents() == PHI3.chat_template
    assert fields["tokenizer.ggml.eos_token_id"].contents() == 50256
    source, back = LLM.load(tuned), LLM.load(out)
    assert back.style is PHI3 and back.stop_ids == source.stop_ids == (50256,)
    text = "Every effort moves you <|endoftext|> naïve café 12345"
    assert back.tokenizer.encode(text) == source.tokenizer.encode(text)
    difference = (logits(back) - logits(source)).abs().max()
    assert difference == 0 if dtype == "f32" else difference < 0.05


def test_directory_exports_carry_the_prompt_format(tuned: Path, tmp_path: Path):
    for to in ("hf", "gptlab"):
        out = tmp_path / to
        assert export_main([str(tuned), "--to", to, "--dtype", "bf16", "--out", str(out)]) == 0
        assert LLM.load(out).style is PHI3
        with safetensors.safe_open(str(out / "model.safetensors"), "pt") as weights:
            assert {weights.get_tensor(key).dtype for key in weights.keys()} == {torch.bfloat16}
    assert LLM.load(tmp_path / "hf", prompt_style="alpaca").style is ALPACA


def test_bad_export_requests_are_one_line(tuned: Path, tmp_path: Path, capsys):
    assert export_main([str(tuned), "--to", "hf", "--dtype", "q8_0", "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--dtype q8_0 is a GGUF quantisation" in err
    assert not (tmp_path / "x").exists()
    assert export_main([str(tmp_path / "missing"), "--to", "gguf", "--out", str(tmp_path / "y.gguf")]) == 2
    assert capsys.readouterr().err.count("\n") == 1 and not (tmp_path / "y.gguf").exists()
