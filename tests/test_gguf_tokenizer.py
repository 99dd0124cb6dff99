"""A GGUF file's tokenizer against ``transformers``' own GGUF tokenizer (the real SmolLM2-135M-Instruct
file), and ``gguf_vocab`` round trips: GPT-2's BPE against tiktoken, a model directory's
``tokenizer.json`` against that tokenizer. Small GGUF files are written with ``gguf.GGUFWriter``."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import gguf
import pytest
import tiktoken
import tokenizers
from tokenizers import AddedToken, Regex, decoders, models, pre_tokenizers

from gptlab.errors import ConfigError
from gptlab.tokenizer import END_OF_TEXT, ByteTokenizer, GGUFTokenizer, GGUFVocab, get_tokenizer, gguf_vocab
from gptlab.tokenizer.gguf import pre_tokenizer, read_gguf_vocab


TEXTS = {
    "english": "I HAD always thought Jack Gisburn rather a cheap genius--though a good fellow enough. "
               "It's three o'clock; they'll say we've done it, won't they?",
    "code": 'def area(r: float) -> float:\n    """A circle\'s area."""\n    return 3.14159 * r ** 2  # pi r^2\n\n'
            'print({"r": [1, 2]}, end="")\n',
    "whitespace": "  a\t\tb \n\n\n   \t \n  c    \r\n d   \t",
    "scripts": "中文测试：你好，世界。 Русский текст, ёлка. "
               "مرحبا بالعالم هذا نص عربي. हिन्दी में लिखा पाठ।",
    "emoji": "🙂 👍🏽 family 👨‍👩‍👧 flags 🇫🇷🇯🇵 ✨✨",
    "digits": "12345678 and 3.14159, the year 2024, 1,000,000",
    "empty": "",
}
CHATML = ("<|im_start|>system\nYou are helpful.<|im_end|>\n<|im_start|>user\nHi there!<|im_end|>\n"
          "<|im_start|>assistant\n")


def write_gguf(path: Path, vocab: GGUFVocab | None) -> Path:
    """A GGUF file holding only ``vocab``'s tokenizer fields (``None``: no tokenizer at all)."""
    writer = gguf.GGUFWriter(str(path), "llama")
    if vocab is not None:
        writer.add_tokenizer_model(vocab.model)
        writer.add_tokenizer_pre(vocab.pre)
        writer.add_token_list(vocab.tokens)
        writer.add_token_types(vocab.token_types)
        writer.add_token_merges(vocab.merges)
        writer.add_eos_token_id(vocab.eos_id)
        writer.add_add_bos_token(vocab.add_bos)
        optional = ((writer.add_bos_token_id, vocab.bos_id), (writer.add_pad_token_id, vocab.pad_id),
                    (writer.add_unk_token_id, vocab.unknown_id), (writer.add_chat_template, vocab.chat_template))
        for add, value in optional:
            if value is not None:
                add(value)
        for stop in vocab.extra_stop_ids:
            writer.add_eot_token_id(stop)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


#: A tiny byte-level vocabulary: "a", "b", "ab", a space, an end-of-sequence and a turn-end control token.
TINY = GGUFVocab(model="gpt2", pre="gpt-2", tokens=["a", "b", "Ġ", "ab", "</s>", "<|end|>"],
                 token_types=[1, 1, 1, 1, 3, 3], merges=["a b"], eos_id=4)


# --- The real SmolLM2 file ------------------------------------------------------------------------


@pytest.mark.parametrize("kind", [*TEXTS, "chatml"])
def test_ids_match_transformers_and_decode_back(smollm2: GGUFTokenizer, reference, kind: str):
    text = CHATML if kind == "chatml" else TEXTS[kind]
    ids = smollm2.encode(text)
    assert ids == reference.encode(text, add_special_tokens=False)
    assert smollm2.decode(ids) == text


def test_special_tokens_are_one_id_each(smollm2: GGUFTokenizer):
    ids = smollm2.encode(CHATML)
    assert ids.count(1) == CHATML.count("<|im_start|>") == 3  # <|im_start|>
    assert ids.count(2) == CHATML.count("<|im_end|>") == 2  # <|im_end|>
    assert ids[:2] == [1, *smollm2.encode("system")]


