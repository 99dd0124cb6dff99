"""Training byte-level BPE two ways (from scratch and Hugging Face ``tokenizers``) to one
``tokenizer.json``, the from-scratch encoder against tiktoken on GPT-2, and ``gptlab-tokenizer``."""

from __future__ import annotations

import inspect
import json
import json.decoder
import random
import unicodedata
from collections import Counter
from pathlib import Path

import pytest
import tokenizers
from tokenizers import pre_tokenizers

from gptlab.cli.tokenizer import main
from gptlab.tokenizer import END_OF_TEXT, get_tokenizer, gpt2_encoding
from gptlab.tokenizer.bpe import gpt2_bpe_files
from gptlab.tokenizer.bpe_train import BYTE_TO_CHAR, ByteLevelBPE, pretokenize, train_bpe
from gptlab.tokenizer.train import train_tokenizer

MERGES = 500
VIETNAMESE = ("Tiếng Việt có sáu thanh điệu: ngang, huyền, sắc, hỏi, ngã, nặng. Người ta nói rằng "
              "học một ngôn ngữ mới giống như mở thêm một cánh cửa; Nguyễn Thị Ngọc Ánh đã đọc được "
              "những dòng chữ ấy ở Hà Nội, Huế và Thành phố Hồ Chí Minh.")
#: Text that byte-level BPE must carry through unchanged: combining marks, emoji sequences joined by
#: zero-width joiners, CJK, Vietnamese (precomposed and decomposed), other scripts, odd whitespace.
UNICODE_BATTERY = "\n".join([
    "e\u0301 a\u0300\u0323 Z\u0351\u0362\u036b\u0489a\u0310l\u0346g\u0313o\u0315 ﬁ ǅ Å Å",
    "👩‍👩‍👧‍👦 👨🏽‍💻 🏳️‍🌈 🏴‍☠️ 🇻🇳🇯🇵 ❤️‍🔥 🫱🏿‍🫲🏻 1️⃣ 👍🏾",
    "漢字かなカナ 中文测试：你好，世界！ 한국어 문장입니다 〜、。",
    VIETNAMESE, unicodedata.normalize("NFD", VIETNAMESE),
    "العربية עברית हिन्दी ภาษาไทย Ελληνικά Русский ქართული",
    "tabs\tand\u00a0nbsp\u3000ideographic  space\r\nCRLF \u200b zero-width \ufeff bom \x00\x07 controls",
    f"documents{END_OF_TEXT}joined{END_OF_TEXT} <|endoftext|>x 𝔘𝔫𝔦𝔠𝔬𝔡𝔢 𓀀 \U0010fffd",
])


def random_unicode(n: int, seed: int = 0) -> str:
    """``n`` code points drawn from every plane, surrogates left out (not encodable as UTF-8)."""
    rng = random.Random(seed)
    out = []
    while len(out) < n:
        c = rng.choice([rng.randrange(0x80), rng.randrange(0x800), rng.randrange(0x10000), rng.randrange(0x110000)])
        if not 0xD800 <= c < 0xE000:
            out.append(chr(c))
    return "".join(out)


@pytest.fixture(scope="module")
def verdict(verdict_path: Path) -> str:
    text = verdict_path.read_text(encoding="utf-8")
    assert len(text.encode("utf-8")) >= 20_000
    return text


