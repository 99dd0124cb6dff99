"""Downloads (cache, checksum, atomicity, offline errors), zip extraction and text sources.

Nothing here reaches the internet: downloads come from ``file://`` URLs or from an HTTP server
on 127.0.0.1 run by the test.
"""

from __future__ import annotations

import hashlib
import http.server
import socket
import threading
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from gptlab.data import (
    EmbeddedSource,
    FileSource,
    HFSource,
    cache_root,
    download,
    extract_member,
    local_text_source,
    read_text_source,
    sha256_file,
)
from gptlab.errors import DataError
from gptlab.tokenizer import END_OF_TEXT, get_tokenizer

VERDICT_SHA256 = "b41e41a68f0398a3154ae69e2e4c0e2694e17fe0d66730536837f1b01935b31f"


@pytest.fixture(autouse=True)
def _cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    cache = tmp_path / "cache"
    monkeypatch.setenv("GPTLAB_CACHE", str(cache))
    return cache


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir()) if directory.exists() else []


class _Server:
    """A local HTTP server: ``files`` maps paths to bodies; ``truncate`` paths promise more bytes than they send."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.truncate: set[str] = set()
        self.requests: list[str] = []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - the http.server API
                server.requests.append(self.path)
                body = server.files.get(self.path)
                if body is None:
                    self.send_error(404)
                    return
                self.send_response(200)
                extra = 1000 if self.path in server.truncate else 0
                self.send_header("Content-Length", str(len(body) + extra))
                self.end_headers()
                self.wfile.write(body)
                self.close_connection = True

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server() -> Iterator[_Server]:
    s = _Server()
    yield s
    s.close()


# --------------------------------------------------------------------------------------------
# download


def test_download_file_url_verifies_and_reuses_the_cache(tmp_path: Path, verdict_path: Path, _cache: Path):
    source = tmp_path / "the-verdict.txt"
    source.write_bytes(verdict_path.read_bytes())
    path = download(source.as_uri(), VERDICT_SHA256)
    assert path == _cache / "downloads" / "the-verdict.txt"
    assert sha256_file(path) == VERDICT_SHA256
    # The source is gone: a second call must be served from the cache without any download.
    source.unlink()
    assert download(source.as_uri(), VERDICT_SHA256) == path
    assert _leftovers(path.parent) == ["the-verdict.txt"]


def test_download_over_http_then_cache_hit_makes_no_request(server: _Server, tmp_path: Path):
    body = b"hello from a local server\n" * 1000
    server.files["/dir/corpus.txt"] = body
    path = download(f"{server.url}/dir/corpus.txt", _sha(body), cache_dir=tmp_path / "dl")
    assert path == tmp_path / "dl" / "corpus.txt" and path.read_bytes() == body
    assert server.requests == ["/dir/corpus.txt"]
    download(f"{server.url}/dir/corpus.txt", _sha(body), cache_dir=tmp_path / "dl")
    assert server.requests == ["/dir/corpus.txt"]


def test_download_without_checksum_trusts_a_cached_file(server: _Server, tmp_path: Path):
    server.files["/a.txt"] = b"abc"
    first = download(f"{server.url}/a.txt", None, cache_dir=tmp_path, filename="renamed.txt")
    assert first.name == "renamed.txt"
    assert download(f"{server.url}/a.txt", None, cache_dir=tmp_path, filename="renamed.txt") == first
    assert len(server.requests) == 1


def test_a_corrupted_cached_file_is_downloaded_again(server: _Server, tmp_path: Path):
    body = b"the real content"
    server.files["/f.txt"] = body
    (tmp_path / "f.txt").write_bytes(b"something else")
    path = download(f"{server.url}/f.txt", _sha(body), cache_dir=tmp_path)
    assert path.read_bytes() == body and len(server.requests) == 1


def test_checksum_mismatch_leaves_no_file(server: _Server, tmp_path: Path):
    server.files["/f.txt"] = b"tampered"
    expected = _sha(b"original")
    with pytest.raises(DataError) as info:
        download(f"{server.url}/f.txt", expected, cache_dir=tmp_path)
    message = str(info.value)
    assert "\n" not in message
    assert expected in message and _sha(b"tampered") in message
    assert _leftovers(tmp_path) == []


def test_a_mismatch_also_removes_an_outdated_cached_copy(server: _Server, tmp_path: Path):
    server.files["/data/corpus.txt"] = b"changed upstream"
    (tmp_path / "corpus.txt").write_bytes(b"an old, damaged copy")
    url = f"{server.url}/data/corpus.txt"
    with pytest.raises(DataError) as info:
        download(url, _sha(b"the pinned content"), cache_dir=tmp_path, local_hint="data.path")
    message = str(info.value)
    assert "\n" not in message and message.startswith(f"checksum mismatch for {url}:")
    assert "data.path=/path/to/corpus.txt" in message
    assert _leftovers(tmp_path) == [] and server.requests == ["/data/corpus.txt"]


def test_checksums_are_compared_in_full_and_case_blind(server: _Server, tmp_path: Path):
    body = b"content"
    server.files["/c.txt"] = body
    assert download(f"{server.url}/c.txt", _sha(body).upper(), cache_dir=tmp_path).read_bytes() == body
    almost = _sha(body)[:-1] + ("0" if _sha(body)[-1] != "0" else "1")  # differs in the last digit only
    with pytest.raises(DataError, match="checksum mismatch"):
        download(f"{server.url}/c.txt", almost, cache_dir=tmp_path / "other")


def test_an_interrupted_download_leaves_no_file(server: _Server, tmp_path: Path):
    server.files["/big.txt"] = b"x" * 5000
    server.truncate.add("/big.txt")
    with pytest.raises(DataError, match="could not download"):
        download(f"{server.url}/big.txt", None, cache_dir=tmp_path)
    assert _leftovers(tmp_path) == []


def test_offline_error_is_one_line_and_says_how_to_pass_a_local_copy(tmp_path: Path):
    with socket.socket() as s:  # a port nobody listens on: the connection is refused
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/the-verdict.txt"
    with pytest.raises(DataError) as info:
        download(url, VERDICT_SHA256, cache_dir=tmp_path, local_hint="data.path")
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"could not download {url} (")
    assert "data.path=/path/to/the-verdict.txt" in message
    assert _leftovers(tmp_path) == []


def test_missing_local_url_is_reported(tmp_path: Path):
    with pytest.raises(DataError, match=r"could not download file://.*nope\.txt \(.*No such file") as info:
        download((tmp_path / "nope.txt").as_uri(), None, cache_dir=tmp_path / "dl")
    assert "offline" not in str(info.value)


def test_http_error_names_the_status(server: _Server, tmp_path: Path):
    with pytest.raises(DataError, match="404"):
        download(f"{server.url}/missing.txt", None, cache_dir=tmp_path)
    assert _leftovers(tmp_path) == []


def test_cache_root_follows_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("GPTLAB_CACHE", str(tmp_path / "elsewhere"))
    assert cache_root() == tmp_path / "elsewhere"
    assert cache_root(tmp_path / "explicit") == tmp_path / "explicit"
    monkeypatch.delenv("GPTLAB_CACHE")
    assert cache_root() == Path.home() / ".cache" / "gptlab"


# --------------------------------------------------------------------------------------------
# zip extraction


def test_extract_member_extracts_once_and_checks_names(tmp_path: Path):
    archive = tmp_path / "sms.zip"
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("readme", "about")
        z.writestr("SMSSpamCollection", "ham\thello\nspam\twin\n")
    out = extract_member(archive, "SMSSpamCollection", tmp_path / "x")
    assert out == tmp_path / "x" / "SMSSpamCollection"
    assert out.read_text() == "ham\thello\nspam\twin\n"
    mtime = out.stat().st_mtime_ns
    assert extract_member(archive, "SMSSpamCollection", tmp_path / "x").stat().st_mtime_ns == mtime
    out.write_text("damaged")  # a file that does not match the archive's CRC is extracted again
    assert extract_member(archive, "SMSSpamCollection", tmp_path / "x").read_text().startswith("ham")
    assert _leftovers(tmp_path / "x") == ["SMSSpamCollection"]
    with pytest.raises(DataError, match="no member 'nope'.*SMSSpamCollection"):
        extract_member(archive, "nope", tmp_path / "x")


def test_extract_member_rejects_a_broken_archive(tmp_path: Path):
    bad = tmp_path / "bad.zip"
    bad.write_bytes(b"not a zip")
    with pytest.raises(DataError, match="bad.zip"):
        extract_member(bad, "anything")


# --------------------------------------------------------------------------------------------
# text sources


def test_embedded_corpus_is_pythons_docs_one_document_per_topic():
    from pydoc_data.topics import topics

    source = read_text_source("embedded")
    assert isinstance(source, EmbeddedSource)
    text = "".join(source.chunks())
    documents = text.split(END_OF_TEXT)
    assert documents == [topics[k] for k in sorted(topics) if topics[k]]
    assert len(text) > 100_000
    assert source.fingerprint == EmbeddedSource().fingerprint


def test_file_source_reads_the_file_and_fingerprints_its_bytes(verdict_path: Path):
    source = read_text_source(str(verdict_path))
    assert isinstance(source, FileSource)
    assert "".join(source.chunks()) == verdict_path.read_text(encoding="utf-8")
    assert source.fingerprint == local_text_source(verdict_path).fingerprint


@pytest.mark.parametrize("block_chars", [40, 333, 4096])
def test_chunked_reading_gives_the_same_gpt2_ids_as_the_whole_text(verdict_path: Path, block_chars: int):
    # A large file is read in blocks; the cut points must not change a single BPE id.
    tokenizer = get_tokenizer("gpt2")
    whole = tokenizer.encode(verdict_path.read_text(encoding="utf-8"))
    chunks = list(FileSource([verdict_path], "verdict", block_chars=block_chars).chunks())
    assert len(chunks) > 1
    assert [i for chunk in chunks for i in tokenizer.encode(chunk)] == whole


def test_tricky_whitespace_survives_chunking(tmp_path: Path):
    text = "a  b\n\n c\t\nd 's\u00a0e\u2003f.\n  <|endoftext|> g  \n" * 20
    path = tmp_path / "t.txt"
    path.write_text(text, encoding="utf-8")
    chunks = list(FileSource([path], "t", block_chars=7).chunks())
    assert "".join(chunks) == text
    for name in ("gpt2", "byte"):
        tokenizer = get_tokenizer(name)
        assert [i for chunk in chunks for i in tokenizer.encode(chunk)] == tokenizer.encode(text)


def test_directory_and_glob_read_sorted_files_separated_by_end_of_text(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    corpus = tmp_path / "corpus"
    (corpus / "sub").mkdir(parents=True)
    (corpus / "b.txt").write_text("second")
    (corpus / "a.txt").write_text("first")
    (corpus / "sub" / "c.txt").write_text("third")
    (corpus / "empty.txt").write_text("")
    (corpus / "notes.md").write_text("ignored")
    expected = f"first{END_OF_TEXT}second{END_OF_TEXT}third"
    assert "".join(read_text_source(str(corpus)).chunks()) == expected
    monkeypatch.chdir(tmp_path)  # relative paths and patterns resolve against the working directory
    assert "".join(read_text_source("corpus/*.txt").chunks()) == f"first{END_OF_TEXT}second"
    assert "".join(read_text_source("corpus/**/*.txt").chunks()) == expected
    assert "".join(read_text_source("corpus/a.txt").chunks()) == "first"


def test_fingerprint_follows_content_not_location(tmp_path: Path):
    a, b = tmp_path / "a.txt", tmp_path / "b.txt"
    a.write_text("same text")
    b.write_text("same text")
    assert local_text_source(a).fingerprint == local_text_source(b).fingerprint
    b.write_text("other text")
    assert local_text_source(a).fingerprint != local_text_source(b).fingerprint


def test_missing_path_is_a_one_line_error_naming_it(tmp_path: Path):
    missing = tmp_path / "nope.txt"
    with pytest.raises(DataError) as info:
        local_text_source(missing)
    assert str(info.value) == f"data file not found: {missing}; check data.path"
    with pytest.raises(DataError, match="check data.source"):
        read_text_source(str(missing))
    with pytest.raises(DataError, match=r"no files match .*\*\.txt"):
        read_text_source(str(tmp_path / "*.txt"))
    (tmp_path / "emptydir").mkdir()
    with pytest.raises(DataError, match="holds no"):
        read_text_source(str(tmp_path / "emptydir"))


def test_non_utf8_file_is_reported(tmp_path: Path):
    path = tmp_path / "latin1.txt"
    path.write_bytes("caf\u00e9".encode("latin-1"))
    with pytest.raises(DataError, match="not UTF-8"):
        list(read_text_source(str(path)).chunks())


def test_url_source_downloads_then_reads(tmp_path: Path, verdict_path: Path, _cache: Path):
    source = read_text_source(verdict_path.as_uri(), sha256=VERDICT_SHA256)
    assert isinstance(source, FileSource)
    assert source.paths == [_cache / "downloads" / "the-verdict.txt"]
    assert "".join(source.chunks()) == verdict_path.read_text(encoding="utf-8")
    with pytest.raises(DataError, match="checksum mismatch"):
        read_text_source(verdict_path.as_uri(), sha256="0" * 64, cache_dir=tmp_path / "other")


# --------------------------------------------------------------------------------------------
# Hugging Face datasets, from a local save_to_disk directory (no network)


@pytest.fixture
def saved_dataset(tmp_path: Path) -> Path:
    import datasets

    texts = [" = Title = \n", "", " a line of text \n", "A whole document.", "Another one."]
    rows = {"text": texts, "n": [1, 2, 3, 4, 5]}
    path = tmp_path / "ds"
    datasets.DatasetDict(
        {"train": datasets.Dataset.from_dict(rows), "validation": datasets.Dataset.from_dict({"text": ["v"], "n": [0]})}
    ).save_to_disk(str(path))
    return path


def test_hf_source_reads_a_split_and_separates_documents(saved_dataset: Path):
    source = read_text_source(f"hf:{saved_dataset}", hf_split="train")
    assert isinstance(source, HFSource)
    text = "".join(source.chunks())
    # Rows ending in a newline are lines of one text; other rows are documents.
    assert text == f" = Title = \n a line of text \nA whole document.{END_OF_TEXT}Another one."
    assert "".join(read_text_source(f"hf:{saved_dataset}", hf_split="validation").chunks()) == "v"
    assert source.fingerprint != read_text_source(f"hf:{saved_dataset}", hf_split="validation").fingerprint
    assert source.fingerprint == read_text_source(f"hf:{saved_dataset}").fingerprint


def test_hf_source_names_missing_splits_and_columns(saved_dataset: Path):
    with pytest.raises(DataError, match="no split 'test'.*train, validation.*data.hf_split"):
        read_text_source(f"hf:{saved_dataset}", hf_split="test").fingerprint
    with pytest.raises(DataError, match="no column 'body'.*text, n.*data.text_column"):
        list(read_text_source(f"hf:{saved_dataset}", text_column="body").chunks())


def test_hf_hub_names_and_offline_error(monkeypatch: pytest.MonkeyPatch):
    import datasets

    calls: list[tuple[str, str | None, str]] = []

    def offline(name: str, config: str | None = None, split: str | None = None) -> None:
        calls.append((name, config, split))
        raise ConnectionError("Couldn't reach 'wikitext' on the Hub (LocalEntryNotFoundError)")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(DataError) as info:
        read_text_source("hf:Salesforce/wikitext:wikitext-2-raw-v1", hf_split="test").fingerprint
    message = str(info.value)
    assert "\n" not in message and "Salesforce/wikitext" in message and "data.path=" in message
    assert calls == [("Salesforce/wikitext", "wikitext-2-raw-v1", "test")]

    def hub(name: str, config: str | None = None, split: str | None = None) -> datasets.Dataset:
        calls.append((name, config, split))
        if config is None:
            raise datasets.exceptions.DatasetNotFoundError(f"Dataset '{name}' doesn't exist on the Hub")
        return datasets.Dataset.from_dict({"text": ["hub text"]})

    calls.clear()
    monkeypatch.setattr(datasets, "load_dataset", hub)
    # "NAME/CONFIG" is first tried as an "org/name" repository, then as a dataset and its config.
    assert "".join(read_text_source("hf:wikitext/wikitext-2-raw-v1").chunks()) == "hub text"
    assert calls == [("wikitext/wikitext-2-raw-v1", None, "train"), ("wikitext", "wikitext-2-raw-v1", "train")]
