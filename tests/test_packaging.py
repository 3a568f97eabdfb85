"""The package: hashes verified on load, no pickles, ONNX parity, and the generate CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ganforge.errors import UserError
from ganforge.images import to_uint8
from ganforge.latents import latents
from ganforge.models import build_generator
from ganforge.models.registry import load_weights, resize_to_state
from ganforge.packaging.package import load_package, verify_package
from ganforge.serving.generate import generate

FILES = {"model.safetensors", "config.json", "generator.onnx", "samples.png", "README.md", "baseline.safetensors",
         "baseline.onnx", "manifest.json"}


def test_package_contents_and_manifest(tiny_run):
    assert {p.name for p in tiny_run.package.iterdir()} == FILES
    manifest = verify_package(tiny_run.package)
    assert set(manifest["files"]) == FILES - {"manifest.json"}
    metrics = json.loads(tiny_run.package_metrics.read_text())
    sizes = [p.stat().st_size for p in tiny_run.package.iterdir() if p.name != "manifest.json"]
    assert metrics["package_bytes"] == sum(sizes)


class _Payload:
    """Unpickling this would create the file named by ``marker``: proof that code ran."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_a_pickle_posing_as_weights_is_refused_and_never_run(package_copy, tmp_path, reliability):
    import hashlib
    import pickle

    marker = tmp_path / "code-ran"
    weights = package_copy / "model.safetensors"
    weights.write_bytes(pickle.dumps({"fc.0.weight": _Payload(str(marker))}))
    manifest = json.loads((package_copy / "manifest.json").read_text())
    manifest["files"]["model.safetensors"] = hashlib.sha256(weights.read_bytes()).hexdigest()  # hashes match
    (package_copy / "manifest.json").write_text(json.dumps(manifest))
    reliability.bad_input()
    with pytest.raises(UserError, match="model.safetensors: not a valid safetensors file"):
        load_package(package_copy, "torch")
    assert not marker.exists()


def test_artifact_entry_and_manifest_provenance(tiny_run):
    import yaml

    dvc = yaml.safe_load((Path(__file__).resolve().parents[1] / "dvc.yaml").read_text())
    artifact = dvc["artifacts"]["generator"]
    assert artifact["path"] == "dist/generator" and artifact["type"] == "model"
    manifest = json.loads((tiny_run.package / "manifest.json").read_text())
    assert manifest["ganforge_version"] and "git_commit" in manifest
    assert manifest["params"]["include_baseline"] is True and manifest["params"]["parity_max_fid_rel_diff"] > 0


def test_model_card_and_parity_metrics(tiny_run, tiny_configs):
    metrics = json.loads(tiny_run.package_metrics.read_text())
    report = json.loads((tiny_run.optimized / "optimize.json").read_text())
    winner = report["winner"]
    assert metrics["variant"] == winner and metrics["evaluated_fid"] == report["variants"][winner]["fid"]
    assert metrics["fid_rel_diff"] <= tiny_configs["package"].parity_max_fid_rel_diff
    assert metrics["onnx_max_abs_diff"] <= tiny_configs["package"].parity_max_abs_diff
    card = (tiny_run.package / "README.md").read_text()
    assert "![samples from this package](samples.png)" in card
    counts = json.loads((tiny_run.prepared / "manifest.json").read_text())["counts"]
    assert "source: `digits`" in card and f"{counts['train']:,} train, {counts['test']:,} held out" in card
    assert f"| `{winner}` (this package) |" in card  # the optimize speed table, winner marked
    assert f"{report['variants'][winner]['fid']:.4g}" in card and "torch-fidelity 0.4.0" in card
    assert f"FID {metrics['onnx_fid']:.4f}" in card


def test_a_failed_fid_parity_gate_keeps_the_previous_package(tiny_run, tiny_configs, tiny_protocol, tmp_path,
                                                             reliability):
    import shutil

    from ganforge.files import read_json, write_json
    from ganforge.packaging.build import write_package

    optimized = Path(shutil.copytree(tiny_run.optimized, tmp_path / "optimized"))
    package = Path(shutil.copytree(tiny_run.package, tmp_path / "package"))
    before = {p.name: p.read_bytes() for p in package.iterdir()}
    report = read_json(optimized / "optimize.json")
    report["variants"][report["winner"]]["fid"] *= 1.5  # as if the evaluated model were another one
    write_json(optimized / "optimize.json", report)
    reliability.fault()
    with pytest.raises(UserError, match="FID parity failed.*package.parity_max_fid_rel_diff"):
        write_package(tiny_configs["package"], tiny_protocol, optimized, tiny_run.prepared, package,
                      tmp_path / "package.json")
    assert {p.name: p.read_bytes() for p in package.iterdir()} == before
    assert not (tmp_path / "package.json").exists()


