"""LoRA adapters in Hugging Face PEFT's format, both ways: gptlab's adapters run in ``peft`` on the
``transformers`` export of their base, PEFT's adapters run in gptlab, and ``gptlab-export --to peft``
writes a LoRA run's adapters; the reference is always the other side's own logits."""

from __future__ import annotations

import json
from pathlib import Path

import peft
import pytest
import torch
import transformers
from helpers.runs import train_here

from gptlab.checkpoints import (
    export_hf,
    export_peft_adapter,
    load_peft_adapter,
    load_pretrained,
    save_model,
)
from gptlab.checkpoints.peft import (
    ADAPTER_CONFIG_FILE,
    ADAPTER_WEIGHTS_FILE,
    adapter_base,
    hub_name,
)
from gptlab.cli.export import main as export_main
from gptlab.errors import CheckpointError, ConfigError
from gptlab.inference import LLM
from gptlab.model import GPT, GPTConfig
from gptlab.model.lora import apply_lora, lora_layers

LLAMA = {"preset": "llama-micro", "vocab_size": 97, "context_length": 16, "n_layers": 2}
#: transformers' names of every linear layer of a Llama block.
HF_LINEARS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> tuple[GPT, Path]:
    """A random Llama-shaped gptlab model (grouped-query attention, tied head) and its transformers export."""
    torch.manual_seed(0)
    model = GPT(GPTConfig.from_dict(LLAMA)).eval()
    return model, export_hf(model, tmp_path_factory.mktemp("base") / "hf")


def ids(vocab_size: int = 97, length: int = 16) -> torch.Tensor:
    return torch.randint(0, vocab_size, (2, length), generator=torch.Generator().manual_seed(1))


def copy_of(model: GPT) -> GPT:
    clone = GPT(model.cfg).eval()
    clone.load_state_dict(model.state_dict())
    return clone


def randomise_lora_b(model: torch.nn.Module) -> None:
    """B starts at zero in both libraries: a non-zero one makes the adapter change the logits."""
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0.0, 0.1)


def hf_model(directory: Path) -> transformers.PreTrainedModel:
    return transformers.AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32).eval()


def peft_logits(hf_dir: Path, adapter_dir: Path) -> torch.Tensor:
    model = peft.PeftModel.from_pretrained(hf_model(hf_dir), adapter_dir).eval()
    with torch.no_grad():
        return model(ids()).logits


def gptlab_logits(model: GPT, vocab_size: int = 97, length: int = 16) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(ids(vocab_size, length))


# ----------------------------------------------------------------------------------------------
# gptlab -> PEFT


@pytest.mark.parametrize("scaling", ["alpha_over_rank", "alpha"])
def test_gptlab_adapters_run_in_peft_with_the_same_logits(base, tmp_path: Path, scaling: str):
    model, hf_dir = base
    tuned = copy_of(model)
    apply_lora(tuned, rank=4, alpha=8, scaling=scaling)
    randomise_lora_b(tuned)
    adapter = export_peft_adapter(tuned, tmp_path / "adapter", base_model=str(hf_dir))
    config = json.loads((adapter / ADAPTER_CONFIG_FILE).read_text())
    assert (config["peft_type"], config["task_type"], config["r"], config["bias"]) == ("LORA", "CAUSAL_LM", 4, "none")
    assert config["lora_alpha"] == (8 if scaling == "alpha_over_rank" else 32)  # PEFT scales by lora_alpha / r
    assert sorted(config["target_modules"]) == sorted(HF_LINEARS) and config["base_model_name_or_path"] == str(hf_dir)
    expected = gptlab_logits(tuned)
    assert (expected - gptlab_logits(model)).abs().max() > 0.1  # the adapter matters
    torch.testing.assert_close(peft_logits(hf_dir, adapter), expected, atol=1e-5, rtol=1e-5)


def test_adapters_on_some_layers_name_those_layers(base, tmp_path: Path):
    model, hf_dir = base
    tuned = copy_of(model)
    apply_lora(tuned, rank=2, alpha=4, targets=["trf_blocks.1.att.W_query", "trf_blocks.1.ff.fc3"])
    randomise_lora_b(tuned)
    adapter = export_peft_adapter(tuned, tmp_path / "adapter")
    targets = json.loads((adapter / ADAPTER_CONFIG_FILE).read_text())["target_modules"]
    assert targets == ["model.layers.1.mlp.down_proj", "model.layers.1.self_attn.q_proj"]
    torch.testing.assert_close(peft_logits(hf_dir, adapter), gptlab_logits(tuned), atol=1e-5, rtol=1e-5)


