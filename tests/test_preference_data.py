"""Preference data: the book's split, identical pairs dropped, masks that cover exactly the responses."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from gptlab.data import PreferenceDataModule
from gptlab.data.preference import PreferencePair, fit_pair
from gptlab.errors import DataError
from gptlab.prompts import get_style
from gptlab.tokenizer import get_tokenizer


@pytest.fixture(scope="module")
def preference_path(shared_data: Path) -> Path:
    return shared_data / "instruction-data-with-preference.json"


@pytest.fixture(scope="module")
def book(preference_path: Path) -> PreferenceDataModule:
    data = PreferenceDataModule(path=str(preference_path), batch_size=8, shuffle=False)
    data.setup("fit")
    return data


def test_book_split_with_identical_pairs_dropped_and_counted(book: PreferenceDataModule, preference_path: Path):
    records = json.loads(preference_path.read_text())
    identical = [i for i, r in enumerate(records) if r["chosen"] == r["rejected"]]
    assert len(records) == 1100 and len(identical) == 6
    # The book splits 935 / 110 / 55 (train / test / val, in file order) before anything is dropped.
    expected_drops = {"train": sum(i < 935 for i in identical), "test": sum(935 <= i < 1045 for i in identical),
                      "val": sum(i >= 1045 for i in identical)}
    assert book.dropped_identical == expected_drops
    sizes = {split: len(book.datasets[split]) for split in ("train", "val", "test")}
    assert sizes == {"train": 935 - expected_drops["train"], "val": 55 - expected_drops["val"],
                     "test": 110 - expected_drops["test"]}
    assert sum(book.truncated.values()) == 0  # GPT-2's 1,024 tokens hold every pair


def test_masks_cover_exactly_the_responses(book: PreferenceDataModule, preference_path: Path):
    records = [r for r in json.loads(preference_path.read_text())[:16] if r["chosen"] != r["rejected"]]
    batch = next(iter(book.loader("train", batch_size=len(records))))
    tokenizer, style = get_tokenizer("gpt2"), get_style("alpaca")
    assert batch["chosen_input_ids"].shape == batch["rejected_input_ids"].shape  # one forward pass for both
    for row, record in enumerate(records):
        for key in ("chosen", "rejected"):
            ids, mask = batch[f"{key}_input_ids"][row], batch[f"{key}_response_mask"][row]
            assert tokenizer.decode(ids[mask].tolist()) == record[key] + "<|endoftext|>"
            start = int(mask.nonzero()[0])
            assert tokenizer.decode(ids[:start].tolist()) == style.prompt(record)
            assert not mask[start + int(mask.sum()):].any()  # padding never counts
        prompt = batch["prompt_input_ids"][row][batch["prompt_attention_mask"][row].bool()]
        assert tokenizer.decode(prompt.tolist()) == style.prompt(record)


def test_long_pairs_are_cut_to_max_length_keeping_the_response_start_and_prompt_end():
    pair = PreferencePair(prompt=list(range(10)), chosen=[100, 101, 102, 103, 104, 105], rejected=[200, 201])
    cut, was_cut = fit_pair(pair, 8)
    assert was_cut and cut.prompt == [6, 7, 8, 9] and cut.chosen == [100, 101, 102, 103] and cut.rejected == [200, 201]
    assert fit_pair(pair, 16) == (pair, False)


def test_max_length_bounds_every_sequence_and_cut_pairs_are_counted(preference_path: Path):
    data = PreferenceDataModule(path=str(preference_path), max_length=48, batch_size=64, shuffle=False)
    data.setup()
    assert data.truncated["train"] > 0
    for batch in data.loader("train", batch_size=64):
        assert batch["chosen_input_ids"].shape[1] <= 48
        assert batch["chosen_response_mask"].any(dim=1).all() and batch["rejected_response_mask"].any(dim=1).all()


def test_separate_validation_file_and_other_prompt_style(tmp_path: Path, preference_path: Path):
    records = json.loads(preference_path.read_text())
    val = tmp_path / "val.jsonl"
    val.write_text("\n".join(json.dumps(r) for r in records[:7]) + "\n")
    data = PreferenceDataModule(path=str(preference_path), val_path=str(val), prompt_style="phi3", tokenizer="byte")
    data.setup()
    assert len(data.datasets["val"]) == 7
    assert len(data.datasets["train"]) == 935 + 55 - data.dropped_identical["train"]
    first = data.datasets["val"][0]
    assert bytes(first["prompt"]).decode() == get_style("phi3").prompt(records[0])


def test_records_without_preferences_are_refused(tmp_path: Path):
    path = tmp_path / "instructions.json"
    path.write_text(json.dumps([{"instruction": "Say hi.", "input": "", "output": "Hi."}]))
    with pytest.raises(DataError, match="'chosen', 'rejected'"):
        PreferenceDataModule(path=str(path)).setup()


def test_fingerprint_follows_the_tokens(tmp_path: Path, preference_path: Path):
    a = PreferenceDataModule(path=str(preference_path), tokenizer="byte")
    b = PreferenceDataModule(path=str(preference_path), tokenizer="byte", append_eos=False)
    a.setup(), b.setup()
    assert a.datasets["val"].fingerprint() != b.datasets["val"].fingerprint()
    size = len(a.datasets["val"])
    a.datasets["val"].attach_reference(torch.arange(float(size)), torch.zeros(size))
    item = a.datasets["val"][3]
    assert item["reference_chosen_logps"].item() == 3.0
