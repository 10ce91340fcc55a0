"""Getting source bytes onto local disk: HTTP downloads, checksums and folder hashes."""

from __future__ import annotations

import hashlib
import http.client
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import NamedTuple

from pipeline import __version__
from pipeline.errors import PipelineError
from pipeline.files import sha256_of

ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar", ".zip")
CHUNK_BYTES = 1 << 20
LOCAL_HINT = "download it yourself and set download.source to the local path"


def is_url(source: str) -> bool:
    return source.startswith(("http://", "https://"))


def is_archive(path: Path) -> bool:
    return path.name.lower().endswith(ARCHIVE_SUFFIXES)


def folder_sha256(folder: Path, suffixes: tuple[str, ...] | None) -> str:
    """One SHA-256 for a folder's content: over each file's relative path and SHA-256, in path order.
    Covers the files whose names end in `suffixes` (all if None); hidden files and folders are left out."""
    digest = hashlib.sha256()
    for path in sorted(folder.rglob("*"), key=lambda p: p.relative_to(folder).as_posix()):
        relative = path.relative_to(folder)
        if any(part.startswith(".") for part in relative.parts) or not path.is_file():
            continue
        if suffixes is None or path.name.lower().endswith(suffixes):
            digest.update(f"{relative.as_posix()}\0{sha256_of(path)}\n".encode())
    return digest.hexdigest()


def check_sha256(actual: str, expected: str | None, what: str) -> None:
    if expected is not None and actual != expected:
        raise PipelineError(
            f"checksum mismatch for {what}: expected sha256 {expected}, got {actual}; "
            "the file changed or download.sha256 is wrong"
        )


class Downloaded(NamedTuple):
    path: Path
    sha256: str  # of the bytes received
    length_known: bool  # the server sent Content-Length, so a cut transfer was detectable


def download_url(url: str, dest_dir: Path, sha256: str | None = None, timeout: float = 60.0) -> Downloaded:
    """Stream `url` into `dest_dir`, verifying length and checksum before the final rename."""
    name = Path(urllib.parse.unquote(urllib.parse.urlparse(url).path)).name or "download"
    target = dest_dir / name
    partial = dest_dir / f".{name}.part"
    request = urllib.request.Request(url, headers={"User-Agent": f"textclf-pipeline/{__version__}"})
    digest = hashlib.sha256()
    received = 0
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response, partial.open("wb") as out:
            expected_length = response.headers.get("Content-Length")
            while chunk := response.read(CHUNK_BYTES):
                digest.update(chunk)
                out.write(chunk)
                received += len(chunk)
        if expected_length is not None and received != int(expected_length):
            raise http.client.IncompleteRead(b"", int(expected_length) - received)
    except urllib.error.HTTPError as exc:
        partial.unlink(missing_ok=True)
        raise PipelineError(f"download failed: HTTP {exc.code} {exc.reason} for {url}; check the URL or {LOCAL_HINT}") from None
    except urllib.error.URLError as exc:
        partial.unlink(missing_ok=True)
        raise PipelineError(f"could not reach {url}: {exc.reason}; check the network or {LOCAL_HINT}") from None
    except (http.client.IncompleteRead, ConnectionError, TimeoutError) as exc:
        partial.unlink(missing_ok=True)
        what = f"got {received} bytes, {exc.expected} missing" if isinstance(exc, http.client.IncompleteRead) else str(exc)
        raise PipelineError(f"download of {url} was cut short ({what}); try again or {LOCAL_HINT}") from None
    try:
        check_sha256(digest.hexdigest(), sha256, url)
    except PipelineError:
        partial.unlink(missing_ok=True)
        raise
    partial.rename(target)
    return Downloaded(target, digest.hexdigest(), expected_length is not None)
