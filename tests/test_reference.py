"""The reference stage's cached statistics: scoring against them equals scoring against the images, they are
never rewritten by a scoring, stale ones are refused, and an exported ONNX generator scores like its module."""

from __future__ import annotations

import dataclasses
import json
import shutil

import pytest
import torch
import torch_fidelity
from torch_fidelity.generative_model_modulewrapper import GenerativeModelModuleWrapper

from ganforge.data.prepared import ImageTensorDataset, load_split
from ganforge.errors import UserError
from ganforge.evaluation.features import DomainFeatureNet, save_featurizer
from ganforge.evaluation.fidelity import DOMAIN_EXTRACTOR, UInt8Generator
from ganforge.evaluation.protocol import make_protocol, score_generator, score_onnx_generator, score_real_floor
from ganforge.evaluation.reference import INFO_FILE
from ganforge.models import load_generator
from ganforge.models.registry import trained_generator_path


@pytest.fixture(scope="module")
def trained(tiny_run):
    return load_generator(trained_generator_path(tiny_run.train_dir, "best"))


def test_reference_records_what_it_was_computed_with(tiny_run, tiny_configs):
    info = json.loads((tiny_run.reference / INFO_FILE).read_text())
    counts = {split: len(load_split(tiny_run.prepared, split).images) for split in ("train", "test")}
    assert info["counts"] == counts and info["split"] == "train" and info["feature_extractor"] == "domain"
    assert info["torch_fidelity_version"] == torch_fidelity.__version__
    assert all((tiny_run.reference / name).is_file() for name in info["files"]) and len(info["files"]) >= 3
    metrics = json.loads(tiny_run.reference_metrics.read_text())
    assert metrics["train"]["count"] == counts["train"] and metrics["train"]["extract_img_per_s"] > 0
    assert abs(metrics["train"]["self_fid"]) < 1e-3 and metrics["train"]["isc_mean"] > 1


def test_cached_statistics_score_exactly_like_the_reference_images(tiny_run, tiny_configs, tiny_protocol, trained):
    generator, spec = trained
    cached = score_generator(generator, spec.z_dim, tiny_protocol)
    cfg = tiny_configs["evaluate"]
    direct = torch_fidelity.calculate_metrics(
        input1=GenerativeModelModuleWrapper(UInt8Generator(generator), spec.z_dim, "normal", 0),
        input1_model_num_samples=cfg.num_samples, input2=ImageTensorDataset(load_split(tiny_run.prepared, "train")),
        fid=True, kid=True, kid_subset_size=cfg.kid_subset_size, kid_subsets=cfg.kid_subsets,
        feature_extractor=DOMAIN_EXTRACTOR, feature_extractor_weights_path=str(tiny_run.featurizer),
        batch_size=cfg.batch_size, rng_seed=cfg.seed, cuda=False, cache=False, save_cpu_ram=True, verbose=False)
    assert cached["fid"] == pytest.approx(direct["frechet_inception_distance"], rel=1e-5)
    assert cached["kid_mean"] == pytest.approx(direct["kernel_inception_distance_mean"], rel=1e-4)


def test_scoring_never_writes_into_the_reference_directory(tiny_run, tiny_protocol, trained):
    before = {p.name: p.stat().st_mtime_ns for p in tiny_run.reference.iterdir()}
    score_generator(trained[0], trained[1].z_dim, tiny_protocol)
    score_real_floor(tiny_protocol)
    assert {p.name: p.stat().st_mtime_ns for p in tiny_run.reference.iterdir()} == before


@pytest.fixture
def reference_copy(tiny_run, tmp_path):
    return shutil.copytree(tiny_run.reference, tmp_path / "reference")


def test_statistics_from_another_torch_fidelity_version_are_refused(tiny_run, tiny_configs, reference_copy,
                                                                    reliability):
    reliability.bad_input()
    info_path = reference_copy / INFO_FILE
    info_path.write_text(json.dumps(json.loads(info_path.read_text()) | {"torch_fidelity_version": "0.0.1"}))
    with pytest.raises(UserError, match=r"torch-fidelity 0\.0\.1, this environment has .*dvc repro reference"):
        make_protocol(tiny_configs["evaluate"], tiny_configs["reference"], reference_copy, tiny_run.featurizer)


def test_statistics_for_other_params_are_refused(tiny_run, tiny_configs, reference_copy, reliability):
    reliability.bad_input()
    cfg = dataclasses.replace(tiny_configs["reference"], split="test")
    with pytest.raises(UserError, match=r"computed with split 'train' but params say reference.split 'test'"):
        make_protocol(tiny_configs["evaluate"], cfg, reference_copy, tiny_run.featurizer)


def test_statistics_of_other_extractor_weights_are_refused(tiny_run, tiny_configs, reference_copy, tmp_path,
                                                           reliability):
    reliability.bad_input()
    other = tmp_path / "other.safetensors"
    save_featurizer(DomainFeatureNet(1, 10), other)
    with pytest.raises(UserError, match="computed with different domain weights"):
        make_protocol(tiny_configs["evaluate"], tiny_configs["reference"], reference_copy, other)


def test_a_missing_cache_file_is_named(tiny_run, tiny_configs, reference_copy, reliability):
    reliability.bad_input()
    victim = sorted(p for p in reference_copy.iterdir() if p.suffix == ".pt")[0]
    victim.unlink()
    with pytest.raises(UserError, match=f"{victim.name}: missing from the reference statistics"):
        make_protocol(tiny_configs["evaluate"], tiny_configs["reference"], reference_copy, tiny_run.featurizer)


def test_an_onnx_export_scores_like_its_module(tiny_protocol, trained, tmp_path):
    from ganforge.runtime.onnx import export_onnx

    generator, spec = trained
    path = tmp_path / "generator.onnx"
    export_onnx(generator, spec.z_dim, path, opset=17)
    torch.manual_seed(0)
    from_onnx = score_onnx_generator(path, spec.z_dim, tiny_protocol)
    from_module = score_generator(generator, spec.z_dim, tiny_protocol)
    assert from_onnx["fid"] == pytest.approx(from_module["fid"], rel=1e-3)
    assert from_onnx["precision"] == pytest.approx(from_module["precision"], abs=0.02)
    with pytest.raises(UserError, match="missing.onnx: ONNX generator not found"):
        score_onnx_generator(tmp_path / "missing.onnx", spec.z_dim, tiny_protocol)