def test_ids_and_fields_match_transformers(smollm2: GGUFTokenizer, reference, smollm2_gguf: Path):
    assert smollm2.name == str(smollm2_gguf.resolve())
    assert smollm2.vocab_size == len(reference) == 49152
    assert smollm2.eot_id == reference.eos_token_id == 2
    assert smollm2.bos_id == reference.bos_token_id == 1
    assert smollm2.special_tokens == tuple(sorted(i for i, t in reference.added_tokens_decoder.items() if t.special))
    assert smollm2.vocab.add_bos is False and smollm2.vocab.pre == "smollm" and len(smollm2.vocab.merges) == 48900
    assert smollm2.chat_template is not None and smollm2.chat_template.source == reference.chat_template


def test_stop_ids_include_the_turn_end(smollm2: GGUFTokenizer):
    assert 2 in smollm2.stop_ids  # <|im_end|>: EOS, and what the chat template ends a turn with
    assert smollm2.chat_template.stop_strings == ("<|im_end|>",)


def test_encode_batch_is_encode(smollm2: GGUFTokenizer):
    texts = [*TEXTS.values(), CHATML]
    assert smollm2.encode_batch(texts) == [smollm2.encode(text) for text in texts]


def test_end_of_text_is_the_vocabularys_own_token(smollm2: GGUFTokenizer, reference):
    # SmolLM2 has <|endoftext|> (id 0, its pretraining separator): the text is that one token.
    text = f"first document{END_OF_TEXT}second"
    ids = smollm2.encode(text)
    assert ids == reference.encode(text, add_special_tokens=False)
    assert ids.count(0) == 1 and smollm2.decode(ids) == text


def test_get_tokenizer_reads_the_file_once_and_by_model_name(smollm2: GGUFTokenizer, smollm2_gguf: Path):
    assert get_tokenizer(str(smollm2_gguf)) is smollm2
    assert get_tokenizer(smollm2.name) is smollm2  # name rebuilds it
    assert get_tokenizer("smollm2-135m-instruct") is smollm2


# --- Small files: fields, special cases, bad input --------------------------------------------------


def test_a_written_vocab_reads_back_identical(tmp_path: Path):
    vocab = dataclasses.replace(TINY, bos_id=4, pad_id=4, unknown_id=0, add_bos=True, extra_stop_ids=(5,),
                                chat_template="{% for m in messages %}{{ m.content }}<|end|>\n{% endfor %}")
    assert read_gguf_vocab(write_gguf(tmp_path / "tiny.gguf", vocab)) == vocab


def test_end_of_text_is_eot_without_such_a_token(tmp_path: Path):
    tokenizer = get_tokenizer(str(write_gguf(tmp_path / "tiny.gguf", TINY)))
    assert tokenizer.encode(f"ab{END_OF_TEXT}a b") == [3, 4, 0, 2, 1]
    assert tokenizer.encode_batch([f"b{END_OF_TEXT}"]) == [[1, 4]]


def test_stop_ids_from_eot_and_the_chat_template(tmp_path: Path):
    template = "{% for m in messages %}<|{{ m.role }}|>{{ m.content }}<|end|>\n{% endfor %}"
    tokenizer = GGUFTokenizer.from_vocab(dataclasses.replace(TINY, chat_template=template), "tiny")
    assert tokenizer.stop_ids == (4, 5)  # </s>, then the <|end|> that ends each turn
    assert GGUFTokenizer.from_vocab(TINY, "tiny").stop_ids == (4,)
    assert GGUFTokenizer.from_vocab(dataclasses.replace(TINY, extra_stop_ids=(5,)), "tiny").stop_ids == (4, 5)


def _one_line(err: pytest.ExceptionInfo) -> str:
    message = str(err.value)
    assert "\n" not in message
    return message


