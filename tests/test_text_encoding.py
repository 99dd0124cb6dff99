"""TextEncoding: the one preprocessing of classification texts, shared by training and inference.

References are written out independently: the book's ``SpamDataset`` padding (ids cut to the
longest training text, then ``<|endoftext|>`` appended) and plain UTF-8 bytes for the byte tokenizer.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch

from gptlab.data import SMSSpamDataModule, TextClassificationDataModule, TextEncoding
from gptlab.errors import ConfigError
from gptlab.tokenizer import get_tokenizer

BYTE = get_tokenizer("byte")


def _book_spam_padding(texts: list[str], length: int) -> tuple[list[list[int]], list[list[int]]]:
    """The book's ``SpamDataset``: ``encode(text)[:length]`` padded with 50256 to ``length``."""
    tokenizer = get_tokenizer("gpt2")
    rows = [tokenizer.encode(text)[:length] for text in texts]
    return ([r + [50256] * (length - len(r)) for r in rows], [[1] * len(r) + [0] * (length - len(r)) for r in rows])


@pytest.fixture(scope="module")
def sms(shared_data: Path) -> SMSSpamDataModule:
    dm = SMSSpamDataModule(path=str(shared_data / "SMSSpamCollection"), max_length=1024)
    dm.setup()
    return dm


def test_training_batches_and_inference_batches_are_the_same(sms: SMSSpamDataModule):
    # Inference rebuilds the encoding from the JSON a classifier export stores.
    encoding = TextEncoding.from_dict(json.loads(json.dumps(sms.inference_spec())))
    assert encoding == sms.encoding == TextEncoding("gpt2", 1024, 120, 50256)
    texts = sms.datasets["test"].texts[:16]
    training = list(sms.predict_dataloader())[:2]  # the test split, 8 per batch, in order
    inference = list(encoding.batches(encoding.load_tokenizer(), texts, batch_size=8))
    book_ids, book_mask = _book_spam_padding(texts, 120)
    for k, (seen, new) in enumerate(zip(training, inference, strict=True)):
        rows = slice(8 * k, 8 * k + 8)
        assert new["input_ids"].tolist() == seen["input_ids"].tolist() == book_ids[rows]
        assert new["attention_mask"].tolist() == seen["attention_mask"].tolist() == book_mask[rows]


def test_unpadded_training_and_inference_see_each_text_at_its_own_length(tmp_path: Path):
    texts = ["short", "a somewhat longer text", "", "x" * 40]
    path = tmp_path / "t.jsonl"
    path.write_text("".join(json.dumps({"text": t, "label": i % 2}) + "\n" for i, t in enumerate(texts)))
    dm = TextClassificationDataModule(train_path=str(path), val_path=str(path), tokenizer="byte", max_length=16,
                                      pad_to=None, batch_size=1, drop_last=False, shuffle=False)
    dm.setup()
    assert dm.encoding == TextEncoding("byte", 16, None, 256)
    expected = [list(t.encode()[:16]) or [256] for t in texts]  # an empty text keeps one pad token
    training = [batch["input_ids"][0].tolist() for batch in dm.train_dataloader()]
    inference = [b["input_ids"][0].tolist() for b in dm.encoding.batches(BYTE, texts, batch_size=32)]
    assert training == inference == expected
    assert all(b["attention_mask"].all() for b in dm.encoding.batches(BYTE, texts, batch_size=32))


@pytest.mark.parametrize(("pad_to", "max_length", "pad_length"), [
    ("longest", None, 7), ("longest", 5, 5), ("max_length", 6, 6), (3, 6, 3), ("3", None, 3),
    (None, 6, None), ("none", None, None),
])
def test_pad_to_policy(pad_to: object, max_length: int | None, pad_length: int | None):
    encoding = TextEncoding.fit("byte", max_length, pad_to, None, train_lengths=[2, 7, 4])
    assert (encoding.pad_length, encoding.max_length, encoding.pad_token_id) == (pad_length, max_length, 256)


@pytest.mark.parametrize(("pad_to", "max_length", "match"), [
    ("sometimes", None, "unknown"), (0, None, "unknown"), (True, None, "unknown"),
    ("max_length", None, "needs data.max_length"), (64, 32, "exceeds data.max_length=32"),
])
def test_bad_pad_to_is_one_config_error(pad_to: object, max_length: int | None, match: str):
    with pytest.raises(ConfigError, match=match):
        TextEncoding.fit("byte", max_length, pad_to, None, train_lengths=[3])


