"""The prepare stage on every source, with real files the tests make, including every bad-input case."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import json
import pickle
import struct
import tarfile
import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from ganforge.config import PrepareConfig
from ganforge.data import decode
from ganforge.data.decode import BACKGROUNDS, BadImage, DecodeOptions, decode_image
from ganforge.data.files import infer_layout, load_folder
from ganforge.data.prepare import prepare
from ganforge.data.prepared import load_split, read_manifest
from ganforge.errors import UserError

SHARED_CIFAR = Path(__file__).resolve().parents[2] / "shared/datasets/cifar10-jpeg.tar.gz"


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _digit_like(seed: int, size: tuple[int, int] = (12, 12), mode: str = "RGB") -> Image.Image:
    rng = np.random.default_rng(seed)
    channels = 3 if mode == "RGB" else 1
    array = rng.integers(0, 256, size=(size[1], size[0], channels), dtype=np.uint8)
    return Image.fromarray(array if channels == 3 else array[:, :, 0], mode)


def _class_folder(root: Path, per_class: int = 6, classes: tuple[str, ...] = ("cat", "dog"), seed: int = 0) -> Path:
    for c, name in enumerate(classes):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            (root / name / f"{i}.png").write_bytes(_png(_digit_like(seed + 100 * c + i)))
    return root


def _cfg(path: Path, source: str = "folder", **overrides) -> PrepareConfig:
    return dataclasses.replace(PrepareConfig(), **({"source": source, "path": str(path), "resolution": 8} | overrides))


def _run(tmp_path: Path, cfg: PrepareConfig) -> dict:
    return prepare(cfg, tmp_path / "prepared", tmp_path / "grid.png")


def _reasons(manifest: dict) -> dict[str, str]:
    return {Path(s["path"]).name: s["reason"] for s in manifest["skipped"]}


# --- decoding odd but valid images -------------------------------------------------------------------------

OPTIONS = DecodeOptions(resolution=8)


def test_rgba_is_composited_on_the_stated_background():
    transparent = Image.new("RGBA", (8, 8), (255, 0, 0, 0))
    black, _ = decode_image(_png(transparent), DecodeOptions(8, background="black"))
    white, _ = decode_image(_png(transparent), DecodeOptions(8, background="white"))
    assert black.max() == 0 and white.min() == 255


def test_sixteen_bit_png_is_scaled_to_eight_bits():
    array = np.full((8, 8), 65535, dtype=np.uint16)
    array[:4] = 32768
    image = Image.fromarray(array)
    assert image.mode.startswith("I;16")
    out, grey = decode_image(_png(image), OPTIONS)
    assert grey and out[0, 0, 0] == 128 and out[7, 0, 0] == 255


def test_exif_orientation_is_honoured():
    image = Image.new("RGB", (16, 8), (0, 0, 0))
    image.paste((255, 255, 255), (0, 0, 8, 8))  # left half white
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise on display: the white half ends up on top
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", exif=exif.tobytes(), quality=95)
    out, _ = decode_image(buffer.getvalue(), DecodeOptions(8, resize="pad"))
    assert out[:4, 2:6].mean() > 200 and out[4:, 2:6].mean() < 60


def test_palette_cmyk_and_pad_policy():
    palette = _digit_like(1).convert("P")
    assert decode_image(_png(palette), OPTIONS)[0].shape == (8, 8, 3)
    buffer = io.BytesIO()
    Image.new("CMYK", (8, 8), (0, 0, 0, 0)).save(buffer, format="JPEG")
    assert decode_image(buffer.getvalue(), OPTIONS)[0].min() > 240  # CMYK zero ink is white
    wide = Image.new("RGB", (16, 8), (255, 255, 255))
    padded, _ = decode_image(_png(wide), DecodeOptions(8, resize="pad"))
    cropped, _ = decode_image(_png(wide), DecodeOptions(8, resize="center-crop"))
    assert padded[0].max() == 0 and padded[4].min() == 255 and cropped.min() == 255


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "empty file"),
        (b"this is a text file, not a jpeg\n", "not an image"),
        (_png(Image.new("RGB", (32, 32), (9, 9, 9)))[:60], "corrupt or truncated image"),
    ],
)
def test_bad_files_raise_with_a_reason(data, reason, reliability):
    reliability.bad_input()
    with pytest.raises(BadImage, match=reason):
        decode_image(data, OPTIONS)


def test_decompression_bomb_is_refused(monkeypatch, reliability):
    reliability.bad_input()
    monkeypatch.setattr(decode, "MAX_PIXELS", 100)
    with pytest.raises(BadImage, match="decompression bomb refused: 20x20"):
        decode_image(_png(Image.new("L", (20, 20))), OPTIONS)


# --- memory is bounded by the output, not by what the file claims --------------------------------------------


class _Allocations:
    """Spies on PIL: inside ``within(limit)``, refuses any image (or either pass of a resize) over ``limit``
    pixels before it is allocated, and keeps the largest seen."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.limit: int | None = None
        self.largest = 0
        new, resize, made = Image.new, Image.Image.resize, Image.Image._new

        def spy_new(mode, size, *args, **kwargs):
            self.check(size[0] * size[1])
            return new(mode, size, *args, **kwargs)

        def spy_resize(image, size, *args, **kwargs):  # PIL resizes in two passes, one axis at a time
            self.check(size[0] * image.height, image.width * size[1], size[0] * size[1])
            return resize(image, size, *args, **kwargs)

        def spy_made(image, core_image):  # every crop, convert, transpose and composite ends here
            self.check(core_image.size[0] * core_image.size[1])
            return made(image, core_image)

        monkeypatch.setattr(Image, "new", spy_new)
        monkeypatch.setattr(Image.Image, "resize", spy_resize)
        monkeypatch.setattr(Image.Image, "_new", spy_made)

    @contextlib.contextmanager
    def within(self, limit: int) -> Iterator[None]:
        self.limit, self.largest = limit, 0
        try:
            yield
        finally:
            self.limit = None

    def check(self, *pixels: int) -> None:
        if self.limit is not None:
            self.largest = max(self.largest, *pixels)
            assert max(pixels) <= self.limit, f"allocating {max(pixels)} pixels > {self.limit}"


