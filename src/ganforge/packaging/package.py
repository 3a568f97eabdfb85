"""The generator package: its layout, and loading it with every hash verified (see ``build`` for writing it).

Layout of ``dist/generator/``::

    model.safetensors   float weights (no pickles)
    config.json         generator spec, optimize recipe, output convention
    generator.onnx      BN-folded float graph, dynamic batch
    samples.png         a grid from fixed latents
    README.md           the model card: training data, metrics and their protocol, speed table, samples
    baseline.*          the trained generator's weights and ONNX, with ``package.include_baseline``
    manifest.json       sha256 of every other file, ganforge version, git commit, params

The package stage gates on parity: the ONNX export must match PyTorch pixel for pixel (within a tolerance)
and, re-scored by torch-fidelity under the evaluate protocol, reproduce the FID the optimize stage measured.
Loading verifies every hash and refuses missing or extra files; the module is rebuilt from config.json.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ganforge.errors import UserError
from ganforge.files import Each, check_json, read_json, sha256_file, shown
from ganforge.images import to_uint8
from ganforge.models import GeneratorSpec
from ganforge.models.registry import generator_from_weights
from ganforge.packaging import MODELS, RUNTIMES
from ganforge.runtime.onnx import load_onnx, run_onnx
from ganforge.runtime.variants import Recipe, build_variant

MANIFEST = "manifest.json"
WEIGHTS, CONFIG, ONNX, SAMPLES, CARD = "model.safetensors", "config.json", "generator.onnx", "samples.png", "README.md"
BASELINE_WEIGHTS, BASELINE_ONNX = "baseline.safetensors", "baseline.onnx"
FORMAT = "ganforge-generator"
# 2: the banded and overlap forms are gone (a version-1 package naming one runs under --runtime onnxruntime).
# A package without the field is version 1.
FORMAT_VERSION = 2
LAYOUT = (WEIGHTS, CONFIG, ONNX, SAMPLES, CARD, BASELINE_WEIGHTS, BASELINE_ONNX)  # the files a manifest may list
REQUIRED = (WEIGHTS, CONFIG, ONNX, SAMPLES, CARD)  # ...and those it must
_SHA256 = re.compile("[0-9a-f]{64}")


@dataclass
class GeneratorPackage:
    """A verified, loaded package.

    Args:
        path: package directory.
        spec: generator spec from config.json.
        recipe: optimize recipe applied to the float weights for the torch runtime.
        runtime: ``torch`` (the recipe's variant) or ``onnxruntime`` (the ONNX graph).
        model: ``winner`` (the optimized generator) or ``baseline`` (the trained one, when packaged).
        torch_module: the rebuilt variant, for the torch runtime.
        onnx_session: an ONNX Runtime session, for the onnxruntime runtime.
    """

    path: Path
    spec: GeneratorSpec
    recipe: Recipe
    runtime: str
    model: str = "winner"
    torch_module: nn.Module | None = None
    onnx_session: Any = None

    @torch.inference_mode()
    def generate(self, z: torch.Tensor) -> torch.Tensor:
        """Images for latents z (B, z_dim): uint8 (B, C, R, R)."""
        assert z.ndim == 2 and z.shape[1] == self.spec.z_dim, z.shape
        if self.onnx_session is not None:
            return to_uint8(run_onnx(self.onnx_session, z))
        return to_uint8(self.torch_module(z))


def verify_package(path: str | Path) -> dict[str, Any]:
    """Check every file against the manifest; a missing, modified or unexpected file, or a manifest that is not
    one (its ``files`` must map the layout's names to sha256 hex digests), is a one-line :class:`UserError`."""
    path = Path(path)
    if not path.is_dir():
        raise UserError(f"{path}: package directory not found")
    manifest_path = path / MANIFEST
    manifest = read_json(manifest_path)
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise UserError(f"{manifest_path}: not a ganforge generator manifest (format {FORMAT!r} expected)")
    check_json(manifest, {"files": Each(str)}, str(manifest_path))
    expected = manifest["files"]
    for name, digest in expected.items():
        if name not in LAYOUT:
            raise UserError(f"{manifest_path}: files: {shown(name)} is not a file of the package layout "
                            f"({', '.join(LAYOUT)})")
        if not _SHA256.fullmatch(digest):
            raise UserError(f"{manifest_path}: files.{name}: expected a sha256 hex digest, got {shown(digest)}")
    for name in REQUIRED:
        if name not in expected:
            raise UserError(f"{manifest_path}: files.{name}: missing (every package holds it)")
    for name, digest in expected.items():
        file = path / name
        if file.is_dir():
            raise UserError(f"{file}: is a directory, expected a file of the package")
        if not file.is_file():
            raise UserError(f"{file}: missing from the package")
        try:
            actual = sha256_file(file)
        except OSError as e:
            raise UserError(f"{file}: not readable ({e.strerror or e})") from None
        if actual != digest:
            raise UserError(f"{file}: sha256 does not match the manifest (modified or corrupt)")
    extra = sorted(p.name for p in path.iterdir() if p.name != MANIFEST and p.name not in expected)
    if extra:
        raise UserError(f"{path / extra[0]}: unexpected file, not listed in the manifest")
    return manifest


def load_package(path: str | Path, runtime: str = "torch", model: str = "winner") -> GeneratorPackage:
    """Verify a package and load its ``model`` (``winner``, or ``baseline`` when packaged) for ``runtime``
    (``torch`` or ``onnxruntime``). Nothing is unpickled: the module is rebuilt from config.json.

    Every field read from config.json is checked first (type, range), and the network is sized by its weights
    file, not by config.json, so an edited package is a one-line :class:`UserError` naming the file and field.
    """
    if runtime not in RUNTIMES:
        raise UserError(f"--runtime: expected one of {', '.join(RUNTIMES)}, got {runtime!r}")
    if model not in MODELS:
        raise UserError(f"--model: expected one of {', '.join(MODELS)}, got {model!r}")
    path = Path(path)
    verify_package(path)
    config_path = path / CONFIG
    config = read_json(config_path)
    if not isinstance(config, dict):
        raise UserError(f"{config_path}: expected a JSON object, got {shown(config)}")
    if config.get("format") != FORMAT:
        raise UserError(f"{config_path}: format: expected {FORMAT!r}, got {shown(config.get('format'))}")
    version = config.get("format_version", 1)
    if not isinstance(version, int) or isinstance(version, bool) or not 1 <= version <= FORMAT_VERSION:
        raise UserError(f"{config_path}: format_version: this ganforge reads versions 1 to {FORMAT_VERSION}, got "
                        f"{shown(version)} (made by a newer ganforge? upgrade it)")
    recipe = Recipe.from_dict(config.get("recipe"), source=str(config_path), removed_ok=runtime == "onnxruntime")
    weights, onnx_file, source = WEIGHTS, ONNX, config.get("generator")
    label = str(config_path)
    if model == "baseline":
        if "baseline" not in config:
            raise UserError(f"{path}: this package holds no baseline (set package.include_baseline: true)")
        check_json(config["baseline"], {}, label, "baseline")
        recipe = Recipe("fp32")  # the trained generator as evaluated: eager float
        weights, onnx_file, source = BASELINE_WEIGHTS, BASELINE_ONNX, config["baseline"].get("generator")
        label = f"{config_path}: baseline"
    spec = GeneratorSpec.from_dict(source, source=label)
    if runtime == "onnxruntime":
        session = load_onnx(path / onnx_file, spec.z_dim, (spec.channels, spec.resolution, spec.resolution))
        return GeneratorPackage(path, spec, recipe, runtime, model, onnx_session=session)
    generator = generator_from_weights(spec, path / weights)
    # The torch runtime is the recipe's eager module; its runtime step (compiled, onnxruntime) is left out.
    module = build_variant(recipe, generator, spec.z_dim, runtime=False)
    return GeneratorPackage(path, spec, recipe, runtime, model, torch_module=module)
