"""The tokenizer inside a GGUF file (llama.cpp's format), and any gptlab tokenizer as a GGUF vocabulary.

A GGUF has no ``tokenizer.json``: it stores a byte-level BPE as ``tokenizer.ggml.*`` metadata (the
tokens, their types, the merges, the special ids) plus the name of a pre-tokenizer
(``tokenizer.ggml.pre``), which llama.cpp maps to the regular expressions that cut text into words
before BPE. ``GGUFTokenizer`` rebuilds that tokenizer with Hugging Face's ``tokenizers``: the same
splits, in the same order, then byte-level BPE; control and user-defined tokens are matched whole.

``gguf_vocab`` goes the other way, for a GGUF export: the ``GGUFVocab`` of GPT-2's BPE, of a model
directory's byte-level ``tokenizer.json``, or of a ``GGUFTokenizer`` (its own).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import gguf
import tokenizers
from tokenizers import AddedToken, Regex, decoders, models, pre_tokenizers

from gptlab.errors import ConfigError, first_line
from gptlab.gguf_file import read_gguf
from gptlab.tokenizer.bpe import (
    END_OF_TEXT,
    GPT2_EOT_ID,
    GPT2_PATTERN,
    BPETokenizer,
    ByteTokenizer,
    Tokenizer,
    gpt2_bpe_files,
)
from gptlab.tokenizer.chat_template import ChatTemplate
from gptlab.tokenizer.gguf_vocab import GGUFVocab
from gptlab.tokenizer.hf import HF_TOKENIZER_FILE, HFTokenizer, json_object, token_text

#: ``tokenizer.ggml.model`` of a byte-level BPE, the one kind of GGUF vocabulary gptlab reads and writes.
BYTE_LEVEL_BPE = "gpt2"
KEYS = gguf.Keys.Tokenizer
NORMAL, CONTROL, USER_DEFINED, UNUSED = (int(t) for t in (gguf.TokenType.NORMAL, gguf.TokenType.CONTROL,
                                                          gguf.TokenType.USER_DEFINED, gguf.TokenType.UNUSED))
#: Token types matched whole in the text (``<|im_start|>``), as llama.cpp does, instead of going through BPE.
ADDED_TYPES = (CONTROL, USER_DEFINED)


@dataclass(frozen=True)
class PreTokenizer:
    """How llama.cpp cuts text into words before BPE, for one family of ``tokenizer.ggml.pre`` names.

    ``splits`` are regular expressions applied in turn: each cuts every piece the one before left
    into its matches and the text between them. ``ignore_merges``: a word that is itself a token is
    that token, whatever the merges would make of it (Llama 3).
    """

    names: tuple[str, ...]
    splits: tuple[str, ...]
    ignore_merges: bool = False

    @property
    def name(self) -> str:
        """The name gptlab writes for this family: its first."""
        return self.names[0]

    def hf_pre_tokenizer(self) -> pre_tokenizers.PreTokenizer:
        """The same cuts as a ``tokenizers`` pre-tokenizer, then the byte-to-unicode mapping of byte-level BPE."""
        splits = [pre_tokenizers.Split(Regex(pattern), behavior="isolated") for pattern in self.splits]
        return pre_tokenizers.Sequence([*splits, pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])


#: One digit per piece (SmolLM, StarCoder, Qwen 2's digits).
DIGIT = r"\p{N}"
LLAMA3_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                  r"|\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                 r"|\s*[\r\n]+|\s+(?!\S)|\s+")

#: llama.cpp's pre-tokenizers that gptlab knows (``src/llama-vocab.cpp``), grouped by identical splits.
PRE_TOKENIZERS = (
    PreTokenizer(("gpt-2", "phi-2", "mpt", "olmo", "jais"), (GPT2_PATTERN,)),
    PreTokenizer(("smollm", "starcoder", "refact", "command-r", "codeshell", "exaone", "minerva-7b"),
                 (DIGIT, GPT2_PATTERN)),
    PreTokenizer(("llama-bpe", "llama3", "llama-v3", "falcon3", "falcon-h1", "pixtral"), (LLAMA3_PATTERN,),
                 ignore_merges=True),
    PreTokenizer(("qwen2", "deepseek-r1-qwen", "stablelm2", "megrez", "hunyuan"), (QWEN2_PATTERN,)),
    # Punctuation runs, GPT-2's words, digit runs, then those in threes: older GGUFs without a name.
    PreTokenizer(("default",), (r"[\p{P}\$\+<=>\^~\|]+", GPT2_PATTERN, r"\p{N}+", r"[0-9][0-9][0-9]")),
)
_BY_NAME = {name: pre for pre in PRE_TOKENIZERS for name in pre.names}


def pre_tokenizer(name: str, source: str = "a GGUF vocabulary") -> PreTokenizer:
    """The pre-tokenizer llama.cpp runs for ``tokenizer.ggml.pre`` = ``name`` (``source``: whose, for errors)."""
    if name not in _BY_NAME:
        raise ConfigError(f"{source} names the pre-tokenizer {name!r} (tokenizer.ggml.pre), unknown to gptlab; "
                          f"it knows {', '.join(_BY_NAME)} (add more in gptlab.tokenizer.gguf.PRE_TOKENIZERS)")
    return _BY_NAME[name]


class GGUFTokenizer:
    """A GGUF file's byte-level BPE (``tokenizer.ggml.model`` = ``gpt2``), with its special tokens
    and chat template.

    ``encode`` adds no BOS (gptlab joins encoded pieces itself) and matches control and
    user-defined tokens whole, so ``<|im_start|>`` is one id. The text ``<|endoftext|>``, gptlab's
    document separator, is the vocabulary's token of that name when it has one (SmolLM2's id 0, its
    pretraining separator), else ``eot_id``, the GGUF's EOS. ``stop_ids`` end generation: EOS, the
    GGUF's end-of-turn/message ids, and the control token that ends a turn in the chat template.
    ``name`` is the file's absolute path, so ``get_tokenizer(name)`` rebuilds it.
    """

    def __init__(self, vocab: GGUFVocab, backend: tokenizers.Tokenizer, name: str) -> None:
        self.vocab = vocab
        self.backend = backend
        self.name = name
        self.vocab_size = len(vocab.tokens)
        self.eot_id = vocab.eos_id
        self.bos_id = vocab.bos_id
        self.special_tokens = tuple(i for i, kind in enumerate(vocab.token_types) if kind == CONTROL)
        self.chat_template = _chat_template(vocab)
        self.stop_ids = self._stop_ids()
        matched = any(t == END_OF_TEXT and kind in ADDED_TYPES for t, kind in zip(vocab.tokens, vocab.token_types))
        #: The id the text ``<|endoftext|>`` becomes where the backend does not match it whole itself.
        self._end_of_text_id = None if matched else _token_ids(vocab).get(END_OF_TEXT, self.eot_id)

    @classmethod
    def from_file(cls, path: str | Path) -> GGUFTokenizer:
        """The tokenizer of the GGUF file at ``path`` (only its metadata is read, memory-mapped)."""
        path = Path(path).expanduser().resolve()
        return cls.from_vocab(read_gguf_vocab(path), str(path))

    @classmethod
    def from_vocab(cls, vocab: GGUFVocab, name: str) -> GGUFTokenizer:
        """The tokenizer ``vocab`` describes, as llama.cpp would run it."""
        _check_vocab(vocab, name)
        return cls(vocab, _backend(vocab, name), name)

    def encode(self, text: str) -> list[int]:
        if self._end_of_text_id is None:
            return self.backend.encode(text, add_special_tokens=False).ids
        ids: list[int] = []
        for i, piece in enumerate(text.split(END_OF_TEXT)):
            ids.extend([self._end_of_text_id] * bool(i) + self.backend.encode(piece, add_special_tokens=False).ids)
        return ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        if self._end_of_text_id is None:  # the backend's batch runs on all cores
            return [encoding.ids for encoding in self.backend.encode_batch(texts, add_special_tokens=False)]
        return [self.encode(text) for text in texts]

    def decode(self, ids: Sequence[int]) -> str:
        return self.backend.decode(list(ids), skip_special_tokens=False)

    def save(self, directory: Path) -> None:
        """Write this tokenizer as a Hugging Face tokenizer directory into ``directory`` (a model export):
        ``tokenizer.json`` (the same pipeline) and ``tokenizer_config.json`` naming BOS, EOS and the
        chat template, so ``transformers`` and ``get_tokenizer(directory)`` both read it."""
        self.backend.save(str(Path(directory) / HF_TOKENIZER_FILE))
        settings = {"tokenizer_class": "PreTrainedTokenizerFast", "eos_token": self.vocab.tokens[self.eot_id],
                    "add_bos_token": self.vocab.add_bos, "clean_up_tokenization_spaces": False}
        if self.bos_id is not None:
            settings["bos_token"] = self.vocab.tokens[self.bos_id]
        if self.vocab.pad_id is not None:
            settings["pad_token"] = self.vocab.tokens[self.vocab.pad_id]
        if self.vocab.chat_template is not None:
            settings["chat_template"] = self.vocab.chat_template
        (Path(directory) / "tokenizer_config.json").write_text(json.dumps(settings, indent=2, ensure_ascii=False) + "\n",
                                                               encoding="utf-8")

    def _stop_ids(self) -> tuple[int, ...]:
        """EOS, the GGUF's other stop ids, then the added token the chat template ends a turn with."""
        stops = [self.vocab.eos_id, *self.vocab.extra_stop_ids]
        if self.chat_template is not None:
            added = {self.vocab.tokens[i]: i for i, kind in enumerate(self.vocab.token_types) if kind in ADDED_TYPES}
            stops.extend(added[text] for text in self.chat_template.stop_strings if text in added)
        return tuple(dict.fromkeys(stops))


