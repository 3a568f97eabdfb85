"""The pinned scoring protocol: one object scores the trained generator, every optimized variant and the
packaged ONNX model, always against the reference stage's cached statistics.

Generators go to torch-fidelity as generative models (its module wrapper; its ONNX model for exported
files), never as images dumped to disk. All metric math is torch-fidelity's.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch_fidelity
from torch import nn
from torch_fidelity.generative_model_modulewrapper import GenerativeModelModuleWrapper
from torch_fidelity.generative_model_onnx import GenerativeModelONNX

from ganforge.config import EvaluateConfig, ReferenceConfig
from ganforge.errors import UserError
from ganforge.evaluation.fidelity import UInt8Generator
from ganforge.evaluation.reference import ReferenceStats, load_reference
from ganforge.latents import Truncated


@dataclass(frozen=True)
class Protocol:
    """Generated-sample settings (``evaluate`` params) plus the cached reference statistics.

    Args:
        cfg: the evaluate stage's params (sample counts, KID settings, latent seed, batch size).
        reference: the reference stage's statistics of one extractor, already checked against the params.
        num_samples: generated images per score (``evaluate.num_samples``, or ``inception_samples`` for
            Inception).
    """

    cfg: EvaluateConfig
    reference: ReferenceStats
    num_samples: int

    def describe(self) -> dict[str, Any]:
        """The protocol as recorded next to every metric, so ``dvc metrics diff`` compares like with like."""
        ref = self.reference
        resize = ("torch-fidelity's inception-v3-compat resize (TF 1.x bilinear) to 299x299; grey images repeated "
                  "to RGB" if ref.weights.rgb
                  else "none: generated and reference images are both at the prepared resolution")
        return {
            "feature_extractor": ref.feature_extractor,
            "feature_extractor_sha256": ref.weights.sha256,
            "feature_extractor_source": ref.weights.source,
            "num_samples": self.num_samples,
            "reference_split": ref.split,
            "reference_count": ref.counts[ref.split],
            "reference_max_samples": ref.info["max_samples"],  # a seeded subset of the split when it is larger
            "reference_statistics": ref.cache_name(ref.split),
            "resize": resize,
            "kid_subset_size": self.cfg.kid_subset_size,
            "kid_subsets": self.cfg.kid_subsets,
            "latent_seed": self.cfg.seed,
            "generator": self.cfg.generator,  # the train stage's best (in-loop FID) or last EMA generator
            "torch_fidelity_version": torch_fidelity.__version__,
        }

    def _kwargs(self) -> dict[str, Any]:
        return self.reference.fidelity_kwargs(self.cfg.batch_size, self.cfg.seed)


def make_protocol(cfg: EvaluateConfig, reference_cfg: ReferenceConfig, reference_dir: str | Path,
                  featurizer_path: str | Path, extractor: str = "domain") -> Protocol:
    """Open ``extractor``'s reference statistics and check that the KID subset fits both sample sets."""
    reference = load_reference(reference_dir, reference_cfg, featurizer_path, extractor)
    num_samples, key = ((cfg.num_samples, "num_samples") if extractor == "domain"
                        else (cfg.inception_samples, "inception_samples"))
    limit = min(num_samples, reference.counts[reference.split])
    if cfg.kid_subset_size > limit:
        raise UserError(f"evaluate.kid_subset_size: {cfg.kid_subset_size} exceeds min({key}, "
                        f"{reference.split} split size) = {limit}")
    return Protocol(cfg, reference, num_samples)


def _calculate(generator: nn.Module, z_dim: int, protocol: Protocol, **metrics: bool) -> dict[str, Any]:
    """torch-fidelity's metrics of ``generator`` against the cached reference split."""
    wrapped = GenerativeModelModuleWrapper(UInt8Generator(generator, protocol.reference.weights.rgb), z_dim,
                                           "normal", 0)
    name = protocol.reference.cache_name(protocol.reference.split)
    return torch_fidelity.calculate_metrics(
        input1=wrapped,
        input1_model_num_samples=protocol.num_samples,
        input2=name, input2_cache_name=name,  # cached by the reference stage: never re-extracted
        kid_subset_size=protocol.cfg.kid_subset_size,
        kid_subsets=protocol.cfg.kid_subsets,
        **metrics,
        **protocol._kwargs(),
    )


