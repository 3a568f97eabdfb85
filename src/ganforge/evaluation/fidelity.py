"""torch-fidelity glue: the domain feature extractor's registration and the pinned scoring protocol.

All metric math (FID, KID, IS, precision/recall) is torch-fidelity's; this module only hands it a
generator, a reference dataset and the registered feature extractor.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch_fidelity
from torch import nn
from torch.utils.data import Dataset
from torch_fidelity.feature_extractor_base import FeatureExtractorBase
from torch_fidelity.feature_extractor_inceptionv3 import URL_INCEPTION_V3
from torch_fidelity.generative_model_modulewrapper import GenerativeModelModuleWrapper
from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY, register_feature_extractor

from ganforge.config import EvaluateConfig
from ganforge.data.prepared import ImageTensorDataset, load_split
from ganforge.errors import UserError
from ganforge.evaluation.features import load_featurizer
from ganforge.files import sha256_file
from ganforge.images import to_uint8

DOMAIN_EXTRACTOR = "ganforge-domain"
INCEPTION_EXTRACTOR = "inception-v3-compat"  # torch-fidelity's, comparable with published FIDs
_METRIC_LAYERS = {"isc": "logits", "fid": "features", "kid": "features", "prc": "features"}


class DomainFeatureExtractor(FeatureExtractorBase):
    """torch-fidelity adapter around :class:`DomainFeatureNet`; weights come from
    ``feature_extractor_weights_path``. Input: uint8 (B, C, H, W). Provides ``features`` and ``logits``."""

    def __init__(self, name: str, features_list: list[str], feature_extractor_weights_path: str | None = None,
                 **kwargs: Any) -> None:
        super().__init__(name, features_list)
        if feature_extractor_weights_path is None:
            raise UserError(f"feature extractor {name!r} needs feature_extractor_weights_path")
        self.net = load_featurizer(feature_extractor_weights_path)

    @staticmethod
    def get_provided_features_list() -> tuple[str, ...]:
        return ("features", "logits")

    @staticmethod
    def get_default_feature_layer_for_metric(metric: str) -> str:
        return _METRIC_LAYERS[metric]

    @staticmethod
    def can_be_compiled() -> bool:
        return False

    @staticmethod
    def get_dummy_input_for_compile() -> None:
        return None

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        features, logits = self.net(images)  # (B, F), (B, K)
        provided = {"features": features, "logits": logits}
        return tuple(provided[name] for name in self.features_list)


if DOMAIN_EXTRACTOR not in FEATURE_EXTRACTORS_REGISTRY:
    register_feature_extractor(DOMAIN_EXTRACTOR, DomainFeatureExtractor)


class UInt8Generator(nn.Module):
    """Wraps a generator so it emits uint8 pixels, the form torch-fidelity feeds feature extractors.
    z (B, z_dim) -> uint8 (B, C, R, R), with grey images repeated to RGB when ``rgb`` is set."""

    def __init__(self, generator: nn.Module, rgb: bool = False) -> None:
        super().__init__()
        self.generator, self.rgb = generator, rgb

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        images = to_uint8(self.generator(z))
        return images.expand(-1, 3, -1, -1) if self.rgb and images.shape[1] == 1 else images


class _RGBImages(Dataset):
    """A dataset of uint8 (C, H, W) images with grey ones repeated to three channels (Inception needs RGB)."""

    def __init__(self, images: Dataset) -> None:
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> torch.Tensor:
        image = self.images[index]
        return image.expand(3, -1, -1) if image.shape[0] == 1 else image


def inception_weights(cfg: EvaluateConfig) -> Path:
    """The inception-v3-compat weights file: ``evaluate.inception_weights``, else torch-fidelity's download in
    torch's hub cache (fetched when online). Offline without either is a one-line :class:`UserError`."""
    if cfg.inception_weights is not None:
        path = Path(cfg.inception_weights)
        if not path.is_file():
            raise UserError(f"evaluate.inception_weights: {path} not found")
        try:  # torch-fidelity unpickles the file itself; make sure it holds plain tensors, not code
            torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:
            raise UserError(f"evaluate.inception_weights: {path} is not a plain state dict ({type(e).__name__})") \
                from None
        return path
    cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(URL_INCEPTION_V3).name
    if not cached.is_file():
        try:
            cached.parent.mkdir(parents=True, exist_ok=True)
            torch.hub.download_url_to_file(URL_INCEPTION_V3, str(cached), progress=False)
        except Exception as e:
            raise UserError(f"evaluate.feature_extractor: inception-v3-compat weights are not in {cached.parent} and "
                            f"could not be downloaded ({type(e).__name__}); fetch {URL_INCEPTION_V3} on a machine "
                            f"with network access and set evaluate.inception_weights to the file") from None
    return cached


