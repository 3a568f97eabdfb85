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

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ganforge.errors import UserError
from ganforge.files import read_json, sha256_file
from ganforge.images import to_uint8
from ganforge.models import GeneratorSpec
from ganforge.models.registry import build_generator, load_state, load_weights, resize_to_state
from ganforge.optimization.variants import Recipe, build_variant
from ganforge.packaging import MODELS, RUNTIMES
from ganforge.packaging.onnx import onnx_session, run_onnx

MANIFEST = "manifest.json"
WEIGHTS, CONFIG, ONNX, SAMPLES, CARD = "model.safetensors", "config.json", "generator.onnx", "samples.png", "README.md"
BASELINE_WEIGHTS, BASELINE_ONNX = "baseline.safetensors", "baseline.onnx"
FORMAT = "ganforge-generator"


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
    """Check every file against the manifest; a missing, modified or unexpected file is a :class:`UserError`."""
    path = Path(path)
    if not path.is_dir():
        raise UserError(f"{path}: package directory not found")
    manifest = read_json(path / MANIFEST)
    files_ok = isinstance(manifest, dict) and isinstance(manifest.get("files"), dict)
    if not files_ok or manifest.get("format") != FORMAT:
        raise UserError(f"{path / MANIFEST}: not a ganforge generator manifest")
    expected = manifest["files"]
    for name, digest in expected.items():
        file = path / name
        if Path(name).name != name:
            raise UserError(f"{path / MANIFEST}: file entry {name!r} is not a plain file name")
        if not file.is_file():
            raise UserError(f"{file}: missing from the package")
        if sha256_file(file) != digest:
            raise UserError(f"{file}: sha256 does not match the manifest (modified or corrupt)")
    extra = sorted(p.name for p in path.iterdir() if p.name != MANIFEST and p.name not in expected)
    if extra:
        raise UserError(f"{path / extra[0]}: unexpected file, not listed in the manifest")
    return manifest


def load_package(path: str | Path, runtime: str = "torch", model: str = "winner") -> GeneratorPackage:
    """Verify a package and load its ``model`` (``winner``, or ``baseline`` when packaged) for ``runtime``
    (``torch`` or ``onnxruntime``). Nothing is unpickled: the module is rebuilt from config.json."""
    if runtime not in RUNTIMES:
        raise UserError(f"--runtime: expected one of {', '.join(RUNTIMES)}, got {runtime!r}")
    if model not in MODELS:
        raise UserError(f"--model: expected one of {', '.join(MODELS)}, got {model!r}")
    path = Path(path)
    verify_package(path)
    config = read_json(path / CONFIG)
    if not isinstance(config, dict):
        raise UserError(f"{path / CONFIG}: expected a JSON object")
    recipe = Recipe.from_dict(config.get("recipe"), source=f"{path / CONFIG}: recipe")
    weights, onnx_file, source = WEIGHTS, ONNX, config.get("generator")
    if model == "baseline":
        if not isinstance(config.get("baseline"), dict):
            raise UserError(f"{path}: this package holds no baseline (set package.include_baseline: true)")
        recipe = Recipe("fp32")  # the trained generator as evaluated: eager float
        weights, onnx_file, source = BASELINE_WEIGHTS, BASELINE_ONNX, config["baseline"].get("generator")
    spec = GeneratorSpec.from_dict(source, source=f"{path / CONFIG}: {model} generator")
    if runtime == "onnxruntime":
        return GeneratorPackage(path, spec, recipe, runtime, model, onnx_session=onnx_session(path / onnx_file))
    generator = build_generator(spec)
    state = load_weights(path / weights)
    if spec.pruned:
        resize_to_state(generator, state)
    load_state(generator, state, path / weights)
    # The torch runtime is the recipe's eager module; its runtime step (compiled, onnxruntime) is left out.
    module = build_variant(recipe, generator.eval(), spec.z_dim, runtime=False)
    return GeneratorPackage(path, spec, recipe, runtime, model, torch_module=module)
