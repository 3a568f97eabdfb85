"""Atomic writes and hashing: a crash or Ctrl-C never leaves a half-written file or directory."""

from __future__ import annotations

import contextlib
import contextvars
import hashlib
import json
import os
import reprlib
import shutil
import stat
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from ganforge.errors import UserError


def _read_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _read_umask()


def usual_permissions(path: str | Path) -> None:
    """Give a file the permissions a plain ``open`` would (temp-file writers such as mkstemp leave 0600)."""
    os.chmod(path, 0o666 & ~_UMASK)


OutputKind = Literal["dir", "file"]


_KINDS = {"dir": "a directory", "file": "a file"}


def check_output(path: str | Path, kind: OutputKind, label: str = "") -> Path:
    """Refuse an output path that cannot become a ``kind`` (``dir`` or ``file``): it exists as the other kind, a
    parent is a file, or the nearest existing parent is not writable. ``label`` names the flag or key that gave
    the path. Nothing is created."""
    path = Path(path)
    where = f"{label} {path}" if label else str(path)
    try:
        if path.exists() and not (path.is_dir() or path.is_file()):  # a FIFO, a device, a socket
            raise UserError(f"{where}: exists as a special file (FIFO, device or socket), expected {_KINDS[kind]}")
        if path.exists() and path.is_dir() != (kind == "dir"):
            other = _KINDS["file" if kind == "dir" else "dir"]
            raise UserError(f"{where}: exists as {other}, expected {_KINDS[kind]} (remove it or choose another "
                            "path)")
        parent = path.absolute().parent
        while not parent.exists() and not parent.is_symlink():
            parent = parent.parent
    except OSError as e:  # a name too long, a symlink loop
        raise UserError(f"{where}: not a usable path ({e.strerror or e})") from None
    if not parent.is_dir():
        raise UserError(f"{where}: {parent} is a file, not a directory")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UserError(f"{where}: {parent} is not writable")
    return path


def check_input(path: str | Path, kind: OutputKind, label: str, what: str | None = None) -> Path:
    """Refuse an input path that is missing or not a ``kind`` (``dir`` or ``file``); ``label`` names the flag and
    ``what`` the thing expected there (default: a directory or a file)."""
    path = Path(path)
    what = what or _KINDS[kind].removeprefix("a ")
    if not path.exists():
        raise UserError(f"{label} {path}: {what} not found")
    if path.is_dir() != (kind == "dir"):
        raise UserError(f"{label} {path}: is {_KINDS['dir' if path.is_dir() else 'file']}, expected a {what}")
    return path


class _Outputs:
    """The outputs declared by :func:`replaced_together`, and the finished ones waiting to be swapped in."""

    def __init__(self, paths: list[Path]) -> None:
        self.declared = {p.absolute() for p in paths}
        self.staged: list[tuple[Path, Path]] = []  # (finished temporary, final path), in finishing order

    def defer(self, tmp: Path, path: Path) -> bool:
        """Take over a finished temporary whose final path is a declared output; False for any other path."""
        if path.absolute() not in self.declared:
            return False
        self.staged.append((tmp, path))
        return True

    def staged_for(self, path: Path) -> Path | None:
        """The finished temporary that will become ``path``, if any."""
        found = [tmp for tmp, final in self.staged if final.absolute() == path.absolute()]
        return found[-1] if found else None

    def discard(self) -> None:
        for tmp, _ in self.staged:
            _remove(tmp)

    def commit(self) -> None:
        """Swap every staged output in together (:func:`_swap_in`)."""
        try:
            _swap_in(self.staged)
        except BaseException:
            self.discard()
            raise


_ACTIVE_OUTPUTS: contextvars.ContextVar[_Outputs | None] = contextvars.ContextVar("ganforge_outputs", default=None)


def check_outputs(outputs: Mapping[str, tuple[str | Path, OutputKind]],
                  inputs: Mapping[str, str | Path | None] | None = None) -> None:
    """:func:`check_output` for each ``label: (path, kind)``; and no output may be another output, or an input
    (``label: path``; None for an input not used), or hold one or sit inside one: writing it would replace
    what is read."""
    for label, (path, kind) in outputs.items():
        check_output(path, kind, label)
    claimed = [(label, Path(path).resolve()) for label, (path, _) in outputs.items()]
    read = [(label, Path(path).resolve()) for label, path in (inputs or {}).items() if path is not None]
    for i, (label, path) in enumerate(claimed):
        for other, other_path in claimed[:i] + read:
            if path == other_path or path in other_path.parents or other_path in path.parents:
                relation = ("is" if path == other_path else "holds" if path in other_path.parents else "is inside")
                raise UserError(f"{label} {outputs[label][0]}: {relation} the path of {other} ({other_path}); "
                                "writing it would replace what that names")