def test_fixed_padding_cuts_to_the_padded_length_and_pads_on_the_right():
    batch = TextEncoding("byte", max_length=8, pad_length=4).encode(BYTE, ["ab", "abcdef", ""])
    assert batch["input_ids"].tolist() == [[97, 98, 256, 256], [97, 98, 99, 100], [256, 256, 256, 256]]
    assert batch["attention_mask"].tolist() == [[1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0]]
    # Without a fixed length a batch is padded to its longest text, cut at max_length.
    batch = TextEncoding("byte", max_length=5).encode(BYTE, ["ab", "abcdefgh"])
    assert batch["input_ids"].tolist() == [[97, 98, 256, 256, 256], [97, 98, 99, 100, 101]]
    assert TextEncoding("byte").encode(BYTE, [])["input_ids"].shape == (0, 0)


def test_last_token_index_reads_each_texts_last_real_token():
    texts = ["ab", "abcdef", "q", ""]
    encoding = TextEncoding("byte", pad_length=4)
    batch = encoding.encode(BYTE, texts)
    index = TextEncoding.last_token_index(batch["attention_mask"])
    assert index.tolist() == [1, 3, 0, 0]
    assert batch["input_ids"][torch.arange(4), index].tolist() == [ord("b"), ord("d"), ord("q"), 256]


def test_batches_group_texts_only_when_the_length_is_fixed():
    texts = ["a", "bb", "ccc", "dddd", "eeeee"]
    assert [len(b["input_ids"]) for b in TextEncoding("byte", pad_length=8).batches(BYTE, texts, 2)] == [2, 2, 1]
    assert [b["input_ids"].shape[1] for b in TextEncoding("byte", max_length=8).batches(BYTE, texts, 2)] == [1, 2, 3, 4, 5]


def test_a_model_context_caps_the_length_and_refuses_longer_padding():
    assert TextEncoding("byte").within(8).max_length == 8
    assert TextEncoding("byte", max_length=32).within(8).max_length == 8
    assert TextEncoding("byte", max_length=4).within(8).max_length == 4
    TextEncoding("byte", max_length=8, pad_length=8).check_context(8)
    TextEncoding("byte", max_length=8).check_context(8)
    with pytest.raises(ConfigError, match="padded to 12 tokens but the model's context is 8"):
        TextEncoding("byte", pad_length=12).check_context(8)
    with pytest.raises(ConfigError, match="set data.max_length=8"):
        TextEncoding("byte").check_context(8)
    with pytest.raises(ConfigError, match="set data.max_length=8"):
        TextEncoding("byte", max_length=16).check_context(8)


def test_stored_form_is_plain_json_and_reads_back():
    encoding = TextEncoding("byte", max_length=16, pad_length=12)
    stored = encoding.to_dict()
    assert stored == {"tokenizer": "byte", "max_length": 16, "pad_length": 12, "pad_token_id": 256}
    assert TextEncoding.from_dict(json.loads(json.dumps(stored))) == encoding
    # The preprocessing dict of a classifier export, label names included, and missing keys default.
    exported = {"tokenizer": "gpt2", "max_length": 1024, "pad_length": 120, "pad_token_id": 50256, "label_names": ["ham", "spam"]}
    assert TextEncoding.from_dict(exported) == TextEncoding("gpt2", 1024, 120, 50256)
    assert TextEncoding.from_dict({}) == TextEncoding("gpt2", None, None, 50256)
    with pytest.raises(dataclasses.FrozenInstanceError):
        encoding.pad_length = 3  # type: ignore[misc]


@pytest.mark.parametrize("bad", [{"pad_length": 0}, {"max_length": -1}, {"pad_token_id": "50256"}, {"pad_length": True}])
def test_invalid_values_are_config_errors(bad: dict[str, object]):
    with pytest.raises(ConfigError, match=next(iter(bad))):
        TextEncoding.from_dict({"tokenizer": "byte", **bad})


def test_texts_must_use_the_encodings_tokenizer():
    with pytest.raises(ConfigError, match="gpt2 tokenizer, not byte"):
        TextEncoding("gpt2").encode(BYTE, ["hello"])
