"""Build generators and discriminators by name from a spec; save and load them as JSON + safetensors."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn
from torch.nn.utils import parametrizations

from ganforge.config import read_record
from ganforge.contracts import BEST_GENERATOR, LAST_GENERATOR
from ganforge.errors import UserError
from ganforge.files import atomic_path, read_json, write_json
from ganforge.models.dcgan import DCGANDiscriminator, DCGANGenerator
from ganforge.models.lite import LiteDiscriminator, LiteGenerator
from ganforge.models.seed import SeedDiscriminator, SeedGenerator

_GENERATORS = {"seed": SeedGenerator, "dcgan": DCGANGenerator, "lite": LiteGenerator}
_DISCRIMINATORS = {"seed": SeedDiscriminator, "dcgan": DCGANDiscriminator, "lite": LiteDiscriminator}
ARCHS = tuple(_GENERATORS)
RESOLUTIONS = (8, 16, 32, 64, 128, 256)  # what the prepare stage writes, and the largest side `lite` builds
MAX_Z_DIM = 4096  # train.z_dim's bound


@dataclass(frozen=True)
class GeneratorSpec:
    """Everything needed to rebuild a generator module, stored as JSON beside its weights.

    Args:
        arch: architecture name in the registry.
        z_dim: latent size, 1 to 4096; inputs are (B, z_dim) standard-normal latents.
        resolution: output side in pixels, a power of two from 8 to 256.
        channels: output channels, 1 or 3.
        width: channel multiplier of ``dcgan`` and ``lite``, in (0, 16]; ``seed`` keeps the article's widths (1.0).
        pruned: channels were removed by structured pruning; each layer's size is read from the weights.
    """

    SECTION: ClassVar[str] = "generator"
    TOP_LEVEL: ClassVar[tuple[str, ...]] = ()
    arch: str = field(metadata={"choices": ARCHS})
    z_dim: int = field(metadata={"ge": 1, "le": MAX_Z_DIM})
    resolution: int = field(metadata={"choices": RESOLUTIONS})
    channels: int = field(metadata={"choices": (1, 3)})
    width: float = field(default=1.0, metadata={"gt": 0.0, "le": 16.0})
    pruned: bool = False  # optional, like width: older specs mean not pruned

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Any, source: str = "spec") -> GeneratorSpec:
        """The spec in the JSON object ``d`` read from ``source``; anything else is a one-line :class:`UserError`
        naming ``source`` and the key (see :func:`read_record`)."""
        spec = read_record(cls, d, source)
        check_width(spec.arch, spec.width, f"{source}: {cls.SECTION}.width")
        return spec


def check_width(arch: str, width: Any, label: str) -> None:
    """``width`` must be a positive number, and exactly 1.0 for ``seed`` (the article fixes its widths)."""
    if isinstance(width, bool) or not isinstance(width, int | float) or not 0 < width <= 16:
        raise UserError(f"{label}: expected a number in (0, 16], got {width!r}")
    if arch == "seed" and width != 1.0:
        raise UserError(f"{label}: the seed architecture keeps the article's widths; use 1.0, got {width!r}")


def build_generator(spec: GeneratorSpec) -> nn.Module:
    """A freshly initialised generator for ``spec``."""
    kwargs = {} if spec.arch == "seed" else {"width": spec.width}
    return _GENERATORS[spec.arch](z_dim=spec.z_dim, resolution=spec.resolution, channels=spec.channels, **kwargs)


def build_discriminator(arch: str, resolution: int, channels: int, width: float = 1.0,
                        spectral_norm: bool = False, batchnorm: bool = True) -> nn.Module:
    """A freshly initialised discriminator of family ``arch``.

    Args:
        arch: ``seed``, ``dcgan`` or ``lite``.
        resolution: input side in pixels.
        channels: input channels.
        width: channel multiplier (``dcgan`` and ``lite``).
        spectral_norm: wrap every conv and linear weight in spectral normalisation (Miyato et al., 2018) and
            drop D's BatchNorm layers, which spectral norm replaces as the stabiliser.
        batchnorm: keep D's BatchNorm layers; without them (as in R3GAN) each real and fake is judged on its
            own, not through batch statistics, and R1/R2 are what keep D in check.
    """
    kwargs = {} if arch == "seed" else {"width": width}
    discriminator = _DISCRIMINATORS[arch](resolution=resolution, channels=channels, **kwargs)
    if spectral_norm or not batchnorm:
        without_batchnorm(discriminator)
    return with_spectral_norm(discriminator) if spectral_norm else discriminator


def without_batchnorm(module: nn.Module) -> nn.Module:
    """Replace every BatchNorm of ``module`` by Identity, in place."""
    for parent in list(module.modules()):
        for name, child in parent.named_children():
            if isinstance(child, nn.BatchNorm1d | nn.BatchNorm2d):
                setattr(parent, name, nn.Identity())
    return module


def with_spectral_norm(module: nn.Module) -> nn.Module:
    """Spectral-normalise every conv/linear of ``module`` in place and replace its BatchNorms by Identity."""
    for parent in list(without_batchnorm(module).modules()):
        for name, child in parent.named_children():
            if isinstance(child, nn.Conv2d | nn.Linear):
                setattr(parent, name, parametrizations.spectral_norm(child))
    return module


def trained_generator_path(train_dir: str | Path, which: str) -> Path:
    """The train stage's ``best`` or ``last`` generator in ``train_dir``; a missing one is a one-line error."""
    path = Path(train_dir) / (BEST_GENERATOR if which == "best" else LAST_GENERATOR)
    if not path.is_file():
        hint = " (the in-loop FID was off: set train.fid_interval_kimg or use last)" if which == "best" else ""
        raise UserError(f"{path}: the {which} generator is missing{hint}")
    return path


