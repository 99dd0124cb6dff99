"""Where pretraining text comes from: Python's embedded docs, local files, URLs, Hugging Face datasets.

A text source yields its corpus as a stream of text chunks, so a corpus larger than memory can
be tokenized piece by piece, and carries a content fingerprint, so a token cache is keyed by what
the text is rather than where it was read from. Documents (files, topics, dataset rows) are
separated by ``<|endoftext|>``, as in GPT-2's pretraining data.
"""

from __future__ import annotations

import glob
import hashlib
import os
import re
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator
from functools import cached_property
from pathlib import Path
from typing import Any

from gptlab.data.downloads import cache_root, download, sha256_file
from gptlab.errors import DataError, first_line
from gptlab.tokenizer import END_OF_TEXT

#: "The Verdict" (Edith Wharton, 1908), the pretraining text of the book's chapters 2 and 5.
THE_VERDICT_URL = (
    "https://raw.githubusercontent.com/rasbt/LLMs-from-scratch/main/ch02/01_main-chapter-code/the-verdict.txt"
)
THE_VERDICT_SHA256 = "b41e41a68f0398a3154ae69e2e4c0e2694e17fe0d66730536837f1b01935b31f"

#: Characters read from a file at a time; a chunk is cut at the last safe point in each block.
FILE_BLOCK_CHARS = 1 << 20


class TextSource(ABC):
    """A corpus as a stream of text chunks plus a fingerprint of its content.

    Concatenating the chunks gives the corpus text; chunk boundaries never change how GPT-2's
    BPE splits the text, so tokenizing chunk by chunk gives the same ids as tokenizing it whole.
    """

    #: Human-readable origin, for messages and cache metadata.
    description: str

    @abstractmethod
    def chunks(self) -> Iterator[str]:
        """The corpus, in order, as text pieces."""

    @cached_property
    def fingerprint(self) -> str:
        """A hex digest that changes whenever the corpus text may change."""
        return self._fingerprint()

    @abstractmethod
    def _fingerprint(self) -> str: ...

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.description!r})"


def _separated(documents: Iterable[Iterable[str]]) -> Iterator[str]:
    """Chain documents' chunks with ``<|endoftext|>`` between non-empty documents."""
    started = False
    for document in documents:
        first = True
        for chunk in document:
            if not chunk:
                continue
            if first and started:
                yield END_OF_TEXT
            first, started = False, True
            yield chunk


class EmbeddedSource(TextSource):
    """Python's own reference documentation (``pydoc_data.topics``): about 0.5 MB that is always there.

    Topics are joined in sorted order, each a document.
    """

    description = "embedded (pydoc_data.topics)"

    @staticmethod
    def _topics() -> list[str]:
        from pydoc_data.topics import topics

        return [topics[key] for key in sorted(topics)]

    def chunks(self) -> Iterator[str]:
        return _separated([text] for text in self._topics())

    def _fingerprint(self) -> str:
        digest = hashlib.sha256(b"embedded\0")
        for chunk in self.chunks():
            digest.update(chunk.encode("utf-8"))
        return digest.hexdigest()


# A non-whitespace character followed by a space or newline: the place to cut between two chunks.
_CUT = re.compile(r"[^\s][ \n]")


def safe_cut(block: str) -> int:
    """The last index at which ``block`` can be split without changing GPT-2's pre-tokenization.

    Right after a non-whitespace character and before a space or newline, every alternative of
    GPT-2's split pattern ends a piece (none puts whitespace after a letter, digit or symbol)
    and the next piece starts; what the pattern matches from there depends only on the text that
    follows. So the ids of the two halves, concatenated, are the ids of the whole. Returns 0 when
    there is no such point.
    """
    for window in (1 << 16, len(block)):
        last = None
        for last in _CUT.finditer(block, max(0, len(block) - window)):
            pass
        if last is not None:
            return last.start() + 1
    return 0


def _file_chunks(path: Path, block_chars: int) -> Iterator[str]:
    pending: list[str] = []
    try:
        with path.open(encoding="utf-8") as f:
            for block in iter(lambda: f.read(block_chars), ""):
                cut = safe_cut(block)
                if cut:
                    yield "".join([*pending, block[:cut]])
                    pending = [block[cut:]]
                else:
                    pending.append(block)
    except UnicodeDecodeError as exc:
        raise DataError(f"{path} is not UTF-8 text ({exc.reason} at byte {exc.start}); convert it to UTF-8") from exc
    tail = "".join(pending)
    if tail:
        yield tail


class FileSource(TextSource):
    """One or more UTF-8 text files, each a document; read in blocks, never whole."""

    def __init__(self, paths: list[Path], description: str, block_chars: int = FILE_BLOCK_CHARS) -> None:
        self.paths = paths
        self.description = description
        self.block_chars = block_chars

    def chunks(self) -> Iterator[str]:
        return _separated(_file_chunks(path, self.block_chars) for path in self.paths)

    def _fingerprint(self) -> str:
        digest = hashlib.sha256(b"files\0")
        for path in self.paths:
            digest.update(bytes.fromhex(sha256_file(path)))
        return digest.hexdigest()


_GLOB_CHARS = frozenset("*?[")


def local_text_source(path: str | os.PathLike[str], setting: str = "data.path") -> FileSource:
    """A file, a directory (every ``*.txt`` below it, sorted) or a glob pattern (sorted matches).

    Relative paths resolve against the current working directory. ``setting`` names the option
    that holds the path, for the error messages.
    """
    spec = os.path.expanduser(os.fspath(path))
    if _GLOB_CHARS & set(spec):
        files = sorted(Path(p).resolve() for p in glob.glob(spec, recursive=True) if Path(p).is_file())
        if not files:
            raise DataError(f"no files match {spec!r}; check {setting}")
        return FileSource(files, f"{spec} ({len(files)} files)")
    resolved = Path(spec).resolve()
    if resolved.is_dir():
        files = sorted(p for p in resolved.rglob("*.txt") if p.is_file())
        if not files:
            raise DataError(f"directory {resolved} holds no *.txt files; check {setting}")
        return FileSource(files, f"{resolved}/**/*.txt ({len(files)} files)")
    if not resolved.is_file():
        raise DataError(f"data file not found: {resolved}; check {setting}")
    return FileSource([resolved], str(resolved))


