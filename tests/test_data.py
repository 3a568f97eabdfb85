"""The prepare stage on the real bundled digits."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ganforge.data.prepare import prepare, stratified_split
from ganforge.data.prepared import load_split, read_manifest
from ganforge.errors import UserError


def test_prepared_arrays_shapes_ranges_and_manifest(tiny_run, tiny_configs):
    train, test = load_split(tiny_run.prepared, "train"), load_split(tiny_run.prepared, "test")
    assert train.images.dtype == np.uint8 and train.images.shape[1:] == (1, 16, 16)
    assert len(train) + len(test) == 1797  # every digit is kept
    assert train.images.max() > 200 and train.images.min() == 0
    assert set(np.unique(train.labels)) == set(range(10))
    manifest = json.loads((tiny_run.prepared / "manifest.json").read_text())
    assert manifest["counts"] == {"train": len(train), "test": len(test)}
    assert sum(manifest["counts_per_class"]["test"].values()) == len(test)
    assert len(manifest["source_hash"]) == 64
    assert manifest["params"]["resolution"] == 16
    assert Image.open(tiny_run.prepare_grid).width >= 512


def test_split_is_deterministic_stratified_and_disjoint():
    labels = np.repeat(np.arange(10), 50)
    a_train, a_test = stratified_split(labels, 0.2, seed=3)
    b_train, b_test = stratified_split(labels, 0.2, seed=3)
    assert np.array_equal(a_train, b_train) and np.array_equal(a_test, b_test)
    assert not set(a_train) & set(a_test)
    assert np.bincount(labels[a_test]).tolist() == [10] * 10
    c_train, _ = stratified_split(labels, 0.2, seed=4)
    assert not np.array_equal(a_train, c_train)


def test_prepare_twice_gives_identical_bytes(tmp_path, tiny_configs):
    for name in ("a", "b"):
        prepare(tiny_configs["prepare"], tmp_path / name, tmp_path / f"{name}.png")
    for file in ("train_images.npy", "test_labels.npy", "manifest.json"):
        assert (tmp_path / "a" / file).read_bytes() == (tmp_path / "b" / file).read_bytes()


def test_missing_prepared_data_is_a_user_error(tmp_path, reliability):
    reliability.bad_input()
    with pytest.raises(UserError, match="manifest.json: file not found"):
        load_split(tmp_path, "train")


@pytest.fixture(scope="module")
def prepared_folder(tmp_path_factory) -> Path:
    """A real prepared directory of 10 grey 8x8 images in two classes: 8 train, 2 test."""
    from ganforge.config import PrepareConfig

    root = tmp_path_factory.mktemp("source")
    rng = np.random.default_rng(0)
    for i in range(10):
        (root / ("cat", "dog")[i % 2]).mkdir(exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (8, 8), dtype=np.uint8)).save(root / ("cat", "dog")[i % 2] / f"{i}.png")
    out = root.parent / "prepared"
    prepare(PrepareConfig(source="folder", path=str(root), resolution=8, test_fraction=0.2), out, root.parent / "g.png")
    return out


def _edit_manifest(edit):
    def apply(prepared: Path) -> None:
        manifest = json.loads((prepared / "manifest.json").read_text())
        (prepared / "manifest.json").write_text(json.dumps(edit(manifest)))
    return apply


def _write(name: str, make):
    def apply(prepared: Path) -> None:
        np.save(prepared / name, make(np.load(prepared / name)), allow_pickle=True)
    return apply


def _bytes(name: str, make):
    def apply(prepared: Path) -> None:
        (prepared / name).write_bytes(make((prepared / name).read_bytes()))
    return apply


BAD_PREPARED = {  # how the prepared data is spoiled -> what the one line says
    "manifest a list": (_edit_manifest(lambda m: list(m)), r"manifest.json: expected a JSON object, got list"),
    "no class_names": (_edit_manifest(lambda m: {k: v for k, v in m.items() if k != "class_names"}),
                       r"manifest.json: class_names: missing"),
    "class_names a string": (_edit_manifest(lambda m: m | {"class_names": "cat"}),
                             r'manifest.json: class_names: expected a non-empty list of names, got "cat"'),
    "class_names empty": (_edit_manifest(lambda m: m | {"class_names": []}),
                          r"manifest.json: class_names: expected a non-empty list of names, got \[\]"),
    "counts.train a string": (_edit_manifest(lambda m: m | {"counts": {"train": "8", "test": 2}}),
                              r'manifest.json: counts.train: expected a non-negative integer, got "8"'),
    "counts a list": (_edit_manifest(lambda m: m | {"counts": [8, 2]}), r"manifest.json: counts.train: missing"),
    "channels 2": (_edit_manifest(lambda m: m | {"channels": 2}), r"manifest.json: channels: expected 1 or 3, got 2"),
    "resolution true": (_edit_manifest(lambda m: m | {"resolution": True}),
                        r"manifest.json: resolution: expected a positive integer, got true"),
    "source_hash null": (_edit_manifest(lambda m: m | {"source_hash": None}),
                         r"manifest.json: source_hash: expected a string, got null"),
    "images missing": (lambda d: (d / "train_images.npy").unlink(), r"train_images.npy: prepared array not found"),
    "images float32": (_write("train_images.npy", lambda a: a.astype(np.float32)),
                       r"train_images.npy: expected uint8 \(8, 1, 8, 8\) \(from manifest.json\), got float32"),
    "images fewer than counted": (_write("train_images.npy", lambda a: a[:5]),
                                  r"train_images.npy: expected uint8 \(8, 1, 8, 8\) .*got uint8 \(5, 1, 8, 8\)"),
    "labels int32": (_write("train_labels.npy", lambda a: a.astype(np.int32)),
                     r"train_labels.npy: expected int64 \(8,\) \(from manifest.json\), got int32"),
    "labels outside the classes": (_write("train_labels.npy", lambda a: a + 5),
                                   r"train_labels.npy: labels outside 0..1 \(the 2 class_names of manifest.json\)"),
    "images not .npy": (_bytes("train_images.npy", lambda b: b"not an array"),
                        r"train_images.npy: not a .npy file"),
    "images truncated": (_bytes("train_images.npy", lambda b: b[:200]), r"train_images.npy: not a readable .npy array"),
    "labels pickled objects": (_write("train_labels.npy", lambda a: a.astype(object)),
                               r"train_labels.npy: not a readable .npy array"),
}


@pytest.mark.parametrize("case", BAD_PREPARED)
def test_malformed_prepared_data_is_one_line_naming_the_file_and_field(case, prepared_folder, tmp_path, reliability):
    reliability.bad_input()
    spoil, reason = BAD_PREPARED[case]
    prepared = tmp_path / "prepared"
    shutil.copytree(prepared_folder, prepared)
    assert len(load_split(prepared, "train")) == 8  # intact before it is spoiled
    spoil(prepared)
    with pytest.raises(UserError, match=reason) as err:
        load_split(prepared, "train")
    assert str(err.value).startswith(str(prepared)) and "\n" not in str(err.value)
    if "manifest.json: " in reason:  # the training loop reads the manifest itself too
        with pytest.raises(UserError, match=reason):
            read_manifest(prepared)


def test_atomic_dir_puts_the_previous_directory_back_on_failure(tmp_path, reliability):
    reliability.fault()
    from ganforge.files import atomic_dir

    target = tmp_path / "out"
    with atomic_dir(target) as tmp:
        (tmp / "a.txt").write_text("old")
    with pytest.raises(RuntimeError), atomic_dir(target) as tmp:
        (tmp / "a.txt").write_text("new, half written")
        raise RuntimeError("crash mid-write")
    assert (target / "a.txt").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no temp or aside directories left


def test_unlabeled_data_trains_the_featurizer_on_rotations(tmp_path, tiny_configs):
    from PIL import Image

    from ganforge.config import PrepareConfig
    from ganforge.evaluation.features import train_featurizer

    root = tmp_path / "flat"
    root.mkdir()
    rng = np.random.default_rng(0)
    for i in range(120):  # asymmetric shapes, so rotations are learnable
        img = np.zeros((16, 16), np.uint8)
        img[2:14, 3:6] = 255
        img[2:5, 3:13] = 255
        img = np.roll(img, rng.integers(-2, 3, 2), axis=(0, 1))
        Image.fromarray(img).save(root / f"{i}.png")
    cfg = PrepareConfig(source="folder", path=str(root), resolution=16)
    prepare(cfg, tmp_path / "prepared", tmp_path / "grid.png")
    metrics = train_featurizer(tiny_configs["featurizer"], tmp_path / "prepared", tmp_path / "f.safetensors",
                               tmp_path / "f.json")
    assert metrics["task"] == "rotation"
    assert metrics["test_accuracy"] > 0.5  # chance is 0.25