@contextlib.contextmanager
def replaced_together(outputs: Mapping[str, tuple[str | Path, OutputKind]],
                      inputs: Mapping[str, str | Path | None] | None = None) -> Iterator[None]:
    """Declare a stage's outputs, ``label: (path, kind)``, and the inputs it reads, ``label: path``: they are
    checked now (:func:`check_outputs`), and :func:`atomic_path` / :func:`atomic_dir` writes to the outputs inside
    the block are held back and swapped in together when the block ends. A failure anywhere inside replaces none
    of them."""
    check_outputs(outputs, inputs)
    state = _Outputs([Path(path) for path, _ in outputs.values()])
    token = _ACTIVE_OUTPUTS.set(state)
    try:
        yield
    except BaseException:
        state.discard()
        raise
    finally:
        _ACTIVE_OUTPUTS.reset(token)
    state.commit()


def current_path(path: str | Path) -> Path:
    """Where ``path``'s latest contents are: inside :func:`replaced_together` a finished output keeps its temporary
    name until the block ends, and reading it back (to hash it, say) must find that version."""
    outputs = _ACTIVE_OUTPUTS.get()
    staged = outputs.staged_for(Path(path)) if outputs is not None else None
    return staged if staged is not None else Path(path)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _finish(tmp: Path, path: Path) -> bool:
    """Move a finished temporary (file or directory) into place, or hand it to the active
    :func:`replaced_together`; True when handed over (the caller must then leave ``tmp`` alone)."""
    outputs = _ACTIVE_OUTPUTS.get()
    if outputs is not None and outputs.defer(tmp, path):
        return True
    if tmp.is_dir():
        _swap_in([(tmp, path)])
    else:
        os.replace(tmp, path)  # atomic for a file, whatever was there
    return False


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success rename it into place, on failure delete it. A
    directory at ``path`` is refused (:func:`check_output`), never replaced."""
    path = check_output(path, "file")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    handed_over = False
    try:
        yield tmp
        usual_permissions(tmp)
        handed_over = _finish(tmp, path)
    finally:
        if not handed_over:
            tmp.unlink(missing_ok=True)


def _swap_in(pairs: list[tuple[Path, Path]]) -> None:
    """Rename each finished temporary onto its path, moving the previous versions aside first; if any rename
    fails, every path gets its previous version back, so all are replaced or none is."""
    done: list[tuple[Path, Path | None]] = []  # (path, the hidden folder holding its previous version)
    try:
        for tmp, path in pairs:
            aside = None
            if path.exists() or path.is_symlink():
                aside = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".old", dir=path.parent))
                os.replace(path, aside / path.name)
            done.append((path, aside))
            os.replace(tmp, path)
    except BaseException:
        for path, aside in reversed(done):
            if aside is not None and (aside / path.name).exists():
                _remove(path)
                os.replace(aside / path.name, path)  # put the previous version back
        raise
    finally:
        for _, aside in done:
            if aside is not None:
                shutil.rmtree(aside, ignore_errors=True)


@contextlib.contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield a temporary directory beside ``path``; on success swap it into place.

    The old directory is moved aside, the new one renamed in, then the old one deleted. If anything fails
    (including Ctrl-C) before the swap completes, the old directory is put back and the new one discarded,
    so ``path`` ends up holding either the complete previous directory or the complete new one. A file at
    ``path`` is refused (:func:`check_output`), never replaced.
    """
    path = check_output(path, "dir")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    os.chmod(tmp, 0o777 & ~_UMASK)
    handed_over = False
    try:
        yield tmp
        handed_over = _finish(tmp, path)
    finally:
        if not handed_over:
            shutil.rmtree(tmp, ignore_errors=True)


