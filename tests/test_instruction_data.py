"""Instruction data: the book's collate, prompt masking at the exact token boundary, splits, limits."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch
from helpers.runs import compose_train, train_here

from gptlab.data.instruction import Example, InstructionDataModule, collate, encode_record
from gptlab.errors import ConfigError, DataError
from gptlab.prompts import get_style
from gptlab.tokenizer import get_tokenizer

E = 50256


@pytest.fixture(scope="module")
def records_path(shared_data: Path) -> Path:
    return shared_data / "instruction-data.json"


def test_collate_is_the_books_worked_example():
    inputs, targets = collate([[0, 1, 2, 3, 4], [5, 6], [7, 8, 9]])
    assert inputs.tolist() == [[0, 1, 2, 3, 4], [5, 6, E, E, E], [7, 8, 9, E, E]]
    assert targets.tolist() == [[1, 2, 3, 4, E], [6, E, -100, -100, -100], [8, 9, E, -100, -100]]


def test_collate_truncates_to_allowed_max_length():
    inputs, targets = collate([[0, 1, 2, 3, 4], [5, 6]], allowed_max_length=3)
    assert inputs.tolist() == [[0, 1, 2], [5, 6, E]]
    assert targets.tolist() == [[1, 2, 3], [6, E, -100]]


def test_an_end_of_text_inside_a_text_is_trained_not_taken_for_padding():
    # The book finds padding by value; here it is found by position.
    _, targets = collate([[1, E, 2], [3]])
    assert targets.tolist() == [[E, 2, E], [E, -100, -100]]


def test_mask_prompt_covers_exactly_the_prompts_tokens_of_a_real_record(records_path: Path):
    record = json.loads(records_path.read_text())[1]
    assert record["input"]  # a record with an input block
    tokenizer = get_tokenizer("gpt2")
    prompt = tokenizer.encode(get_style("alpaca").prompt(record))
    response = tokenizer.encode(record["output"])
    example = encode_record(record, get_style("alpaca"), tokenizer)
    assert example.ids == prompt + response and example.prompt_length == len(prompt)

    _, targets = collate([example, Example([1, 2], 1)], mask_prompt=True)
    row = targets[0].tolist()
    # Target i is token i + 1: every target that is a prompt token is ignored, nothing else.
    assert row[: len(prompt) - 1] == [-100] * (len(prompt) - 1)
    assert row[len(prompt) - 1:] == response + [E]
    _, unmasked = collate([example], mask_prompt=False)
    assert unmasked[0].tolist() == prompt[1:] + response + [E]


def test_the_books_split_and_a_sample_prompt_from_validation(records_path: Path):
    dm = InstructionDataModule(path=str(records_path), batch_size=8, allowed_max_length=1024)
    dm.setup()
    assert {k: len(v) for k, v in dm.datasets.items()} == {"train": 935, "test": 110, "val": 55}
    records = json.loads(records_path.read_text())
    assert dm.datasets["test"].records[0]["instruction"] == records[935]["instruction"]
    assert dm.sample_prompt == get_style("alpaca").prompt(records[1045])
    assert dm.prompt_style == "alpaca" and dm.over_long == {"train": 0, "test": 0, "val": 0}
    inputs, targets = next(iter(dm.val_dataloader()))
    assert inputs.shape == targets.shape and inputs.shape[0] == 8


def test_shuffled_split_is_seeded(records_path: Path):
    def first_train(seed: int) -> str:
        dm = InstructionDataModule(path=str(records_path), shuffle=True, seed=seed)
        return dm.load_splits()["train"][0]["instruction"]

    assert first_train(1) == first_train(1) != first_train(2)


def test_separate_validation_and_test_files(tmp_path: Path):
    rows = [{"instruction": f"say {i}", "input": "", "output": str(i)} for i in range(20)]
    main, val, test = tmp_path / "train.jsonl", tmp_path / "val.json", tmp_path / "test.json"
    main.write_text("\n".join(json.dumps(r) for r in rows))
    val.write_text(json.dumps(rows[:3]))
    test.write_text(json.dumps(rows[:2]))
    splits = InstructionDataModule(path=str(main), val_path=str(val), test_path=str(test)).load_splits()
    assert [len(splits[s]) for s in ("train", "val", "test")] == [20, 3, 2]
    only_val = InstructionDataModule(path=str(main), val_path=str(val)).load_splits()
    assert [len(only_val[s]) for s in ("train", "val", "test")] == [18, 3, 2]  # test keeps its 10%


def test_over_long_records_are_counted_reported_and_optionally_dropped(records_path: Path, caplog):
    with caplog.at_level(logging.WARNING):
        dm = InstructionDataModule(path=str(records_path), allowed_max_length=60)
        dm.setup()
    assert dm.over_long["train"] > 100
    assert f"{dm.over_long['train']} of 935 train records are longer than data.allowed_max_length=60" in caplog.text
    dropped = InstructionDataModule(path=str(records_path), allowed_max_length=60, drop_over_long=True)
    dropped.setup()
    assert len(dropped.datasets["train"]) == 935 - dm.over_long["train"]
    assert all(len(ex.ids) <= 60 for ex in dropped.datasets["train"].examples)


def test_phi3_style_and_bad_settings_are_one_clear_error(records_path: Path, tmp_path: Path):
    dm = InstructionDataModule(path=str(records_path), prompt_style="phi3")
    dm.setup()
    assert dm.sample_prompt.startswith("<|user|>\n") and dm.sample_prompt.endswith("<|assistant|>\n")
    with pytest.raises(ConfigError, match="unknown prompt style 'vicuna'"):
        InstructionDataModule(prompt_style="vicuna")
    with pytest.raises(DataError, match="allowed_max_length must be at least 2"):
        InstructionDataModule(allowed_max_length=1)
    with pytest.raises(DataError, match="data file not found"):
        InstructionDataModule(path=str(tmp_path / "missing.json")).setup()
    bad = tmp_path / "bad.json"
    bad.write_text('[{"instruction": "x"}]')
    with pytest.raises(DataError, match="record 0 has no text for 'output'"):
        InstructionDataModule(path=str(bad)).setup()


def test_batches_feed_the_causal_lm_task(records_path: Path):
    from gptlab.tasks import CausalLMTask

    dm = InstructionDataModule(path=str(records_path), batch_size=2, allowed_max_length=64, mask_prompt=True)
    dm.setup()
    task = CausalLMTask({"preset": "nano"})
    inputs, targets = next(iter(dm.train_dataloader()))
    loss = torch.nn.functional.cross_entropy(task(inputs).flatten(0, 1), targets.flatten(), ignore_index=-100)
    assert torch.isfinite(loss)


def compose(*overrides: str) -> dict:
    from omegaconf import OmegaConf

    cfg = compose_train(*overrides)
    cfg.output_dir = "/tmp/run"
    return OmegaConf.to_container(cfg, resolve=True)


def test_instruct_experiment_is_the_books_chapter7_run():
    cfg = compose("experiment=instruct")
    assert cfg["task"]["init"] == "gpt2-medium" and cfg["model"]["preset"] == "gpt2-medium"
    assert cfg["task"]["optimizer"]["lr"] == 5e-5 and cfg["task"]["optimizer"]["weight_decay"] == 0.1
    assert cfg["task"]["scheduler"]["name"] == "constant"
    assert cfg["data"]["batch_size"] == 8 and cfg["seed"] == 123 and cfg["data"]["allowed_max_length"] == 1024
    assert cfg["trainer"]["max_epochs"] == 2 and cfg["trainer"]["val_check_interval"] == 5
    assert cfg["callbacks"]["sample"]["prompt"] is None  # the data module's sample_prompt
    assert cfg["callbacks"]["prompt_style"]["model_dir"] == "/tmp/run/model"


@pytest.mark.slow
def test_instruct_scratch_trains_and_records_its_prompt_style(tmp_path: Path, records_path: Path):
    import csv

    from gptlab.runs import RunFiles
    from gptlab.prompts import get_style

    run = tmp_path / "run"
    train_here(run, "experiment=instruct_scratch", f"data.path={records_path}", "model=nano",
               "data.prompt_style=phi3", "data.mask_prompt=true", "trainer.max_steps=4",
               "trainer.val_check_interval=2", "trainer.limit_val_batches=2", "callbacks.sample=null",
               "print_config=false")
    assert RunFiles.find(run).prompt_record()["prompt_style"] == "phi3"
    assert json.loads((run / "model" / "prompt.json").read_text()) == get_style("phi3").to_record()
    assert any(row.get("val/loss") for row in csv.DictReader((run / "metrics.csv").open()))