def score_generator(generator: nn.Module, z_dim: int, protocol: Protocol) -> dict[str, float]:
    """FID, KID, IS and precision/recall of ``generator`` (z (B, z_dim) -> [-1, 1] images) under ``protocol``.
    IS only where the extractor has logits (not the offline Inception weights)."""
    logits = protocol.reference.weights.logits
    raw = _calculate(generator, z_dim, protocol, fid=True, kid=True, isc=logits, prc=True)
    keys = {"fid": torch_fidelity.KEY_METRIC_FID, "kid_mean": torch_fidelity.KEY_METRIC_KID_MEAN,
            "kid_std": torch_fidelity.KEY_METRIC_KID_STD,
            **({"isc_mean": torch_fidelity.KEY_METRIC_ISC_MEAN, "isc_std": torch_fidelity.KEY_METRIC_ISC_STD}
               if logits else {}),
            "precision": torch_fidelity.KEY_METRIC_PRECISION, "recall": torch_fidelity.KEY_METRIC_RECALL}
    return {name: float(raw[key]) for name, key in keys.items()}


def figure_suffix(extractor: str, num_samples: int) -> str:
    """What a figure is, for its metric name: ``inception_10k`` for Inception over 10,000 generated images
    (``2_5k`` for 2,500: dvc metrics reads dots as separators)."""
    return f"{'inception' if extractor != 'domain' else 'domain'}_" + f"{num_samples / 1000:g}k".replace(".", "_")


def score_truncation(generator: nn.Module, z_dim: int, protocol: Protocol, psi: float) -> dict[str, float]:
    """Precision and recall of ``generator`` fed latents truncated at ±``psi`` (fidelity against diversity)."""
    raw = _calculate(Truncated(generator, psi), z_dim, protocol, prc=True)
    return {"precision": float(raw[torch_fidelity.KEY_METRIC_PRECISION]),
            "recall": float(raw[torch_fidelity.KEY_METRIC_RECALL])}


def psi_key(psi: float) -> str:
    """Metrics key of a truncation: ``psi_1``, ``psi_0_5`` (no dots, which dvc metrics uses as separators)."""
    return "psi_" + f"{psi:g}".replace(".", "_")


def score_onnx_generator(path: str | Path, z_dim: int, protocol: Protocol) -> dict[str, float]:
    """The same metrics for an exported generator (input z (B, z_dim), output [-1, 1] images), run by ONNX
    Runtime through torch-fidelity's ONNX generative model."""
    if not Path(path).is_file():
        raise UserError(f"{path}: ONNX generator not found")
    return score_generator(GenerativeModelONNX(str(path), z_dim, "normal", 0), z_dim, protocol)


def score_real_floor(protocol: Protocol) -> dict[str, float]:
    """FID and KID between the two real splits' cached statistics: roughly the best a generator can score
    with these sample counts. KID subsets are capped at the smaller split (``kid_real_floor_subset_size``)."""
    ref = protocol.reference
    subset = min(protocol.cfg.kid_subset_size, ref.counts[ref.split], ref.counts[ref.floor_split])
    floor, reference = ref.cache_name(ref.floor_split), ref.cache_name(ref.split)
    raw = torch_fidelity.calculate_metrics(
        input1=floor, input1_cache_name=floor, input2=reference, input2_cache_name=reference,
        fid=True, kid=True, kid_subset_size=subset, kid_subsets=protocol.cfg.kid_subsets, **protocol._kwargs(),
    )
    return {"fid_real_floor": float(raw[torch_fidelity.KEY_METRIC_FID]),
            "kid_real_floor": float(raw[torch_fidelity.KEY_METRIC_KID_MEAN]),
            "kid_real_floor_subset_size": subset}
