"""Writing outputs so that a failure never leaves half of one behind.

Every file is written to a temporary name in its target folder and renamed into
place; a folder output is built in a temporary sibling folder and swapped in
whole once complete. A stage with several outputs stages them all (`stage_outputs`)
and puts them in place together at the end, so it never leaves one new and one old.

Temporary names carry the creating process's id, `.{name}.{pid}.{random}.tmp` (or
`.old`), so that a run killed mid-write is cleaned up by the next one: before
creating its own, a run removes the siblings whose process is gone, and never
touches those of a run that is still alive.

The machine's faults while writing (no space left, a read-only file system, no
permission) become one PipelineError naming the output and the fix (`environment_fault`);
staging beside the target makes them show before anything is replaced.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pipeline.errors import PipelineError

# mkstemp/mkdtemp create private (0600/0700) entries; outputs get the usual permissions.
_UMASK = os.umask(0)
os.umask(_UMASK)
FILE_MODE, DIR_MODE = 0o666 & ~_UMASK, 0o777 & ~_UMASK

NO_SPACE = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}
READ_ONLY = {errno.EROFS}
DENIED = {errno.EACCES, errno.EPERM}
ENVIRONMENT_ERRNOS = NO_SPACE | READ_ONLY | DENIED
FULL_BELOW_BYTES = 1 << 20  # a file system with less free space than this counts as full


def _free_bytes(folder: Path) -> int | None:
    """Free bytes on the file system of `folder` (its nearest existing parent), if known."""
    for candidate in (folder, *folder.parents):
        try:
            stats = os.statvfs(candidate)
        except (FileNotFoundError, NotADirectoryError):
            continue
        except OSError:
            return None
        return stats.f_bavail * stats.f_frsize
    return None


def _disk_full(folder: Path) -> bool:
    free = _free_bytes(folder)
    return free is not None and free < FULL_BELOW_BYTES


def environment_fault(exc: BaseException, targets: Iterable[Path]) -> PipelineError | None:
    """The one-line error for `exc` if the machine caused it while writing `targets` (no space,
    a read-only file system, no permission), else None. A library that writes through code of
    its own (torch's zip writer) says only that a write failed: a full disk is then the cause."""
    targets = list(targets)
    if not isinstance(exc, (OSError, RuntimeError)) or not targets:
        return None
    code = exc.errno if isinstance(exc, OSError) else None
    target = targets[0]
    if code in NO_SPACE or (code not in ENVIRONMENT_ERRNOS and any(_disk_full(t.parent) for t in targets)):
        free = _free_bytes(target.parent)
        left = f", {free / 1e6:.1f} MB left" if free is not None else ""
        return PipelineError(f"no space left on the disk of {target.parent} while writing {target}{left}; free some space and rerun (nothing was replaced)")
    if code in READ_ONLY:
        return PipelineError(f"cannot write {target}: {target.parent} is on a read-only file system; run where the project is writable")
    if code in DENIED:
        return PipelineError(f"cannot write {target}: permission denied; make {target.parent} writable for this user, or run as its owner")
    return None


@contextmanager
def faults_named(*targets: Path) -> Iterator[None]:
    """Machine faults in the block become one PipelineError naming the first target."""
    try:
        yield
    except BaseException as exc:
        fault = environment_fault(exc, targets)
        if fault is not None:
            raise fault from None
        raise


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
    except (FileNotFoundError, NotADirectoryError, PermissionError):
        return removed
    for entry in entries:
        found = pattern.fullmatch(entry.name)
        if found is None or pid_alive(int(found.group(1))):
            continue
        try:
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
        except OSError:  # a read-only folder: nothing of ours to clean there
            continue
        removed.append(entry)
    return removed


def _temp_prefix(name: str) -> str:
    return f".{name}.{os.getpid()}."


def _prepare(target: Path) -> None:
    """The target's folder exists and holds no leftovers of dead runs."""
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_stale(target.parent, target.name)


def _new_temp_file(target: Path) -> tuple[int, Path]:
    _prepare(target)
    fd, tmp = tempfile.mkstemp(prefix=_temp_prefix(target.name), suffix=".tmp", dir=target.parent)
    os.chmod(tmp, FILE_MODE)
    return fd, Path(tmp)


def _new_temp_folder(target: Path, suffix: str = ".tmp") -> Path:
    _prepare(target)
    staging = Path(tempfile.mkdtemp(prefix=_temp_prefix(target.name), suffix=suffix, dir=target.parent))
    os.chmod(staging, DIR_MODE)
    return staging


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _swap_in(staged: Path, target: Path) -> None:
    """Put a staged file or folder at `target`; a folder replaces the old one whole."""
    if staged.is_dir() and target.exists():
        retired = Path(tempfile.mkdtemp(prefix=_temp_prefix(target.name), suffix=".old", dir=target.parent))
        target.rename(retired / target.name)
        staged.rename(target)
        shutil.rmtree(retired, ignore_errors=True)
    elif staged.is_dir():
        staged.rename(target)
    else:
        os.replace(staged, target)


@contextmanager
def atomic_file(path: Path, mode: str = "w") -> Iterator[Any]:
    """Open a temporary file beside `path`; it replaces `path` only if the block succeeds."""
    with faults_named(path):
        fd, tmp = _new_temp_file(path)
        try:
            encoding = None if "b" in mode else "utf-8"
            with os.fdopen(fd, mode, encoding=encoding) as handle:
                yield handle
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise


def sha256_of(path: Path) -> str:
    """The SHA-256 of a file's bytes, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _dump_json(handle, data: Any) -> None:
    """Readable, stable JSON (sorted keys would scramble reports, so insertion order is kept)."""
    json.dump(data, handle, indent=2, ensure_ascii=False)
    handle.write("\n")


def write_json(path: Path, data: Any) -> None:
    with atomic_file(path) as handle:
        _dump_json(handle, data)


def read_json(path: Path, fix: str) -> Any:
    """JSON from `path`; a missing or unreadable file is a PipelineError ending in `fix`."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise PipelineError(f"{path} is missing; {fix}") from None
    except (OSError, ValueError) as exc:
        raise PipelineError(f"{path}: not readable JSON ({exc}); {fix}") from None


class Outputs:
    """A stage's outputs, each staged beside its target; `stage_outputs` puts them all in place
    when its block succeeds, or removes them all and leaves the targets as they were."""

    def __init__(self) -> None:
        self.staged: list[tuple[Path, Path]] = []  # (temporary, target), in the order they were staged

    @property
    def targets(self) -> list[Path]:
        return [target for _, target in self.staged]

    def folder(self, target: Path) -> Path:
        """An empty folder that becomes `target` (replacing the old one whole)."""
        staging = _new_temp_folder(target)
        self.staged.append((staging, target))
        return staging

    @contextmanager
    def file(self, target: Path, mode: str = "w") -> Iterator[Any]:
        """A file, open for writing, that becomes `target`."""
        fd, tmp = _new_temp_file(target)
        self.staged.append((tmp, target))
        with os.fdopen(fd, mode, encoding=None if "b" in mode else "utf-8") as handle:
            yield handle

    def json(self, target: Path, data: Any) -> None:
        with self.file(target) as handle:
            _dump_json(handle, data)

    def link(self, source: Path, target: Path) -> None:
        """`source`'s content (a hard link where possible, else a copy) as `target`."""
        fd, tmp = _new_temp_file(target)
        os.close(fd)
        tmp.unlink()
        self.staged.append((tmp, target))
        try:
            os.link(source, tmp)
        except OSError:
            shutil.copy2(source, tmp)


@contextmanager
def stage_outputs() -> Iterator[Outputs]:
    """Stage a stage's outputs (`Outputs.folder`, `.file`, `.json`, `.link`) and put them in
    place together at the end of the block; on any error, nothing is replaced."""
    outputs = Outputs()
    try:
        yield outputs
        with faults_named(*outputs.targets):
            for staged, target in reversed(outputs.staged):  # what was staged inside a staged folder goes in before it
                _swap_in(staged, target)
    except BaseException as exc:
        for staged, _ in outputs.staged:
            _remove(staged)
        fault = environment_fault(exc, outputs.targets)
        if fault is not None:
            raise fault from None
        raise


@contextmanager
def scratch_dir(beside: Path, purpose: str) -> Iterator[Path]:
    """A private work folder next to `beside` (`.{beside.name}.{purpose}.{pid}.{random}.tmp`),
    removed when the block ends: on the output's file system, not in the system temp folder,
    and swept by the next run if this one is killed."""
    with faults_named(beside):
        scratch = _new_temp_folder(beside.with_name(f"{beside.name}.{purpose}"))
        try:
            yield scratch
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