def _token_ids(vocab: GGUFVocab) -> dict[str, int]:
    """Each token's id; a token listed twice keeps its first (llama.cpp looks text up the same way)."""
    ids: dict[str, int] = {}
    for i, token in enumerate(vocab.tokens):
        ids.setdefault(token, i)
    return ids


def _chat_template(vocab: GGUFVocab) -> ChatTemplate | None:
    if vocab.chat_template is None:
        return None
    bos = vocab.tokens[vocab.bos_id] if vocab.bos_id is not None else None
    return ChatTemplate(vocab.chat_template, bos_token=bos, eos_token=vocab.tokens[vocab.eos_id])


def _check_vocab(vocab: GGUFVocab, name: str) -> None:
    """Refuse, in one line, a vocabulary that llama.cpp could not run either."""
    _check_model(vocab.model, name)
    if len(vocab.token_types) != len(vocab.tokens):
        raise ConfigError(f"{name}: {len(vocab.token_types)} token types for {len(vocab.tokens)} tokens; "
                          "the file is damaged, convert the model again")
    ids = {"eos_id": (vocab.eos_id,), "bos_id": (vocab.bos_id,), "pad_id": (vocab.pad_id,),
           "unknown_id": (vocab.unknown_id,), "extra_stop_ids": vocab.extra_stop_ids}
    for field, values in ids.items():
        for value in (v for v in values if v is not None):
            if not 0 <= value < len(vocab.tokens):
                raise ConfigError(f"{name}: {field} {value} is outside its {len(vocab.tokens)} tokens; "
                                  "the file is damaged, convert the model again")


