"""Weight loading and export, checked against ``transformers``' GPT-2 as the independent reference."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from gptlab import GPT, GPTConfig, generate
from gptlab.errors import CheckpointError
from gptlab.checkpoints import (
    HUB_MODELS,
    export_hf,
    load_model,
    load_pretrained,
    model_from_state_dict,
    read_task_checkpoint,
    save_model,
)

from transformers import GPT2Config, GPT2LMHeadModel  # noqa: E402

VOCAB, CTX, EMB, LAYERS, HEADS = 512, 128, 64, 2, 4
SMALL = GPTConfig(vocab_size=VOCAB, context_length=CTX, emb_dim=EMB, n_heads=HEADS, n_layers=LAYERS,
                  drop_rate=0.0, qkv_bias=True, tie_embeddings=True)


def hf_model(seed: int = 0, **overrides) -> GPT2LMHeadModel:
    """A random GPT-2 whose weights are large enough to give peaked (unambiguous) next tokens."""
    torch.manual_seed(seed)
    cfg = GPT2Config(vocab_size=VOCAB, n_positions=CTX, n_embd=EMB, n_layer=LAYERS, n_head=HEADS,
                     bos_token_id=0, eos_token_id=0, pad_token_id=0, initializer_range=0.1, **overrides)
    model = GPT2LMHeadModel(cfg)
    with torch.no_grad():  # non-trivial LayerNorm parameters, so a swapped scale/shift would show
        for name, param in model.named_parameters():
            if "ln_" in name:
                param.uniform_(0.5, 1.5) if name.endswith("weight") else param.uniform_(-0.2, 0.2)
    return model.eval()


def random_gpt(cfg: GPTConfig = SMALL, seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    model = GPT(cfg)
    with torch.no_grad():
        for param in model.parameters():
            param.normal_(0.0, 0.1)
    return model.eval()


def ids(batch: int = 2, length: int = 20, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, VOCAB, (batch, length), generator=torch.Generator().manual_seed(seed))


def assert_same_logits(ours: GPT, hf: GPT2LMHeadModel, x: torch.Tensor, atol: float = 1e-4) -> None:
    with torch.no_grad():
        expected = hf(x).logits
        got = ours.eval()(x)
    assert expected.abs().max() > 0.1  # not a degenerate, all-zero model
    assert (got - expected).abs().max().item() <= atol


def hf_greedy(hf: GPT2LMHeadModel, prompt: torch.Tensor, n: int) -> torch.Tensor:
    with torch.no_grad():
        return hf.generate(prompt, attention_mask=torch.ones_like(prompt), do_sample=False,
                           max_new_tokens=n, min_new_tokens=n, pad_token_id=0, eos_token_id=None)


# ---------------------------------------------------------------- Hugging Face GPT-2 directories

def test_hf_safetensors_directory_matches_transformers(tmp_path: Path):
    hf = hf_model()
    hf.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").is_file()
    model = load_pretrained(tmp_path)

    assert model.training  # ready to fine-tune
    cfg = model.cfg
    shape = (cfg.vocab_size, cfg.context_length, cfg.emb_dim, cfg.n_layers, cfg.n_heads)
    assert shape == (VOCAB, CTX, EMB, LAYERS, HEADS)
    assert cfg.qkv_bias and cfg.tie_embeddings and cfg.drop_rate == 0.0
    assert model.out_head.weight is model.tok_emb.weight
    assert_same_logits(model, hf, ids())

    prompt = ids(1, 8)
    expected = hf_greedy(hf, prompt, 50)
    got = generate(model, prompt, max_new_tokens=50, use_cache=True)
    assert expected.shape == (1, 58)
    assert torch.equal(got, expected)


def test_hf_pytorch_bin_in_hub_layout(tmp_path: Path):
    """``pytorch_model.bin`` without the ``transformer.`` prefix and with old mask buffers, as on the Hub."""
    hf = hf_model(seed=3)
    hf.config.save_pretrained(tmp_path)
    state = {k.removeprefix("transformer."): v for k, v in hf.state_dict().items()}
    for i in range(LAYERS):
        state[f"h.{i}.attn.bias"] = torch.tril(torch.ones(1, 1, CTX, CTX))
        state[f"h.{i}.attn.masked_bias"] = torch.tensor(-1e4)
    torch.save(state, tmp_path / "pytorch_model.bin")

    model = load_pretrained(tmp_path)
    assert_same_logits(model, hf, ids())
    prompt = ids(1, 5, seed=7)
    assert torch.equal(generate(model, prompt, 50), hf_greedy(hf, prompt, 50))


def test_caller_config_keeps_training_settings_and_may_untie_or_crop(tmp_path: Path):
    hf = hf_model()
    hf.save_pretrained(tmp_path)
    caller = GPTConfig(vocab_size=VOCAB, context_length=CTX, emb_dim=EMB, n_heads=HEADS, n_layers=LAYERS,
                       drop_rate=0.25, qkv_bias=False, tie_embeddings=False, attention="manual")
    model = load_pretrained(tmp_path, caller)
    assert model.cfg.qkv_bias  # the checkpoint has biases: its architecture wins
    assert (model.cfg.drop_rate, model.cfg.attention) == (0.25, "manual")
    # Untied as the book's load_weights_into_gpt does: the head starts as a copy of the embedding.
    assert model.out_head.weight is not model.tok_emb.weight
    assert torch.equal(model.out_head.weight, model.tok_emb.weight)
    assert_same_logits(model, hf, ids())

    short = load_pretrained(tmp_path, GPTConfig(**{**caller.to_dict(), "context_length": 32}))
    assert short.pos_emb.weight.shape == (32, EMB)
    assert_same_logits(short, hf, ids(length=32))

    with pytest.raises(CheckpointError, match=r"emb_dim: source 64 vs config 128"):
        load_pretrained(tmp_path, GPTConfig(**{**caller.to_dict(), "emb_dim": 128}))


def test_task_init_loads_pretrained_weights(tmp_path: Path):
    from gptlab.tasks import CausalLMTask

    hf = hf_model()
    hf.save_pretrained(tmp_path)
    model_cfg = {k: v for k, v in SMALL.to_dict().items() if k != "name"}
    task = CausalLMTask(model=model_cfg, init=str(tmp_path))
    assert_same_logits(task.gpt, hf, ids())


def test_checkpoint_of_an_initialised_task_records_the_built_model_and_reloads_offline(tmp_path: Path):
    import lightning as L

    from gptlab.tasks import CausalLMTask

    hf = hf_model()
    hf.save_pretrained(tmp_path / "gpt2")
    # The preset says no qkv bias and an untied head; the GPT-2 weights have biases and tie them.
    asked = {"preset": "nano", "vocab_size": VOCAB, "emb_dim": EMB, "n_heads": 4, "n_layers": 2,
             "context_length": 64}
    task = CausalLMTask(model=asked, init=str(tmp_path / "gpt2"))
    assert task.hparams["model"]["qkv_bias"] is True
    trainer = L.Trainer(max_steps=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, default_root_dir=tmp_path, accelerator="cpu")
    data = torch.randint(0, VOCAB, (2, 9))
    trainer.fit(task, torch.utils.data.DataLoader(list(zip(data[:, :-1], data[:, 1:])), batch_size=2))
    trainer.save_checkpoint(tmp_path / "step1.ckpt")

    saved = torch.load(tmp_path / "step1.ckpt", map_location="cpu", weights_only=False)["hyper_parameters"]
    assert saved["init"] is None and saved["initialized_from"] == str(tmp_path / "gpt2")
    (tmp_path / "gpt2" / "model.safetensors").unlink()  # rebuilding must not need the source again
    reloaded = CausalLMTask.load_from_checkpoint(tmp_path / "step1.ckpt")
    x = ids()
    with torch.no_grad():
        assert torch.equal(reloaded.gpt.eval()(x), task.gpt.eval()(x))


# ---------------------------------------------------------------- export to Hugging Face

@pytest.mark.parametrize("qkv_bias,tied", [(True, True), (False, False)])
def test_export_hf_loads_in_transformers_with_same_logits(tmp_path: Path, qkv_bias: bool, tied: bool):
    model = random_gpt(GPTConfig(**{**SMALL.to_dict(), "qkv_bias": qkv_bias, "tie_embeddings": tied}))
    out = export_hf(model, tmp_path / "hf")
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "gpt2" and config["architectures"] == ["GPT2LMHeadModel"]
    assert config["activation_function"] == "gelu_new" and config["tie_word_embeddings"] is tied

    hf = GPT2LMHeadModel.from_pretrained(out).eval()
    assert_same_logits(model, hf, ids())
    # and back into gptlab: the same function again
    again = load_pretrained(out)
    assert (again.out_head.weight is again.tok_emb.weight) is tied
    assert_same_logits(again, hf, ids())


# ---------------------------------------------------------------- gptlab's own formats

def test_save_model_round_trip_and_overwrite(tmp_path: Path):
    model = random_gpt()
    target = tmp_path / "export"
    assert save_model(model, target) == target
    config = json.loads((target / "config.json").read_text())
    assert config["format"] == "gptlab" and config["emb_dim"] == EMB

    from safetensors import safe_open

    with safe_open(str(target / "model.safetensors"), "pt") as f:
        stored = set(f.keys())
    # The tied head and the embedding are one tensor, stored once under one of the two names.
    assert len(stored & {"out_head.weight", "tok_emb.weight"}) == 1
    assert stored | {"out_head.weight", "tok_emb.weight"} == set(model.state_dict())

    other = random_gpt(seed=5)
    save_model(other, target)  # overwriting an export works
    loaded = load_model(target)
    assert loaded.out_head.weight is loaded.tok_emb.weight
    x = ids()
    with torch.no_grad():
        assert torch.equal(loaded.eval()(x), other(x))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export"]  # no temporary directories left

    stranger = tmp_path / "notes"
    stranger.mkdir()
    (stranger / "todo.txt").write_text("keep me")
    with pytest.raises(CheckpointError, match="holds something other than"):
        save_model(model, stranger)
    assert (stranger / "todo.txt").read_text() == "keep me"


def test_export_takes_the_callers_training_settings_and_refuses_weights_that_do_not_fit(tmp_path: Path):
    model = random_gpt()
    export = save_model(model, tmp_path / "export")
    caller = GPTConfig(**{**SMALL.to_dict(), "drop_rate": 0.3, "attention": "manual", "context_length": 32})
    loaded = load_pretrained(export, caller)
    assert (loaded.cfg.drop_rate, loaded.cfg.attention, loaded.cfg.context_length) == (0.3, "manual", 32)
    assert loaded.out_head.weight is loaded.tok_emb.weight
    x = ids(length=32)
    with torch.no_grad():
        torch.testing.assert_close(loaded.eval()(x), model(x), atol=1e-5, rtol=0)

    config = json.loads((export / "config.json").read_text())
    (export / "config.json").write_text(json.dumps({**config, "n_layers": LAYERS + 1}))
    with pytest.raises(CheckpointError) as info:
        load_pretrained(export)
    assert "\n" not in str(info.value)
    assert "does not match config.json" in str(info.value) and "trf_blocks.2." in str(info.value)


def test_export_with_the_tied_tensor_under_either_name_loads_tied(tmp_path: Path):
    from safetensors.torch import save_file

    model = random_gpt()
    state = model.state_dict()
    x = ids()
    for kept in ("tok_emb.weight", "out_head.weight"):
        dropped = ({"tok_emb.weight", "out_head.weight"} - {kept}).pop()
        target = tmp_path / kept
        target.mkdir()
        save_file({k: v.contiguous() for k, v in state.items() if k != dropped}, str(target / "model.safetensors"))
        (target / "config.json").write_text(json.dumps({**SMALL.to_dict(), "format": "gptlab"}))
        loaded = load_model(target)
        assert loaded.out_head.weight is loaded.tok_emb.weight
        with torch.no_grad():
            assert torch.equal(loaded.eval()(x), model(x))


def test_the_books_model_pth_loads_bare_or_wrapped(tmp_path: Path):
    cfg = GPTConfig(**{**SMALL.to_dict(), "tie_embeddings": False, "qkv_bias": False})
    model = random_gpt(cfg)
    state = dict(model.state_dict())  # gptlab's module names are the book's
    # The book's MultiHeadAttention keeps its causal mask in the state dict.
    for i in range(LAYERS):
        state[f"trf_blocks.{i}.att.mask"] = torch.triu(torch.ones(CTX, CTX), diagonal=1)
    torch.save(state, tmp_path / "model.pth")
    torch.save({"model_state_dict": state, "optimizer_state_dict": {}}, tmp_path / "model_and_optimizer.pth")

    x = ids()
    for name in ("model.pth", "model_and_optimizer.pth"):
        loaded = load_pretrained(tmp_path / name, cfg)
        with torch.no_grad():
            assert torch.equal(loaded.eval()(x), model(x))
    assert torch.equal(model_from_state_dict(state, cfg).eval()(x), model(x))

    with pytest.raises(CheckpointError, match="pass the model config"):
        load_pretrained(tmp_path / "model.pth")


def test_lightning_checkpoint_and_run_directory(tmp_path: Path):
    cfg = GPTConfig(**{**SMALL.to_dict(), "drop_rate": 0.1})
    model = random_gpt(cfg)
    checkpoint = {
        "state_dict": {"tokens_seen": torch.tensor(7), **{f"model.{k}": v for k, v in model.state_dict().items()}},
        "hyper_parameters": {"model": cfg.to_dict(), "init": None},
        "epoch": 0,
    }
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    torch.save(checkpoint, run / "checkpoints" / "last.ckpt")

    x = ids()
    for source in (run / "checkpoints" / "last.ckpt", run):
        loaded = load_pretrained(source)
        assert loaded.cfg.drop_rate == 0.1 and loaded.cfg.tie_embeddings
        with torch.no_grad():
            assert torch.equal(loaded.eval()(x), model(x))

    newer = random_gpt(cfg, seed=9)
    save_model(newer, run / "model")  # a run's export is preferred over its checkpoint
    with torch.no_grad():
        assert torch.equal(load_pretrained(run).eval()(x), newer(x))


@pytest.mark.filterwarnings("ignore::UserWarning", "ignore::FutureWarning")
def test_real_lightning_checkpoint(tmp_path: Path):
    import lightning as L

    from gptlab.tasks import CausalLMTask

    task = CausalLMTask(model={k: v for k, v in SMALL.to_dict().items() if k != "name"})
    trainer = L.Trainer(max_steps=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, default_root_dir=tmp_path, accelerator="cpu")
    data = torch.randint(0, VOCAB, (2, 9))
    trainer.fit(task, torch.utils.data.DataLoader(list(zip(data[:, :-1], data[:, 1:])), batch_size=2))
    trainer.save_checkpoint(tmp_path / "step1.ckpt")

    loaded = load_pretrained(tmp_path / "step1.ckpt")
    x = ids()
    with torch.no_grad():
        assert torch.equal(loaded.eval()(x), task.gpt.eval()(x))

    read = read_task_checkpoint(tmp_path / "step1.ckpt")
    assert read.model_config == {**SMALL.to_dict(), "name": "custom"}
    assert read.model_state.keys() == task.gpt.state_dict().keys()
    assert torch.equal(read.model_state["trf_blocks.1.ff.layers.2.weight"], task.gpt.trf_blocks[1].ff.layers[2].weight)
    assert read.raw["global_step"] == 1

    torch.save({"weights": torch.zeros(2)}, tmp_path / "foreign.ckpt")
    with pytest.raises(CheckpointError, match="not a Lightning checkpoint of a gptlab task"):
        read_task_checkpoint(tmp_path / "foreign.ckpt")


# ---------------------------------------------------------------- errors

def test_shape_mismatch_names_the_tensor_and_both_shapes(tmp_path: Path):
    state = dict(random_gpt().state_dict())
    state["trf_blocks.1.ff.layers.0.weight"] = torch.zeros(4 * EMB, EMB + 1)
    torch.save(state, tmp_path / "model.pth")
    with pytest.raises(CheckpointError) as info:
        load_pretrained(tmp_path / "model.pth", SMALL)
    message = str(info.value)
    assert "\n" not in message
    assert "trf_blocks.1.ff.layers.0.weight" in message
    assert f"[{4 * EMB}, {EMB + 1}]" in message and f"[{4 * EMB}, {EMB}]" in message


def test_missing_and_unexpected_keys_are_named(tmp_path: Path):
    state = dict(random_gpt(GPTConfig(**{**SMALL.to_dict(), "qkv_bias": False})).state_dict())
    with pytest.raises(CheckpointError, match=r"missing 6 tensor\(s\): trf_blocks.0.att.W_key.bias.*qkv_bias"):
        model_from_state_dict(state, SMALL)
    state["extra.weight"] = torch.zeros(1)
    with pytest.raises(CheckpointError, match=r"unexpected 1 tensor\(s\): extra.weight"):
        model_from_state_dict(state, GPTConfig(**{**SMALL.to_dict(), "qkv_bias": False}))


def test_unknown_name_lists_the_valid_names():
    with pytest.raises(CheckpointError) as info:
        load_pretrained("gpt3")
    assert all(name in str(info.value) for name in HUB_MODELS)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_pretrained("/no/such/dir")


def test_offline_hub_name_fails_fast_with_one_line(monkeypatch: pytest.MonkeyPatch):
    import huggingface_hub
    from huggingface_hub.errors import LocalEntryNotFoundError

    def download(repo_id, filename, **kwargs):
        if kwargs.get("local_files_only"):
            raise LocalEntryNotFoundError("Cannot find the requested files in the disk cache")
        raise AssertionError("must not start a download once the Hub is known unreachable")

    def metadata(url, **kwargs):
        raise ConnectionError("[Errno -2] Name or service not known")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", download)
    monkeypatch.setattr(huggingface_hub, "get_hf_file_metadata", metadata)
    with pytest.raises(CheckpointError) as info:
        load_pretrained("gpt2-medium")
    message = str(info.value)
    assert "\n" not in message
    assert "https://huggingface.co/openai-community/gpt2-medium" in message
    assert "init=/path/to/gpt2-medium" in message and "load_pretrained('/path/to/gpt2-medium')" in message


def test_hub_name_uses_the_cache_without_network(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    import huggingface_hub

    hf_model().save_pretrained(tmp_path)

    def download(repo_id, filename, **kwargs):
        assert repo_id == "openai-community/gpt2" and kwargs.get("local_files_only")
        return str(tmp_path / filename)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", download)
    model = load_pretrained("gpt2")
    assert model.cfg.name == "gpt2" and model.cfg.emb_dim == EMB
