"""The generator package: weights, config, ONNX, model card pieces and a hash manifest.

Layout of ``dist/generator/``::

    model.safetensors   float weights (no pickles)
    config.json         generator spec, optimize recipe, output convention
    generator.onnx      BN-folded float graph, dynamic batch
    samples.png         a grid from fixed latents
    manifest.json       sha256 of every other file, ganforge version, git commit, params

Loading verifies every hash and refuses missing or extra files; the module is rebuilt from config.json.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ganforge import __version__
from ganforge.config import PackageConfig, config_to_dict
from ganforge.errors import UserError
from ganforge.files import atomic_dir, read_json, sha256_file, write_json
from ganforge.images import save_grid, to_uint8
from ganforge.latents import latents
from ganforge.models import GeneratorSpec, load_generator
from ganforge.models.registry import build_generator, load_state, load_weights, resize_to_state, save_weights
from ganforge.optimization.variants import Recipe, build_variant, fold_batchnorm
from ganforge.packaging.onnx import export_onnx, onnx_session, run_onnx

MANIFEST = "manifest.json"
WEIGHTS, CONFIG, ONNX, SAMPLES = "model.safetensors", "config.json", "generator.onnx", "samples.png"
FORMAT = "ganforge-generator"
RUNTIMES = ("torch", "onnxruntime")


@dataclass
class GeneratorPackage:
    """A verified, loaded package.

    Args:
        path: package directory.
        spec: generator spec from config.json.
        recipe: optimize recipe applied to the float weights for the torch runtime.
        runtime: ``torch`` (the recipe's variant) or ``onnxruntime`` (generator.onnx).
        torch_module: the rebuilt variant, for the torch runtime.
        onnx_session: an ONNX Runtime session, for the onnxruntime runtime.
    """

    path: Path
    spec: GeneratorSpec
    recipe: Recipe
    runtime: str
    torch_module: nn.Module | None = None
    onnx_session: Any = None

    @torch.inference_mode()
    def generate(self, z: torch.Tensor) -> torch.Tensor:
        """Images for latents z (B, z_dim): uint8 (B, C, R, R)."""
        assert z.ndim == 2 and z.shape[1] == self.spec.z_dim, z.shape
        if self.onnx_session is not None:
            return to_uint8(run_onnx(self.onnx_session, z))
        return to_uint8(self.torch_module(z))


def _git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def write_package(cfg: PackageConfig, optimized_dir: str | Path, out_dir: str | Path,
                  metrics_path: str | Path) -> dict[str, Any]:
    """Build the package from the optimize stage's winner, check ONNX parity, and write it atomically."""
    optimized_dir = Path(optimized_dir)
    generator, spec = load_generator(optimized_dir / "generator.safetensors")
    recipe = Recipe.from_dict(read_json(optimized_dir / "recipe.json"), source=str(optimized_dir / "recipe.json"))
    folded = fold_batchnorm(generator)
    z = latents(cfg.seed, 0, cfg.parity_batch, spec.z_dim)  # (parity_batch, z_dim)

    with atomic_dir(out_dir) as tmp:
        save_weights(generator, tmp / WEIGHTS, {"spec": spec.to_dict()})
        write_json(tmp / CONFIG, {
            "format": FORMAT,
            "generator": spec.to_dict(),
            "recipe": recipe.to_dict(),
            "output": {"range": [-1.0, 1.0], "to_uint8": "round((x + 1) * 127.5)", "layout": "NCHW"},
            "onnx": {"file": ONNX, "graph": "batchnorm-folded float32", "input": "z", "output": "images"},
        })
        export_onnx(folded, spec.z_dim, tmp / ONNX, cfg.onnx_opset)
        with torch.inference_mode():
            torch_out = folded(z)
        onnx_out = run_onnx(onnx_session(tmp / ONNX), z)
        max_abs_diff = float((onnx_out - torch_out).abs().max())
        if max_abs_diff > cfg.parity_max_abs_diff:
            raise UserError(f"ONNX parity failed: max |onnx - torch| = {max_abs_diff:.3g} exceeds "
                            f"package.parity_max_abs_diff = {cfg.parity_max_abs_diff}")
        with torch.inference_mode():
            grid_images = to_uint8(build_variant(recipe, generator, spec.z_dim, runtime=False)(
                latents(cfg.seed, 0, cfg.grid_size, spec.z_dim)))
        save_grid(grid_images, tmp / SAMPLES)
        files = sorted(p.name for p in tmp.iterdir())
        manifest = {
            "format": FORMAT,
            "ganforge_version": __version__,
            "git_commit": _git_commit(),
            "files": {name: sha256_file(tmp / name) for name in files},
            "params": config_to_dict(cfg),
        }
        write_json(tmp / MANIFEST, manifest)

    metrics = {
        "onnx_max_abs_diff": max_abs_diff,
        "variant": recipe.variant,
        "package_bytes": sum((Path(out_dir) / name).stat().st_size for name in files),
        "onnx_bytes": (Path(out_dir) / ONNX).stat().st_size,
    }
    write_json(metrics_path, metrics)
    return metrics


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


def load_package(path: str | Path, runtime: str = "torch") -> GeneratorPackage:
    """Verify a package and load it for ``runtime`` (``torch`` or ``onnxruntime``). Nothing is unpickled."""
    if runtime not in RUNTIMES:
        raise UserError(f"--runtime: expected one of {', '.join(RUNTIMES)}, got {runtime!r}")
    path = Path(path)
    verify_package(path)
    config = read_json(path / CONFIG)
    if not isinstance(config, dict):
        raise UserError(f"{path / CONFIG}: expected a JSON object")
    spec = GeneratorSpec.from_dict(config.get("generator"), source=f"{path / CONFIG}: generator")
    recipe = Recipe.from_dict(config.get("recipe"), source=f"{path / CONFIG}: recipe")
    if runtime == "onnxruntime":
        return GeneratorPackage(path, spec, recipe, runtime, onnx_session=onnx_session(path / ONNX))
    generator = build_generator(spec)
    state = load_weights(path / WEIGHTS)
    if spec.pruned:
        resize_to_state(generator, state)
    load_state(generator, state, path / WEIGHTS)
    # The torch runtime is the recipe's eager module; its runtime step (compiled, onnxruntime) is left out.
    module = build_variant(recipe, generator.eval(), spec.z_dim, runtime=False)
    return GeneratorPackage(path, spec, recipe, runtime, torch_module=module)
