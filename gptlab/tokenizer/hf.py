"""A model directory's own tokenizer (Llama, Qwen...): its ``tokenizer.json``, read offline with
Hugging Face's ``tokenizers`` library."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

import tokenizers

from gptlab.errors import ConfigError
from gptlab.tokenizer.bpe import END_OF_TEXT
from gptlab.tokenizer.chat_template import ChatTemplate

#: The file that makes a directory a tokenizer (``data.tokenizer=/path/to/model-dir``).
HF_TOKENIZER_FILE = "tokenizer.json"
#: Where a Hugging Face directory may keep its chat template apart from ``tokenizer_config.json``.
CHAT_TEMPLATE_FILE = "chat_template.jinja"


class HFTokenizer:
    """A Hugging Face ``tokenizer.json``, read offline with the ``tokenizers`` library.

    ``encode`` adds no special tokens (no BOS): gptlab joins encoded pieces itself, as with GPT-2.
    The text ``<|endoftext|>``, gptlab's document separator, becomes ``eot_id``. ``eot_id`` is, in
    this order, ``tokenizer_config.json``'s ``eos_token``, ``generation_config.json``'s then
    ``config.json``'s ``eos_token_id`` (the first, if a list), else an ``<|endoftext|>`` token.
    ``name`` is the directory's absolute path, so ``get_tokenizer(name)`` rebuilds it.
    """

    def __init__(self, directory: Path) -> None:
        self.name = str(directory)
        try:
            self.tokenizer = tokenizers.Tokenizer.from_file(str(directory / HF_TOKENIZER_FILE))
        except Exception as err:  # noqa: BLE001 - the Rust side raises a bare Exception
            raise ConfigError(f"cannot read {directory / HF_TOKENIZER_FILE}: {str(err).splitlines()[0]}") from None
        self.vocab_size = max(self.tokenizer.get_vocab(with_added_tokens=True).values()) + 1
        self.eot_id = self._eos_id(directory)
        #: ``tokenizer_config.json``'s ``bos_token`` (what ``transformers`` calls ``bos_token_id``), if it names one.
        bos = token_text(json_object(directory / "tokenizer_config.json").get("bos_token"))
        self.bos_id: int | None = self.tokenizer.token_to_id(bos) if bos is not None else None
        self.chat_template = _chat_template(directory, self.tokenizer.id_to_token(self.eot_id))

    #: Where the end-of-text token is looked up, in this order, and under which key.
    EOS_SOURCES = {"tokenizer_config.json": "eos_token", "generation_config.json": "eos_token_id",
                   "config.json": "eos_token_id"}

    def _eos_id(self, directory: Path) -> int:
        for file, key in self.EOS_SOURCES.items():
            value = json_object(directory / file).get(key)
            value = value[0] if isinstance(value, list) and value else value
            text = token_text(value)
            found = self.tokenizer.token_to_id(text) if text is not None else value
            if isinstance(found, int):
                return found
        found = self.tokenizer.token_to_id(END_OF_TEXT)
        if found is None:
            raise ConfigError(f"{directory} names no end-of-text token; set eos_token in its tokenizer_config.json")
        return found

    def encode(self, text: str) -> list[int]:
        ids: list[int] = []
        for i, piece in enumerate(text.split(END_OF_TEXT)):
            ids.extend([self.eot_id] * bool(i) + self.tokenizer.encode(piece, add_special_tokens=False).ids)
        return ids

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=False)

    #: The source directory's files an export copies beside ``tokenizer.json``; not its ``config.json``
    #: (that is the model's, and the export writes its own), and ``tokenizer_config.json`` is rewritten.
    COMPANION_FILES = ("special_tokens_map.json", "generation_config.json", CHAT_TEMPLATE_FILE)

    def save(self, directory: Path) -> None:
        """Write the files that rebuild this tokenizer into ``directory`` (a model export), so the
        export decodes with ``get_tokenizer(directory)`` alone. Its ``tokenizer_config.json`` is the
        source's with the end-of-text token named, which the source may have taken from its ``config.json``."""
        source = Path(self.name)
        (directory / HF_TOKENIZER_FILE).write_bytes((source / HF_TOKENIZER_FILE).read_bytes())
        for name in self.COMPANION_FILES:
            if (source / name).is_file():
                (directory / name).write_bytes((source / name).read_bytes())
        settings = {**json_object(source / "tokenizer_config.json"),
                    "eos_token": self.tokenizer.id_to_token(self.eot_id)}
        (directory / "tokenizer_config.json").write_text(json.dumps(settings, indent=2, ensure_ascii=False) + "\n",
                                                        encoding="utf-8")


def _chat_template(directory: Path, eos_token: str | None) -> ChatTemplate | None:
    """The directory's chat template: ``chat_template.jinja``, else ``tokenizer_config.json``'s
    ``chat_template`` (its ``default`` entry when it names several), else ``None``."""
    settings = json_object(directory / "tokenizer_config.json")
    if (directory / CHAT_TEMPLATE_FILE).is_file():
        source = (directory / CHAT_TEMPLATE_FILE).read_text(encoding="utf-8")
    else:
        source = settings.get("chat_template")
        if isinstance(source, list):  # named templates: the default one is the conversation's
            source = next((t.get("template") for t in source if isinstance(t, dict) and t.get("name") == "default"),
                          None)
    if not isinstance(source, str):
        return None
    return ChatTemplate(source, bos_token=token_text(settings.get("bos_token")), eos_token=eos_token)


def token_text(entry: Any) -> str | None:
    """The text of a ``tokenizer_config.json`` token entry: a string, or an ``{"content": ...}`` dict."""
    entry = entry.get("content") if isinstance(entry, dict) else entry
    return entry if isinstance(entry, str) else None


def json_object(path: Path) -> dict[str, Any]:
    """A JSON file's object; ``{}`` when the file is absent or holds something else."""
    try:
        value = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    except (OSError, ValueError) as err:
        raise ConfigError(f"cannot read {path}: {err}") from None
    return value if isinstance(value, dict) else {}