def write_json(path: str | Path, obj: Any) -> None:
    """Write ``obj`` as indented JSON, atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=False) + "\n")


def read_text(path: str | Path, max_bytes: int = 64 << 20) -> str:
    """Read a UTF-8 text file that ganforge did not necessarily write itself: a missing file, a directory in its
    place, non-UTF-8 bytes or a file over ``max_bytes`` is a :class:`UserError` naming the file."""
    path = Path(path)
    try:
        source = current_path(path)
        if not stat.S_ISREG(source.stat().st_mode) and not source.is_dir():  # a FIFO would block, a device not end
            raise UserError(f"{path}: not a regular file")
        with open(source, "rb") as f:
            data = f.read(max_bytes + 1)
    except FileNotFoundError:
        raise UserError(f"{path}: file not found") from None
    except IsADirectoryError:
        raise UserError(f"{path}: is a directory, expected a file") from None
    except NotADirectoryError:
        raise UserError(f"{path}: a parent of this path is a file, not a directory") from None
    except PermissionError:
        raise UserError(f"{path}: not readable (permission denied)") from None
    except OSError as e:  # a symlink loop, a name too long, an I/O error
        raise UserError(f"{path}: cannot be read ({e.strerror or e})") from None
    if len(data) > max_bytes:
        raise UserError(f"{path}: larger than {max_bytes >> 20} MiB; not a file ganforge wrote")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise UserError(f"{path}: not UTF-8 text (byte {data[e.start]:#04x} at offset {e.start})") from None


def read_json(path: str | Path, max_bytes: int = 64 << 20) -> Any:
    """Read a JSON file; missing, unreadable (see :func:`read_text`) or malformed is a :class:`UserError` naming
    the file. Callers check the shape of what they get."""
    path = Path(path)
    text = read_text(path, max_bytes)
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise UserError(f"{path}: malformed JSON at line {e.lineno}: {e.msg}") from None
    except ValueError as e:  # an integer of more digits than Python converts
        raise UserError(f"{path}: malformed JSON: {e}") from None
    except RecursionError:
        raise UserError(f"{path}: malformed JSON: nested too deeply") from None


def sha256_file(path: str | Path, chunk_bytes: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(current_path(path), "rb") as f:
        while chunk := f.read(chunk_bytes):
            digest.update(chunk)
    return digest.hexdigest()


class _BoundedRepr(reprlib.Repr):
    """reprlib's repr (bounded depth, items and string length, so a YAML alias bomb or a 3 MB string costs nothing
    to show), with integers too long for ``repr`` described instead of raising."""

    def repr_int(self, value: int, level: int) -> str:
        if value.bit_length() > 200:
            return f"<an integer of {len(str(value)) if value.bit_length() < 10_000 else 'thousands of'} digits>"
        return super().repr_int(value, level)


_REPR = _BoundedRepr()
_REPR.maxlevel, _REPR.maxstring, _REPR.maxother = 3, 60, 60
_REPR.maxlist = _REPR.maxdict = _REPR.maxtuple = _REPR.maxset = 6


def shown(value: Any, limit: int = 60) -> str:
    """A short ``repr(value)``, at most ``limit`` characters, for an error line about a value read from a file;
    its cost is bounded whatever the value's size or nesting."""
    text = _REPR.repr(value)
    return text if len(text) <= limit else text[:limit - 1] + "…"


@dataclass(frozen=True)
class Each:
    """JSON shape: an object whose keys are names (any) and whose values all have ``shape``."""

    shape: Any


@dataclass(frozen=True)
class Maybe:
    """JSON shape: null, or ``shape``."""

    shape: Any


POSITIVE = "a positive number"  # JSON shape of a number that something is divided by


def _is_number(value: Any) -> bool:
    # Integers past a float's range would make float() and number formatting raise OverflowError.
    return isinstance(value, float) or (isinstance(value, int) and not isinstance(value, bool) and abs(value) < 2**1023)


_JSON_KINDS = {float: ("a number", _is_number),
          int: ("an integer", lambda v: isinstance(v, int) and not isinstance(v, bool)),
          str: ("a string", lambda v: isinstance(v, str)),
          bool: ("true or false", lambda v: isinstance(v, bool)),
          POSITIVE: (POSITIVE, lambda v: _is_number(v) and v > 0)}


def key_label(key: Any) -> str:
    """A key as it reads in an error line: plain when it is a plain word, else quoted and bounded (:func:`shown`),
    so a newline stays one line."""
    return key if isinstance(key, str) and key.isprintable() and key.strip() == key and key else shown(key)


def _field(parent: str, key: str) -> str:
    return f"{parent}.{key_label(key)}" if parent else key_label(key)


def check_json(value: Any, shape: Any, source: str, field_name: str = "") -> None:
    """Check that the JSON ``value`` read from ``source`` has ``shape``, before anything uses it.

    A shape is ``float`` (any number), :data:`POSITIVE`, ``int``, ``str``, ``bool``, a dict of key -> shape (an
    object holding at least those keys; a key ending in ``?`` may be missing), ``[shape]`` (a list of them),
    :class:`Each` or :class:`Maybe`. The first mismatch is a one-line :class:`UserError` like
    ``bench/results.json: ceilings.fp32_gemm_gflops.median: expected a number, got 'fast'``.
    """
    where = f"{source}: {field_name}" if field_name else source
    if isinstance(shape, Maybe):
        if value is None:
            return
        shape = shape.shape
    if isinstance(shape, dict | Each):
        if not isinstance(value, dict):
            raise UserError(f"{where}: expected a JSON object, got {shown(value)}")
        if isinstance(shape, Each):
            fields = [(key, shape.shape) for key in value]
        else:
            fields = [(key.removesuffix("?"), inner) for key, inner in shape.items()
                      if not key.endswith("?") or key.removesuffix("?") in value]
        for key, inner in fields:
            if key not in value:
                raise UserError(f"{source}: {_field(field_name, key)}: missing")
            check_json(value[key], inner, source, _field(field_name, key))
    elif isinstance(shape, list):
        if not isinstance(value, list):
            raise UserError(f"{where}: expected a list, got {shown(value)}")
        for i, item in enumerate(value):
            check_json(item, shape[0], source, f"{field_name}[{i}]")
    else:
        what, accepts = _JSON_KINDS[shape]
        if not accepts(value):
            raise UserError(f"{where}: expected {what}, got {shown(value)}")
