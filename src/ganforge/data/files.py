"""The ``folder`` and ``archive`` sources: image files, with labels and splits taken from the layout.

Layout rules (after stripping one wrapping directory shared by every file):

- ``train/…`` and ``test/…`` at the top give the split; otherwise the prepare stage splits.
- When every image sits inside a first-level subfolder (below ``train``/``test`` if present), that folder
  is its class; otherwise the data is unlabeled (one class, ``all``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from ganforge.data.archive import iter_archive, iter_folder
from ganforge.data.decode import BadImage, DecodeOptions, decode_image
from ganforge.data.sources import RawImages
from ganforge.errors import UserError

SPLIT_DIRS = ("train", "test")
UNLABELED = "all"


@dataclass
class _Decoded:
    path: str
    image: np.ndarray  # (R, R, 3) uint8
    grey: bool


def load_files(entries: Iterator[tuple[str, bytes | None, str | None]], source: Path, options: DecodeOptions,
               max_bad_fraction: float) -> RawImages:
    """Decode every entry, drop exact duplicates, infer split and labels, and record every skipped file."""
    decoded: list[_Decoded] = []
    skipped: list[dict[str, str]] = []
    seen: dict[str, tuple[str, str | None]] = {}  # content hash -> (first path, its bad reason or None)
    listing = hashlib.sha256()
    total, bad = 0, 0
    for rel, data, reason in tqdm(entries, desc="prepare: decode", unit="file", mininterval=1.0):
        total += 1
        if data is None:
            skipped.append({"path": rel, "reason": reason or "unreadable"})
            bad += 1
            continue
        digest = hashlib.sha256(data).hexdigest()
        listing.update(f"{rel}\0{digest}\n".encode())
        if digest in seen:
            first, first_reason = seen[digest]
            if first_reason is None:
                skipped.append({"path": rel, "reason": f"exact duplicate of {first}"})
            else:  # a copy of a bad file is just as bad
                skipped.append({"path": rel, "reason": f"{first_reason} (same bytes as {first})"})
                bad += 1
            continue
        try:
            image, grey = decode_image(data, options)
        except BadImage as e:
            seen[digest] = (rel, str(e))
            skipped.append({"path": rel, "reason": str(e)})
            bad += 1
            continue
        seen[digest] = (rel, None)
        decoded.append(_Decoded(rel, image, grey))

    if not decoded:
        raise UserError(f"{source}: no readable images found ({total} files looked at)")
    if bad / total > max_bad_fraction:
        first_bad = next(s for s in skipped if not s["reason"].startswith("exact duplicate"))
        raise UserError(f"{source}: {bad} of {total} files are bad ({bad / total:.1%} > "
                        f"prepare.max_bad_fraction={max_bad_fraction:.1%}); first: {first_bad['path']}: "
                        f"{first_bad['reason']}")

    paths = _strip_wrapper([d.path for d in decoded])
    splits = _splits(paths)
    inner = [p.split("/", 1)[1] for p in paths] if splits is not None else paths
    class_of = [p.split("/", 1)[0] if "/" in p else None for p in inner]
    if all(c is not None for c in class_of):
        class_names = tuple(sorted(set(class_of)))
        labels = np.array([class_names.index(c) for c in class_of], dtype=np.int64)
    else:
        class_names, labels = (UNLABELED,), np.zeros(len(paths), dtype=np.int64)

    images = np.stack([d.image for d in decoded]).transpose(0, 3, 1, 2)  # (N, 3, R, R)
    if all(d.grey for d in decoded):
        images = images[:, :1]  # (N, 1, R, R): every source image was grey
    return RawImages(
        images=np.ascontiguousarray(images), labels=labels, class_names=class_names,
        source_hash=listing.hexdigest(), split=splits, skipped=tuple(skipped), total_files=total,
        paths=tuple(d.path for d in decoded), deduplicated=True,
    )


def _strip_wrapper(paths: list[str]) -> list[str]:
    """Drop one leading directory that every path shares (archives often wrap their content in one)."""
    heads = {p.split("/", 1)[0] for p in paths}
    if len(heads) == 1 and all("/" in p for p in paths) and next(iter(heads)) not in SPLIT_DIRS:
        return [p.split("/", 1)[1] for p in paths]
    return paths


def _splits(paths: list[str]) -> np.ndarray | None:
    """Split index per path (0 train, 1 test) when the layout is ``train/…`` + ``test/…``; else None."""
    heads = [p.split("/", 1)[0] if "/" in p else None for p in paths]
    if set(heads) == set(SPLIT_DIRS):
        return np.array([SPLIT_DIRS.index(h) for h in heads], dtype=np.int64)
    return None


def load_folder(path: Path, options: DecodeOptions, max_bad_fraction: float) -> RawImages:
    """The ``folder`` source: every file below ``path``, read recursively."""
    if not path.is_dir():
        raise UserError(f"{path}: folder not found (prepare.path)")
    return load_files(iter_folder(path), path, options, max_bad_fraction)


def load_archive(path: Path, options: DecodeOptions, max_bad_fraction: float) -> RawImages:
    """The ``archive`` source: a .zip, .tar, .tar.gz or .tgz holding such a folder."""
    if not path.is_file():
        raise UserError(f"{path}: archive not found (prepare.path)")
    return load_files(iter_archive(path), path, options, max_bad_fraction)