# ----------------------------------------------------------------------------------------------
# PEFT -> gptlab


@pytest.fixture(scope="module")
def peft_adapter(base, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, torch.Tensor]:
    """An adapter made by PEFT itself on the transformers export, and PEFT's logits with it."""
    _, hf_dir = base
    torch.manual_seed(2)
    model = peft.get_peft_model(hf_model(hf_dir), peft.LoraConfig(r=4, lora_alpha=8, target_modules=HF_LINEARS))
    randomise_lora_b(model)
    directory = tmp_path_factory.mktemp("peft") / "adapter"
    model.save_pretrained(directory)
    with torch.no_grad():
        return directory, model.eval()(ids()).logits


def test_peft_adapters_load_into_gptlab_with_the_same_logits(base, peft_adapter):
    model, _ = base
    directory, expected = peft_adapter
    tuned = copy_of(model)
    wrapped = load_peft_adapter(tuned, directory)
    assert len(wrapped) == 2 * len(HF_LINEARS)
    assert {(layer.rank, layer.alpha, layer.scaling) for layer in lora_layers(tuned).values()} == {
        (4, 8.0, "alpha_over_rank")}
    torch.testing.assert_close(gptlab_logits(tuned), expected, atol=1e-5, rtol=1e-5)


def test_load_pretrained_merges_an_adapter_onto_its_base(base, peft_adapter):
    _, hf_dir = base
    directory, expected = peft_adapter
    assert json.loads((directory / ADAPTER_CONFIG_FILE).read_text())["base_model_name_or_path"] == str(hf_dir)
    merged = load_pretrained(directory)
    assert not lora_layers(merged) and all(p.requires_grad for p in merged.parameters())
    torch.testing.assert_close(gptlab_logits(merged), expected, atol=1e-5, rtol=1e-5)


def test_the_base_model_is_found_by_hub_repository_or_beside_the_adapter(exported: Path):
    assert hub_name("smollm2-135m-instruct") == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert adapter_base(edit_config(exported, base_model_name_or_path=hub_name("smollm2-135m-instruct"))) == (
        "smollm2-135m-instruct")
    (exported / "base").mkdir()
    assert adapter_base(edit_config(exported, base_model_name_or_path="base")) == str(exported / "base")
    with pytest.raises(CheckpointError, match="names no base_model_name_or_path"):
        adapter_base(edit_config(exported, base_model_name_or_path=None))


@pytest.mark.parametrize("scaling", ["alpha_over_rank", "alpha"])
def test_export_then_load_gives_the_same_adapters(base, tmp_path: Path, scaling: str):
    model, _ = base
    tuned = copy_of(model)
    apply_lora(tuned, rank=3, alpha=5, scaling=scaling)
    randomise_lora_b(tuned)
    back = copy_of(model)
    load_peft_adapter(back, export_peft_adapter(tuned, tmp_path / "adapter"))
    theirs, ours = lora_layers(back), lora_layers(tuned)
    assert theirs.keys() == ours.keys()
    for name, layer in ours.items():
        assert torch.equal(theirs[name].lora_A, layer.lora_A) and torch.equal(theirs[name].lora_B, layer.lora_B)
        assert theirs[name].scale == pytest.approx(layer.scale)


# ----------------------------------------------------------------------------------------------
# What is refused, in one line each


@pytest.fixture
def exported(base, tmp_path: Path) -> Path:
    tuned = copy_of(base[0])
    apply_lora(tuned, rank=2, alpha=4)
    return export_peft_adapter(tuned, tmp_path / "adapter")


def edit_config(directory: Path, **changes) -> Path:
    path = directory / ADAPTER_CONFIG_FILE
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))
    return directory


@pytest.mark.parametrize(("changes", "words"), [
    ({"use_dora": True}, "DoRA"),
    ({"use_rslora": True}, "rank-stabilised"),
    ({"rank_pattern": {"q_proj": 8}}, "per-module ranks"),
    ({"fan_in_fan_out": True}, "fan_in_fan_out"),
    ({"peft_type": "PREFIX_TUNING"}, "not LORA"),
    ({"target_modules": ["q_proj", "embed_tokens"]}, "['embed_tokens'] name no linear layer"),
    ({"target_modules": ["q_prj"]}, "['q_prj'] name no linear layer"),
    ({"r": 8}, "expected [8, 128] for r=8"),
])
def test_adapters_gptlab_cannot_compute_are_refused(base, exported: Path, changes: dict, words: str):
    with pytest.raises(CheckpointError) as raised:
        load_peft_adapter(copy_of(base[0]), edit_config(exported, **changes))
    assert words in str(raised.value) and "\n" not in str(raised.value)


