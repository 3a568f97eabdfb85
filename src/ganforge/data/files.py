"""The ``folder`` and ``archive`` sources: image files, with labels and splits taken from the layout.

The layout is read from the paths of the images that decoded (a ``README.txt`` or ``.DS_Store`` is skipped as
not an image and does not count). It is understood by these rules, or refused with one :class:`UserError`
line naming ``prepare.path`` and the layout expected; nothing is guessed.

1. Wrappers: while every image sits below one and the same top folder, and that folder is not a split
   folder, it is a wrapper and is dropped (``data.zip`` holding ``cifar/train/…`` reads as ``train/…``).
   A single class folder holding everything is therefore a wrapper too: the data is unlabeled.
2. Splits: the split folders are ``train``/``training``, ``test``/``testing`` and ``val``/``valid``/
   ``validation`` (any case). If any top folder is one, every top entry must be one: a split folder next to
   another folder or next to images is refused. Accepted: ``train/`` + ``test/`` and ``train/`` + ``val/``
   (the source's split: ``val/`` is the held-out test split); ``train/`` alone (its images are the data and
   the prepare stage splits off ``prepare.test_fraction`` itself). Refused: ``test/`` or ``val/`` without
   ``train/``; ``train/`` + ``val/`` + ``test/`` (ganforge keeps two splits); two folders for one split
   (``train/`` + ``Training/``). A split folder anywhere below the top (``cat/train/…``) is refused.
3. Classes, within the data (or within each split folder): images directly in it are unlabeled (one class,
   ``all``); images all inside subfolders are labeled by their first-level subfolder, at any depth below it
   (``cat/indoor/1.png`` is a ``cat``), as torchvision's ``ImageFolder`` reads them. Images both directly in
   it and in subfolders are refused. Each split must be labeled alike, and every class of the test split
   must also be a class of the train split (a train class may lack test images).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from ganforge.data.archive import iter_archive, iter_folder
from ganforge.data.decode import BadImage, DecodeOptions, decode_image
from ganforge.data.sources import RawImages
from ganforge.errors import UserError

# Split folder names (compared in lower case) -> the split they hold; "val" becomes the test split.
SPLIT_DIRS = {"train": "train", "training": "train", "test": "test", "testing": "test",
              "val": "val", "valid": "val", "validation": "val"}
UNLABELED = "all"
_EXPECTED = "expected <class>/<image> or <image>, optionally under train/ and test/ (or val/)"


@dataclass(frozen=True)
class Layout:
    """Labels and split read from image paths.

    Args:
        split: int64 array (N,), 0 train 1 test, when the source has its own split; None: the stage splits.
        class_names: sorted class folder names, or ``("all",)`` for unlabeled data.
        labels: int64 array (N,), indices into ``class_names``.
    """

    split: np.ndarray | None
    class_names: tuple[str, ...]
    labels: np.ndarray


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
        listing.update(f"{rel}\0{digest}\n".encode("utf-8", "surrogateescape"))  # undecodable names too
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

    layout = infer_layout([d.path for d in decoded], source)
    images = np.stack([d.image for d in decoded]).transpose(0, 3, 1, 2)  # (N, 3, R, R)
    if all(d.grey for d in decoded):
        images = images[:, :1]  # (N, 1, R, R): every source image was grey
    return RawImages(
        images=np.ascontiguousarray(images), labels=layout.labels, class_names=layout.class_names,
        source_hash=listing.hexdigest(), split=layout.split, skipped=tuple(skipped), total_files=total,
        paths=tuple(d.path for d in decoded), deduplicated=True,
    )


def _split_of(folder: str) -> str | None:
    return SPLIT_DIRS.get(folder.lower())


def infer_layout(paths: Sequence[str], source: Path | str) -> Layout:
    """Split and labels of images from their relative posix paths, by the rules in the module docstring.

    Args:
        paths: one relative path per image (``cat/1.png``), in the order of the images.
        source: ``prepare.path``, named in every refusal.
    """
    def refuse(problem: str) -> UserError:  # one line even when a file name holds a newline
        line = f"{source}: {problem}; {_EXPECTED} (prepare.path)"
        return UserError("".join(c if c.isprintable() else ascii(c)[1:-1] for c in line))

    parts = [tuple(p.split("/")) for p in paths]
    assert parts and all(all(p) for p in parts), "relative paths of images, without empty components"
    wrapper = 0
    while (all(len(p) > wrapper + 1 for p in parts) and len({p[wrapper] for p in parts}) == 1
           and _split_of(parts[0][wrapper]) is None):
        wrapper += 1
    prefix = "".join(f"{folder}/" for folder in parts[0][:wrapper])  # names folders as the user sees them
    parts = [p[wrapper:] for p in parts]
    for path, p in zip(paths, parts, strict=True):
        if deeper := [folder for folder in p[1:-1] if _split_of(folder) is not None]:
            raise refuse(f"split folder {deeper[0]}/ below the top, in {path}")

    folder_of = _split_folders(parts, paths, prefix, refuse)  # split -> its folder; empty: no split folders
    if folder_of:
        pools = {f"{prefix}{top}/": [i for i, p in enumerate(parts) if p[0] == top] for top in folder_of.values()}
        parts = [p[1:] for p in parts]
    else:
        pools = {prefix or "the top folder": list(range(len(parts)))}
    class_of: list[str | None] = [None] * len(parts)
    labeled: dict[str, bool] = {}
    for where, members in pools.items():
        flat = [i for i in members if len(parts[i]) == 1]
        if flat and len(flat) < len(members):
            nested = next(i for i in members if len(parts[i]) > 1)
            raise refuse(f"images both directly in {where} ({paths[flat[0]]}) and in subfolders ({paths[nested]})")
        labeled[where] = not flat
        for i in members:
            class_of[i] = parts[i][0] if labeled[where] else None

    split = None
    if held_out := folder_of.get("test", folder_of.get("val")):
        train, test = f"{prefix}{folder_of['train']}/", f"{prefix}{held_out}/"
        if labeled[train] != labeled[test]:
            nested, flat = (train, test) if labeled[train] else (test, train)
            raise refuse(f"{nested} holds class folders but {flat} holds images directly")
        if extra := sorted({class_of[i] for i in pools[test]} - {class_of[i] for i in pools[train]}):
            raise refuse(f"class folder {test}{extra[0]}/ has no {train}{extra[0]}/, and every test class must "
                         "also be a train class")
        split = np.ones(len(parts), dtype=np.int64)  # (N,) 0 train, 1 test
        split[pools[train]] = 0
    if not any(labeled.values()):
        return Layout(split, (UNLABELED,), np.zeros(len(parts), dtype=np.int64))
    class_names = tuple(sorted({c for c in class_of if c is not None}))
    index = {name: i for i, name in enumerate(class_names)}
    return Layout(split, class_names, np.array([index[c] for c in class_of], dtype=np.int64))


def _split_folders(parts: list[tuple[str, ...]], paths: Sequence[str], prefix: str,
                   refuse: Callable[[str], UserError]) -> dict[str, str]:
    """``{"train": folder, "test" or "val": folder}`` from the top folders (``parts``: wrapper-free paths)."""
    tops = sorted({p[0] for p in parts if len(p) > 1})
    split_tops = [t for t in tops if _split_of(t) is not None]
    if not split_tops:
        return {}
    others = [f"{prefix}{t}/" for t in tops if _split_of(t) is None]
    others += [path for path, p in zip(paths, parts, strict=True) if len(p) == 1]
    if others:
        raise refuse(f"split folder {prefix}{split_tops[0]}/ next to {others[0]}, but only split folders may "
                     "sit beside it")
    folder_of: dict[str, str] = {}
    for top in split_tops:
        if (seen := folder_of.setdefault(_split_of(top), top)) != top:
            raise refuse(f"two folders for one split, {prefix}{seen}/ and {prefix}{top}/")
    if "train" not in folder_of:
        raise refuse(f"{prefix}{split_tops[0]}/ but no train/ folder beside it")
    if "test" in folder_of and "val" in folder_of:
        raise refuse(f"{prefix}{folder_of['train']}/, {folder_of['val']}/ and {folder_of['test']}/, but ganforge "
                     f"keeps a train and a test split: merge or remove {folder_of['val']}/")
    return folder_of


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
