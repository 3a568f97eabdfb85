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


def test_missing_prepared_data_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="manifest.json: file not found"):
        load_split(tmp_path, "train")
