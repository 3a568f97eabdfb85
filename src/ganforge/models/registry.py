"""Build generators and discriminators by name from a spec; save and load them as JSON + safetensors."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn
from torch.nn.utils import parametrizations

from ganforge.errors import UserError
from ganforge.files import atomic_path, read_json, write_json
from ganforge.models.dcgan import DCGANDiscriminator, DCGANGenerator
from ganforge.models.lite import LiteDiscriminator, LiteGenerator
from ganforge.models.seed import SeedDiscriminator, SeedGenerator

_GENERATORS = {"seed": SeedGenerator, "dcgan": DCGANGenerator, "lite": LiteGenerator}
_DISCRIMINATORS = {"seed": SeedDiscriminator, "dcgan": DCGANDiscriminator, "lite": LiteDiscriminator}
ARCHS = tuple(_GENERATORS)

# The train stage's generators: the last EMA weights, and those with the best in-loop FID.
LAST_GENERATOR = "generator.safetensors"
BEST_GENERATOR = "generator-best.safetensors"


@dataclass(frozen=True)
class GeneratorSpec:
    """Everything needed to rebuild a generator module, stored as JSON beside its weights.

    Args:
        arch: architecture name in the registry.
        z_dim: latent size; inputs are (B, z_dim) standard-normal latents.
        resolution: output side in pixels.
        channels: output channels.
        width: channel multiplier of ``dcgan`` and ``lite``; ``seed`` keeps the article's widths (1.0).
        pruned: channels were removed by structured pruning; each layer's size is read from the weights.
    """

    arch: str
    z_dim: int
    resolution: int
    channels: int
    width: float = 1.0
    pruned: bool = False

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = "spec") -> GeneratorSpec:
        if not isinstance(d, dict):
            raise UserError(f"{source}: expected a JSON object describing the generator")
        names = {f.name for f in dataclasses.fields(cls)}
        missing = names - d.keys() - {"width", "pruned"}  # optional: older specs mean width 1.0, not pruned
        if missing:
            raise UserError(f"{source}: missing generator keys {sorted(missing)}")
        spec = cls(**{k: d[k] for k in names if k in d})
        if spec.arch not in _GENERATORS:
            raise UserError(f"{source}: unknown arch {spec.arch!r} (known: {', '.join(_GENERATORS)})")
        for key in ("z_dim", "resolution", "channels"):
            value = getattr(spec, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise UserError(f"{source}: {key} must be a positive integer, got {value!r}")
        if spec.resolution < 8 or spec.resolution & (spec.resolution - 1):
            raise UserError(f"{source}: resolution must be a power of two >= 8, got {spec.resolution}")
        check_width(spec.arch, spec.width, f"{source}: width")
        if not isinstance(spec.pruned, bool):
            raise UserError(f"{source}: pruned must be true or false, got {spec.pruned!r}")
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
                        spectral_norm: bool = False) -> nn.Module:
    """A freshly initialised discriminator of family ``arch``.

    Args:
        arch: ``seed``, ``dcgan`` or ``lite``.
        resolution: input side in pixels.
        channels: input channels.
        width: channel multiplier (``dcgan`` and ``lite``).
        spectral_norm: wrap every conv and linear weight in spectral normalisation (Miyato et al., 2018) and
            drop D's BatchNorm layers, which spectral norm replaces as the stabiliser.
    """
    kwargs = {} if arch == "seed" else {"width": width}
    discriminator = _DISCRIMINATORS[arch](resolution=resolution, channels=channels, **kwargs)
    return with_spectral_norm(discriminator) if spectral_norm else discriminator


def with_spectral_norm(module: nn.Module) -> nn.Module:
    """Spectral-normalise every conv/linear of ``module`` in place and replace its BatchNorms by Identity."""
    for parent in list(module.modules()):
        for name, child in parent.named_children():
            if isinstance(child, nn.BatchNorm1d | nn.BatchNorm2d):
                setattr(parent, name, nn.Identity())
            elif isinstance(child, nn.Conv2d | nn.Linear):
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
    module = build_generator(spec)
    state = load_weights(weights_path)
    if spec.pruned:
        resize_to_state(module, state)
    load_state(module, state, weights_path)
    return module.eval(), spec


_SIZE_ATTRIBUTES = {  # layer type -> (attribute, axis of the weight that gives it)
    nn.Linear: (("out_features", 0), ("in_features", 1)),
    nn.Conv2d: (("out_channels", 0), ("in_channels", 1)),
    nn.ConvTranspose2d: (("in_channels", 0), ("out_channels", 1)),
}


def resize_to_state(module: nn.Module, state: dict[str, Any]) -> None:
    """Give every parameter and buffer of ``module`` the shape it has in ``state`` (a structurally pruned
    model's weights), and update the layers' size attributes to match. Values are loaded afterwards."""
    for name, tensor in state.items():
        owner_name, _, leaf = name.rpartition(".")
        owner = module.get_submodule(owner_name)
        current = getattr(owner, leaf, None)
        if current is None or current.shape == tensor.shape:
            continue
        if isinstance(current, nn.Parameter):
            setattr(owner, leaf, nn.Parameter(tensor.new_empty(tensor.shape), requires_grad=current.requires_grad))
        else:
            owner.register_buffer(leaf, tensor.new_empty(tensor.shape))
        if leaf == "weight" and type(owner) in _SIZE_ATTRIBUTES:
            grouped = getattr(owner, "groups", 1)  # conv weights hold in/groups (or out/groups) on axis 1
            for attribute, axis in _SIZE_ATTRIBUTES[type(owner)]:
                setattr(owner, attribute, tensor.shape[axis] * (grouped if axis == 1 else 1))
        elif leaf == "weight" and isinstance(owner, nn.modules.batchnorm._BatchNorm):
            owner.num_features = tensor.shape[0]


def load_state(module: nn.Module, state: dict[str, Any], path: str | Path) -> None:
    """``module.load_state_dict(state)``, with a mismatch reported as a one-line error naming the file."""
    try:
        module.load_state_dict(state)
    except RuntimeError as e:
        first = str(e).strip().splitlines()
        raise UserError(f"{path}: weights do not match the architecture ({first[0] if first else e})") from None


def load_weights(path: str | Path) -> dict[str, Any]:
    """Load a safetensors file, refusing anything else (e.g. a pickle) with a one-line error."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: weights file not found")
    try:
        return load_file(str(path))
    except (SafetensorError, ValueError, OSError) as e:
        raise UserError(f"{path}: not a valid safetensors file ({e})") from None
