"""Cached, checksum-verified downloads and zip extraction.

A file is downloaded once into the cache and verified against its full sha256; what appears
under its final name is always complete and verified (``gptlab.fileio.atomic_path``), so a
crash, a truncated transfer or a checksum mismatch never leaves a file that looks finished.
Every failure is one line naming the URL and the setting that takes a local copy instead.

The transfer is ``urllib`` streamed by ``shutil.copyfileobj`` through a ``tqdm`` progress bar;
``torch.hub.download_url_to_file`` would be shorter but has no timeout and keeps a body that
ends before its ``Content-Length`` when no checksum is pinned.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import shutil
import urllib.error
import urllib.parse
import urllib.request
import zipfile
import zlib
from pathlib import Path

from tqdm.auto import tqdm

from gptlab.errors import DataError, first_line
from gptlab.fileio import atomic_open, atomic_path

_BLOCK_BYTES = 1 << 20


def cache_root(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """The directory for downloads and token caches: ``cache_dir``, ``$GPTLAB_CACHE`` or ``~/.cache/gptlab``."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    env = os.environ.get("GPTLAB_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "gptlab"


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Hex sha256 of a file, read in blocks so large files never sit in memory."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _url_filename(url: str) -> str:
    name = Path(urllib.parse.unquote(urllib.parse.urlparse(url).path)).name
    return name or hashlib.sha256(url.encode()).hexdigest()[:16]


def _local_copy_hint(filename: str, local_hint: str | None) -> str:
    if local_hint:
        return f"download it yourself and pass its local path, e.g. {local_hint}=/path/to/{filename}"
    return "download it yourself and pass its local path instead"


def _fetch(url: str, path: Path, desc: str, timeout: float) -> None:
    """Stream ``url`` into ``path``; an early end of the body (short of ``Content-Length``) is an error."""
    with urllib.request.urlopen(url, timeout=timeout) as response, open(path, "wb") as out:
        length = response.headers.get("Content-Length")
        total = int(length) if length and length.isdigit() else None
        with tqdm.wrapattr(out, "write", total=total, desc=desc) as sink:
            shutil.copyfileobj(response, sink, _BLOCK_BYTES)
        received = out.tell()
    if total is not None and received != total:
        raise OSError(f"connection closed after {received} of {total} bytes")


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
    ``sha256``, any cached file is trusted). ``file://`` URLs work too. ``local_hint`` names the
    setting that takes a local copy instead (e.g. ``data.path``), for the failure message.
    """
    directory = cache_root() / "downloads" if cache_dir is None else Path(cache_dir)
    filename = filename or _url_filename(url)
    target = directory / filename
    expected = sha256.lower() if sha256 is not None else None
    if target.is_file():
        if expected is None or sha256_file(target) == expected:
            return target
        target.unlink()  # damaged or outdated: never left where a later run could trust it
    with atomic_path(target) as tmp:
        try:
            _fetch(url, tmp, f"download {filename}", timeout)
        except urllib.error.HTTPError as exc:
            raise DataError(
                f"could not download {url} ({first_line(exc)}); check the URL, or {_local_copy_hint(filename, local_hint)}"
            ) from exc
        except (OSError, http.client.HTTPException, ValueError) as exc:
            reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
            offline = "" if url.startswith("file:") else "are you offline? "
            raise DataError(
                f"could not download {url} ({first_line(reason)}); {offline}{_local_copy_hint(filename, local_hint)}"
            ) from exc
        found = sha256_file(tmp)
        if expected is not None and found != expected:
            raise DataError(
                f"checksum mismatch for {url}: expected sha256 {expected}, found {found}; the file changed "
                f"at its source or the download was corrupted; {_local_copy_hint(filename, local_hint)}"
            )
    return target


def _crc32(path: Path) -> int:
    crc = 0
    with path.open("rb") as f:
        for block in iter(lambda: f.read(_BLOCK_BYTES), b""):
            crc = zlib.crc32(block, crc)
    return crc


def extract_member(
    zip_path: str | os.PathLike[str], member: str, cache_dir: str | os.PathLike[str] | None = None
) -> Path:
    """Extract one ``member`` of a zip archive into ``cache_dir`` (default: the zip's directory).

    An already extracted file is reused when its size and CRC match the archive's entry; the
    file appears under its final name only once completely written.
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
            with archive.open(info) as src, atomic_open(target, "wb") as out:
                shutil.copyfileobj(src, out, _BLOCK_BYTES)
            return target
    except (zipfile.BadZipFile, OSError) as exc:
        raise DataError(
            f"could not extract {member!r} from {zip_path} ({first_line(exc)}); delete the archive to download it again"
        ) from exc
