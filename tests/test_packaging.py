"""The package: hashes verified on load, no pickles, ONNX parity, and the generate CLI."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from ganforge.cli import generate
from ganforge.errors import UserError
from ganforge.images import to_uint8
from ganforge.latents import latents
from ganforge.models import build_generator
from ganforge.models.registry import load_weights, resize_to_state
from ganforge.packaging.package import load_package, verify_package

FILES = {"model.safetensors", "config.json", "generator.onnx", "samples.png", "manifest.json"}


def test_package_contents_and_manifest(tiny_run):
    assert {p.name for p in tiny_run.package.iterdir()} == FILES
    manifest = verify_package(tiny_run.package)
    assert set(manifest["files"]) == FILES - {"manifest.json"}
    metrics = json.loads(tiny_run.package_metrics.read_text())
    sizes = [p.stat().st_size for p in tiny_run.package.iterdir() if p.name != "manifest.json"]
    assert metrics["package_bytes"] == sum(sizes)


def test_onnx_matches_the_float_weights_and_torch_runtime_is_close(tiny_run):
    onnx_pkg, torch_pkg = load_package(tiny_run.package, "onnxruntime"), load_package(tiny_run.package, "torch")
    z = latents(0, 0, 8, onnx_pkg.spec.z_dim)
    float_generator, state = build_generator(onnx_pkg.spec), load_weights(tiny_run.package / "model.safetensors")
    if onnx_pkg.spec.pruned:  # the winner may be a pruned variant: its layers are as small as its weights
        resize_to_state(float_generator, state)
    float_generator.load_state_dict(state)
    with torch.no_grad():
        reference = to_uint8(float_generator.eval()(z)).int()
    assert (onnx_pkg.generate(z).int() - reference).abs().max() <= 1
    # The torch runtime applies the optimize recipe (possibly int8), so it is close rather than equal.
    assert (torch_pkg.generate(z).float() - reference.float()).abs().mean() < 8


@pytest.mark.parametrize(
    ("tamper", "message"),
    [
        (lambda p: p.joinpath("config.json").write_text("{}"), "config.json: sha256 does not match"),
        (lambda p: p.joinpath("model.safetensors").unlink(), "model.safetensors: missing from the package"),
        (lambda p: p.joinpath("extra.bin").write_bytes(b"x"), "extra.bin: unexpected file"),
    ],
)
def test_tampered_package_is_refused(package_copy, tamper, message):
    tamper(package_copy)
    with pytest.raises(UserError, match=message):
        load_package(package_copy)


def test_modified_weights_byte_is_refused(package_copy):
    weights = package_copy / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(UserError, match="model.safetensors: sha256 does not match"):
        load_package(package_copy)


def test_generate_is_deterministic_across_batch_sizes(tiny_run, tmp_path):
    generate(tiny_run.package, 10, out_dir=tmp_path / "a", seed=3, batch=4)
    generate(tiny_run.package, 10, out_dir=tmp_path / "b", seed=3, batch=10)
    generate(tiny_run.package, 10, out_dir=tmp_path / "c", seed=4, batch=10)
    a = sorted((tmp_path / "a").glob("*.png"))
    assert len(a) == 10
    read = lambda p: np.asarray(Image.open(p))  # noqa: E731
    assert all(np.array_equal(read(p), read(tmp_path / "b" / p.name)) for p in a)
    assert not all(np.array_equal(read(p), read(tmp_path / "c" / p.name)) for p in a)
    assert read(a[0]).shape == (16, 16)


def test_generate_cli_writes_pngs_and_refuses_tampering(package_copy, tmp_path):
    cmd = [sys.executable, "-m", "ganforge.cli", "generate", "--package", str(package_copy), "-n", "64",
           "--out", str(tmp_path / "out")]
    ok = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0, ok.stderr
    assert len(list((tmp_path / "out").glob("*.png"))) == 64
    (package_copy / "generator.onnx").write_bytes(b"not onnx")
    bad = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2
    assert bad.stderr.strip().endswith("generator.onnx: sha256 does not match the manifest (modified or corrupt)")


def test_latents_do_not_depend_on_chunking():
    whole = latents(1, 0, 600, 4)
    assert torch.equal(torch.cat([latents(1, 0, 250, 4), latents(1, 250, 350, 4)]), whole)
    assert not torch.equal(latents(2, 0, 5, 4), whole[:5])


def test_a_pruned_winner_packages_and_loads_with_its_smaller_shapes(tiny_run, tiny_configs, tmp_path):
    import dataclasses

    from ganforge.files import write_json
    from ganforge.models import load_generator, save_generator
    from ganforge.optimization.pruning import prune_generator
    from ganforge.packaging.package import write_package

    generator, spec = load_generator(tiny_run.train_dir / "generator.safetensors")
    pruned = prune_generator(generator, spec.z_dim, 0.5, "l1")
    optimized = tmp_path / "optimized"
    optimized.mkdir()
    save_generator(pruned, dataclasses.replace(spec, pruned=True), optimized / "generator.safetensors")
    write_json(optimized / "recipe.json", {"variant": "pruned+fused", "prune_ratio": 0.5})
    write_package(tiny_configs["package"], optimized, tmp_path / "package", tmp_path / "package.json")
    z = latents(0, 0, 4, spec.z_dim)
    with torch.no_grad():
        expected = to_uint8(pruned(z)).int()
    for runtime in ("torch", "onnxruntime"):
        images = load_package(tmp_path / "package", runtime).generate(z).int()
        assert images.shape == expected.shape and (images - expected).abs().max() <= 1