def _check_model(model: str, name: str) -> None:
    if model != BYTE_LEVEL_BPE:
        raise ConfigError(f"{name}: tokenizer.ggml.model is {model!r}; gptlab reads byte-level BPE "
                          f"({BYTE_LEVEL_BPE!r}) GGUF vocabularies only, not SentencePiece or others")


def _merge_pair(merge: str, name: str) -> tuple[str, str]:
    """``"Ġ t"`` as ``("Ġ", "t")``: cut at the first space after the first character, as llama.cpp does."""
    cut = merge.find(" ", 1)
    if cut < 0:
        raise ConfigError(f"{name}: the merge {merge!r} is not two tokens separated by a space; "
                          "convert the model again")
    return merge[:cut], merge[cut + 1:]


def _backend(vocab: GGUFVocab, name: str) -> tokenizers.Tokenizer:
    """The ``tokenizers`` pipeline of ``vocab``: llama.cpp's splits, byte-level BPE, whole added tokens."""
    pre = pre_tokenizer(vocab.pre, name)
    merges = [_merge_pair(merge, name) for merge in vocab.merges]
    try:
        bpe = models.BPE(vocab=_token_ids(vocab), merges=merges, ignore_merges=pre.ignore_merges)
    except Exception as err:  # noqa: BLE001 - the Rust side raises a bare Exception
        raise ConfigError(f"{name}: its BPE merges do not fit its tokens ({first_line(err)}); "
                          "convert the model again") from None
    backend = tokenizers.Tokenizer(bpe)
    backend.pre_tokenizer = pre.hf_pre_tokenizer()
    backend.decoder = decoders.ByteLevel()
    backend.add_special_tokens(_added(vocab, CONTROL, special=True))
    backend.add_tokens(_added(vocab, USER_DEFINED, special=False))
    return backend


