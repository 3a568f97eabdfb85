"""The package's model card (``README.md``): what the generator was trained on, how good and how fast it is
measured to be, and how to use it. Every figure comes from the pipeline's own outputs."""

from __future__ import annotations

from typing import Any

from ganforge import __version__
from ganforge.config import PackageConfig
from ganforge.models import GeneratorSpec
from ganforge.runtime.variants import Recipe

_QUALITY_KEYS = (("fid", "FID ↓"), ("kid_mean", "KID ↓"), ("isc_mean", "IS ↑"), ("precision", "precision ↑"),
                 ("recall", "recall ↑"))


def _speed_table(report: dict[str, Any], winner: str) -> list[str]:
    rows = report["variants"]
    batches = sorted(int(key.removeprefix("img_per_s_batch")) for key in rows[winner]
                     if key.startswith("img_per_s_batch"))
    base = rows["fp32"]
    lines = ["| variant | " + " | ".join(f"img/s b{b}" for b in batches) + f" | × fp32 (b{report['batch']}) | FID |"
             " MMACs | params |", "|---" * (len(batches) + 5) + "|"]
    for name, row in rows.items():
        mark = " (this package)" if name == winner else ""
        speeds = " | ".join(f"{row[f'img_per_s_batch{b}']:,.0f}" for b in batches)
        lines.append(f"| `{name}`{mark} | {speeds} | {row['img_per_s'] / base['img_per_s']:.2f} | "
                     f"{row['fid']:.3f} | {row['macs'] / 1e6:.2f} | {row['params']:,} |")
    return lines


_USE = [
    "## Use",
    "",
    "```",
    "ganforge generate --package . -n 1000 --out images/ [--grid grid.png] [--seed 0] [--truncation 0.7]",
    "ganforge serve --package .   # http://127.0.0.1:8000/",
    "```",
    "",
    "Loading verifies the sha256 of every file against `manifest.json` and rebuilds the network from "
    "`config.json` and `model.safetensors`; nothing is unpickled. `generator.onnx` (dynamic batch) runs in "
    "ONNX Runtime without ganforge.",
    "",
]


def _data_lines(data: dict[str, Any]) -> list[str]:
    """The card's training-data section, from the prepare stage's manifest."""
    counts = data.get("counts", {})
    return [
        "## Training data",
        "",
        f"- source: `{data.get('source')}`" + (f" (`{data['source_path']}`)" if data.get("source_path") else ""),
        f"- images: {counts.get('train', '?'):,} train, {counts.get('test', '?'):,} held out",
        f"- resolution {data.get('resolution')}×{data.get('resolution')}, {data.get('channels')} "
        f"channel{'s' if data.get('channels') != 1 else ''}",
        f"- source hash: `{data.get('source_hash')}`",
        "",
    ]


def _quality_lines(rows: dict[str, Any], winner: str, protocol: dict[str, Any], report: dict[str, Any],
                   parity: dict[str, float], cfg: PackageConfig) -> list[str]:
    """The card's quality section: the winner's and the baseline's metrics, the protocol and the ONNX parity."""
    return [
        "## Quality",
        "",
        "| metric | this package | trained baseline (`fp32`) |",
        "|---|---|---|",
        *(f"| {label} | {rows[winner][key]:.4g} | {rows['fp32'][key]:.4g} |" for key, label in _QUALITY_KEYS),
        "",
        f"Protocol: torch-fidelity {protocol['torch_fidelity_version']}, {protocol['num_samples']} generated images "
        f"against the {protocol['reference_count']:,} images of the `{protocol['reference_split']}` split, features "
        f"from `{protocol['feature_extractor']}` (sha256 `{protocol['feature_extractor_sha256'][:16]}…`), KID "
        f"subsets of {protocol['kid_subset_size']} × {protocol['kid_subsets']}, latent seed {protocol['latent_seed']}. "
        f"Resize: {protocol['resize']}.",
        *_inception_lines(report, winner),
        "",
        f"Parity: `generator.onnx` re-scored under the same protocol gives FID {parity['onnx_fid']:.4f} against "
        f"{parity['evaluated_fid']:.4f} measured for `{winner}` (relative gap {parity['fid_rel_diff']:.2g}, "
        f"tolerance {cfg.parity_max_fid_rel_diff}); its pixels differ from PyTorch's by at most "
        f"{parity['onnx_max_abs_diff']:.2g} (tolerance {cfg.parity_max_abs_diff}).",
        "",
    ]


def model_card(spec: GeneratorSpec, recipe: Recipe, report: dict[str, Any], data: dict[str, Any],
               parity: dict[str, float], protocol: dict[str, Any], params: int, cfg: PackageConfig) -> str:
    """The model card's markdown.

    Args:
        spec: the packaged generator's spec.
        recipe: the optimize recipe of the winner.
        report: the optimize stage's measurements (``models/optimized/optimize.json``).
        data: the prepare stage's manifest (``data/prepared/manifest.json``).
        parity: the package stage's ONNX parity figures.
        protocol: the evaluate protocol the metrics were measured under.
        params: parameter count of the packaged generator.
        cfg: the package params.
    """
    winner, rows = recipe.variant, report["variants"]
    lines = [
        f"# ganforge generator: `{spec.arch}` as `{winner}`",
        "",
        f"An unconditional image generator, {spec.resolution}×{spec.resolution} pixels with {spec.channels} "
        f"channel{'s' if spec.channels > 1 else ''}, from latents of {spec.z_dim} dimensions. Built by ganforge "
        f"{__version__}; the optimize stage chose the `{winner}` variant as the fastest at batch {report['batch']} "
        f"within its quality budget (FID ≤ {report['fid_budget']:.3f}).",
        "",
        "![samples from this package](samples.png)",
        "",
        *_USE,
        *_data_lines(data),
        *_quality_lines(rows, winner, protocol, report, parity, cfg),
        "## Speed",
        "",
        f"Measured side by side in one run by the optimize stage on {report['threads']} CPU threads (median of "
        f"repeats); the fp32 GEMM rate of that machine was {report['gemm_gflops']:.0f} GFLOP/s.",
        "",
        *_speed_table(report, winner),
        "",
        "## Model",
        "",
        f"- architecture `{spec.arch}` (width {spec.width}), {params:,} parameters"
        + (", channels pruned by torch-pruning" if spec.pruned else ""),
        f"- recipe: `{recipe.to_dict()}`",
        "- output: images in [-1, 1], NCHW; uint8 pixels are round((x + 1) × 127.5)",
        "",
    ]
    return "\n".join(lines)


def _inception_lines(report: dict[str, Any], winner: str) -> list[str]:
    """The Inception FIDs of the winner and the baseline, where the optimize stage held its budget in them."""
    inception = report.get("inception")
    if not isinstance(inception, dict) or not isinstance(inception.get("protocol"), dict):
        return []
    p = inception["protocol"]
    figures = next((v for k, v in inception.items() if k.startswith("fid_inception_") and isinstance(v, dict)), {})
    n, count = p.get("num_samples"), p.get("reference_count")
    if winner not in figures or "fp32" not in figures or not isinstance(n, int) or not isinstance(count, int):
        return []
    return ["", f"Inception FID ({n:,} generated images against {count:,} `{p.get('reference_split')}` images, "
            f"weights sha256 `{str(p.get('feature_extractor_sha256'))[:16]}…`, {p.get('feature_extractor_source')}): "
            f"this package {figures[winner]:.4g}, trained baseline {figures['fp32']:.4g}."]
