"""The prepare stage on the real bundled digits."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from ganforge.data.prepare import prepare, stratified_split
from ganforge.data.prepared import load_split
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