def test_models_peft_cannot_take_the_adapters_of_are_refused(base, tmp_path: Path):
    mixed = copy_of(base[0])
    apply_lora(mixed, rank=2, alpha=4, targets=["W_query"])
    apply_lora(mixed, rank=4, alpha=4, targets=["W_value"], freeze=False)
    with pytest.raises(ConfigError, match="one rank, alpha, scaling and dropout"):
        export_peft_adapter(mixed, tmp_path / "mixed")
    with pytest.raises(ConfigError, match="no LoRA adapters"):
        export_peft_adapter(copy_of(base[0]), tmp_path / "plain")
    gpt2 = GPT(GPTConfig.from_dict({"preset": "nano", "vocab_size": 97, "context_length": 16}))
    apply_lora(gpt2, rank=2, alpha=4)
    with pytest.raises(ConfigError, match="fuses query, key and value into one Conv1D c_attn"):
        export_peft_adapter(gpt2, tmp_path / "gpt2")
    assert not any(tmp_path.iterdir())  # nothing half written


# ----------------------------------------------------------------------------------------------
# gptlab-export --to peft


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A Llama-shaped base (a gptlab export, byte tokenizer) and a short LoRA run started from it."""
    root = tmp_path_factory.mktemp("lora-run")
    torch.manual_seed(0)
    base_dir = save_model(GPT(GPTConfig.from_dict({**LLAMA, "vocab_size": 257})), root / "base")
    run_dir = root / "run"
    train_here(run_dir, "model=llama-micro", "model.vocab_size=257", "model.context_length=16", "model.n_layers=2",
               f"task.init={base_dir}", "task.trainable_layers=lora", "task.lora.rank=2", "task.lora.alpha=4",
               "task.optimizer.lr=0.05", "data.tokenizer=byte", "data.batch_size=4", "trainer=debug",
               "trainer.max_steps=2", "trainer.val_check_interval=2", "callbacks.sample=null", "print_config=false")
    return base_dir, run_dir


def test_a_lora_run_exports_as_a_peft_adapter_of_its_base(lora_run, tmp_path: Path):
    base_dir, run_dir = lora_run
    out = tmp_path / "adapter"
    assert export_main([str(run_dir), "--to", "peft", "--out", str(out)]) == 0
    assert (out / ADAPTER_WEIGHTS_FILE).is_file() and (out / "prompt.json").is_file()
    config = json.loads((out / ADAPTER_CONFIG_FILE).read_text())
    assert config["base_model_name_or_path"] == str(base_dir.resolve()) and config["r"] == 2
    run = LLM.load(run_dir)  # the run's model/ export: its best checkpoint, adapters merged
    expected = gptlab_logits(run.model, 257)
    assert (expected - gptlab_logits(load_pretrained(base_dir), 257)).abs().max() > 1e-3  # training moved it
    hf_dir = export_hf(load_pretrained(base_dir), tmp_path / "base-hf")
    model = peft.PeftModel.from_pretrained(hf_model(hf_dir), out).eval()
    with torch.no_grad():
        torch.testing.assert_close(model(ids(257)).logits, expected, atol=1e-5, rtol=1e-5)
    again = LLM.load(out)  # the base found through base_model_name_or_path, the adapter merged
    assert again.tokenizer.name == run.tokenizer.name and again.style == run.style
    torch.testing.assert_close(gptlab_logits(again.model, 257), expected, atol=1e-5, rtol=1e-5)


def test_exporting_a_model_without_adapters_to_peft_is_one_line(base, tmp_path: Path, capsys):
    model, _ = base
    ckpt = tmp_path / "plain.ckpt"
    torch.save({"state_dict": {f"model.{k}": v for k, v in model.state_dict().items()},
                "hyper_parameters": {"model": model.cfg.to_dict()}}, ckpt)
    assert export_main([str(ckpt), "--to", "peft", "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "holds no LoRA adapters" in err
    hf_dir = base[1]
    assert export_main([str(hf_dir), "--to", "peft", "--out", str(tmp_path / "y")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not a run directory or a .ckpt" in err
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()
