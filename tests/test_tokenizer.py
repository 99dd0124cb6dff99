"""GPT-2 BPE ids against the book's worked example (section 2.5) and tiktoken's own reference."""

import pytest

from gptlab.errors import ConfigError
from gptlab.tokenizer import ByteTokenizer, get_tokenizer

BOOK_TEXT = "Hello, do you like tea? <|endoftext|> In the sunlit terraces"
BOOK_IDS = [15496, 11, 466, 345, 588, 8887, 30, 220, 50256, 554, 262, 4252, 18250, 8812, 2114]


def test_gpt2_ids_match_the_book():
    tokenizer = get_tokenizer("gpt2")
    assert tokenizer.encode(BOOK_TEXT) == BOOK_IDS
    assert tokenizer.decode(BOOK_IDS) == BOOK_TEXT
    assert tokenizer.vocab_size == 50257 and tokenizer.eot_id == 50256


def test_gpt2_unknown_word_splits_into_subwords():
    # Book exercise 2.1: "Akwirw ier" is encoded as known sub-word pieces and decodes back.
    tokenizer = get_tokenizer("gpt2")
    ids = tokenizer.encode("Akwirw ier")
    assert ids == [33901, 86, 343, 86, 220, 959]
    assert tokenizer.decode(ids) == "Akwirw ier"


def test_byte_tokenizer_round_trips_unicode_and_end_of_text():
    tokenizer = get_tokenizer("byte")
    text = "naïve café <|endoftext|> ok"
    ids = tokenizer.encode(text)
    assert isinstance(tokenizer, ByteTokenizer)
    assert ids.count(256) == 1 and max(i for i in ids if i != 256) < 256
    assert tokenizer.decode(ids) == text


def test_unknown_tokenizer_names_the_valid_ones():
    with pytest.raises(ConfigError, match="valid tokenizers: gpt2, byte"):
        get_tokenizer("llama")
