"""Classification data: the book's SMS spam preparation, padding, and the general CSV/TSV/JSONL module."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path
from typing import Any

import pytest
import torch

from gptlab.data import sha256_file, tables
from gptlab.data.classification import TextClassificationDataModule, encode_texts
from gptlab.data.sms_spam import SMS_SPAM_SHA256, SMSSpamDataModule
from gptlab.errors import ConfigError, DataError
from gptlab.tokenizer import get_tokenizer


@pytest.fixture(scope="module")
def sms_path(shared_data: Path) -> Path:
    return shared_data / "SMSSpamCollection"


@pytest.fixture(scope="module")
def sms(sms_path: Path) -> SMSSpamDataModule:
    dm = SMSSpamDataModule(path=str(sms_path), max_length=1024)
    dm.setup()
    return dm


def test_reading_matches_the_books_counts(sms_path: Path):
    dm = SMSSpamDataModule(path=str(sms_path))
    df = dm.read_frame(sms_path)
    # 5,574 lines, but pandas' quoting merges a quoted message with the two lines after it.
    assert len(sms_path.read_text(encoding="utf-8").splitlines()) == 5574
    assert len(df) == 5572
    assert df["label"].value_counts().to_dict() == {"ham": 4825, "spam": 747}


def test_balanced_split_sizes_are_the_books(sms: SMSSpamDataModule):
    sizes = {split: len(ds) for split, ds in sms.datasets.items()}
    assert sizes == {"train": 1045, "val": 149, "test": 300}
    assert sum(sizes.values()) == 1494
    labels = torch.tensor([y for ds in sms.datasets.values() for y in ds.labels])
    assert int((labels == 0).sum()) == int((labels == 1).sum()) == 747
    assert sms.label_names == ["ham", "spam"] and sms.num_classes == 2


def test_split_is_the_books_seeded_shuffle(sms_path: Path, sms: SMSSpamDataModule):
    import pandas as pd

    df = pd.read_csv(sms_path, sep="\t", header=None, names=["Label", "Text"])
    num_spam = int((df["Label"] == "spam").sum())
    balanced = pd.concat([df[df["Label"] == "ham"].sample(num_spam, random_state=123), df[df["Label"] == "spam"]])
    balanced["Label"] = balanced["Label"].map({"ham": 0, "spam": 1})
    shuffled = balanced.sample(frac=1, random_state=123).reset_index(drop=True)
    train_end = int(len(shuffled) * 0.7)
    val_end = train_end + int(len(shuffled) * 0.1)
    assert sms.datasets["train"].texts == shuffled["Text"][:train_end].tolist()
    assert sms.datasets["test"].labels == shuffled["Label"][val_end:].tolist()


def test_pad_to_longest_training_example(sms: SMSSpamDataModule):
    assert sms.pad_length == 120  # the book's longest training example, in GPT-2 tokens
    tokenizer = sms.tokenizer
    for split in ("train", "val", "test"):
        ds = sms.datasets[split]
        item = ds[0]
        assert item["input_ids"].shape == item["attention_mask"].shape == (120,)
        real = int(item["attention_mask"].sum())
        assert item["input_ids"][:real].tolist() == tokenizer.encode(ds.texts[0])[:120]
        assert (item["input_ids"][real:] == 50256).all()
    batch = next(iter(sms.train_dataloader()))
    assert batch["input_ids"].shape == (8, 120) and batch["labels"].shape == (8,)


def test_fixed_and_max_length_padding(sms_path: Path):
    dm = SMSSpamDataModule(path=str(sms_path), max_length=64, pad_to=32)
    dm.setup()
    assert dm.pad_length == 32
    assert all(len(ids) <= 32 for ids in dm.datasets["train"].token_ids)
    dm = SMSSpamDataModule(path=str(sms_path), max_length=48, pad_to="max_length")
    dm.setup()
    assert dm.pad_length == 48 and dm.datasets["val"][3]["input_ids"].shape == (48,)
    dm = SMSSpamDataModule(path=str(sms_path), max_length=40)  # longest (120) capped by max_length
    dm.setup()
    assert dm.pad_length == 40


def test_no_padding_needs_batch_size_one(sms_path: Path):
    with pytest.raises(ConfigError, match="batch_size=1"):
        SMSSpamDataModule(path=str(sms_path), pad_to="none", batch_size=8)
    dm = SMSSpamDataModule(path=str(sms_path), pad_to=None, batch_size=1, max_length=1024)
    dm.setup()
    lengths = {int(dm.datasets["train"][i]["attention_mask"].sum()) for i in range(20)}
    assert len(lengths) > 1 and all(dm.datasets["train"][i]["attention_mask"].all() for i in range(20))


def test_batch_padding_pads_each_batch_to_its_own_longest_text(sms_path: Path):
    dm = SMSSpamDataModule(path=str(sms_path), pad_to="batch", batch_size=8, max_length=1024)
    dm.setup()
    assert dm.pad_length is None
    ds = dm.datasets["val"]
    batch = next(iter(dm.val_dataloader()))
    lengths = [len(ds.token_ids[i]) for i in range(8)]
    assert batch["input_ids"].shape == (8, max(lengths)) and max(lengths) < 120
    for row, length in enumerate(lengths):
        assert batch["input_ids"][row, :length].tolist() == ds.token_ids[row]
        assert batch["attention_mask"][row].sum() == length and (batch["input_ids"][row, length:] == 50256).all()
    assert batch["labels"].tolist() == ds.labels[:8]


@pytest.mark.parametrize("pad_to", ["sometimes", 0, True])
def test_bad_pad_to_is_a_config_error(pad_to):
    with pytest.raises(ConfigError, match="pad_to"):
        TextClassificationDataModule(path="x.csv", pad_to=pad_to)


def test_encode_texts_matches_training_preprocessing(sms: SMSSpamDataModule):
    ds = sms.datasets["test"]
    batch = encode_texts(ds.texts[:4], sms.tokenizer, max_length=1024, pad_length=sms.pad_length)
    for row in range(4):
        item = ds[row]
        assert torch.equal(batch["input_ids"][row], item["input_ids"])
        assert torch.equal(batch["attention_mask"][row], item["attention_mask"])


def test_download_extract_and_verify(tmp_path: Path, sms_path: Path):
    archive = tmp_path / "sms+spam+collection.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.write(sms_path, "SMSSpamCollection")
        zf.writestr("readme", "UCI")
    dm = SMSSpamDataModule(url=archive.as_uri(), cache_dir=str(tmp_path / "cache"))
    dm.prepare_data()
    dm.setup()
    assert len(dm.datasets["train"]) == 1045
    extracted = tmp_path / "cache" / "downloads" / "sms_spam" / "SMSSpamCollection"
    assert extracted.is_file()

    # The pinned checksum is the real UCI file's; a member that does not match it is refused and removed.
    assert sha256_file(sms_path) == SMS_SPAM_SHA256
    wrong = SMSSpamDataModule(url=archive.as_uri(), cache_dir=str(tmp_path / "cache2"), member_sha256="0" * 64)
    with pytest.raises(DataError, match=f"has sha256 {SMS_SPAM_SHA256}, expected 0{{64}}.*data.path="):
        wrong.prepare_data()
    assert not (tmp_path / "cache2" / "downloads" / "sms_spam" / "SMSSpamCollection").exists()


# ----------------------------------------------------------------------------------------------
# The general module


def _write_csv(path: Path, rows: list[tuple[str, str]]) -> Path:
    import csv

    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["review", "sentiment"])
        writer.writerows(rows)
    return path


ROWS = [(f"text number {i} " + "word " * (i % 7), ("neg", "neu", "pos")[i % 3]) for i in range(60)]


def test_csv_with_named_labels_and_ratio_split(tmp_path: Path):
    path = _write_csv(tmp_path / "reviews.csv", ROWS)
    dm = TextClassificationDataModule(path=str(path), text_column="review", label_column="sentiment",
                                      label_names=["neg", "neu", "pos"], batch_size=4, max_length=64)
    dm.setup()
    assert dm.num_classes == 3 and dm.label_names == ["neg", "neu", "pos"]
    assert [len(dm.datasets[s]) for s in ("train", "val", "test")] == [42, 6, 12]
    by_text = dict(ROWS)
    ds = dm.datasets["train"]
    assert all(dm.label_names[y] == by_text[t] for t, y in zip(ds.texts, ds.labels))
    # Balancing undersamples every class to the smallest.
    skewed = _write_csv(tmp_path / "skewed.csv", ROWS + [(f"extra {i}", "pos") for i in range(30)])
    dm = TextClassificationDataModule(path=str(skewed), text_column="review", label_column="sentiment",
                                      balance=True, max_length=64)
    assert dm.label_names == ["neg", "neu", "pos"]  # inferred, sorted
    frames = dm.load_frames()
    counts = sum((frames[s]["label"].value_counts() for s in ("train", "val", "test")))
    assert counts.tolist() == [20, 20, 20]


def test_separate_jsonl_files_and_integer_labels(tmp_path: Path):
    for split, n in (("train", 20), ("val", 5), ("test", 5)):
        lines = [json.dumps({"text": f"{split} {i}", "label": i % 4}) for i in range(n)]
        if split == "val":  # longer than any training text: cut to the training length
            lines[0] = json.dumps({"text": "a long validation text", "label": 0})
        (tmp_path / f"{split}.jsonl").write_text("\n".join(lines) + "\n")
    dm = TextClassificationDataModule(train_path=str(tmp_path / "train.jsonl"), val_path=str(tmp_path / "val.jsonl"),
                                      test_path=str(tmp_path / "test.jsonl"), tokenizer="byte", max_length=16,
                                      batch_size=4, test_splits=["val", "test"])
    dm.setup()
    assert dm.num_classes == 4 and dm.label_names == ["0", "1", "2", "3"]
    assert [len(dm.datasets[s]) for s in ("train", "val", "test")] == [20, 5, 5]
    assert dm.pad_length == len("train 19")  # byte tokens
    assert dm.datasets["val"][0]["input_ids"].tolist() == list(b"a long v")
    assert dm.datasets["val"][0]["attention_mask"].all()
    assert dm.pad_token_id == 256
    assert len(dm.test_dataloader()) == 2


def test_data_errors_are_clear(tmp_path: Path):
    path = _write_csv(tmp_path / "r.csv", ROWS)
    with pytest.raises(DataError, match="column"):
        TextClassificationDataModule(path=str(path)).setup()
    dm = TextClassificationDataModule(path=str(path), text_column="review", label_column="sentiment",
                                      label_names=["neg", "pos"])
    with pytest.raises(DataError, match="neu"):
        dm.setup()
    with pytest.raises(DataError, match="not found"):
        TextClassificationDataModule(path=str(tmp_path / "missing.csv")).setup()
    with pytest.raises(ConfigError, match="format"):
        TextClassificationDataModule(path=str(path.rename(tmp_path / "r.data"))).setup()
    with pytest.raises(ConfigError, match="no data"):
        TextClassificationDataModule().setup()


def test_byte_tokenizer_round_trip():
    tok = get_tokenizer("byte")
    batch = encode_texts(["ab", "abcd", ""], tok, max_length=3)
    assert batch["input_ids"].tolist() == [[97, 98, 256], [97, 98, 99], [256, 256, 256]]
    assert batch["attention_mask"].tolist() == [[1, 1, 0], [1, 1, 1], [1, 0, 0]]


# ----------------------------------------------------------------------------------------------
# Table functions on their own


def _frame(labels: str) -> Any:
    """One row per character of ``labels``: texts ``t0, t1, ...`` with those labels."""
    import pandas as pd

    return pd.DataFrame({"text": [f"t{i}" for i in range(len(labels))], "label": list(labels)})


def test_label_ids_follow_the_given_names_and_reject_others():
    df = _frame("bab")
    assert tables.label_ids(df["label"], ["b", "a"], "f.csv").tolist() == [0, 1, 0]
    assert tables.infer_label_names(df["label"]) == ["a", "b"]
    with pytest.raises(DataError, match=r"f.csv has labels \['b'\] outside data.label_names=\['a'\]"):
        tables.label_ids(df["label"], ["a"], "f.csv")
    import pandas as pd

    ints = pd.Series([2, 0, 1])
    assert tables.infer_label_names(ints) == ["0", "1", "2"]
    assert tables.label_ids(ints, ["0", "1", "2"], "f", integer_ids=True).tolist() == [2, 0, 1]
    with pytest.raises(DataError, match="outside 0..1"):
        tables.label_ids(ints, ["0", "1"], "f", integer_ids=True)


def test_balance_keeps_the_smallest_class_whole_and_samples_the_others():
    df = _frame("aaaaabbcc")
    balanced = tables.balance(df, seed=1)
    assert balanced["label"].value_counts().to_dict() == {"a": 2, "b": 2, "c": 2}
    assert set(balanced["text"][balanced["label"] == "b"]) == {"t5", "t6"}
    assert balanced["text"][balanced["label"] == "a"].tolist() == df[df["label"] == "a"].sample(2, random_state=1)["text"].tolist()


def test_split_by_ratio_is_a_seeded_shuffle_cut_by_int_of_each_share():
    df = _frame("ab" * 11)  # 22 rows: int(22 * 0.7) = 15, int(22 * 0.1) = 2, rest 5
    parts = tables.split_by_ratio(df, 0.7, 0.1, seed=123)
    assert [len(parts[s]) for s in ("train", "val", "test")] == [15, 2, 5]
    shuffled = df.sample(frac=1, random_state=123)["text"].tolist()
    assert parts["train"]["text"].tolist() + parts["val"]["text"].tolist() + parts["test"]["text"].tolist() == shuffled


def test_labelled_texts_drops_incomplete_rows_with_a_warning(tmp_path: Path):
    path = tmp_path / "r.tsv"
    path.write_text("hello\tpos\n\tneg\nbye\t\n")
    df = tables.read_table(path, column_names=["t", "l"])
    with pytest.warns(UserWarning, match="dropped 2 row"):
        out = tables.labelled_texts(df, "t", "l", str(path))
    assert out.to_dict("records") == [{"text": "hello", "label": "pos"}]