def test_bad_files_are_one_line(tmp_path: Path):
    whole = write_gguf(tmp_path / "whole.gguf", TINY).read_bytes()
    truncated = tmp_path / "truncated.gguf"
    truncated.write_bytes(whole[: len(whole) // 2])
    not_gguf = tmp_path / "notes.gguf"
    not_gguf.write_text("just some text, not a model\n" * 10)
    for path, problem in ((truncated, "the file is truncated or damaged"), (not_gguf, "is not a GGUF file")):
        with pytest.raises(ConfigError) as err:
            get_tokenizer(str(path))
        assert str(path) in _one_line(err) and problem in str(err.value)

    with pytest.raises(ConfigError) as err:
        get_tokenizer(str(write_gguf(tmp_path / "weights-only.gguf", None)))
    assert "has no tokenizer" in _one_line(err)

    with pytest.raises(ConfigError) as err:
        get_tokenizer(str(tmp_path / "missing.gguf"))
    assert "not found" in _one_line(err)


def test_unknown_pre_tokenizer_and_model_are_one_line(tmp_path: Path):
    path = write_gguf(tmp_path / "odd.gguf", dataclasses.replace(TINY, pre="not-a-pre-tokenizer"))
    with pytest.raises(ConfigError) as err:
        get_tokenizer(str(path))
    assert "'not-a-pre-tokenizer'" in _one_line(err) and str(path) in str(err.value)
    with pytest.raises(ConfigError) as err:
        GGUFTokenizer.from_vocab(dataclasses.replace(TINY, model="llama"), "spm")
    assert "'llama'" in _one_line(err)


def test_unknown_tokenizer_names_the_choices():
    with pytest.raises(ConfigError) as err:
        get_tokenizer("no-such-tokenizer")
    assert "smollm2-135m-instruct" in _one_line(err) and ".gguf" in str(err.value)


def test_default_pre_tokenizer_cuts_as_llama_cpp():
    # llama.cpp's "default": punctuation runs, then GPT-2's words, then digit runs, then digits in threes.
    tokenizer = GGUFTokenizer.from_vocab(dataclasses.replace(TINY, pre="default"), "tiny")
    pieces = [piece for piece, _ in tokenizer.backend.pre_tokenizer.pre_tokenize_str("Hello, world! 12345 ...?!")]
    assert pieces == ["Hello", ",", "Ġworld", "!", "Ġ", "123", "45", "Ġ", "...?!"]


# --- gguf_vocab round trips ------------------------------------------------------------------------

ROUND_TRIP_TEXTS = [*TEXTS.values(), f"one{END_OF_TEXT}two"]


@pytest.fixture(scope="module")
def gpt2_vocab() -> GGUFVocab:
    return gguf_vocab(get_tokenizer("gpt2"))


def test_gpt2_round_trip_is_tiktoken(gpt2_vocab: GGUFVocab):
    gpt2 = get_tokenizer("gpt2")
    fields = (gpt2_vocab.pre, gpt2_vocab.eos_id, gpt2_vocab.bos_id, len(gpt2_vocab.tokens))
    assert fields == ("gpt-2", 50256, 50256, 50257)
    assert gpt2_vocab.tokens[50256] == END_OF_TEXT and gpt2_vocab.token_types[50256] == gguf.TokenType.CONTROL
    # From the fields directly: test_a_written_vocab_reads_back_identical covers the file route.
    rebuilt = GGUFTokenizer.from_vocab(gpt2_vocab, "gpt2.gguf")
    assert gguf_vocab(rebuilt) is gpt2_vocab
    for text in ROUND_TRIP_TEXTS:
        assert rebuilt.encode(text) == gpt2.encode(text), text
        assert rebuilt.decode(rebuilt.encode(text)) == text


@pytest.mark.parametrize("pre", ["llama-bpe", "qwen2"])
def test_pre_tokenizers_cut_as_their_models_do(gpt2_vocab: GGUFVocab, pre: str):
    """GPT-2's vocabulary cut by Llama 3's / Qwen 2's expressions, as transformers lists them for
    these names, against tiktoken running the same expressions and ranks."""
    from transformers.integrations.gguf.gguf_tokenizer_mapping import GGUF_PRE_TOKENIZER_SPLITS

    assert pre_tokenizer(pre).splits == (GGUF_PRE_TOKENIZER_SPLITS[pre],)  # what tokenizer.json files carry
    ranks = get_tokenizer("gpt2").encoding._mergeable_ranks
    expected = tiktoken.Encoding(name=pre, pat_str=GGUF_PRE_TOKENIZER_SPLITS[pre], mergeable_ranks=ranks,
                                 special_tokens={END_OF_TEXT: 50256})
    tokenizer = GGUFTokenizer.from_vocab(dataclasses.replace(gpt2_vocab, pre=pre), pre)
    for text in ROUND_TRIP_TEXTS:
        assert tokenizer.encode(text) == expected.encode(text, allowed_special="all"), text
    digits = TEXTS["digits"]
    assert tokenizer.encode(digits) != get_tokenizer("gpt2").encode(digits)  # the cut matters


def _hf_directory(directory: Path, backend: tokenizers.Tokenizer, **settings) -> Path:
    directory.mkdir()
    backend.save(str(directory / "tokenizer.json"))
    (directory / "tokenizer_config.json").write_text(json.dumps(settings), encoding="utf-8")
    return directory


def test_hf_tokenizer_trained_byte_level_round_trip(verdict_path: Path, tmp_path: Path):
    bpe = tokenizers.Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = tokenizers.trainers.BpeTrainer(vocab_size=400, special_tokens=["<s>", END_OF_TEXT],
                                             initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    bpe.train([str(verdict_path)], trainer)
    source = get_tokenizer(str(_hf_directory(tmp_path / "tok", bpe, eos_token=END_OF_TEXT, bos_token="<s>")))
    vocab = gguf_vocab(source)
    assert (vocab.pre, vocab.eos_id, vocab.bos_id, vocab.token_types[:3]) == ("gpt-2", 1, 0, [3, 3, 1])
    rebuilt = GGUFTokenizer.from_vocab(vocab, "rebuilt")
    for text in [*ROUND_TRIP_TEXTS, verdict_path.read_text(encoding="utf-8")[:3000]]:
        assert rebuilt.encode(text) == source.encode(text), text[:40]


def test_hf_tokenizer_like_smollm2_converts_as_llama_cpp_did(smollm2: GGUFTokenizer, reference, tmp_path: Path):
    """SmolLM2's own tokenizer.json pipeline (digits one by one, then GPT-2's byte level), built from
    the file's vocabulary: its GGUF fields are those llama.cpp's converter wrote into the real file."""
    vocab = smollm2.vocab
    bpe = tokenizers.Tokenizer(models.BPE(vocab={t: i for i, t in enumerate(vocab.tokens)},
                                          merges=[tuple(m.split(" ")) for m in vocab.merges]))
    bpe.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                                 pre_tokenizers.ByteLevel(add_prefix_space=False)])
    bpe.decoder = decoders.ByteLevel()
    bpe.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in vocab.tokens[:17]])
    source = get_tokenizer(str(_hf_directory(tmp_path / "smollm2", bpe, eos_token="<|im_end|>",
                                             bos_token="<|im_start|>", pad_token="<|im_end|>",
                                             unk_token="<|endoftext|>", chat_template=reference.chat_template)))
    assert gguf_vocab(source) == vocab
    # Not <|endoftext|>: HFTokenizer makes that text its EOS (<|im_end|>), a GGUF tokenizer the
    # vocabulary's own <|endoftext|> token (as transformers does, above).
    for text in [*TEXTS.values(), CHATML]:
        assert smollm2.encode(text) == source.encode(text), text