def _added(vocab: GGUFVocab, kind: int, special: bool) -> list[AddedToken]:
    return [AddedToken(token, special=special, normalized=False)
            for token, token_kind in zip(vocab.tokens, vocab.token_types) if token_kind == kind]


# --- Reading a GGUF file ---------------------------------------------------------------------------


def read_gguf_vocab(path: Path) -> GGUFVocab:
    """The ``tokenizer.ggml.*`` fields of the GGUF file at ``path``."""
    fields = _tokenizer_fields(path)
    if KEYS.LIST not in fields:
        raise ConfigError(f"{path} has no tokenizer (no {KEYS.LIST} in its metadata); use a GGUF file that embeds "
                          "its vocabulary, or name another tokenizer")
    model = str(fields.get(KEYS.MODEL, ""))
    _check_model(model, str(path))
    if KEYS.MERGES not in fields:
        raise ConfigError(f"{path} has no BPE merges ({KEYS.MERGES}); convert the model again with llama.cpp")
    tokens = list(fields[KEYS.LIST])
    eos_id = _optional_id(fields, KEYS.EOS_ID)
    eos_id = eos_id if eos_id is not None else _optional_id(fields, KEYS.EOT_ID)
    if eos_id is None:
        raise ConfigError(f"{path} names no end-of-text token ({KEYS.EOS_ID}); convert the model again")
    others = (_optional_id(fields, key) for key in (KEYS.EOT_ID, KEYS.EOM_ID))
    return GGUFVocab(
        model=model,
        pre=str(fields.get(KEYS.PRE, "default")),  # llama.cpp's choice for files older than the name
        tokens=tokens,
        token_types=[int(kind) for kind in fields.get(KEYS.TOKEN_TYPE, [NORMAL] * len(tokens))],
        merges=list(fields[KEYS.MERGES]),
        eos_id=eos_id,
        bos_id=_optional_id(fields, KEYS.BOS_ID),
        pad_id=_optional_id(fields, KEYS.PAD_ID),
        unknown_id=_optional_id(fields, KEYS.UNK_ID),
        add_bos=bool(fields.get(KEYS.ADD_BOS, False)),
        chat_template=fields.get(KEYS.CHAT_TEMPLATE),
        extra_stop_ids=tuple(dict.fromkeys(i for i in others if i is not None and i != eos_id)),
    )


def _tokenizer_fields(path: Path) -> dict[str, Any]:
    """The file's ``tokenizer.*`` metadata as Python values."""
    reader = read_gguf(path)
    return {key: field.contents() for key, field in reader.fields.items() if key.startswith("tokenizer.")}


def _optional_id(fields: dict[str, Any], key: str) -> int | None:
    value = fields.get(key)
    return None if value is None else int(value)