@dataclass(frozen=True)
class Protocol:
    """A pinned scoring protocol: the same object scores the trained generator and every optimized variant.

    Args:
        cfg: the evaluate stage's params (sample count, reference split, KID settings, latent seed).
        reference: the reference images as a Dataset of uint8 tensors (RGB for Inception).
        weights_path: weights of the feature extractor (the domain network's, or Inception's).
    """

    cfg: EvaluateConfig
    reference: Dataset
    weights_path: Path

    @property
    def rgb(self) -> bool:
        """Whether images go to the extractor as RGB (Inception takes nothing else)."""
        return self.cfg.feature_extractor == INCEPTION_EXTRACTOR

    def images(self, dataset: Dataset) -> Dataset:
        """``dataset`` in the form the extractor takes."""
        return _RGBImages(dataset) if self.rgb else dataset

    def describe(self) -> dict[str, Any]:
        """The protocol as recorded next to every metric."""
        resize = ("torch-fidelity's inception-v3-compat resize to 299x299; grey images repeated to RGB" if self.rgb
                  else "none: generated and reference images are both at the prepared resolution")
        return {
            "feature_extractor": self.cfg.feature_extractor,
            "feature_extractor_sha256": sha256_file(self.weights_path),
            "num_samples": self.cfg.num_samples,
            "reference_split": self.cfg.reference_split,
            "reference_count": len(self.reference),
            "resize": resize,
            "kid_subset_size": self.cfg.kid_subset_size,
            "kid_subsets": self.cfg.kid_subsets,
            "latent_seed": self.cfg.seed,
            "generator": self.cfg.generator,  # the train stage's best (in-loop FID) or last EMA generator
            "torch_fidelity_version": torch_fidelity.__version__,
        }


def make_protocol(cfg: EvaluateConfig, data_dir: str | Path, featurizer_path: str | Path) -> Protocol:
    """Build the protocol, checking that the KID subset fits both sample sets."""
    reference = ImageTensorDataset(load_split(data_dir, cfg.reference_split))
    limit = min(cfg.num_samples, len(reference))
    if cfg.kid_subset_size > limit:
        raise UserError(f"evaluate.kid_subset_size: {cfg.kid_subset_size} exceeds min(num_samples, "
                        f"{cfg.reference_split} split size) = {limit}")
    if cfg.feature_extractor == INCEPTION_EXTRACTOR:
        return Protocol(cfg, _RGBImages(reference), inception_weights(cfg))
    featurizer_path = Path(featurizer_path)
    if not featurizer_path.is_file():
        raise UserError(f"{featurizer_path}: featurizer weights not found; run the featurizer stage first")
    return Protocol(cfg, reference, featurizer_path)


def _common_kwargs(protocol: Protocol) -> dict[str, Any]:
    return dict(
        feature_extractor=INCEPTION_EXTRACTOR if protocol.rgb else DOMAIN_EXTRACTOR,
        feature_extractor_weights_path=str(protocol.weights_path),
        batch_size=protocol.cfg.batch_size,
        rng_seed=protocol.cfg.seed,
        cuda=False,
        cache=False,
        save_cpu_ram=True,  # no DataLoader worker processes: deterministic and lighter on 2 cores
        verbose=False,
    )


def score_generator(generator: nn.Module, z_dim: int, protocol: Protocol) -> dict[str, float]:
    """FID, KID, IS and precision/recall of ``generator`` (z (B, z_dim) -> [-1, 1] images) under ``protocol``."""
    wrapped = GenerativeModelModuleWrapper(UInt8Generator(generator, protocol.rgb), z_dim, "normal", 0)
    raw = torch_fidelity.calculate_metrics(
        input1=wrapped,
        input1_model_num_samples=protocol.cfg.num_samples,
        input2=protocol.reference,
        fid=True, kid=True, isc=True, prc=True,
        kid_subset_size=protocol.cfg.kid_subset_size,
        kid_subsets=protocol.cfg.kid_subsets,
        **_common_kwargs(protocol),
    )
    return {
        "fid": float(raw[torch_fidelity.KEY_METRIC_FID]),
        "kid_mean": float(raw[torch_fidelity.KEY_METRIC_KID_MEAN]),
        "kid_std": float(raw[torch_fidelity.KEY_METRIC_KID_STD]),
        "isc_mean": float(raw[torch_fidelity.KEY_METRIC_ISC_MEAN]),
        "isc_std": float(raw[torch_fidelity.KEY_METRIC_ISC_STD]),
        "precision": float(raw[torch_fidelity.KEY_METRIC_PRECISION]),
        "recall": float(raw[torch_fidelity.KEY_METRIC_RECALL]),
    }


def score_real_floor(data_dir: str | Path, protocol: Protocol) -> dict[str, float]:
    """FID and KID between the two real splits: roughly the best a generator can score with these sample
    counts. KID subsets are capped at the smaller split's size (recorded as ``kid_real_floor_subset_size``)."""
    other = protocol.images(ImageTensorDataset(load_split(data_dir, "test" if protocol.cfg.reference_split == "train"
                                                          else "train")))
    subset = min(protocol.cfg.kid_subset_size, len(other), len(protocol.reference))
    raw = torch_fidelity.calculate_metrics(
        input1=other, input2=protocol.reference, fid=True, kid=True, kid_subset_size=subset,
        kid_subsets=protocol.cfg.kid_subsets, **_common_kwargs(protocol),
    )
    return {"fid_real_floor": float(raw[torch_fidelity.KEY_METRIC_FID]),
            "kid_real_floor": float(raw[torch_fidelity.KEY_METRIC_KID_MEAN]),
            "kid_real_floor_subset_size": subset}