@pytest.fixture(scope="module")
def trained(verdict: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The verdict's first 500 merges, learned both ways (256 bytes + <|endoftext|> + 500)."""
    root = tmp_path_factory.mktemp("trained")
    return {impl: train_tokenizer([verdict], 257 + MERGES, root / impl, impl) for impl in ("scratch", "fast")}


def merges_of(directory: Path) -> list[tuple[str, str]]:
    merges = json.loads((directory / "tokenizer.json").read_text(encoding="utf-8"))["model"]["merges"]
    return [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in merges]


def test_the_byte_alphabet_is_gpt2s_and_tokenizers() -> None:
    assert sorted(BYTE_TO_CHAR.values()) == sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = json.loads(gpt2_bpe_files()[0].read_text(encoding="utf-8"))  # encoder.json: token -> id
    assert all(gpt2_encoding().decode_single_token_bytes(vocab[c]) == bytes([b]) for b, c in BYTE_TO_CHAR.items())


def test_scratch_and_fast_learn_the_same_500_merges_on_the_verdict(trained: dict[str, Path]) -> None:
    scratch, fast = merges_of(trained["scratch"]), merges_of(trained["fast"])
    assert len(fast) == MERGES
    assert scratch == fast
    # One format: the two files are the same document, vocabulary and special tokens included.
    assert (json.loads((trained["scratch"] / "tokenizer.json").read_text(encoding="utf-8"))
            == json.loads((trained["fast"] / "tokenizer.json").read_text(encoding="utf-8")))


def test_ties_are_broken_as_tokenizers_breaks_them(tmp_path: Path) -> None:
    """A corpus of short random words over a few letters, where most pair counts tie (overlapping
    runs such as ``aaa`` included): every merge, in order, as ``BpeTrainer`` learns them."""
    rng = random.Random(7)
    words = ["".join(rng.choice("aabcé ") for _ in range(rng.randint(1, 6))) for _ in range(400)]
    text = " ".join(words)
    learned = train_bpe([text], 400).merges
    fast = merges_of(train_tokenizer([text], 400, tmp_path / "fast", "fast"))
    assert len(learned) > 50 and learned == fast
    pairs: Counter[tuple[str, str]] = Counter()
    for word, count in Counter(pretokenize(text)).items():
        for pair in zip(word, word[1:]):
            pairs[pair] += count
    top = [count for _, count in pairs.most_common(30)]
    assert len(set(top)) < len(top), "the corpus should hold tied pairs"


def test_min_frequency_stops_both_alike(verdict: str, tmp_path: Path) -> None:
    dirs = [train_tokenizer([verdict], 5000, tmp_path / impl, impl, min_frequency=3) for impl in ("scratch", "fast")]
    assert merges_of(dirs[0]) == merges_of(dirs[1])
    assert 100 < len(merges_of(dirs[0])) < 5000 - 257


def test_both_encode_the_corpus_alike_and_round_trip_any_unicode(trained: dict[str, Path], verdict: str) -> None:
    fast = get_tokenizer(str(trained["fast"]))
    scratch = ByteLevelBPE.load(str(trained["scratch"]))
    assert fast.eot_id == scratch.eot_id == fast.tokenizer.token_to_id(END_OF_TEXT)
    for text in (verdict, UNICODE_BATTERY, random_unicode(3000)):
        ids = fast.encode(text)
        assert scratch.encode(text) == ids
        assert get_tokenizer(str(trained["scratch"])).encode(text) == ids
        assert fast.decode(ids) == scratch.decode(ids) == text
    assert fast.encode(f"a{END_OF_TEXT}b").count(fast.eot_id) == 1


def test_gpt2_through_the_from_scratch_encoder_is_tiktoken(verdict: str) -> None:
    code = inspect.getsource(json.decoder) + inspect.getsource(random)
    battery = "\n".join([verdict, UNICODE_BATTERY, code, random_unicode(2000, seed=1), "   \n\n\t 12345 1,000.5 I'm"])
    assert len(battery.encode("utf-8")) >= 20_000
    scratch, tiktoken = ByteLevelBPE.load("gpt2"), gpt2_encoding()
    ids = scratch.encode(battery)
    assert ids == tiktoken.encode(battery, allowed_special={END_OF_TEXT})
    assert scratch.decode(ids) == battery
    assert (scratch.vocab_size, scratch.eot_id) == (tiktoken.n_vocab, tiktoken.eot_token)


def one_error_line(err: str) -> str:
    assert err.startswith("gptlab-tokenizer: error: ") and err.count("\n") == 1, err
    return err


def test_the_cli_trains_encodes_decodes_and_measures(verdict_path: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "tok"
    assert main(["train", str(verdict_path), "--vocab-size", "600", "--out", str(out), "--impl", "scratch"]) == 0
    assert "model.vocab_size=600" in capsys.readouterr().out
    assert main(["encode", "Every effort moves you", "--tokenizer", str(out)]) == 0
    ids = capsys.readouterr().out.split()
    assert main(["decode", *ids, "--tokenizer", str(out), "--impl", "scratch"]) == 0
    assert capsys.readouterr().out == "Every effort moves you\n"
    assert main(["stats", str(verdict_path), "--tokenizer", "gpt2"]) == 0
    text = verdict_path.read_text(encoding="utf-8")
    tokens = len(gpt2_encoding().encode(text))
    line = capsys.readouterr().out
    assert f"{len(text.encode()) / tokens:.3f} bytes/token" in line
    assert f"{tokens / len(text.split()):.3f} tokens/word" in line
    assert f"{len(set(gpt2_encoding().encode(text))):,} of 50,257 ids used" in line


@pytest.mark.parametrize("impl", ["scratch", "fast"])
def test_bad_input_gets_one_line(impl: str, tmp_path: Path, capsys) -> None:
    empty, latin1 = tmp_path / "empty.txt", tmp_path / "latin1.txt"
    empty.write_text("")
    latin1.write_bytes("café crème".encode("latin-1"))
    train = ["train", "--out", str(tmp_path / "out"), "--impl", impl]
    cases = {
        "holds no text": [*train, str(empty), "--vocab-size", "300"],
        "at least 257": [*train, str(empty), "--vocab-size", "256"],
        "is not UTF-8": [*train, str(latin1), "--vocab-size", "300"],
    }
    for expected, argv in cases.items():
        assert main(argv) == 2
        assert expected in one_error_line(capsys.readouterr().err)
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    (corrupt / "tokenizer.json").write_text('{"model": {"type": "BPE", "vocab": {')
    assert main(["encode", "hi", "--tokenizer", str(corrupt), "--impl", impl]) == 2
    assert "cannot read" in one_error_line(capsys.readouterr().err)
    assert not (tmp_path / "out").exists()


def test_tokenizers_reads_the_file_without_gptlab(trained: dict[str, Path]) -> None:
    tok = tokenizers.Tokenizer.from_file(str(trained["scratch"] / "tokenizer.json"))
    assert tok.decode(tok.encode(UNICODE_BATTERY).ids, skip_special_tokens=False) == UNICODE_BATTERY
