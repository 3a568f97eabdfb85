"""Optimize: variants that really differ, measured speed, and selection within the FID budget."""

from __future__ import annotations

import csv
import json

import pytest
import torch

from ganforge.models import load_generator
from ganforge.optimization.benchmark import serialized_bytes
from ganforge.optimization.select import fid_budget, select_winner
from ganforge.optimization.variants import Recipe, batchnorm_fold_pairs, build_variant, fold_batchnorm


def _generator(tiny_run):
    return load_generator(tiny_run.train_dir / "generator.safetensors")


def test_batchnorm_folding_is_exact_and_removes_batchnorm(tiny_run):
    generator, spec = _generator(tiny_run)
    folded = fold_batchnorm(generator)
    z = torch.randn(8, spec.z_dim)
    assert batchnorm_fold_pairs(generator) and not batchnorm_fold_pairs(folded)
    assert not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in folded.modules())
    assert torch.allclose(generator(z), folded(z), atol=1e-5)


def test_int8_is_smaller_and_close(tiny_run):
    generator, spec = _generator(tiny_run)
    int8 = build_variant(Recipe("int8", calibration_batches=2, calibration_batch_size=16), generator, spec.z_dim)
    z = torch.randn(32, spec.z_dim)
    assert serialized_bytes(int8) < serialized_bytes(generator) / 2.5
    assert (int8(z) - generator(z)).abs().mean() < 0.05
    assert any("quantized" in type(m).__module__ for m in int8.modules())


def test_variant_rebuild_is_deterministic(tiny_run):
    generator, spec = _generator(tiny_run)
    recipe = Recipe("int8", calibration_seed=5, calibration_batches=2, calibration_batch_size=16)
    z = torch.randn(4, spec.z_dim)
    assert torch.equal(build_variant(recipe, generator, spec.z_dim)(z), build_variant(recipe, generator, spec.z_dim)(z))


def test_selection_picks_fastest_within_budget():
    speed = {"fp32": 100.0, "fused": 150.0, "int8": 300.0}
    fid = {"fp32": 10.0, "fused": 10.5, "int8": 12.0}
    assert select_winner(speed, fid, "fp32", fid_budget(10.0, 0.1)) == "fused"
    assert select_winner(speed, fid, "fp32", fid_budget(10.0, 0.25)) == "int8"
    assert select_winner(speed, {"fp32": 10.0, "fused": 99.0, "int8": 99.0}, "fp32", 11.0) == "fp32"


def test_optimize_outputs(tiny_run, tiny_configs):
    metrics = json.loads(tiny_run.optimize_metrics.read_text())
    assert set(metrics["variants"]) == {"fp32", "fused", "int8"}
    for row in metrics["variants"].values():
        assert row["img_per_s"] > 0 and row["fid"] > 0
        assert row["img_per_s_min"] <= row["img_per_s"] <= row["img_per_s_max"]
    fused = metrics["variants"]["fused"]
    assert fused["speedup"] == pytest.approx(fused["img_per_s"] / metrics["variants"]["fp32"]["img_per_s"])
    assert metrics["winner_fid"] <= metrics["fid_budget"]
    assert metrics["threads"] >= 1
    with open(tiny_run.optimize_table) as f:
        rows = list(csv.DictReader(f))
    assert [r["variant"] for r in rows] == ["fp32", "fused", "int8"]
    recipe = json.loads((tiny_run.optimized / "recipe.json").read_text())
    assert recipe["variant"] == metrics["winner"]


@pytest.mark.parametrize("arch, width", [("dcgan", 0.25), ("lite", 1.0)])
def test_every_architecture_folds_quantizes_and_exports(tmp_path, arch, width):
    from ganforge.models import GeneratorSpec, build_generator
    from ganforge.packaging.onnx import export_onnx, onnx_session, run_onnx

    spec = GeneratorSpec(arch, 16, 32, 3, width)
    torch.manual_seed(0)
    generator = build_generator(spec)
    with torch.no_grad():  # a few train-mode batches give BatchNorm non-trivial statistics to fold
        for _ in range(3):
            generator(torch.randn(32, spec.z_dim))
    generator.eval()
    z = torch.randn(16, spec.z_dim)
    reference = generator(z)
    fused = build_variant(Recipe("fused"), generator, spec.z_dim)
    assert not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in fused.modules())
    assert torch.allclose(fused(z), reference, atol=1e-4)
    int8 = build_variant(Recipe("int8", calibration_batches=4, calibration_batch_size=32), generator, spec.z_dim)
    assert any("quantized" in type(m).__module__ for m in int8.modules())
    assert (int8(z) - reference).abs().mean() < 0.05
    export_onnx(generator, spec.z_dim, tmp_path / "g.onnx", opset=17)
    assert torch.allclose(run_onnx(onnx_session(tmp_path / "g.onnx"), z), reference, atol=1e-4)