@pytest.fixture
def allocations(monkeypatch):
    return _Allocations(monkeypatch)


@pytest.mark.parametrize("size", [(1, 30_000), (30_000, 1)])
def test_a_long_thin_png_is_padded_at_the_output_size_and_centred(size, allocations, reliability):
    reliability.bad_input()
    data = _png(Image.new("RGB", size, (255, 255, 255)))
    assert len(data) < 300  # a tiny file whose claim (a 30000x30000 pad canvas) used to cost 3.5 GB
    with allocations.within(30_000):  # the source's pixels: no intermediate may be larger
        out, _ = decode_image(data, DecodeOptions(8, resize="pad"))
    assert out.shape == (8, 8, 3)
    line = out[:, 3] if size[0] == 1 else out[3]  # centred: (8 - 1) // 2, as the pad always rounded
    assert line.min() == 255 and np.delete(out, 3, axis=1 if size[0] == 1 else 0).max() == 0
    assert allocations.largest <= 30_000


def test_sixteen_bit_scaling_keeps_numpy_memory_near_the_source():
    import tracemalloc

    side = 2048  # 8 MiB of 16-bit pixels; scaling them as one float64 array took 9x that
    array = (np.arange(side * side, dtype=np.uint32) % 65536).astype(np.uint16).reshape(side, side)
    data = _png(Image.fromarray(array))
    tracemalloc.start()
    try:
        out, grey = decode_image(data, OPTIONS)
        peak_bytes = tracemalloc.get_traced_memory()[1]  # numpy buffers and bytes; PIL pixels are not traced
    finally:
        tracemalloc.stop()
    assert grey and out.shape == (8, 8, 3)
    assert peak_bytes < 3 * array.nbytes


