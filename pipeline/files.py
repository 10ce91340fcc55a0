"""Writing outputs so that a failure never leaves half of one behind.

Every file is written to a temporary name in its target folder and renamed into
place; a folder output is built in a temporary sibling folder and swapped in
whole once complete.

Temporary names carry the creating process's id, `.{name}.{pid}.{random}.tmp` (or
`.old`), so that a run killed mid-write is cleaned up by the next one: before
creating its own, a run removes the siblings whose process is gone, and never
touches those of a run that is still alive.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pipeline.errors import PipelineError

# mkstemp/mkdtemp create private (0600/0700) entries; outputs get the usual permissions.
_UMASK = os.umask(0)
os.umask(_UMASK)
FILE_MODE, DIR_MODE = 0o666 & ~_UMASK, 0o777 & ~_UMASK


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # it exists, and belongs to someone else
    except (OverflowError, ValueError):
        return False  # not a process id this system can have
    return True


def remove_stale(folder: Path, name: str) -> list[Path]:
    """Remove the temporary siblings of `name` in `folder` left by processes that are gone."""
    pattern = re.compile(rf"\.{re.escape(name)}\.(\d+)\.[a-z0-9_]+\.(tmp|old)")
    removed = []
    try:
        entries = list(folder.iterdir())
    except FileNotFoundError:
        return removed
    for entry in entries:
        found = pattern.fullmatch(entry.name)
        if found is None or pid_alive(int(found.group(1))):
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
        removed.append(entry)
    return removed


def _temp_prefix(name: str) -> str:
    return f".{name}.{os.getpid()}."


@contextmanager
def atomic_file(path: Path, mode: str = "w") -> Iterator[Any]:
    """Open a temporary file beside `path`; it replaces `path` only if the block succeeds."""
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale(path.parent, path.name)
    fd, tmp = tempfile.mkstemp(prefix=_temp_prefix(path.name), suffix=".tmp", dir=path.parent)
    os.chmod(tmp, FILE_MODE)
    try:
        encoding = None if "b" in mode else "utf-8"
        with os.fdopen(fd, mode, encoding=encoding) as handle:
            yield handle
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def sha256_of(path: Path) -> str:
    """The SHA-256 of a file's bytes, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def write_json(path: Path, data: Any) -> None:
    """Write readable, stable JSON (sorted keys would scramble reports, so keep insertion order)."""
    with atomic_file(path) as handle:
        json.dump(data, handle, indent=2, ensure_ascii=False)
        handle.write("\n")


def read_json(path: Path, fix: str) -> Any:
    """JSON from `path`; a missing or unreadable file is a PipelineError ending in `fix`."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise PipelineError(f"{path} is missing; {fix}") from None
    except (OSError, ValueError) as exc:
        raise PipelineError(f"{path}: not readable JSON ({exc}); {fix}") from None


def link_or_copy(source: Path, target: Path) -> None:
    """Put `source`'s content at `target` atomically: a hard link where the file system allows
    (no bytes copied; a later atomic rewrite of `source` leaves `target` as it was), else a copy."""
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_stale(target.parent, target.name)
    tmp = target.with_name(f"{_temp_prefix(target.name)}link.tmp")
    tmp.unlink(missing_ok=True)
    try:
        os.link(source, tmp)
    except OSError:
        shutil.copy2(source, tmp)
    os.replace(tmp, target)


@contextmanager
def staged_dir(target: Path) -> Iterator[Path]:
    """Yield an empty temporary folder beside `target` that replaces `target` on success."""
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_stale(target.parent, target.name)
    staging = Path(tempfile.mkdtemp(prefix=_temp_prefix(target.name), suffix=".tmp", dir=target.parent))
    os.chmod(staging, DIR_MODE)
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if target.exists():
        retired = Path(tempfile.mkdtemp(prefix=_temp_prefix(target.name), suffix=".old", dir=target.parent))
        target.rename(retired / target.name)
        staging.rename(target)
        shutil.rmtree(retired, ignore_errors=True)
    else:
        staging.rename(target)


@contextmanager
def scratch_dir(beside: Path, purpose: str) -> Iterator[Path]:
    """A private work folder next to `beside` (`.{beside.name}.{purpose}.{pid}.{random}.tmp`),
    removed when the block ends: on the output's file system, not in the system temp folder,
    and swept by the next run if this one is killed."""
    name = f"{beside.name}.{purpose}"
    beside.parent.mkdir(parents=True, exist_ok=True)
    remove_stale(beside.parent, name)
    scratch = Path(tempfile.mkdtemp(prefix=_temp_prefix(name), suffix=".tmp", dir=beside.parent))
    try:
        yield scratch
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