def save_weights(module: nn.Module, path: str | Path, metadata: dict[str, Any] | None = None) -> None:
    """Write the module's state dict as safetensors, atomically; ``metadata`` is stored as JSON strings."""
    state = {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
    with atomic_path(path) as tmp:
        save_file(state, str(tmp), metadata={k: json.dumps(v) for k, v in (metadata or {}).items()})


def save_generator(module: nn.Module, spec: GeneratorSpec, weights_path: str | Path) -> None:
    """Write ``<weights_path>`` (safetensors) and the spec beside it as ``<stem>.json``, atomically."""
    weights_path = Path(weights_path)
    save_weights(module, weights_path, {"spec": spec.to_dict()})
    write_json(weights_path.with_suffix(".json"), spec.to_dict())


def load_generator(weights_path: str | Path) -> tuple[nn.Module, GeneratorSpec]:
    """Rebuild a generator from ``<stem>.json`` and load ``<weights_path>``; returns (module in eval mode, spec)."""
    weights_path = Path(weights_path)
    spec_path = weights_path.with_suffix(".json")
    spec = GeneratorSpec.from_dict(read_json(spec_path), source=str(spec_path))
    return generator_from_weights(spec, weights_path), spec


def generator_from_weights(spec: GeneratorSpec, weights_path: str | Path) -> nn.Module:
    """``spec``'s generator holding the weights in the safetensors file ``weights_path``, in eval mode.

    The module is built on the meta device and takes the file's tensors in place, so nothing is allocated beyond
    what the file holds, whatever size a (possibly edited) spec describes. A pruned spec takes each layer's size
    from the file. One latent is run through it, so weights that do not fit together are a one-line
    :class:`UserError` naming the file here, not a traceback at the first batch.
    """
    state = load_weights(weights_path)
    with torch.device("meta"):
        module = build_generator(spec)
    if spec.pruned:
        resize_to_state(module, state)
    load_state(module, state, weights_path, assign=True)
    module.eval()
    try:
        with torch.inference_mode():
            images = module(torch.zeros(1, spec.z_dim))  # (1, C, R, R)
    except (RuntimeError, ValueError, IndexError) as e:  # what torch's layers raise for sizes that do not fit
        raise UserError(f"{weights_path}: the layers' sizes do not fit together ({_first_line(e)})") from None
    expected = (1, spec.channels, spec.resolution, spec.resolution)
    if tuple(images.shape) != expected:
        raise UserError(f"{weights_path}: makes images of shape {tuple(images.shape)[1:]} where the spec says "
                        f"{expected[1:]}")
    return module


_SIZE_ATTRIBUTES = {  # layer type -> (attribute, axis of the weight that gives it)
    nn.Linear: (("out_features", 0), ("in_features", 1)),
    nn.Conv2d: (("out_channels", 0), ("in_channels", 1)),
    nn.ConvTranspose2d: (("in_channels", 0), ("out_channels", 1)),
}


def resize_to_state(module: nn.Module, state: Mapping[str, torch.Tensor]) -> None:
    """Give every parameter and buffer of ``module`` the shape it has in ``state`` (a structurally pruned
    model's weights), and update the layers' size attributes to match. Values are loaded afterwards.

    New tensors stay on the module's device (the meta device allocates nothing). Names the module does not
    have, and tensors of another rank, are left for :func:`load_state` to report.
    """
    for name, tensor in state.items():
        owner_name, _, leaf = name.rpartition(".")
        try:
            owner = module.get_submodule(owner_name)
        except AttributeError:
            continue
        current = getattr(owner, leaf, None)
        if not isinstance(current, torch.Tensor) or current.shape == tensor.shape or current.ndim != tensor.ndim:
            continue
        resized = torch.empty(tensor.shape, dtype=current.dtype, device=current.device)
        if isinstance(current, nn.Parameter):
            setattr(owner, leaf, nn.Parameter(resized, requires_grad=current.requires_grad))
        elif leaf in owner._buffers:
            owner.register_buffer(leaf, resized)
        else:
            continue
        if leaf == "weight" and type(owner) in _SIZE_ATTRIBUTES:
            grouped = getattr(owner, "groups", 1)  # conv weights hold in/groups (or out/groups) on axis 1
            for attribute, axis in _SIZE_ATTRIBUTES[type(owner)]:
                setattr(owner, attribute, tensor.shape[axis] * (grouped if axis == 1 else 1))
        elif leaf == "weight" and isinstance(owner, nn.modules.batchnorm._BatchNorm):
            owner.num_features = tensor.shape[0]


def load_state(module: nn.Module, state: Any, path: str | Path, assign: bool = False) -> None:
    """``module.load_state_dict(state)``, with a mismatch reported as a one-line error naming the file.

    With ``assign`` the module's tensors (meta placeholders, say) are replaced by ``state``'s own, which must
    then have the module's dtypes too.
    """
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UserError(f"{path}: weights do not match the architecture (expected a mapping of names to tensors)")
    if assign:
        expected = module.state_dict()
        for name, tensor in state.items():
            if name in expected and tensor.dtype != expected[name].dtype:
                raise UserError(f"{path}: tensor {name!r} is {tensor.dtype}, the architecture needs "
                                f"{expected[name].dtype}")
    try:
        module.load_state_dict(state, assign=assign)
    except RuntimeError as e:
        raise UserError(f"{path}: weights do not match the architecture ({_first_line(e)})") from None


def load_weights(path: str | Path) -> dict[str, Any]:
    """Load a safetensors file, refusing anything else (e.g. a pickle) with a one-line error. safetensors checks
    the header against the file's size, so the tensors never take more memory than the file; non-finite
    values (NaN or infinite weights are never trained ones) are refused too."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{path}: is a directory, expected a weights file")
    if not path.is_file():
        raise UserError(f"{path}: weights file not found")
    try:
        state = load_file(str(path))
    except (SafetensorError, ValueError, OSError) as e:
        raise UserError(f"{path}: not a valid safetensors file ({_first_line(e)})") from None
    for name, tensor in state.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise UserError(f"{path}: tensor {name!r} holds NaN or infinite values")
    return state


def _first_line(e: Exception) -> str:
    lines = str(e).strip().splitlines()
    return lines[0] if lines else type(e).__name__
