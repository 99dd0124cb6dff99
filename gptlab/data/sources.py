"""Where pretraining text comes from: cached, checksum-verified downloads and text sources.

A text source yields its corpus as a stream of text chunks, so a corpus larger than memory can
be tokenized piece by piece, and carries a content fingerprint, so a token cache is keyed by what
the text is rather than where it was read from. Documents (files, topics, dataset rows) are
separated by ``<|endoftext|>``, as in GPT-2's pretraining data.
"""

from __future__ import annotations

import glob
import hashlib
import http.client
import os
import re
import tempfile
import urllib.error
import urllib.parse
import urllib.request
import zipfile
import zlib
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator
from functools import cached_property
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from gptlab.errors import DataError
from gptlab.tokenizer import END_OF_TEXT

#: "The Verdict" (Edith Wharton, 1908), the pretraining text of the book's chapters 2 and 5.
THE_VERDICT_URL = (
    "https://raw.githubusercontent.com/rasbt/LLMs-from-scratch/main/ch02/01_main-chapter-code/the-verdict.txt"
)
THE_VERDICT_SHA256 = "b41e41a68f0398a3154ae69e2e4c0e2694e17fe0d66730536837f1b01935b31f"

_BLOCK_BYTES = 1 << 20
#: Characters read from a file at a time; a chunk is cut at the last safe point in each block.
FILE_BLOCK_CHARS = 1 << 20


def cache_root(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """The directory for downloads and token caches: ``cache_dir``, ``$GPTLAB_CACHE`` or ``~/.cache/gptlab``."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    env = os.environ.get("GPTLAB_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "gptlab"


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Hex sha256 of a file, read in blocks so large files never sit in memory."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(_BLOCK_BYTES), b""):
            digest.update(block)
    return digest.hexdigest()


def publish(tmp: Path, target: Path) -> None:
    """Give a finished temporary file its final name in one atomic step (readable like any file)."""
    os.chmod(tmp, 0o644)  # mkstemp creates 0600
    os.replace(tmp, target)


def _url_filename(url: str) -> str:
    name = Path(urllib.parse.unquote(urllib.parse.urlparse(url).path)).name
    return name or hashlib.sha256(url.encode()).hexdigest()[:16]


def _offline_hint(filename: str, local_hint: str | None) -> str:
    if local_hint:
        return f"download it yourself and pass its local path, e.g. {local_hint}=/path/to/{filename}"
    return "download it yourself and pass its local path instead"


def _one_line(reason: object, limit: int = 300) -> str:
    """An exception's message on one short line, for errors that must fit a single line."""
    text = " ".join(str(reason).split()) or type(reason).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def download(
    url: str,
    sha256: str | None,
    cache_dir: str | os.PathLike[str] | None = None,
    filename: str | None = None,
    local_hint: str | None = None,
    timeout: float = 60.0,
) -> Path:
    """Download ``url`` into ``cache_dir`` (default ``cache_root()/downloads``) once, and return its path.

    A cached file whose sha256 matches is returned without touching the network (without a
    ``sha256``, any cached file is trusted). The download streams into a hidden temporary file in
    the same directory that is renamed into place only when complete and verified, so a crash or a
    checksum mismatch never leaves a file that looks finished. ``file://`` URLs work too.
    ``local_hint`` names the setting that takes a local copy instead (e.g. ``data.path``) for the
    message shown when the download fails.
    """
    directory = cache_root() / "downloads" if cache_dir is None else Path(cache_dir)
    filename = filename or _url_filename(url)
    target = directory / filename
    if target.is_file() and (sha256 is None or sha256_file(target) == sha256.lower()):
        return target

    directory.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=directory, prefix=f".{filename}.", suffix=".part")
    tmp = Path(tmp_name)
    try:
        digest = hashlib.sha256()
        with os.fdopen(fd, "wb") as out:
            try:
                with urllib.request.urlopen(url, timeout=timeout) as response:
                    length = response.headers.get("Content-Length")
                    total = int(length) if length and length.isdigit() else None
                    received = 0
                    with tqdm(total=total, unit="B", unit_scale=True, desc=f"download {filename}") as bar:
                        for block in iter(lambda: response.read(_BLOCK_BYTES), b""):
                            out.write(block)
                            digest.update(block)
                            received += len(block)
                            bar.update(len(block))
                    if total is not None and received != total:
                        raise OSError(f"connection closed after {received} of {total} bytes")
            except urllib.error.HTTPError as exc:
                raise DataError(
                    f"could not download {url} ({_one_line(exc)}); check the URL, or "
                    f"{_offline_hint(filename, local_hint)}"
                ) from exc
            except (OSError, http.client.HTTPException, ValueError) as exc:
                reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
                offline = "" if url.startswith("file:") else "are you offline? "
                raise DataError(
                    f"could not download {url} ({_one_line(reason)}); {offline}{_offline_hint(filename, local_hint)}"
                ) from exc
        found = digest.hexdigest()
        if sha256 is not None and found != sha256.lower():
            raise DataError(
                f"checksum mismatch for {url}: expected sha256 {sha256.lower()}, found {found}; "
                "the file changed at its source or the download was corrupted"
            )
        publish(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    return target


def extract_member(
    zip_path: str | os.PathLike[str], member: str, cache_dir: str | os.PathLike[str] | None = None
) -> Path:
    """Extract one ``member`` of a zip archive into ``cache_dir`` (default: the zip's directory).

    An already extracted file is reused when its size and CRC match the archive's entry. Like
    ``download``, the file appears under its final name only once completely written.
    """
    zip_path = Path(zip_path)
    directory = zip_path.parent if cache_dir is None else Path(cache_dir)
    try:
        with zipfile.ZipFile(zip_path) as archive:
            try:
                info = archive.getinfo(member)
            except KeyError:
                names = ", ".join(archive.namelist()[:10])
                raise DataError(f"{zip_path} has no member {member!r}; it holds: {names}") from None
            target = directory / Path(member).name
            if target.is_file() and target.stat().st_size == info.file_size and _crc32(target) == info.CRC:
                return target
            directory.mkdir(parents=True, exist_ok=True)
            fd, tmp_name = tempfile.mkstemp(dir=directory, prefix=f".{target.name}.", suffix=".part")
            tmp = Path(tmp_name)
            try:
                with os.fdopen(fd, "wb") as out, archive.open(info) as src:
                    for block in iter(lambda: src.read(_BLOCK_BYTES), b""):
                        out.write(block)
                publish(tmp, target)
            finally:
                tmp.unlink(missing_ok=True)
            return target
    except (zipfile.BadZipFile, OSError) as exc:
        raise DataError(
            f"could not extract {member!r} from {zip_path} ({_one_line(exc)}); delete the archive to download it again"
        ) from exc


def _crc32(path: Path) -> int:
    crc = 0
    with path.open("rb") as f:
        for block in iter(lambda: f.read(_BLOCK_BYTES), b""):
            crc = zlib.crc32(block, crc)
    return crc


# --------------------------------------------------------------------------------------------
# Text sources


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


def _safe_cut(block: str) -> int:
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
                cut = _safe_cut(block)
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
                    f"could not load Hugging Face dataset {self.description} ({_one_line(exc)}); "
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
