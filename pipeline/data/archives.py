"""Reading a .tar(.gz)/.tgz/.zip source in memory, as a read-only folder.

An archive is read in one pass into a tree of members that behaves like the part of
pathlib.Path that the readers use (iterdir, glob, is_file, is_dir, read_bytes, name, stem,
suffix, /), so the readers take an archive and a folder on disk alike. Nothing is written
to disk: extracting IMDB's 50k small files took 20 s of file creation on our CI-sized
machine, reading them from the archive 2 s. Only what the readers can use is kept
(tables and .txt files); the rest is listed, not read.

The checks that made extraction safe still apply, so an archive that would be unsafe to
extract is refused: no links, no device files, no absolute paths or `..`.
"""

from __future__ import annotations

import fnmatch
import stat
import tarfile
import zipfile
import zlib
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

from pipeline.errors import PipelineError, first_line
from pipeline.data.readers import TABLE_FORMATS

KEPT_SUFFIXES = {*TABLE_FORMATS, ".txt"}  # what the readers read; other members are listed, not read
SKIPPED = ("__MACOSX",)  # macOS resource forks: never data


class ArchiveFolder:
    """A folder inside an archive (or a file: `member` names either), read-only."""

    def __init__(self, archive: Path, files: dict[PurePosixPath, bytes | None], folders: set[PurePosixPath] = frozenset()):
        """The archive's root, indexing every folder's children once (the folders below share the index)."""
        self.archive, self._files, self.member = archive, files, PurePosixPath(".")
        self._children: dict[PurePosixPath, set[str]] = {}
        for path in [*files, *folders]:
            for parent, child in zip([PurePosixPath("."), *path.parents[-2::-1]], path.parts):
                self._children.setdefault(parent, set()).add(child)

    def _at(self, member: PurePosixPath) -> ArchiveFolder:
        node = ArchiveFolder.__new__(ArchiveFolder)
        node.archive, node._files, node.member, node._children = self.archive, self._files, member, self._children
        return node

    def __truediv__(self, name: str) -> ArchiveFolder:
        return self._at(self.member / name)

    def __repr__(self) -> str:
        return f"{self.archive.name}:{self.member.as_posix()}"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ArchiveFolder) and (self.archive, self.member) == (other.archive, other.member)

    def __hash__(self) -> int:
        return hash((self.archive, self.member))

    def __lt__(self, other: ArchiveFolder) -> bool:  # sorted(): in name order, as sorted() orders paths
        return self.member.parts < other.member.parts

    @property
    def name(self) -> str:
        return self.member.name

    @property
    def stem(self) -> str:
        return self.member.stem

    @property
    def suffix(self) -> str:
        return self.member.suffix

    def is_file(self) -> bool:
        return self.member in self._files

    def is_dir(self) -> bool:
        return self.member in self._children

    def exists(self) -> bool:
        return self.is_file() or self.is_dir()

    def iterdir(self) -> Iterator[ArchiveFolder]:
        for child in sorted(self._children.get(self.member, ())):
            yield self / child

    def glob(self, pattern: str) -> Iterator[ArchiveFolder]:
        """Children whose name matches (one level, as the readers use it)."""
        return (child for child in self.iterdir() if fnmatch.fnmatchcase(child.name, pattern))

    def read_bytes(self) -> bytes:
        data = self._files.get(self.member)
        if data is None:
            raise PipelineError(f"{self!r} is not a file the pipeline reads")
        return data


def _refuse(archive: Path, member: str, why: str) -> PipelineError:
    return PipelineError(f"unsafe archive {archive.name}: entry {member!r} {why}; refusing to read it")


def _member_path(archive: Path, name: str) -> PurePosixPath:
    """The member's path, refused if extracting it could land outside the target folder."""
    pure = PurePosixPath(name.replace("\\", "/"))
    if pure.is_absolute() or ".." in pure.parts or (pure.parts and ":" in pure.parts[0]):  # C:dir: a drive, on Windows
        raise _refuse(archive, name, "would land outside the target folder")
    return pure


class _Budget:
    """What the members read so far may still add, unpacked (download.max_unpacked_bytes)."""

    def __init__(self, archive: Path, limit: int):
        self.archive, self.limit, self.left = archive, limit, limit

    def read(self, name: str, size: int, stream) -> bytes:
        """The member's bytes, refused before reading when its size, declared or read, would pass the limit."""
        if size > self.left:
            raise self._over(name, size)
        data = stream.read(self.left + 1)
        if len(data) > self.left:  # a size header that lied
            raise self._over(name, len(data))
        self.left -= len(data)
        return data

    def _over(self, name: str, size: int) -> PipelineError:
        return PipelineError(
            f"{self.archive.name}: its members unpack to more than download.max_unpacked_bytes ({self.limit:,} bytes; "
            f"{name!r} alone is {size:,}); raise download.max_unpacked_bytes if the archive is what you meant"
        )


def _members(archive: Path, budget: _Budget) -> Iterator[tuple[str, bool, bytes | None]]:
    """(name, is a folder, bytes or None) for each member, in one pass; links and special files refused."""
    if archive.name.lower().endswith(".zip"):
        with zipfile.ZipFile(archive) as zf:
            for info in zf.infolist():
                if stat.S_ISLNK(info.external_attr >> 16):
                    raise _refuse(archive, info.filename, "is a link")
                keep = not info.is_dir() and PurePosixPath(info.filename).suffix.lower() in KEPT_SUFFIXES
                if not keep:
                    yield info.filename, info.is_dir(), None
                    continue
                with zf.open(info) as stream:
                    yield info.filename, False, budget.read(info.filename, info.file_size, stream)
        return
    with tarfile.open(archive, "r:*") as tar:
        for member in tar:  # sequential: a .tar.gz is never seeked back
            if member.issym() or member.islnk():
                raise _refuse(archive, member.name, "is a link")
            if not (member.isfile() or member.isdir()):
                raise _refuse(archive, member.name, "is not a regular file or folder")
            keep = member.isfile() and PurePosixPath(member.name).suffix.lower() in KEPT_SUFFIXES
            yield member.name, member.isdir(), budget.read(member.name, member.size, tar.extractfile(member)) if keep else None


def read_archive(archive: Path, max_unpacked_bytes: int) -> ArchiveFolder:
    """The archive's data folder: its root, or the single folder inside it when the archive
    wraps everything in one top-level folder (as aclImdb does). The members kept may unpack to
    `max_unpacked_bytes` at most, checked before each is read (an archive bomb stops there)."""
    files: dict[PurePosixPath, bytes | None] = {}
    folders: set[PurePosixPath] = set()
    try:
        for name, is_folder, data in _members(archive, _Budget(archive, max_unpacked_bytes)):
            path = _member_path(archive, name)
            if not path.parts or path.parts[0] in SKIPPED or any(part.startswith(".") for part in path.parts):
                continue  # the root itself, resource forks, hidden files
            if is_folder:
                folders.add(path)
            else:
                files[path] = data
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, zlib.error, OSError) as exc:
        raise PipelineError(
            f"cannot read archive {archive.name}: {first_line(exc)}; the file is corrupt, truncated or not an archive"
        ) from None
    folder = ArchiveFolder(archive, files, folders)  # members keep their full names, for messages
    while len(entries := list(folder.iterdir())) == 1 and entries[0].is_dir():  # unwrap single top-level folders
        folder = entries[0]
    return folder