def test_hf_tokenizer_like_llama3_is_llama_bpe(gpt2_vocab: GGUFVocab, tmp_path: Path):
    from transformers.integrations.gguf.gguf_tokenizer_mapping import GGUF_PRE_TOKENIZER_SPLITS

    bpe = tokenizers.Tokenizer(models.BPE(vocab={t: i for i, t in enumerate(gpt2_vocab.tokens)},
                                          merges=[tuple(m.split(" ")) for m in gpt2_vocab.merges], ignore_merges=True))
    bpe.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(GGUF_PRE_TOKENIZER_SPLITS["llama3"]), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    bpe.decoder = decoders.ByteLevel()
    bpe.add_special_tokens([END_OF_TEXT])
    source = get_tokenizer(str(_hf_directory(tmp_path / "llama3ish", bpe, eos_token=END_OF_TEXT)))
    vocab = gguf_vocab(source)
    assert vocab.pre == "llama-bpe"
    rebuilt = GGUFTokenizer.from_vocab(vocab, "rebuilt")
    for text in ROUND_TRIP_TEXTS:
        assert rebuilt.encode(text) == source.encode(text), text


def test_tokenizers_without_a_gguf_form_are_refused_in_one_line(tmp_path: Path):
    with pytest.raises(ConfigError) as err:
        gguf_vocab(ByteTokenizer())
    assert "byte tokenizer" in _one_line(err)

    word_level = tokenizers.Tokenizer(models.WordLevel({"a": 0, "</s>": 1}, unk_token="a"))
    with pytest.raises(ConfigError) as err:
        gguf_vocab(get_tokenizer(str(_hf_directory(tmp_path / "words", word_level, eos_token="</s>"))))
    assert "WordLevel" in _one_line(err)

    metaspace = tokenizers.Tokenizer(models.BPE({"a": 0, "▁": 1, "</s>": 2}, []))
    metaspace.pre_tokenizer = pre_tokenizers.Metaspace()
    with pytest.raises(ConfigError) as err:
        gguf_vocab(get_tokenizer(str(_hf_directory(tmp_path / "sentencepiece", metaspace, eos_token="</s>"))))
    assert "not a byte-level BPE" in _one_line(err)