def test_a_package_write_that_fails_partway_keeps_the_previous_package(tiny_run, tiny_configs, tiny_protocol,
                                                                      tmp_path, monkeypatch, reliability):
    import errno
    import shutil

    from ganforge.packaging import build

    package = Path(shutil.copytree(tiny_run.package, tmp_path / "package"))
    reliability.guard(package)

    def disk_full(images, path, **kwargs):  # weights, ONNX and config.json are already written by now
        Path(path).write_bytes(b"\x89PNG partial")
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(build, "save_grid", disk_full)
    reliability.fault()
    with pytest.raises(OSError, match="No space left on device"):
        build.write_package(tiny_configs["package"], tiny_protocol, tiny_run.optimized, tiny_run.prepared, package,
                            tmp_path / "package.json")
    reliability.check_guarded()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["package"]  # no half-written copy, no metrics
    load_package(package)  # and it still verifies and loads


def test_the_packaged_baseline_is_the_trained_generator(tiny_run):
    from ganforge.models import load_generator

    trained, spec = load_generator(tiny_run.optimized / "baseline.safetensors")
    z = latents(2, 0, 6, spec.z_dim)
    with torch.no_grad():
        expected = to_uint8(trained.eval()(z))
    for runtime in ("torch", "onnxruntime"):
        baseline = load_package(tiny_run.package, runtime, model="baseline")
        assert baseline.recipe.variant == "fp32"
        assert (baseline.generate(z).int() - expected.int()).abs().max() <= 1


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
def test_tampered_package_is_refused(package_copy, tamper, message, reliability):
    tamper(package_copy)
    reliability.bad_input()
    with pytest.raises(UserError, match=message):
        load_package(package_copy)


def test_modified_weights_byte_is_refused(package_copy, reliability):
    weights = package_copy / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    reliability.bad_input()
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


def test_a_pruned_winner_packages_and_loads_with_its_smaller_shapes(tiny_run, tiny_configs, tiny_protocol,
                                                                    tmp_path):
    import dataclasses
    import shutil

    from ganforge.files import read_json, write_json
    from ganforge.models import load_generator, save_generator
    from ganforge.optimization.pruning import prune_generator
    from ganforge.packaging.build import write_package

    generator, spec = load_generator(tiny_run.train_dir / "generator.safetensors")
    pruned = prune_generator(generator, spec.z_dim, 0.5, "l1")
    optimized = Path(shutil.copytree(tiny_run.optimized, tmp_path / "optimized"))
    save_generator(pruned, dataclasses.replace(spec, pruned=True), optimized / "generator.safetensors")
    write_json(optimized / "recipe.json", {"variant": "pruned+fused", "prune_ratio": 0.5})
    report = read_json(optimized / "optimize.json")
    report["variants"]["pruned+fused"] = report["variants"]["fp32"]  # not its FID: the FID gate is widened
    write_json(optimized / "optimize.json", report)
    cfg = dataclasses.replace(tiny_configs["package"], parity_max_fid_rel_diff=1e6)
    write_package(cfg, tiny_protocol, optimized, tiny_run.prepared, tmp_path / "package", tmp_path / "package.json")
    z = latents(0, 0, 4, spec.z_dim)
    with torch.no_grad():
        expected = to_uint8(pruned(z)).int()
    for runtime in ("torch", "onnxruntime"):
        images = load_package(tmp_path / "package", runtime).generate(z).int()
        assert images.shape == expected.shape and (images - expected).abs().max() <= 1


def _edit_config(package: Path, edit) -> None:
    """Change config.json with ``edit(config)`` and re-sign it in the manifest, as a package built so would be."""
    import hashlib

    config_path = package / "config.json"
    config = json.loads(config_path.read_text())
    edit(config)
    config_path.write_text(json.dumps(config))
    manifest = json.loads((package / "manifest.json").read_text())
    manifest["files"]["config.json"] = hashlib.sha256(config_path.read_bytes()).hexdigest()
    (package / "manifest.json").write_text(json.dumps(manifest))


def test_a_package_records_its_format_version(tiny_run):
    from ganforge.packaging.package import FORMAT_VERSION

    for name in ("config.json", "manifest.json"):
        assert json.loads((tiny_run.package / name).read_text())["format_version"] == FORMAT_VERSION


def test_a_version_one_package_naming_a_removed_form_runs_under_onnxruntime_only(package_copy, reliability):
    def to_version_one_banded(config: dict) -> None:
        del config["format_version"]  # version 1 packages had no field
        config["recipe"]["variant"] = "pruned+banded" if config["generator"].get("pruned") else "banded"

    _edit_config(package_copy, to_version_one_banded)
    reliability.bad_input()
    with pytest.raises(UserError, match=r"config\.json: recipe\.variant: '(pruned\+)?banded' uses the banded form, "
                                        r"which this version of ganforge no longer has: run it with --runtime "
                                        r"onnxruntime, or rebuild the package$"):
        load_package(package_copy, "torch")
    package = load_package(package_copy, "onnxruntime")
    assert package.generate(torch.randn(2, package.spec.z_dim)).shape[0] == 2


def test_a_package_from_a_newer_format_is_refused_in_one_line(package_copy, reliability):
    _edit_config(package_copy, lambda config: config.update(format_version=99))
    reliability.bad_input()
    with pytest.raises(UserError, match=r"config\.json: format_version: this ganforge reads versions 1 to \d+, "
                                        r"got 99 \(made by a newer ganforge\? upgrade it\)$"):
        load_package(package_copy)
