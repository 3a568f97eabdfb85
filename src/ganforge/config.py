"""Typed, frozen per-stage configs read from ``params.yaml``.

``params.yaml`` has the top-level keys ``seed`` and ``lr`` and one section per stage. Each stage loads its
section (plus the top-level keys it declares in ``TOP_LEVEL``) into a frozen dataclass. pydantic checks the values
against the fields' types and the bounds and choices in their metadata; unknown keys, wrong types and out-of-range
values raise one-line :class:`UserError`s naming the key and the value.

The dataclasses' defaults are the repository's ``params.yaml``, value for value (``tests/test_config.py``
holds them equal), so a config built in code and a stage run on the shipped params are the same recipe.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, TypeVar

import pydantic
import yaml
from pydantic_core import PydanticCustomError

from ganforge.errors import UserError
from ganforge.files import key_label, read_text, shown

_POWERS_OF_TWO = (8, 16, 32, 64, 128, 256)
# Upper bounds far past any real run, so a slip of the exponent (kimg: 2e30) is refused, not run for ever.
_MAX_KIMG = 1e6  # a billion images
_MAX_SAMPLES = 10_000_000
_MAX_REPEATS = 100_000

C = TypeVar("C", bound="StageConfig")

# Top-level keys every params.yaml may carry, with the checks they get wherever a stage reads them.
_TOP_LEVEL_FIELDS: dict[str, dict[str, Any]] = {
    "seed": {"ge": 0, "le": 2**31 - 1},
    "lr": {"gt": 0.0, "le": 1.0},
}


def _param(default: Any, *, ge: float | None = None, gt: float | None = None, le: float | None = None,
           lt: float | None = None, choices: tuple | None = None) -> Any:
    """A dataclass field with range checks carried in its metadata."""
    meta = {k: v for k, v in dict(ge=ge, gt=gt, le=le, lt=lt, choices=choices).items() if v is not None}
    if isinstance(default, tuple):
        return field(default_factory=lambda: default, metadata=meta)
    return field(default=default, metadata=meta)


AUGMENT_POLICIES = ("color", "translation", "cutout")
DOWNLOADABLE_SOURCES = ("cifar10", "mnist", "fashion-mnist")


def parse_augment_policy(policy: str) -> tuple[str, ...]:
    """``"color,translation"`` -> ("color", "translation"); an unknown name is a :class:`UserError`."""
    names = tuple(p.strip() for p in policy.split(",") if p.strip())
    for name in names:
        if name not in AUGMENT_POLICIES:
            raise UserError(f"train.augment: unknown augmentation {shown(name)} in {shown(policy)} "
                            f"(known: {', '.join(AUGMENT_POLICIES)})")
    return names


@dataclass(frozen=True)
class StageConfig:
    """Base of every stage config. ``SECTION`` names the params.yaml section; ``TOP_LEVEL`` the top-level
    keys the stage reads besides its section."""

    SECTION: ClassVar[str] = ""
    TOP_LEVEL: ClassVar[tuple[str, ...]] = ()


@dataclass(frozen=True)
class PrepareConfig(StageConfig):
    """Params of the prepare stage.

    Args:
        seed: base seed; the train/test split and the ``max_images`` subset are functions of it.
        source: ``digits`` (scikit-learn's bundled 8x8 handwritten digits, offline), ``folder`` (a directory
            of images, class subfolders become labels), ``archive`` (.zip/.tar/.tar.gz/.tgz of such a folder),
            ``cifar10`` (the official python-version archive), ``mnist`` or ``fashion-mnist`` (torchvision).
        path: the folder or archive; for ``cifar10`` the ``cifar-10-python.tar.gz`` file; for ``mnist`` /
            ``fashion-mnist`` torchvision's root (holding ``MNIST/raw`` or ``FashionMNIST/raw``). Ignored by
            ``digits``. It is a DVC dependency of the stage, so a changed source reruns prepare.
        download: let torchvision download ``cifar10`` / ``mnist`` / ``fashion-mnist`` when ``path`` lacks them.
        resolution: output side length in pixels, a power of two from 8 to 256.
        channels: ``auto`` keeps the data's channels (1 when every image is grey, else 3); 1 or 3 forces them.
        resize: how non-square images become square before the antialiased resize: ``center-crop`` or ``pad``.
        background: colour under transparent pixels and around padded images: ``black`` or ``white``.
        test_fraction: share of each class held out as the test split (unless the source has its own split).
        max_images: keep at most this many distinct images (a seeded random subset); null keeps all.
        max_bad_fraction: fail when more than this share of the files is unreadable or not an image.
        hflip: add horizontally mirrored copies of the training images.
    """

    SECTION: ClassVar[str] = "prepare"
    TOP_LEVEL: ClassVar[tuple[str, ...]] = ("seed",)
    seed: int = 0
    source: Literal["digits", "folder", "archive", "cifar10", "mnist", "fashion-mnist"] = "digits"
    path: str = "data/raw"
    download: bool = False
    resolution: int = _param(32, choices=_POWERS_OF_TWO)
    channels: Literal["auto", 1, 3] = "auto"
    resize: Literal["center-crop", "pad"] = "center-crop"
    background: Literal["black", "white"] = "black"
    test_fraction: float = _param(0.2, gt=0.0, lt=1.0)
    max_images: int | None = _param(None, ge=1, le=2**40)
    max_bad_fraction: float = _param(0.1, ge=0.0, le=1.0)
    hflip: bool = False

    @property
    def source_path(self) -> str | None:
        """The path the source reads (``path``), or None for the bundled ``digits``."""
        return None if self.source == "digits" else self.path

    def __post_init__(self) -> None:
        if self.download and self.source not in DOWNLOADABLE_SOURCES:
            raise UserError(f"prepare.download: only {', '.join(DOWNLOADABLE_SOURCES)} can be downloaded; "
                            f"prepare.source is {self.source!r} (set download: false)")


@dataclass(frozen=True)
class TrainConfig(StageConfig):
    """Params of the train stage.

    Args:
        seed: base seed for weights, latents and batch order; each rank derives its own from it.
        lr: the generator's Adam learning rate; D's is ``lr * d_lr_ratio`` (TTUR).
        arch: generator/discriminator family: ``seed`` (the article's fc 256-512-1024 + transposed-conv GAN,
            the baseline), ``dcgan`` (Radford et al.) or ``lite`` (nearest-upsample + 3x3 convs with skip-layer
            excitation, built for fast inference and int8).
        width: channel multiplier of ``dcgan`` and ``lite`` (G and D); ``seed`` needs 1.0.
        z_dim: latent size.
        batch_size: real images per D step, summed over all ranks (each rank takes batch_size / nproc).
        kimg: training length in thousands of real images shown to D.
        loss: ``nonsaturating`` (the original GAN loss), ``hinge`` or ``rpgan`` (the relativistic pairing
            loss of R3GAN: each fake is scored against a real).
        r1_gamma: weight of the R1 gradient penalty on reals (Mescheder et al., 2018); 0 turns it off.
        r2_gamma: weight of the R2 gradient penalty on generated images (R3GAN pairs it with R1 at the same
            weight); 0 turns it off.
        r1_interval: lazy regularisation: apply R1 and R2 every this many D steps, scaled up to match.
        d_lr_ratio: D's learning rate as a multiple of ``lr`` (two time-scale update rule).
        lr_schedule: after warm-up, ``constant`` or ``cosine`` decay to zero at ``kimg``.
        warmup_kimg: linear learning-rate warm-up from zero, in kimg.
        beta1, beta2: Adam betas.
        precision: ``fp32``, or ``bf16`` autocast for G and D forward passes (CPU and CUDA).
        channels_last: run G and D in the channels-last memory format.
        d_spectral_norm: spectral-normalise D's weights (and drop its BatchNorms).
        d_batchnorm: keep D's BatchNorm layers; false drops them (R3GAN's D has no normalization layers).
        augment: DiffAugment policy applied to real and fake images before D, a comma-separated subset of
            ``color,translation,cutout``; empty for none.
        ada_target: ADA-style target for E[sign(D(real))]; the augmentation probability p adapts toward it.
            0 turns ADA off (p stays 1 when ``augment`` is set).
        ada_kimg: images (in thousands) for ADA's p to travel from 0 to 1 at full signal.
        ema_kimg: half-life of the generator's exponential moving average, in kimg; 0 turns it off.
            The saved generators (and so every later stage) are the EMA.
        ema_rampup: when above 0, the EMA's half-life is at most this share of the images shown so far, so
            early in a run the average follows G closely (StyleGAN2-ADA uses 0.05); 0 turns the ramp off.
        device: ``auto`` (CUDA when present), ``cpu`` or ``cuda``.
        nproc: processes per node; the stage runs ``python -m ganforge.launch --nproc_per_node=${train.nproc}``
            (torchrun, see :mod:`ganforge.launch`).
        collective_timeout_s: a collective that waits longer than this (a stalled or dead rank) fails
            with an error naming the rank instead of blocking forever.
        log_interval_kimg: how often losses, learning rates, D outputs, gradient norms and speed are logged.
        checkpoint_kimg: how often the full training state is checkpointed (atomically), in kimg. A rerun
            with the same params and data resumes from an unfinished checkpoint.
        snapshot_kimg: how often a sample grid from fixed latents is logged; 0 turns it off.
        fid_interval_kimg: how often the in-loop FID (domain features, ``fid_samples`` images) is measured;
            the best generator by it is kept as ``generator-best``. 0 turns it off.
        fid_samples: generated images per in-loop FID (against at most as many training images).
    """

    SECTION: ClassVar[str] = "train"
    TOP_LEVEL: ClassVar[tuple[str, ...]] = ("seed", "lr")
    seed: int = 0
    lr: float = 0.0002
    arch: Literal["seed", "dcgan", "lite"] = "lite"
    width: float = _param(1.0, gt=0.0, le=16.0)
    z_dim: int = _param(100, ge=1, le=4096)
    batch_size: int = _param(64, ge=2, le=65536)  # BatchNorm needs two samples per batch
    kimg: float = _param(200.0, gt=0.0, le=_MAX_KIMG)
    loss: Literal["nonsaturating", "hinge", "rpgan"] = "rpgan"
    r1_gamma: float = _param(0.05, ge=0.0, le=1e6)
    r2_gamma: float = _param(0.05, ge=0.0, le=1e6)
    r1_interval: int = _param(16, ge=1, le=1_000_000)
    d_lr_ratio: float = _param(1.0, gt=0.0, le=100.0)
    lr_schedule: Literal["constant", "cosine"] = "constant"
    warmup_kimg: float = _param(0.0, ge=0.0, le=_MAX_KIMG)
    beta1: float = _param(0.0, ge=0.0, lt=1.0)
    beta2: float = _param(0.99, ge=0.0, lt=1.0)
    precision: Literal["fp32", "bf16"] = "fp32"
    channels_last: bool = False
    d_spectral_norm: bool = False
    d_batchnorm: bool = False
    augment: str = ""
    ada_target: float = _param(0.0, ge=0.0, lt=1.0)
    ada_kimg: float = _param(100.0, gt=0.0, le=_MAX_KIMG)
    ema_kimg: float = _param(10.0, ge=0.0, le=_MAX_KIMG)
    ema_rampup: float = _param(0.05, ge=0.0, le=1.0)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    nproc: int = _param(1, ge=1, le=1024)
    collective_timeout_s: float = _param(600.0, gt=0.0, le=7 * 86400.0)
    log_interval_kimg: float = _param(2.0, gt=0.0, le=_MAX_KIMG)
    checkpoint_kimg: float = _param(20.0, gt=0.0, le=_MAX_KIMG)
    snapshot_kimg: float = _param(50.0, ge=0.0, le=_MAX_KIMG)
    fid_interval_kimg: float = _param(50.0, ge=0.0, le=_MAX_KIMG)
    fid_samples: int = _param(500, ge=2, le=_MAX_SAMPLES)

    def __post_init__(self) -> None:
        parse_augment_policy(self.augment)
        if self.kimg * 1000 < self.batch_size:
            raise UserError(f"train.kimg: {self.kimg} is less than one batch of {self.batch_size} images")
        if self.arch == "seed" and self.width != 1.0:
            raise UserError(f"train.width: the seed architecture keeps the article's widths; use 1.0, got {self.width}")
        if self.batch_size % self.nproc:
            raise UserError(f"train.batch_size: {self.batch_size} does not split evenly over train.nproc={self.nproc}")
        if self.batch_size // self.nproc < 2:  # each rank's BatchNorm needs two samples
            raise UserError(f"train.batch_size: {self.batch_size} over train.nproc={self.nproc} leaves "
                            f"{self.batch_size // self.nproc} image per process; each needs at least 2")
        if self.ada_target > 0 and not self.augment:
            raise UserError(f"train.ada_target: {self.ada_target} adapts the augmentation probability, but "
                            "train.augment is empty (name the augmentations, or set ada_target: 0)")

    @property
    def augment_policy(self) -> tuple[str, ...]:
        return parse_augment_policy(self.augment)


@dataclass(frozen=True)
class FeaturizerConfig(StageConfig):
    """Params of the featurizer stage: the small domain CNN whose penultimate layer feeds FID.

    Args:
        seed: base seed for weights, batch order and the held-out images.
        epochs: at most this many passes over the prepared training split (less a held-out tenth).
        max_minutes: wall-clock bound on the whole stage, loading and final scoring included; the learning-rate
            schedule ends in time for it, whichever of it and ``epochs`` comes first. null: no bound (the run is
            then independent of the machine's speed).
        patience: stop once the held-out accuracy has not improved for this many evaluations (each 10,000
            images or each epoch, whichever is sooner) made after the learning rate has fallen to half its
            peak; the best weights are then kept. 0: never stop early.
        low_res_share: share of the schedule trained on images at half their side (2x2 means), whose steps
            cost about a quarter; the rest trains at full size. 0: full size throughout.
        batch_size: images per step.
        lr: Adam learning rate of the classifier (independent of the GAN's top-level ``lr``).
        width: channels of the first conv; later convs double it.
        feature_dim: size of the penultimate (feature) layer.
    """

    SECTION: ClassVar[str] = "featurizer"
    TOP_LEVEL: ClassVar[tuple[str, ...]] = ("seed",)
    seed: int = 0
    epochs: int = _param(15, ge=1, le=1000)
    max_minutes: float | None = _param(2.0, gt=0.0, le=10_000.0)
    patience: int = _param(5, ge=0, le=1000)
    low_res_share: float = _param(0.5, ge=0.0, lt=1.0)
    batch_size: int = _param(128, ge=1, le=65536)
    lr: float = _param(0.002, gt=0.0, le=1.0)
    width: int = _param(32, ge=1, le=1024)
    feature_dim: int = _param(64, ge=2, le=4096)


@dataclass(frozen=True)
class ReferenceConfig(StageConfig):
    """Params of the reference stage: which real images, seen through which feature extractor, every
    generator is compared with. Evaluate, optimize and package all score against these statistics.

    Args:
        seed: seed of the subset drawn when ``max_samples`` caps a split.
        feature_extractor: ``domain`` (the featurizer stage's network; offline) or ``inception-v3-compat``
            (the domain network, and torch-fidelity's Inception too, comparable with the literature; its weights
            come from ``inception_weights``, torch's hub cache, the ``[inception]`` extra offline, or a download).
        inception_weights: a local copy of torch-fidelity's ``weights-inception-2015-12-05-6726825d.pth``.
        split: prepared split generated images are compared with; the other split gives the real-vs-real
            floor.
        max_samples: at most this many images per split (a seeded subset); null = the whole split. It bounds the
            reference's cost: Inception's extraction, and precision/recall, whose cost grows with its square.
        batch_size: images per feature-extractor batch.
    """

    SECTION: ClassVar[str] = "reference"
    TOP_LEVEL: ClassVar[tuple[str, ...]] = ("seed",)
    seed: int = 0
    feature_extractor: Literal["domain", "inception-v3-compat"] = "domain"
    inception_weights: str | None = None
    split: Literal["train", "test"] = "train"
    max_samples: int | None = _param(10_000, ge=2, le=_MAX_SAMPLES)
    batch_size: int = _param(250, ge=1, le=65536)

    def __post_init__(self) -> None:
        if self.inception_weights is not None and self.feature_extractor != "inception-v3-compat":
            raise UserError(f"reference.inception_weights: only read by feature_extractor inception-v3-compat; "
                            f"it is {self.feature_extractor!r} (set inception_weights: null)")


@dataclass(frozen=True)
class EvaluateConfig(StageConfig):
    """Params of the evaluate stage; together they pin the metric protocol that optimize reuses.

    Args:
        seed: seed of the generated latents (torch-fidelity's ``rng_seed``).
        num_samples: generated images scored against the reference split in the domain network's features.
        inception_samples: generated images scored in Inception's features, when the reference has them
            (``fid_inception_10k`` for 10,000).
        batch_size: images per generator/feature-extractor batch.
        kid_subset_size: KID subset size; at most ``num_samples`` and the reference statistics' image count.
        kid_subsets: number of KID subsets.
        grid_size: images in the sample grid.
        generator: which of the train stage's generators is scored (and optimized): ``best`` (lowest in-loop
            FID) or ``last``.
        speed_batch: batch at which the scored generator's images/s is measured (batch-1 latency is too).
        speed_repeats: timed repeats of each speed measurement; the median is reported.
        nearest_count: generated images in the nearest-neighbour grid, each beside its closest training
            images in feature space (a memorisation check).
        truncation_psis: latent truncations (normal truncated at ±psi) at which precision and recall are
            reported too: smaller psi trades diversity (recall) for fidelity (precision).
    """

    SECTION: ClassVar[str] = "evaluate"
    TOP_LEVEL: ClassVar[tuple[str, ...]] = ("seed",)
    seed: int = 0
    num_samples: int = _param(2000, ge=2, le=_MAX_SAMPLES)
    inception_samples: int = _param(10_000, ge=2, le=_MAX_SAMPLES)
    batch_size: int = _param(250, ge=1, le=65536)
    kid_subset_size: int = _param(1000, ge=2, le=_MAX_SAMPLES)
    kid_subsets: int = _param(100, ge=1, le=_MAX_REPEATS)
    grid_size: int = _param(64, ge=1, le=1024)
    generator: Literal["best", "last"] = "best"
    speed_batch: int = _param(256, ge=1, le=65536)
    speed_repeats: int = _param(10, ge=1, le=_MAX_REPEATS)
    nearest_count: int = _param(8, ge=1, le=64)
    truncation_psis: tuple[float, ...] = _param((1.0, 0.5), gt=0.0)


@dataclass(frozen=True)
class OptimizeConfig(StageConfig):
    """Params of the optimize stage.

    Args:
        seed: seed of calibration, pruning fine-tune and benchmark latents.
        variants: variants to build and measure, each a name like ``fused`` or ``pruned+bf16+compiled`` (see
            :mod:`ganforge.runtime.variants`); ``fp32`` is always measured as the baseline.
        batch: deployment batch size; the winner is the fastest here.
        speed_batches: batch sizes at which every variant's images/s is measured (``batch`` and 1 are added).
        warmup: untimed calls before timing each variant.
        repeats: timed calls per variant; the median is reported.
        threads: intra-op threads while timing; 0 means all cores. The resolved count is recorded.
        max_fid_increase: quality budget, a variant qualifies if FID <= baseline FID * (1 + this).
        fid_units: the FID the budget is set in. ``domain``: every variant is scored in the domain network's
            features. ``inception`` (needs ``reference.feature_extractor: inception-v3-compat``): variants are
            screened in domain units, then the baseline and the fastest screened variants are scored in
            Inception units (``evaluate.inception_samples``), fastest first, until one meets the budget.
        calibration_batches: batches of latents fed to int8 observers.
        int8_backend: torch.ao quantized engine. ``fbgemm`` is the default because this torch release's
            ``x86`` engine computes quantized ConvTranspose2d wrongly (mean error ~0.58 on [-1, 1] outputs
            against ~0.01 for fbgemm, measured on the seed generator). ``onednn`` quantizes weights per channel
            and runs oneDNN's int8 kernels (VNNI/AMX where the CPU has them): about twice fbgemm's speed on
            ``lite``, but it cannot quantize ConvTranspose2d, so on ``seed`` and ``dcgan`` the int8 variants
            fail to build and are reported as failed.
        prune_ratio: share of the channels torch-pruning removes from every prunable layer group.
        prune_importance: how channels are ranked: ``l1`` (weight magnitude) or ``bn-scale`` (BatchNorm gamma).
        finetune_kimg: thousands of latents of the distillation fine-tune of the pruned generator.
        finetune_lr: Adam learning rate of that fine-tune.
        finetune_batch: latents per fine-tune step.
        adversarial_weight: weight of the trained discriminator's loss next to the L1 distance to the teacher.
    """

    SECTION: ClassVar[str] = "optimize"
    TOP_LEVEL: ClassVar[tuple[str, ...]] = ("seed",)
    seed: int = 0
    variants: tuple[str, ...] = _param(("fp32", "fused", "int8", "bf16", "bf16+compiled", "onnxruntime", "direct",
                                        "direct+compiled", "pruned+fused", "pruned+int8", "pruned+bf16",
                                        "pruned+bf16+compiled", "pruned+onnxruntime", "pruned+direct",
                                        "pruned+direct+compiled"))
    batch: int = _param(256, ge=1, le=65536)
    speed_batches: tuple[int, ...] = _param((1, 64, 256), ge=1, le=65536)
    warmup: int = _param(3, ge=0, le=_MAX_REPEATS)
    repeats: int = _param(30, ge=1, le=_MAX_REPEATS)
    threads: int = _param(0, ge=0, le=1024)
    max_fid_increase: float = _param(0.1, ge=0.0, le=100.0)  # +10000%
    fid_units: Literal["domain", "inception"] = "domain"
    calibration_batches: int = _param(8, ge=1, le=1024)  # the recipe's bound
    int8_backend: Literal["fbgemm", "onednn", "qnnpack", "x86"] = "fbgemm"
    prune_ratio: float = _param(0.8, gt=0.0, lt=1.0)
    prune_importance: Literal["l1", "bn-scale"] = "l1"
    finetune_kimg: float = _param(150.0, ge=0.0, le=_MAX_KIMG)
    finetune_lr: float = _param(2e-3, gt=0.0, le=1.0)
    finetune_batch: int = _param(64, ge=1, le=65536)
    adversarial_weight: float = _param(0.001, ge=0.0)


@dataclass(frozen=True)
class PackageConfig(StageConfig):
    """Params of the package stage.

    Args:
        seed: seed of the sample grid and parity latents.
        onnx_opset: ONNX opset of the export.
        parity_batch: latents used to compare ONNX Runtime with PyTorch.
        parity_max_abs_diff: largest allowed |onnx - torch| in output units ([-1, 1] images).
        parity_max_fid_rel_diff: largest allowed relative gap between the ONNX model's FID (re-scored under
            the evaluate protocol) and the FID the optimize stage measured for the winner.
        grid_size: images in the package's sample grid.
        include_baseline: also package the trained (unoptimized) generator, as ``baseline.*``.
    """

    SECTION: ClassVar[str] = "package"
    TOP_LEVEL: ClassVar[tuple[str, ...]] = ("seed",)
    seed: int = 0
    onnx_opset: int = _param(17, ge=11, le=23)
    parity_batch: int = _param(16, ge=1, le=65536)
    parity_max_abs_diff: float = _param(1e-3, gt=0.0, le=2.0)  # [-1, 1] images
    parity_max_fid_rel_diff: float = _param(0.01, gt=0.0, le=1.0)
    grid_size: int = _param(64, ge=1, le=1024)
    include_baseline: bool = True


STAGE_CONFIGS: dict[str, type[StageConfig]] = {
    cls.SECTION: cls
    for cls in (PrepareConfig, TrainConfig, FeaturizerConfig, ReferenceConfig, EvaluateConfig, OptimizeConfig,
                PackageConfig)
}


class _Yaml12Loader(yaml.SafeLoader):
    """PyYAML's safe loader with YAML 1.2 core-schema scalars, as DVC writes them (``dvc exp run -S lr=3e-5``
    writes ``3e-05``, which YAML 1.1 reads as a string), and duplicate keys refused instead of the last winning.

    PyYAML implements YAML 1.1 only; this swaps its implicit resolvers for the 1.2 ones DVC's reader uses: ``true``/
    ``false`` (not yes/no/on/off), integers and floats with or without a dot or ``_`` separators, no sexagesimals.
    Timestamps stay strings (a folder named ``2024-01-01`` is a path, not a date)."""

    yaml_implicit_resolvers: dict = {}

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        first_line: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *base`: its keys may be overridden here
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                seen = first_line.get(key)
            except TypeError:  # an unhashable key: the base class reports it
                break
            if seen is not None:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {shown(key)} (first at line {seen})", key_node.start_mark)
            first_line[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep=deep)

    def construct_core_int(self, node: yaml.ScalarNode) -> int:
        text = self.construct_scalar(node).replace("_", "")
        sign, digits = (-1, text[1:]) if text.startswith("-") else (1, text.lstrip("+"))
        base = {"0o": 8, "0x": 16, "0b": 2}.get(digits[:2], 10)
        try:
            return sign * int(digits[2:] if base != 10 else digits, base)
        except ValueError:
            problem = f"not an integer: {shown(text)}"
            raise yaml.constructor.ConstructorError(None, None, problem, node.start_mark) from None

    def construct_core_float(self, node: yaml.ScalarNode) -> float:
        text = self.construct_scalar(node).replace("_", "").lower()
        if text.lstrip("+-") == ".inf":
            return -math.inf if text.startswith("-") else math.inf
        try:
            return math.nan if text == ".nan" else float(text)
        except ValueError:
            problem = f"not a number: {shown(text)}"
            raise yaml.constructor.ConstructorError(None, None, problem, node.start_mark) from None


_CORE_SCHEMA = {  # tag -> (pattern, first characters): the YAML 1.2 scalars DVC's reader (ruamel.yaml) resolves
    "tag:yaml.org,2002:bool": (r"true|True|TRUE|false|False|FALSE", "tTfF"),
    "tag:yaml.org,2002:int": (r"[-+]?[0-9][0-9_]*|[-+]?0o[0-7_]+|[-+]?0x[0-9a-fA-F_]+|[-+]?0b[01_]+", "-+0123456789"),
    "tag:yaml.org,2002:float": (r"[-+]?[0-9][0-9_]*\.[0-9_]*([eE][-+]?[0-9]+)?|[-+]?[0-9][0-9_]*[eE][-+]?[0-9]+"
                                r"|[-+]?\.[0-9_]+([eE][-+]?[0-9]+)?|[-+]?\.(inf|Inf|INF)|\.nan|\.NaN|\.NAN",
                                "-+.0123456789"),
    "tag:yaml.org,2002:null": (r"~|null|Null|NULL|", ["~", "n", "N", ""]),
}
for _tag, (_pattern, _first) in _CORE_SCHEMA.items():
    _Yaml12Loader.add_implicit_resolver(_tag, re.compile(f"^(?:{_pattern})$"), list(_first))
_Yaml12Loader.add_implicit_resolver("tag:yaml.org,2002:merge", re.compile(r"^(?:<<)$"), ["<"])  # as DVC reads it
_Yaml12Loader.add_constructor("tag:yaml.org,2002:int", _Yaml12Loader.construct_core_int)
_Yaml12Loader.add_constructor("tag:yaml.org,2002:float", _Yaml12Loader.construct_core_float)


def parse_yaml(text: str, source: str) -> Any:
    """Parse YAML 1.2 text; malformed YAML or a duplicate key is a :class:`UserError` naming ``source`` and
    the line."""
    try:
        return yaml.load(text, Loader=_Yaml12Loader)  # noqa: S506 - a SafeLoader subclass
    except yaml.reader.ReaderError as e:  # a control character: it has a position, not a line
        line = text.count("\n", 0, e.position) + 1 if isinstance(e.position, int) else "unknown"
        character = f"{e.character:#04x}" if isinstance(e.character, int) else shown(e.character)
        raise UserError(f"{source}: malformed YAML at line {line}: {e.reason} (character {character})") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1}" if mark is not None else "unknown line"
        problem = getattr(e, "problem", None) or type(e).__name__
        raise UserError(f"{source}: malformed YAML at {where}: {problem}") from None
    except RecursionError:
        raise UserError(f"{source}: malformed YAML: nested too deeply") from None


def read_params(path: str | Path) -> dict[str, Any]:
    """Read a params file (YAML 1.2) and check its top level: a mapping of known stage sections and top-level
    keys."""
    path = Path(path)
    try:
        text = read_text(path)
    except UserError as e:
        raise UserError(f"{e} (params file)") from None
    params = parse_yaml(text, str(path))
    if params is None:
        params = {}
    if not isinstance(params, dict):
        raise UserError(f"{path}: expected a mapping of sections at the top level, got {type(params).__name__}")
    for key in params:
        if key not in _TOP_LEVEL_FIELDS and key not in STAGE_CONFIGS:
            known = sorted([*_TOP_LEVEL_FIELDS, *STAGE_CONFIGS])
            raise UserError(f"{path}: unknown top-level key {shown(key)} (known: {', '.join(known)})")
    return params


def stage_config(cls: type[C], params: dict[str, Any], source: str | Path = "params.yaml",
                 **overrides: Any) -> C:
    """One stage's config from a params mapping (its section and its top-level keys, then ``overrides``),
    validated; errors name ``source``."""
    section = params.get(cls.SECTION)
    if section is None:
        raise UserError(f"{source}: missing section {cls.SECTION!r}")
    if not isinstance(section, dict):
        raise UserError(f"{source}: {cls.SECTION}: expected a mapping, got {shown(section)}")
    values = {name: params[name] for name in cls.TOP_LEVEL if name in params}
    for key, value in section.items():
        if key in cls.TOP_LEVEL:
            raise UserError(f"{source}: {cls.SECTION}.{key}: {key!r} is a top-level key; set it there")
        values[key] = value
    return config_from_dict(cls, values | overrides, source=str(source))


def load_stage_config(cls: type[C], path: str | Path = "params.yaml") -> C:
    """Load and validate one stage's config from a params file."""
    return stage_config(cls, read_params(path), path)


def read_record(cls: type[C], d: Any, source: str) -> C:
    """The frozen dataclass ``cls`` from the JSON object ``d`` read from ``source``, with the checks params.yaml
    gets (:func:`ganforge.config.config_from_dict`: types, and the ranges and choices in each field's metadata).

    ``cls`` names itself in the error line by its ``SECTION``. A missing required key, an unknown key, a wrong
    type or an out-of-range value is a one-line :class:`UserError` like
    ``config.json: generator.z_dim: expected a value <= 4096, got 1000000000000``.
    """
    if not isinstance(d, dict):
        raise UserError(f"{source}: {cls.SECTION}: expected a JSON object, got {shown(d)}")
    return config_from_dict(cls, d, source)


def config_from_dict(cls: type[C], values: dict[str, Any], source: str = "params") -> C:
    """Build a config from a flat dict of section keys and top-level keys, every value validated by pydantic
    against the field's type and the ranges and choices in its metadata; the first problem is a one-line
    :class:`UserError` naming ``source``, the key and the value."""
    try:
        checked = _validator(cls).model_validate(values)
    except pydantic.ValidationError as e:
        raise UserError(_error_line(cls, source, e.errors()[0])) from None
    return cls(**{key: getattr(checked, key) for key in values})


def config_to_dict(cfg: StageConfig) -> dict[str, Any]:
    """The resolved config as a JSON-able dict (tuples become lists)."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(cfg).items()}


_STRICT = pydantic.ConfigDict(strict=True, extra="forbid", arbitrary_types_allowed=False)
_BOUNDS = {"greater_than_equal": ("ge", ">="), "greater_than": ("gt", ">"), "less_than_equal": ("le", "<="),
           "less_than": ("lt", "<")}
_EXPECTED = {"int_type": "an integer", "float_type": "a number", "bool_type": "true or false",
             "string_type": "a string", "tuple_type": "a list"}


@functools.cache
def _validator(cls: type) -> type[pydantic.BaseModel]:
    """The pydantic model that checks ``cls``'s fields: strict types (no ``"64"`` for 64, no ``true`` for 1), the
    bounds and choices of each field's metadata (or of the top-level key it is), and no unknown keys."""
    hints = typing.get_type_hints(cls)
    fields = {}
    for f in dataclasses.fields(cls):
        default = (f.default if f.default is not dataclasses.MISSING else
                   f.default_factory() if f.default_factory is not dataclasses.MISSING else ...)
        meta = dict(f.metadata) or _TOP_LEVEL_FIELDS.get(f.name, {})
        fields[f.name] = (_checked_type(hints[f.name], meta), default)
    return pydantic.create_model(f"{cls.__name__}Values", __config__=_STRICT, **fields)


def _checked_type(hint: Any, meta: dict[str, Any]) -> Any:
    """``hint`` annotated with the pydantic checks it gets."""
    origin = typing.get_origin(hint)
    if origin is Literal:
        return Annotated[hint, pydantic.BeforeValidator(functools.partial(_exact_choice, typing.get_args(hint)))]
    if origin is tuple:
        item = _checked_type(typing.get_args(hint)[0], meta)
        return Annotated[tuple[item, ...], pydantic.BeforeValidator(_as_tuple),
                         pydantic.AfterValidator(_no_duplicates)]
    if origin in (types.UnionType, typing.Union):
        (inner,) = [a for a in typing.get_args(hint) if a is not type(None)]
        return _checked_type(inner, meta) | None
    bounds = pydantic.Field(**{k: v for k, v in meta.items() if k in ("ge", "gt", "le", "lt")})
    checks: list[Any] = [bounds]
    if hint is int:
        checks.insert(0, pydantic.BeforeValidator(_int_from_float))
    elif hint is float:
        checks.insert(0, pydantic.BeforeValidator(_finite_float))
    elif hint is str:
        checks.append(pydantic.AfterValidator(_no_nul))
    if "choices" in meta:
        checks.append(pydantic.AfterValidator(functools.partial(_one_of, meta["choices"])))
    return Annotated[hint, *checks]


def _problem(text: str) -> PydanticCustomError:
    return PydanticCustomError("ganforge", "{problem}", {"problem": text})


def _exact_choice(allowed: tuple, value: Any) -> Any:
    if not any(value == a and type(value) is type(a) for a in allowed):  # 1.0 or True is not the choice 1
        raise _problem(f"expected one of {', '.join(map(repr, allowed))}, got {shown(value)}")
    return value


def _one_of(choices: tuple, value: Any) -> Any:
    if value not in choices:
        raise _problem(f"expected one of {', '.join(map(str, choices))}, got {shown(value)}")
    return value


def _as_tuple(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value


def _no_duplicates(items: tuple) -> tuple:
    if len(set(items)) != len(items):
        raise _problem(f"duplicate entries in {shown(list(items))}")
    return items


def _int_from_float(value: Any) -> Any:
    """1e3 as YAML 1.2 writes it is the integer 1000; 2.5 stays a float and is refused."""
    return int(value) if isinstance(value, float) and math.isfinite(value) and value.is_integer() else value


def _finite_float(value: Any) -> Any:
    """An integer as a float; inf, nan and integers past a float's range refused."""
    if isinstance(value, int) and not isinstance(value, bool):
        try:
            value = float(value)
        except OverflowError:
            raise _problem(f"expected a finite number, got {shown(value)}") from None
    if isinstance(value, float) and not math.isfinite(value):
        raise _problem(f"expected a finite number, got {shown(value)}")
    return value


def _no_nul(value: str) -> str:
    if "\0" in value:  # no path or name can hold one
        raise _problem(f"a NUL character is not allowed, got {shown(value)}")
    return value


def _error_line(cls: type, source: str, error: Any) -> str:
    """pydantic's first error as the one line users read: ``params.yaml: train.kimg: expected a value > 0.0, got
    -1.0``."""
    key, *items = error["loc"]
    label = key if key in cls.TOP_LEVEL else f"{cls.SECTION}.{key_label(key)}"
    label += "".join(f"[{i}]" for i in items)
    kind, value = error["type"], error.get("input")
    if kind == "extra_forbidden":
        section_keys = sorted(f.name for f in dataclasses.fields(cls) if f.name not in cls.TOP_LEVEL)
        problem = f"unknown key (known: {', '.join(section_keys)})"
    elif kind == "missing":
        problem = "missing"
    elif kind == "ganforge":
        problem = error["ctx"]["problem"]
    elif kind in _BOUNDS:
        name, sign = _BOUNDS[kind]
        bound = error["ctx"][name]
        shown_value = float(value) if isinstance(bound, float) and isinstance(value, int) else value
        problem = f"expected a value {sign} {bound}, got {shown(shown_value)}"
    else:
        problem = f"expected {_EXPECTED.get(kind, error['msg'].lower())}, got {shown(value)}"
    return f"{source}: {label}: {problem}"