# --- Writing: any gptlab tokenizer as a GGUF vocabulary ------------------------------------------


def gguf_vocab(tokenizer: Tokenizer) -> GGUFVocab:
    """The ``tokenizer.ggml.*`` fields that make ``tokenizer`` part of a GGUF export."""
    if isinstance(tokenizer, GGUFTokenizer):
        return tokenizer.vocab
    if isinstance(tokenizer, BPETokenizer) and tokenizer.encoding.name == "gpt2":
        return gpt2_vocab()
    if isinstance(tokenizer, HFTokenizer):
        return hf_vocab(tokenizer)
    if isinstance(tokenizer, ByteTokenizer):
        raise ConfigError("the byte tokenizer (257 ids: raw UTF-8 bytes and <|endoftext|>) has no GGUF form: "
                          "llama.cpp's byte-level BPE numbers bytes its own way; train with data.tokenizer=gpt2 "
                          "to export a GGUF")
    raise ConfigError(f"tokenizer {tokenizer.name!r} ({type(tokenizer).__name__}) has no GGUF form; "
                      "GGUF exports take gpt2, a GGUF file's tokenizer, or a byte-level BPE tokenizer.json")


def gpt2_vocab() -> GGUFVocab:
    """GPT-2's BPE from the verified files tiktoken's encoding is built from: tokens in
    ``encoder.json``'s order (already in GPT-2's byte-to-unicode alphabet), merges in ``vocab.bpe``'s."""
    encoder_path, merges_path = gpt2_bpe_files()
    encoder: dict[str, int] = json.loads(encoder_path.read_text(encoding="utf-8"))
    tokens = sorted(encoder, key=encoder.__getitem__)
    merges = [line for line in merges_path.read_text(encoding="utf-8").split("\n")[1:] if line]
    return GGUFVocab(
        model=BYTE_LEVEL_BPE, pre=PRE_TOKENIZERS[0].name, tokens=tokens,
        token_types=[CONTROL if token == END_OF_TEXT else NORMAL for token in tokens],
        merges=merges, eos_id=GPT2_EOT_ID, bos_id=GPT2_EOT_ID,
    )


#: Where a model directory keeps its chat template: its own file (newer exports), else tokenizer_config.json.


def hf_vocab(tokenizer: HFTokenizer) -> GGUFVocab:
    """A model directory's byte-level BPE ``tokenizer.json`` as GGUF fields, as llama.cpp's converter
    writes them: added tokens are control (special) or user-defined tokens, ids the file skips are
    ``[PAD<id>]`` unused tokens; BOS and the chat template come from ``tokenizer_config.json``."""
    spec = json.loads(tokenizer.tokenizer.to_str())
    pre = _hf_pre_tokenizer(spec, tokenizer.name)
    tokens: list[str | None] = [None] * tokenizer.vocab_size
    types = [NORMAL] * tokenizer.vocab_size
    for token, i in spec["model"]["vocab"].items():
        tokens[i] = token
    for added in spec.get("added_tokens", []):
        tokens[added["id"]] = added["content"]
        types[added["id"]] = CONTROL if added.get("special") else USER_DEFINED
    for i in (i for i, token in enumerate(tokens) if token is None):
        tokens[i], types[i] = f"[PAD{i}]", UNUSED
    merges = [merge if isinstance(merge, str) else " ".join(merge) for merge in spec["model"]["merges"]]
    directory = Path(tokenizer.name)
    settings = json_object(directory / "tokenizer_config.json")
    bos_id = _hf_token_id(tokenizer, settings.get("bos_token"))
    return GGUFVocab(
        model=BYTE_LEVEL_BPE, pre=pre.name, tokens=tokens, token_types=types,  # type: ignore[arg-type]
        merges=merges, eos_id=tokenizer.eot_id, bos_id=bos_id,
        pad_id=_hf_token_id(tokenizer, settings.get("pad_token")),
        unknown_id=_hf_token_id(tokenizer, settings.get("unk_token")),
        add_bos=_hf_adds_bos(tokenizer, spec, settings, bos_id),
        chat_template=tokenizer.chat_template.source if tokenizer.chat_template is not None else None,
    )