@st.composite
def _odd_images(draw) -> tuple[bytes, int, int]:
    """A small PNG of any aspect ratio up to 30000:1, in an odd mode, maybe EXIF-rotated: (bytes, w, h)."""
    long = draw(st.integers(1, 30_000))
    short = draw(st.integers(1, max(1, 60_000 // long)))  # at most 60k pixels: each example takes milliseconds
    width, height = (long, short) if draw(st.booleans()) else (short, long)
    mode = draw(st.sampled_from(["RGB", "RGBA", "L", "LA", "I;16", "P"]))
    image = Image.new("RGB", (width, height), (128, 128, 128))  # mid grey: far from both backgrounds
    image = Image.fromarray(np.full((height, width), 32896, np.uint16)) if mode == "I;16" else image.convert(mode)
    exif = Image.Exif()
    if (orientation := draw(st.sampled_from([1, 3, 6, 8]))) != 1:
        exif[0x0112] = orientation
        width, height = (height, width) if orientation in (6, 8) else (width, height)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", exif=exif.tobytes())
    return buffer.getvalue(), width, height


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(image=_odd_images(), resolution=st.sampled_from([8, 16, 32, 64, 128, 256]),
       resize=st.sampled_from(["center-crop", "pad"]), background=st.sampled_from(["black", "white"]))
def test_fuzzed_shapes_decode_to_the_output_within_bounded_memory(image, resolution, resize, background,
                                                                  allocations, reliability):
    data, width, height = image
    reliability.bad_input(int(max(width, height) >= 100 * min(width, height)))  # an extreme claim
    with allocations.within(max(resolution ** 2, width * height)):
        out, _ = decode_image(data, DecodeOptions(resolution, resize, background))
    assert out.shape == (resolution, resolution, 3) and out.dtype == np.uint8
    painted = np.abs(out[:, :, 0].astype(int) - BACKGROUNDS[background][0]) > 40  # the image, not the padding
    rows, cols = np.flatnonzero(painted.any(axis=1)), np.flatnonzero(painted.any(axis=0))
    if resize == "center-crop" or width == height:
        assert painted.all()
        return
    margins = [rows[0], resolution - 1 - rows[-1], cols[0], resolution - 1 - cols[-1]]
    assert abs(margins[0] - margins[1]) <= 1 and abs(margins[2] - margins[3]) <= 1  # centred
    short = min(width, height) * resolution / max(width, height)  # the short side, kept to scale
    painted_short = len(rows) if width > height else len(cols)
    assert min(len(rows), len(cols)) == painted_short and abs(painted_short - max(short, 1)) <= 0.5
    assert max(len(rows), len(cols)) == resolution


# --- the folder source -------------------------------------------------------------------------------------


def test_folder_with_bad_files_skips_and_lists_them(tmp_path, reliability):
    reliability.bad_input(4)
    root = _class_folder(tmp_path / "src", per_class=10)
    (root / "cat" / "truncated.png").write_bytes(_png(_digit_like(999))[:50])
    (root / "cat" / "zero.png").write_bytes(b"")
    (root / "dog" / "text.jpg").write_text("hello")
    (root / "dog" / "copy.png").write_bytes((root / "dog" / "0.png").read_bytes())
    (root / "dog" / "rgba.png").write_bytes(_png(Image.new("RGBA", (10, 10), (0, 255, 0, 128))))
    before = {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in root.rglob("*") if p.is_file()}

    manifest = _run(tmp_path, _cfg(root, max_bad_fraction=0.2))
    reasons = _reasons(manifest)
    assert reasons["truncated.png"].startswith("corrupt or truncated image")
    assert reasons["zero.png"] == "empty file"
    assert reasons["text.jpg"] == "not an image"
    assert reasons["copy.png"] == "exact duplicate of dog/0.png"
    assert manifest["class_names"] == ["cat", "dog"] and manifest["labeled"]
    assert sum(manifest["counts"].values()) == 21  # 20 good + the RGBA image
    assert manifest["channels"] == 3 and manifest["files_seen"] == 25
    after = {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in root.rglob("*") if p.is_file()}
    assert after == before  # the source is never modified


def test_ten_thousand_files_99_percent_bad_fail_in_one_line_and_keep_the_previous_output(tmp_path, reliability):
    good = _class_folder(tmp_path / "good")
    _run(tmp_path, _cfg(good))
    reliability.guard(tmp_path / "prepared")
    bad = tmp_path / "bad"
    bad.mkdir()
    kinds = [b"", b"not an image", _png(_digit_like(0))[:40], b"\x89PNG\r\n\x1a\n" + bytes(range(256))]
    for i in range(10_000):
        good_one = i % 100 == 0
        (bad / f"{i}.png").write_bytes(_png(_digit_like(i, size=(4, 4))) if good_one else kinds[i % len(kinds)])
    reliability.bad_input(9_900)
    with pytest.raises(UserError) as err:
        _run(tmp_path, _cfg(bad))
    message = str(err.value)
    assert "9900 of 10000 files are bad (99.0% > prepare.max_bad_fraction=10.0%)" in message and "\n" not in message
    reliability.check_guarded()


def test_train_test_layout_is_respected_and_unlabeled_data_works(tmp_path):
    root = tmp_path / "src"
    _class_folder(root / "train", per_class=5)
    _class_folder(root / "test", per_class=2, seed=50)
    manifest = _run(tmp_path, _cfg(root))
    assert manifest["counts"] == {"train": 10, "test": 4} and manifest["split_from"] == "source layout"

    flat = tmp_path / "flat"
    flat.mkdir()
    for i in range(10):
        (flat / f"{i}.png").write_bytes(_png(_digit_like(i, mode="L")))
    manifest = _run(tmp_path, _cfg(flat, test_fraction=0.2))
    assert manifest["class_names"] == ["all"] and not manifest["labeled"]
    assert manifest["channels"] == 1 and manifest["counts"] == {"train": 8, "test": 2}


def test_channels_max_images_and_hflip(tmp_path):
    root = _class_folder(tmp_path / "src", per_class=10)
    manifest = _run(tmp_path, _cfg(root, channels=1, max_images=12, hflip=True, test_fraction=0.25))
    train = load_split(tmp_path / "prepared", "train")
    assert manifest["channels"] == 1 and train.images.shape[1] == 1
    assert manifest["counts"]["test"] == 3 and manifest["counts"]["train"] == 2 * 9
    assert np.array_equal(train.images[9:], train.images[:9, :, :, ::-1])


@pytest.mark.parametrize("kind", ["missing", "empty"])
def test_missing_or_empty_source_names_the_path(tmp_path, kind, reliability):
    reliability.bad_input()
    path = tmp_path / "nowhere"
    if kind == "empty":
        path.mkdir()
    with pytest.raises(UserError, match=str(path)):
        _run(tmp_path, _cfg(path))


# --- the layout: understood by the rules in ganforge.data.files, or refused in one line ---------------------

OK_LAYOUTS = {  # paths -> (split per path or None, class per path)
    "flat": (["1.png", "2.png"], None, ["all", "all"]),
    "classes": (["cat/1.png", "dog/2.png"], None, ["cat", "dog"]),
    "one folder is a wrapper, not a class": (["cat/1.png", "cat/2.png"], None, ["all", "all"]),
    "wrappers are dropped": (["a/b/cat/1.png", "a/b/dog/2.png"], None, ["cat", "dog"]),
    "images at any depth below their class": (["cat/in/1.png", "cat/2.png", "dog/3.png"], None,
                                              ["cat", "cat", "dog"]),
    "train and test": (["train/cat/1.png", "train/dog/2.png", "test/cat/3.png", "test/dog/4.png"], [0, 0, 1, 1],
                       ["cat", "dog", "cat", "dog"]),
    "train alone: the stage splits": (["train/cat/1.png", "train/dog/2.png"], None, ["cat", "dog"]),
    "train alone, unlabeled": (["train/1.png", "train/2.png"], None, ["all", "all"]),
    "train and val": (["train/cat/1.png", "val/cat/2.png"], [0, 1], ["cat", "cat"]),
    "Training and Testing, any case": (["Testing/a/1.png", "Training/a/2.png"], [1, 0], ["a", "a"]),
    "wrapped train and valid": (["afhq/train/cat/1.png", "afhq/valid/cat/2.png"], [0, 1], ["cat", "cat"]),
    "train and test, unlabeled": (["train/1.png", "test/2.png"], [0, 1], ["all", "all"]),
    "a train class without test images": (["train/a/1.png", "train/b/2.png", "test/a/3.png"], [0, 0, 1],
                                          ["a", "b", "a"]),
}

BAD_LAYOUTS = {  # paths -> what the one line says
    "test alone": (["test/cat/1.png", "test/dog/2.png"], "test/ but no train/ folder beside it"),
    "val alone": (["w/val/1.png"], r"w/val/ but no train/ folder"),
    "train, val and test": (["train/a/1.png", "val/a/2.png", "test/a/3.png"], "merge or remove val/"),
    "two folders for one split": (["train/a/1.png", "training/a/2.png"], "two folders for one split"),
    "a test class the train split lacks": (["train/a/1.png", "test/b/2.png"], "class folder test/b/ has no train/b/"),
    "labeled train, flat test": (["train/a/1.png", "test/2.png"],
                                 "train/ holds class folders but test/ holds images directly"),
    "images beside class folders": (["1.png", "cat/2.png"],
                                    r"images both directly in the top folder \(1.png\) and in subfolders "
                                    r"\(cat/2.png\)"),
    "images beside class folders, wrapped": (["w/1.png", "w/cat/2.png"], r"images both directly in w/ \(w/1.png\)"),
    "images beside class folders in a split": (["train/1.png", "train/cat/2.png", "test/cat/3.png"],
                                               r"images both directly in train/ \(train/1.png\)"),
    "a split beside a class folder": (["train/a/1.png", "extra/2.png"], "split folder train/ next to extra/"),
    "a split beside an image": (["train/a/1.png", "2.png"], "split folder train/ next to 2.png"),
    "splits below the classes": (["cat/train/1.png", "dog/test/2.png"], "split folder train/ below the top"),
    "a class named test": (["train/test/1.png", "train/cat/2.png"], "split folder test/ below the top"),
}


@pytest.mark.parametrize("name", OK_LAYOUTS)
def test_recognised_layouts_give_their_splits_and_classes(name):
    paths, split, classes = OK_LAYOUTS[name]
    layout = infer_layout(paths, "/data/raw")
    assert (None if layout.split is None else layout.split.tolist()) == split
    assert [layout.class_names[i] for i in layout.labels] == classes
    assert list(layout.class_names) == sorted(set(classes))


@pytest.mark.parametrize("name", BAD_LAYOUTS)
def test_unrecognised_layouts_are_one_line_naming_the_folder(name, reliability):
    reliability.bad_input()
    paths, reason = BAD_LAYOUTS[name]
    with pytest.raises(UserError, match=reason) as err:
        infer_layout(paths, "/data/raw")
    message = str(err.value)
    assert message.startswith("/data/raw: ") and message.endswith("(prepare.path)") and "\n" not in message
    assert "expected <class>/<image> or <image>, optionally under train/ and test/ (or val/)" in message


def test_a_train_folder_alone_is_its_classes_and_the_stage_splits(tmp_path):
    root = _class_folder(tmp_path / "src" / "train", per_class=5).parent  # the layout that became class 'train'
    manifest = _run(tmp_path, _cfg(root, test_fraction=0.2))
    assert manifest["class_names"] == ["cat", "dog"] and manifest["labeled"]
    assert manifest["split_from"] == "stratified, test_fraction=0.2"
    assert manifest["counts_per_class"]["test"] == {"cat": 1, "dog": 1}


def test_a_mixed_folder_or_archive_is_refused_and_nothing_is_written(tmp_path, reliability):
    reliability.bad_input(2)
    root = _class_folder(tmp_path / "src")
    (root / "stray.png").write_bytes(_png(_digit_like(500)))
    (root / "notes.txt").write_text("not an image: skipped, and no part of the layout")
    with pytest.raises(UserError, match=r"images both directly in the top folder \(stray.png\)"):
        _run(tmp_path, _cfg(root, max_bad_fraction=0.5))
    path = tmp_path / "three-splits.zip"
    with zipfile.ZipFile(path, "w") as zf:
        for i, split in enumerate(["train", "train", "val", "test"]):
            zf.writestr(f"data/{split}/cat/{i}.png", _png(_digit_like(i)))
    with pytest.raises(UserError, match=f"{path}: data/train/, val/ and test/, but ganforge keeps a train"):
        _run(tmp_path, _cfg(path, source="archive"))
    assert not (tmp_path / "prepared").exists()


_FOLDERS = ["train", "Training", "test", "val", "validation", "cat", "dog", "wrap"]
_SPLITS = {"train": 0, "training": 0, "test": 1, "testing": 1, "val": 1, "valid": 1, "validation": 1}


@st.composite
def _layouts(draw) -> list[str]:
    """Image paths of a layout: some wrappers, split and class folders and extra depth, plus stray images."""
    wrappers = draw(st.lists(st.sampled_from(["wrap", "data", "cat"]), max_size=2))
    splits = draw(st.lists(st.sampled_from(["train", "Training", "test", "val", "valid"]), max_size=3,
                           unique=True)) or [None]
    classes = draw(st.lists(st.sampled_from(["cat", "dog", "bird"]), max_size=3, unique=True)) or [None]
    paths = []
    for i in range(draw(st.integers(1, 8))):
        folders = [*wrappers, draw(st.sampled_from(splits)), draw(st.sampled_from(classes)),
                   *draw(st.lists(st.sampled_from(["a", "b", "test"]), max_size=1))]
        paths.append("/".join([f for f in folders if f is not None] + [f"{i}.png"]))
    strays = draw(st.lists(st.lists(st.sampled_from(_FOLDERS), max_size=3), max_size=2))
    return paths + ["/".join([*folders, f"stray{i}.png"]) for i, folders in enumerate(strays)]


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(paths=_layouts())
def test_fuzzed_layouts_are_read_as_laid_out_or_refused(paths, reliability):
    try:
        layout = infer_layout(paths, "/data/raw")
    except UserError as e:
        reliability.bad_input()
        assert str(e).startswith("/data/raw: ") and str(e).endswith("(prepare.path)") and "\n" not in str(e)
        return
    # The rules restated: drop the folders every path shares up to a split folder, then the split folder.
    folders = [p.split("/")[:-1] for p in paths]
    shared = 0
    while all(len(f) > shared for f in folders) and len({f[shared] for f in folders}) == 1 \
            and folders[0][shared].lower() not in _SPLITS:
        shared += 1
    rest = [f[shared:] for f in folders]
    split_of = [_SPLITS.get(r[0].lower()) if r else None for r in rest]
    if any(s is not None for s in split_of):
        assert all(s is not None for s in split_of)  # split folders, and nothing beside them
        rest = [r[1:] for r in rest]
    expected_split = None if set(split_of) <= {0, None} else split_of  # train/ alone: the stage splits
    assert (None if layout.split is None else layout.split.tolist()) == expected_split
    assert not any(f.lower() in _SPLITS for r in rest for f in r)  # never a class (or subfolder) named train
    if layout.class_names == ("all",):
        assert all(not r for r in rest)  # unlabeled only when no image sits in a class folder
    else:
        assert [layout.class_names[i] for i in layout.labels] == [r[0] if r else None for r in rest]
        if layout.split is not None:
            assert set(layout.labels[layout.split == 1]) <= set(layout.labels[layout.split == 0])


# --- the archive source ------------------------------------------------------------------------------------


def test_zip_and_tar_archives(tmp_path):
    root = _class_folder(tmp_path / "src" / "wrapper")
    zip_path, tar_path = tmp_path / "data.zip", tmp_path / "data.tar.gz"
    with zipfile.ZipFile(zip_path, "w") as zf:
        for file in sorted(root.rglob("*.png")):
            zf.write(file, file.relative_to(tmp_path / "src").as_posix())
    with tarfile.open(tar_path, "w:gz") as tf:
        tf.add(root, arcname="wrapper")
    a = _run(tmp_path / "a", _cfg(zip_path, source="archive"))
    b = _run(tmp_path / "b", _cfg(tar_path, source="archive"))
    assert a["class_names"] == b["class_names"] == ["cat", "dog"]  # the wrapping folder is stripped
    assert a["counts"] == b["counts"]
    arrays = [(tmp_path / run / "prepared/train_images.npy").read_bytes() for run in ("a", "b")]
    assert arrays[0] == arrays[1]


def _tar_with(tmp_path: Path, member: tarfile.TarInfo, data: bytes = b"") -> Path:
    path = tmp_path / "evil.tar"
    with tarfile.open(path, "w") as tf:
        good = _png(_digit_like(0))
        info = tarfile.TarInfo("ok/0.png")
        info.size = len(good)
        tf.addfile(info, io.BytesIO(good))
        member.size = len(data)
        tf.addfile(member, io.BytesIO(data))
    return path


def test_zip_slip_entry_is_refused_and_nothing_is_written_outside(tmp_path, reliability):
    reliability.bad_input()
    path = tmp_path / "slip.zip"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("ok/0.png", _png(_digit_like(0)))
        zf.writestr("../../evil.png", _png(_digit_like(1)))
    with pytest.raises(UserError, match=r"refused entry '../../evil.png': '..' path component"):
        _run(tmp_path / "work", _cfg(path, source="archive"))
    assert not (tmp_path / "work" / "prepared").exists()


def test_absolute_path_and_outside_link_entries_are_refused(tmp_path, reliability):
    reliability.bad_input(3)
    absolute = tarfile.TarInfo("/etc/evil.png")
    with pytest.raises(UserError, match="refused entry '/etc/evil.png': absolute path"):
        _run(tmp_path, _cfg(_tar_with(tmp_path, absolute, b"x"), source="archive"))
    link = tarfile.TarInfo("ok/link.png")
    link.type, link.linkname = tarfile.SYMTYPE, "../../../etc/passwd"
    with pytest.raises(UserError, match="refused entry 'ok/link.png': link pointing outside"):
        _run(tmp_path, _cfg(_tar_with(tmp_path, link), source="archive"))
    hard = tarfile.TarInfo("ok/hard.png")  # hard-link targets are relative to the archive root
    hard.type, hard.linkname = tarfile.LNKTYPE, "../x.png"
    with pytest.raises(UserError, match="refused entry 'ok/hard.png': link pointing outside"):
        _run(tmp_path, _cfg(_tar_with(tmp_path, hard), source="archive"))


def test_oversized_archive_entry_is_skipped_unread(tmp_path, monkeypatch, reliability):
    reliability.bad_input()
    from ganforge.data import archive

    monkeypatch.setattr(archive, "MAX_ENTRY_BYTES", 1000)
    path = tmp_path / "big.zip"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for i in range(10):
            zf.writestr(f"ok/{i}.png", _png(_digit_like(i, size=(4, 4))))
        zf.writestr("ok/bomb.png", b"\0" * 10_000_000)  # compresses to a few KB
    manifest = _run(tmp_path, _cfg(path, source="archive", max_bad_fraction=0.2))
    assert _reasons(manifest)["bomb.png"].startswith("entry too large")


def test_corrupt_zip_entry_is_skipped(tmp_path, reliability):
    reliability.bad_input()
    path = tmp_path / "crc.zip"
    with zipfile.ZipFile(path, "w") as zf:  # stored, so the payload bytes can be flipped in place
        for i in range(10):
            zf.writestr(f"ok/{i}.png", _png(_digit_like(i)))
    data = bytearray(path.read_bytes())
    data[60] ^= 0xFF  # inside the first entry's payload: its CRC no longer matches
    path.write_bytes(bytes(data))
    manifest = _run(tmp_path, _cfg(path, source="archive", max_bad_fraction=0.2))
    assert _reasons(manifest)["0.png"].startswith("unreadable archive entry (BadZipFile")


# --- torchvision-format sources ----------------------------------------------------------------------------


def _cifar_archive(path: Path, per_batch: int = 5, payload: object | None = None) -> Path:
    rng = np.random.default_rng(0)
    with tarfile.open(path, "w:gz") as tf:
        names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
        for i, name in enumerate(names):
            batch = payload if payload is not None and i == 0 else {
                b"data": rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8),
                b"labels": [int(x) for x in rng.integers(0, 10, per_batch)]}
            blob = pickle.dumps(batch, protocol=2)
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(blob)
            tf.addfile(info, io.BytesIO(blob))
        meta = pickle.dumps({b"label_names": [f"class{i}".encode() for i in range(10)]}, protocol=2)
        info = tarfile.TarInfo("cifar-10-batches-py/batches.meta")
        info.size = len(meta)
        tf.addfile(info, io.BytesIO(meta))
    return path


def test_cifar10_python_archive(tmp_path):
    archive = _cifar_archive(tmp_path / "cifar-10-python.tar.gz")
    manifest = _run(tmp_path, _cfg(archive, source="cifar10"))
    assert manifest["counts"] == {"train": 25, "test": 5} and manifest["split_from"] == "source layout"
    assert manifest["class_names"][0] == "class0" and manifest["channels"] == 3


class _Exploit:
    def __reduce__(self):
        return (print, ("pwned",))


def test_cifar10_pickle_with_code_is_refused(tmp_path, capsys, reliability):
    reliability.bad_input()
    archive = _cifar_archive(tmp_path / "cifar-10-python.tar.gz", payload={b"data": _Exploit()})
    with pytest.raises(UserError, match="refused to load .*print"):
        _run(tmp_path, _cfg(archive, source="cifar10"))
    assert "pwned" not in capsys.readouterr().out


def test_cifar10_malformed_batch_is_a_user_error(tmp_path, reliability):
    reliability.bad_input()
    archive = _cifar_archive(tmp_path / "cifar-10-python.tar.gz", payload={b"data": np.zeros((3, 10), np.uint8),
                                                                           b"labels": [0, 1, 2]})
    with pytest.raises(UserError, match="data_batch_1 is not a CIFAR-10 batch"):
        _run(tmp_path, _cfg(archive, source="cifar10"))


def test_empty_test_split_is_a_user_error(tmp_path, reliability):
    reliability.bad_input()
    root = _class_folder(tmp_path / "src", per_class=1)
    with pytest.raises(UserError, match="the test split is empty"):
        _run(tmp_path, _cfg(root, test_fraction=0.2))


def test_cifar10_missing_archive_says_how_to_fix(tmp_path, reliability):
    reliability.bad_input()
    with pytest.raises(UserError, match="CIFAR-10 archive not found; set prepare.path"):
        _run(tmp_path, _cfg(tmp_path / "none.tar.gz", source="cifar10"))


def _idx(path: Path, array: np.ndarray) -> None:
    dims = struct.pack(">" + "I" * array.ndim, *array.shape)
    path.write_bytes(struct.pack(">HBB", 0, 0x08, array.ndim) + dims + array.astype(np.uint8).tobytes())


@pytest.mark.parametrize(("source", "folder"), [("mnist", "MNIST"), ("fashion-mnist", "FashionMNIST")])
def test_mnist_family_idx_files_through_torchvision(tmp_path, source, folder):
    raw = tmp_path / "root" / folder / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(1)
    for prefix, n in (("train", 12), ("t10k", 4)):
        _idx(raw / f"{prefix}-images-idx3-ubyte", rng.integers(0, 256, (n, 28, 28)))
        _idx(raw / f"{prefix}-labels-idx1-ubyte", rng.integers(0, 10, n))
    manifest = _run(tmp_path, _cfg(tmp_path / "root", source=source))
    assert manifest["counts"] == {"train": 12, "test": 4} and manifest["channels"] == 1
    assert len(manifest["class_names"]) == 10


def test_mnist_missing_files_is_a_user_error(tmp_path, reliability):
    reliability.bad_input()
    with pytest.raises(UserError, match="mnist not found"):
        _run(tmp_path, _cfg(tmp_path, source="mnist"))


# --- real data, when this machine has it -------------------------------------------------------------------


@pytest.mark.skipif(not SHARED_CIFAR.is_file(), reason="shared CIFAR-10 JPEG archive not present")
def test_real_cifar10_jpegs_from_the_shared_archive(tmp_path):
    root = tmp_path / "cifar"
    with tarfile.open(SHARED_CIFAR, "r:gz") as tf:
        taken = 0
        for member in tf:
            if member.isfile() and int(Path(member.name).stem) < 10:  # 10 per class from train/ and test/
                target = root / member.name
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(tf.extractfile(member).read())
                taken += 1
            if taken == 200:
                break
    manifest = _run(tmp_path, _cfg(root, resolution=32))
    assert manifest["class_names"] == sorted(p.name for p in (root / "test").iterdir())
    assert manifest["split_from"] == "source layout"
    assert sum(manifest["counts"].values()) + manifest["skipped_count"] == 200
    assert load_split(tmp_path / "prepared", "train").images.shape[1:] == (3, 32, 32)
    assert json.loads((tmp_path / "prepared/manifest.json").read_text()) == read_manifest(tmp_path / "prepared")


def _small_png(seed: int) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (10, 10, 3), dtype=np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()


def test_a_zip_link_entry_that_inflates_to_gigabytes_is_skipped_unread(tmp_path, reliability):
    from ganforge.data.archive import MAX_LINK_BYTES, iter_archive

    archive = tmp_path / "bomb.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        for i in range(3):
            zf.writestr(f"img/{i}.png", _small_png(i))
        link = zipfile.ZipInfo("img/link.png")
        link.external_attr = 0o120777 << 16  # a symbolic link, whose "target" is 64 MiB of one byte
        link.compress_type = zipfile.ZIP_DEFLATED
        zf.writestr(link, b"a" * (64 << 20))
    assert archive.stat().st_size < 1 << 20
    reliability.bad_input()
    entries = {rel: (data, reason) for rel, data, reason in iter_archive(archive)}
    assert entries["img/link.png"] == (None, f"link entry too large ({64 << 20} bytes > {MAX_LINK_BYTES})")
    assert all(entries[f"img/{i}.png"][0] == _small_png(i) for i in range(3))


def test_tar_entries_that_are_not_files_are_listed_as_skipped(tmp_path, reliability):
    from ganforge.data.archive import iter_archive

    archive = tmp_path / "odd.tar"
    with tarfile.open(archive, "w") as tar:
        for i in range(2):
            info = tarfile.TarInfo(f"img/{i}.png")
            info.size = len(_small_png(i))
            tar.addfile(info, io.BytesIO(_small_png(i)))
        for name, kind in (("fifo", tarfile.FIFOTYPE), ("dev", tarfile.CHRTYPE), ("odd", b"Z")):
            info = tarfile.TarInfo(f"img/{name}")
            info.type = kind
            tar.addfile(info)
    reliability.bad_input(3)
    entries = {rel: (data, reason) for rel, data, reason in iter_archive(archive)}
    assert {rel: reason for rel, (_, reason) in entries.items() if reason} == {
        "img/fifo": "not a regular file", "img/dev": "not a regular file", "img/odd": "not a regular file"}


def test_a_file_name_that_is_not_utf8_is_read_like_any_other(tmp_path, reliability):
    import os

    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(6):
        (folder / f"{i}.png").write_bytes(_small_png(i))
    os.rename(folder / "5.png", os.path.join(os.fsencode(folder), b"bad\xff\xfe.png"))
    reliability.bad_input()
    raw = load_folder(folder, DecodeOptions(8), max_bad_fraction=0.1)
    assert len(raw.images) == 6 and any("\udcff" in path for path in raw.paths)
