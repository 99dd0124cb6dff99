"""Every config in conf/ composes, and what it builds is valid."""

import dataclasses
from pathlib import Path

import pytest
from helpers.runs import compose_train
from omegaconf import OmegaConf

from gptlab.model import GPTConfig

CONF = Path(__file__).resolve().parents[1] / "gptlab" / "conf"
GROUPS = sorted(p.name for p in CONF.iterdir() if p.is_dir() and not p.name.startswith("_"))


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


def resolve(cfg):
    # `output_dir` points at Hydra's runtime dir, which exists only inside a real run.
    cfg.output_dir = "/tmp/run"
    return OmegaConf.to_container(cfg, resolve=True)


def test_every_group_is_known():
    assert {"model", "data", "task", "trainer", "logger", "callbacks", "experiment"} <= set(GROUPS)


@pytest.mark.parametrize(
    "group, option", [(g, o) for g in GROUPS for o in options(g)], ids=lambda v: str(v)
)
def test_every_option_composes_and_resolves(group, option):
    overrides = [f"{group}={option}"]
    if group == "data" and option == "files":
        overrides.append("data.path=corpus.txt")
    cfg = compose_train(*overrides)
    resolved = resolve(cfg)
    GPTConfig.from_dict(resolved["model"])  # a valid architecture
    assert resolved["task"]["model"] == resolved["model"]
    assert resolved["data"]["_target_"] and resolved["task"]["_target_"] and resolved["trainer"]["_target_"]
    for section in ("callbacks", "logger"):
        for node in (resolved.get(section) or {}).values():
            assert node is None or "_target_" in node  # null switches a callback off


def test_verdict_experiment_is_the_books_chapter5_setup():
    resolved = resolve(compose_train("experiment=verdict"))
    model = GPTConfig.from_dict(resolved["model"])
    assert (model.emb_dim, model.n_layers, model.n_heads, model.context_length) == (768, 12, 12, 256)
    assert resolved["data"]["batch_size"] == 2 and resolved["data"]["train_ratio"] == 0.9
    assert resolved["data"]["max_length"] == 256 and resolved["data"]["stride"] == 256
    assert resolved["task"]["optimizer"]["lr"] == 4e-4 and resolved["task"]["optimizer"]["weight_decay"] == 0.1
    assert resolved["trainer"]["max_epochs"] == 10
    assert resolved["data"]["source"].endswith("the-verdict.txt")


def test_every_model_field_is_a_plain_override_on_top_of_the_preset():
    resolved = resolve(compose_train("model.n_layers=3", "model.attention=manual", "model.vocab_size=257"))
    model = GPTConfig.from_dict(resolved["model"])
    micro = GPTConfig.from_preset("micro")
    assert (model.n_layers, model.attention, model.vocab_size) == (3, "manual", 257)
    assert (model.emb_dim, model.n_heads, model.tie_embeddings) == (micro.emb_dim, micro.n_heads, micro.tie_embeddings)


def test_model_configs_list_every_gptconfig_field():
    resolved = resolve(compose_train())
    fields = {f.name for f in dataclasses.fields(GPTConfig)} - {"name"}
    assert set(resolved["model"]) == fields | {"preset"}


#: Fields whose ``null`` is a rule written beside it (``4 * emb_dim``, ``n_heads``, ``emb_dim / n_heads``,
#: no scaling), so that overriding ``emb_dim`` or ``n_heads`` keeps GPT-2's proportions.
DERIVED_WHEN_NULL = {"hidden_dim", "n_kv_heads", "head_size", "rope_scaling"}


@pytest.mark.parametrize("option", options("model"))
def test_model_yaml_is_the_preset_with_every_value_written_out(option):
    node = resolve(compose_train(f"model={option}"))["model"]
    assert {key for key, value in node.items() if value is None} <= DERIVED_WHEN_NULL
    preset = GPTConfig.from_preset(option).to_dict()
    assert node == {"preset": option, **{key: value for key, value in preset.items() if key != "name"}}


def test_gpt2_presets_are_the_books_table():
    # Section 4.6: GPT-2 small/medium/large/XL, vocabulary 50,257, context 1,024, untied head, no qkv bias.
    table = {"gpt2-small": (768, 12, 12), "gpt2-medium": (1024, 24, 16),
             "gpt2-large": (1280, 36, 20), "gpt2-xl": (1600, 48, 25)}
    for name, (emb_dim, n_layers, n_heads) in table.items():
        cfg = GPTConfig.from_preset(name)
        assert (cfg.emb_dim, cfg.n_layers, cfg.n_heads) == (emb_dim, n_layers, n_heads), name
        assert (cfg.vocab_size, cfg.context_length, cfg.qkv_bias, cfg.tie_embeddings) == (50257, 1024, False, False)


def test_one_word_picks_a_preset_and_one_override_changes_one_field():
    small = resolve(compose_train("model=gpt2-small", "model.n_layers=8"))["model"]
    assert (small["preset"], small["emb_dim"], small["n_heads"], small["n_layers"]) == ("gpt2-small", 768, 12, 8)
    assert GPTConfig.from_dict(small) == GPTConfig.from_preset("gpt2-small", n_layers=8)


def pretraining_data_options() -> list[str]:
    """The data configs of pretraining corpora (not labelled, instruction or preference records)."""
    return [o for o in options("data") if "PretrainDataModule" in (CONF / "data" / f"{o}.yaml").read_text()]


@pytest.mark.parametrize("option", pretraining_data_options())
def test_every_pretraining_data_config_names_its_sample_prompt(option):
    overrides = [f"data={option}"] + (["data.path=corpus.txt"] if option == "files" else [])
    resolved = resolve(compose_train(*overrides))
    assert "sample_prompt" in resolved["data"]
    assert resolved["callbacks"]["sample"]["prompt"] is None  # the callback takes the data's prompt