class HFSource(TextSource):
    """A text column of a Hugging Face dataset split, one document per row.

    ``name`` is a Hub dataset (``wikitext``, ``org/name``) loaded with ``datasets.load_dataset``,
    or a directory written by ``Dataset.save_to_disk`` / ``DatasetDict.save_to_disk``. A row
    that ends with a newline is a line of a longer text (as in WikiText) and is followed directly
    by the next row; any other row is a whole document, followed by ``<|endoftext|>``.
    """

    def __init__(
        self, name: str, config: str | None = None, split: str = "train", text_column: str = "text"
    ) -> None:
        self.name = name
        self.config = config
        self.split = split
        self.text_column = text_column
        self.description = f"hf:{name}" + (f":{config}" if config else "") + f" split={split} column={text_column}"

    @cached_property
    def dataset(self) -> Any:
        """The split as a memory-mapped ``datasets.Dataset`` (loaded, and downloaded, on first use)."""
        import datasets

        local = Path(self.name).expanduser()
        if local.is_dir():
            data = datasets.load_from_disk(str(local))
        else:
            data = self._load_hub(datasets)
        if isinstance(data, datasets.DatasetDict):
            if self.split not in data:
                raise DataError(
                    f"dataset {self.name} has no split {self.split!r}; its splits: {', '.join(data)}; set data.hf_split"
                )
            data = data[self.split]
        if self.text_column not in data.column_names:
            raise DataError(
                f"dataset {self.name} has no column {self.text_column!r}; its columns: "
                f"{', '.join(data.column_names)}; set data.text_column"
            )
        return data

    def _load_hub(self, datasets: Any) -> Any:
        attempts: list[tuple[str, str | None]] = [(self.name, self.config)]
        if self.config is None and self.name.count("/") == 1:
            # "wikitext/wikitext-2-raw-v1" may mean dataset "wikitext", config "wikitext-2-raw-v1".
            attempts.append(tuple(self.name.split("/")))  # type: ignore[arg-type]
        for i, (name, config) in enumerate(attempts):
            try:
                return datasets.load_dataset(name, config, split=self.split)
            except Exception as exc:  # noqa: BLE001 - datasets raises many unrelated types offline
                not_found = (datasets.exceptions.DatasetNotFoundError, FileNotFoundError)
                if i + 1 < len(attempts) and isinstance(exc, not_found):
                    continue
                raise DataError(
                    f"could not load Hugging Face dataset {self.description} ({first_line(exc)}); "
                    "are you offline? save its text to a file and pass it with data.path=/path/to/file.txt"
                ) from exc
        raise AssertionError("unreachable")

    def _rows(self) -> Iterator[str]:
        for batch in self.dataset.select_columns([self.text_column]).iter(batch_size=1000):
            for text in batch[self.text_column]:
                if text:
                    yield str(text)

    def chunks(self) -> Iterator[str]:
        pending_separator = False
        for text in self._rows():
            if pending_separator:
                yield END_OF_TEXT
            yield text
            pending_separator = not text.endswith("\n")

    def _fingerprint(self) -> str:
        key = "\0".join(["hf", self.dataset._fingerprint, self.name, self.config or "", self.split, self.text_column])
        return hashlib.sha256(key.encode()).hexdigest()


def _parse_hf(spec: str) -> tuple[str, str | None]:
    """``NAME``, ``NAME:CONFIG``, ``ORG/NAME/CONFIG`` or (tried both ways) ``NAME/CONFIG``."""
    if Path(spec).expanduser().is_dir():
        return spec, None
    if ":" in spec:
        name, config = spec.rsplit(":", 1)
        return name, config or None
    if spec.count("/") >= 2:
        name, config = spec.rsplit("/", 1)
        return name, config
    return spec, None


def read_text_source(
    spec: str,
    *,
    sha256: str | None = None,
    hf_split: str = "train",
    text_column: str = "text",
    cache_dir: str | os.PathLike[str] | None = None,
    setting: str = "data.source",
) -> TextSource:
    """The text source a spec names.

    - ``embedded``: Python's reference documentation, always available offline;
    - ``http(s)://`` or ``file://`` URL: downloaded once into the cache (verified when
      ``sha256`` is given), then read as a file;
    - ``hf:NAME``, ``hf:NAME:CONFIG`` or ``hf:NAME/CONFIG``: a Hugging Face dataset (or a local
      ``save_to_disk`` directory), ``text_column`` of split ``hf_split``;
    - anything else: a local file, directory or glob pattern (see ``local_text_source``).

    URL sources download here; other sources read nothing until iterated or fingerprinted.
    """
    spec = str(spec).strip()
    if spec == "embedded":
        return EmbeddedSource()
    if spec.startswith(("http://", "https://", "file://")):
        downloads = cache_root(cache_dir) / "downloads"
        path = download(spec, sha256, downloads, local_hint="data.path")
        return FileSource([path], spec)
    if spec.startswith("hf:"):
        name, config = _parse_hf(spec[3:])
        if not name:
            raise DataError(f"{setting}={spec!r} names no dataset; use hf:NAME or hf:NAME:CONFIG")
        return HFSource(name, config, split=hf_split, text_column=text_column)
    return local_text_source(spec, setting=setting)
