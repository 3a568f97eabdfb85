"""Read image files from a folder or an archive without trusting archive paths.

Archive members are read into memory, never extracted, and a member with an absolute path, a ``..``
component, or a link pointing outside the archive stops the stage with an error naming it.
"""

from __future__ import annotations

import os
import posixpath
import stat
import tarfile
import zipfile
import zlib
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

from ganforge.errors import UserError

ARCHIVE_SUFFIXES = (".zip", ".tar", ".tar.gz", ".tgz")
# No image file is this large; a bigger entry is an archive bomb or not training data, so it is never read.
MAX_ENTRY_BYTES = 256 * 1024 * 1024
MAX_LINK_BYTES = 4096  # PATH_MAX: a link's target; a zip "link" entry with a longer body is not a link
_ENTRY_ERRORS = (OSError, EOFError, RuntimeError, NotImplementedError, zlib.error, zipfile.BadZipFile,
                 tarfile.TarError)


def _check_member_name(archive: Path, name: str) -> str:
    """The member's normalised relative posix path; unsafe names are a :class:`UserError`."""
    if name.startswith(("/", "\\")) or PurePosixPath(name).is_absolute() or (len(name) > 1 and name[1] == ":"):
        raise UserError(f"{archive}: refused entry {name!r}: absolute path")
    parts = PurePosixPath(name.replace("\\", "/")).parts
    if ".." in parts:
        raise UserError(f"{archive}: refused entry {name!r}: '..' path component")
    return "/".join(p for p in parts if p not in ("", "."))


def _check_link(archive: Path, name: str, target: str, hard: bool = False) -> None:
    """Symbolic links resolve from the entry's folder, hard links from the archive root."""
    base = "" if hard else posixpath.dirname(name)
    resolved = posixpath.normpath(posixpath.join(base, target))
    if target.startswith("/") or resolved == ".." or resolved.startswith("../"):
        raise UserError(f"{archive}: refused entry {name!r}: link pointing outside the archive ({target!r})")


def iter_archive(archive: Path) -> Iterator[tuple[str, bytes | None, str | None]]:
    """Yield (relative path, bytes, None) per regular file, or (path, None, reason) for skipped members."""
    name = archive.name.lower()
    if name.endswith(".zip"):
        yield from _iter_zip(archive)
    elif name.endswith((".tar", ".tar.gz", ".tgz")):
        yield from _iter_tar(archive)
    else:
        raise UserError(f"{archive}: unsupported archive type (expected one of {', '.join(ARCHIVE_SUFFIXES)})")


def _iter_tar(archive: Path) -> Iterator[tuple[str, bytes | None, str | None]]:
    try:
        with tarfile.open(archive, mode="r:*") as tar:
            while (member := tar.next()) is not None:
                tar.members.clear()  # tarfile keeps every header it read: memory would grow with the entry count
                rel = _check_member_name(archive, member.name)
                if member.isdir():
                    continue
                if member.issym() or member.islnk():
                    _check_link(archive, member.name, member.linkname, hard=member.islnk())
                    yield rel, None, "link inside the archive (not followed)"
                elif not member.isfile():  # a FIFO, a device, an unknown type: listed, never read
                    yield rel, None, "not a regular file"
                elif member.size > MAX_ENTRY_BYTES:
                    yield rel, None, f"entry too large ({member.size} bytes > {MAX_ENTRY_BYTES})"
                else:
                    handle = tar.extractfile(member)
                    yield rel, handle.read() if handle else b"", None
    except _ENTRY_ERRORS as e:  # a tar stream cannot skip past a broken member
        raise UserError(f"{archive}: unreadable archive ({type(e).__name__}: {e})") from None


def _iter_zip(archive: Path) -> Iterator[tuple[str, bytes | None, str | None]]:
    try:
        with zipfile.ZipFile(archive) as zf:
            for info in zf.infolist():
                rel = _check_member_name(archive, info.filename)
                if info.is_dir():
                    continue
                if stat.S_ISLNK(info.external_attr >> 16):
                    if info.file_size > MAX_LINK_BYTES:  # checked before its body is read: it may inflate to GBs
                        yield rel, None, f"link entry too large ({info.file_size} bytes > {MAX_LINK_BYTES})"
                        continue
                    try:
                        with zf.open(info) as handle:
                            target = handle.read(MAX_LINK_BYTES + 1)  # bounded even if the header lies
                    except _ENTRY_ERRORS as e:
                        yield rel, None, f"unreadable archive entry ({type(e).__name__}: {e})"
                        continue
                    _check_link(archive, info.filename, target.decode(errors="replace"))
                    yield rel, None, "link inside the archive (not followed)"
                    continue
                if info.file_size > MAX_ENTRY_BYTES:
                    yield rel, None, f"entry too large ({info.file_size} bytes > {MAX_ENTRY_BYTES})"
                    continue
                try:
                    with zf.open(info) as handle:
                        data = handle.read(MAX_ENTRY_BYTES + 1)  # bounded even if the header lies
                except _ENTRY_ERRORS as e:  # bad CRC, encrypted, unknown compression: skip this entry
                    yield rel, None, f"unreadable archive entry ({type(e).__name__}: {e})"
                    continue
                if len(data) > MAX_ENTRY_BYTES:
                    yield rel, None, f"entry too large (> {MAX_ENTRY_BYTES} bytes)"
                    continue
                yield rel, data, None
    except _ENTRY_ERRORS as e:
        raise UserError(f"{archive}: unreadable archive ({type(e).__name__}: {e})") from None


def iter_folder(root: Path) -> Iterator[tuple[str, bytes | None, str | None]]:
    """Yield (relative path, bytes, None) for every file below ``root`` in sorted order; links and anything
    that is not a regular file are listed as skipped."""
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in [d for d in dirnames if (Path(dirpath) / d).is_symlink()]:
            yield (Path(dirpath) / name).relative_to(root).as_posix(), None, "symbolic link (not followed)"
        for filename in sorted(filenames):
            path = Path(dirpath) / filename
            rel = path.relative_to(root).as_posix()
            if path.is_symlink():
                yield rel, None, "symbolic link (not followed)"
                continue
            if not stat.S_ISREG(path.lstat().st_mode):
                yield rel, None, "not a regular file"
                continue
            if path.stat().st_size > MAX_ENTRY_BYTES:
                yield rel, None, f"file too large ({path.stat().st_size} bytes > {MAX_ENTRY_BYTES})"
                continue
            try:
                yield rel, path.read_bytes(), None
            except OSError as e:
                yield rel, None, f"unreadable file ({e.strerror})"