def _hf_token_id(tokenizer: HFTokenizer, value: Any) -> int | None:
    """The id of a ``tokenizer_config.json`` token entry (a string or an ``{"content": ...}`` dict)."""
    text = token_text(value)
    return tokenizer.tokenizer.token_to_id(text) if text is not None else None


def _hf_adds_bos(tokenizer: HFTokenizer, spec: dict[str, Any], settings: dict[str, Any], bos_id: int | None) -> bool:
    """``add_bos_token`` of ``tokenizer_config.json``, else whether the post-processor starts with BOS (Llama 3)."""
    if isinstance(settings.get("add_bos_token"), bool):
        return settings["add_bos_token"]
    first = ((spec.get("post_processor") or {}).get("single") or [{}])[0]
    special = first.get("SpecialToken", {}).get("id")
    return bos_id is not None and isinstance(special, str) and tokenizer.tokenizer.token_to_id(special) == bos_id


def _hf_pre_tokenizer(spec: dict[str, Any], name: str) -> PreTokenizer:
    """The llama.cpp pre-tokenizer that cuts text as ``tokenizer.json``'s pipeline does, refusing any
    pipeline llama.cpp would tokenize differently (one line naming what differs)."""
    model = spec["model"]
    where = str(Path(name) / HF_TOKENIZER_FILE)
    if model.get("type") != "BPE":
        raise ConfigError(f"{where} is a {model.get('type')} tokenizer; a GGUF export needs a byte-level BPE")
    options = {key: model.get(key) for key in ("dropout", "continuing_subword_prefix", "end_of_word_suffix")}
    if any(options.values()) or model.get("byte_fallback"):
        raise ConfigError(f"{where}: BPE options {options} / byte_fallback have no GGUF form; a GGUF export needs a "
                          "plain byte-level BPE")
    normalizer = (spec.get("normalizer") or {}).get("type")
    if normalizer not in (None, "NFC"):  # llama.cpp's converter drops NFC too (Qwen 2): text is NFC already
        raise ConfigError(f"{where}: its {normalizer} normalizer has no GGUF form; a GGUF export needs a byte-level "
                          "BPE without one")
    splits = _hf_splits(spec.get("pre_tokenizer"), where)
    for pre in PRE_TOKENIZERS:
        if pre.splits == splits and pre.ignore_merges == bool(model.get("ignore_merges")):
            return pre
    raise ConfigError(f"{where}: its pre-tokenizer matches none of llama.cpp's that gptlab writes "
                      f"({', '.join(p.name for p in PRE_TOKENIZERS)}); its GGUF would tokenize differently")


def _hf_splits(step: dict[str, Any] | None, where: str) -> tuple[str, ...]:
    """The regular expressions a ``tokenizer.json`` pre-tokenizer cuts text with, ending in byte-level."""
    steps = step.get("pretokenizers", []) if step and step.get("type") == "Sequence" else [step] if step else []
    last = steps[-1] if steps else {}
    if last.get("type") != "ByteLevel" or last.get("add_prefix_space"):
        raise ConfigError(f"{where} is not a byte-level BPE (its pre-tokenizer does not end in ByteLevel without a "
                          "prefix space); a GGUF export needs one")
    splits = [_hf_split(s, where) for s in steps[:-1]]
    return (*splits, GPT2_PATTERN) if last.get("use_regex", True) else tuple(splits)


def _hf_split(step: dict[str, Any], where: str) -> str:
    """One cutting step as the regular expression llama.cpp would run for it."""
    if step.get("type") == "Digits" and step.get("individual_digits"):
        return DIGIT
    pattern = (step.get("pattern") or {}).get("Regex")
    if step.get("type") == "Split" and pattern and step.get("behavior") == "Isolated" and not step.get("invert"):
        return pattern
    raise ConfigError(f"{where}: its pre-tokenizer step {step.get('type')} has no llama.cpp form; a GGUF export "
                      "needs regular-expression splits and ByteLevel")
