"""Generator variants. Each is a deterministic transform of float weights described by a :class:`Recipe`, so a
variant is stored as float weights (pruned ones keep their smaller shapes) plus a JSON recipe, and rebuilt
identically wherever it is loaded.

A variant's name joins its steps with ``+``, at most one of each kind, in this order:

- weights: ``pruned`` (structured channel pruning + distillation, done by the optimize stage; the stored
  weights are already pruned, so rebuilding has nothing to do for it);
- numerics: ``fused`` (BatchNorm folded, stride-2 transposed convs in sub-pixel form, channels_last),
  ``direct`` (BatchNorm folded, stride-2 transposed convs, and nearest 2x upsamplings followed by a 3x3 conv
  rewritten as them, run by a C kernel compiled for this machine, each output from its four taps, batch
  innermost: see :mod:`ganforge.runtime.direct`),
  ``int8`` (post-training static quantization), ``bf16`` or ``fp16`` (as ``fused``, with weights and activations
  in that type);
- runtime: ``compiled`` (``torch.compile``) or ``onnxruntime`` (the ONNX export run by ONNX Runtime).

``fp32`` is the plain eager float model, the baseline. Examples: ``pruned+fused``, ``pruned+direct``,
``pruned+bf16+compiled``.
"""

from __future__ import annotations

import copy
import dataclasses
import operator
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn
from torch.ao.quantization import fuse_modules, get_default_qconfig_mapping
from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

from ganforge.config import read_record
from ganforge.errors import UserError
from ganforge.measurement.machine import has_any_flag
from ganforge.runtime.direct import direct
from ganforge.runtime.lowering import is_stride2_upsampling, kernel_tap
from ganforge.runtime.onnx import export_onnx, onnx_session, run_onnx

BASELINE = "fp32"
WEIGHT_STEPS = ("pruned",)
NUMERIC_STEPS = ("fused", "direct", "int8", "bf16", "fp16")
# Forms earlier package formats had; a recipe naming one is refused with the way forward.
REMOVED_STEPS = ("banded", "overlap")
RUNTIME_STEPS = ("compiled", "onnxruntime")
_KINDS = (WEIGHT_STEPS, NUMERIC_STEPS, RUNTIME_STEPS)
_FLOAT_TYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
_NOT_COMBINABLE = {("int8", "compiled"): "torch.compile does not take torch.ao's quantized modules",
                   ("int8", "onnxruntime"): "the ONNX export is of the float model",
                   ("direct", "onnxruntime"): "the ONNX export is of the float model",
                   ("bf16", "onnxruntime"): "the ONNX export is of the float model",
                   ("fp16", "onnxruntime"): "the ONNX export is of the float model"}
_FOLDABLE = (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)
_BATCHNORMS = (nn.BatchNorm1d, nn.BatchNorm2d)


def variant_steps(name: str, label: str = "variant", removed_ok: bool = False) -> tuple[str, ...]:
    """``"pruned+fused"`` -> ("pruned", "fused"); ``"fp32"`` -> (). Unknown, repeated, misordered or
    incompatible steps are a one-line :class:`UserError` naming ``label``, and so is a removed form
    (:data:`REMOVED_STEPS`) unless ``removed_ok``: an old package's name, to be run by ONNX Runtime."""
    if name == BASELINE:
        return ()
    steps = tuple(name.split("+"))
    known = [s for kind in _KINDS for s in kind] + (list(REMOVED_STEPS) if removed_ok else [])
    for step in steps:
        if step in REMOVED_STEPS and not removed_ok:
            raise UserError(f"{label}: {name!r} uses the {step} form, which this version of ganforge no longer "
                            f"has: run it with --runtime onnxruntime, or rebuild the package")
        if step not in known:
            raise UserError(f"{label}: unknown step {step!r} in {name!r} (known: {BASELINE}, {', '.join(known)}, "
                            f"joined with '+')")
    kinds = [next(i for i, kind in enumerate(_KINDS) if step in kind or (step in REMOVED_STEPS and kind is
                                                                         NUMERIC_STEPS)) for step in steps]
    if kinds != sorted(set(kinds)):
        raise UserError(f"{label}: {name!r} must name at most one step of each kind, in the order weights "
                        f"({'|'.join(WEIGHT_STEPS)}), numerics ({'|'.join(NUMERIC_STEPS)}), runtime "
                        f"({'|'.join(RUNTIME_STEPS)})")
    for (a, b), why in _NOT_COMBINABLE.items():
        if a in steps and b in steps:
            raise UserError(f"{label}: {name!r} combines {a} with {b}: {why}")
    return steps


@dataclass(frozen=True)
class Recipe:
    """How to turn float generator weights into a deployable variant.

    Args:
        variant: the variant's name, its steps joined with ``+`` (see the module docstring).
        calibration_seed: seed of the latents fed to int8 observers, 0 to 2**31 - 1.
        calibration_batches: number of calibration batches, 1 to 1024.
        calibration_batch_size: latents per calibration batch, 1 to 65536 (``optimize.batch``'s range).
        quantization_backend: torch.ao backend of the int8 flow.
        prune_ratio: share of channels removed (``pruned`` variants; recorded, already applied to the weights).
        prune_importance: criterion that chose them (``l1`` or ``bn-scale``).
        finetune_kimg: thousands of latents of the distillation fine-tune after pruning.
    """

    SECTION: ClassVar[str] = "recipe"
    TOP_LEVEL: ClassVar[tuple[str, ...]] = ()
    variant: str
    # Bounded because loading an int8 package re-runs the calibration: an edited recipe must not make it
    # allocate (batch size) or loop (batches) without end.
    calibration_seed: int = field(default=0, metadata={"ge": 0, "le": 2**31 - 1})
    calibration_batches: int = field(default=8, metadata={"ge": 1, "le": 1024})
    calibration_batch_size: int = field(default=64, metadata={"ge": 1, "le": 65536})
    quantization_backend: str = "fbgemm"
    prune_ratio: float | None = field(default=None, metadata={"gt": 0.0, "lt": 1.0})
    prune_importance: str | None = field(default=None, metadata={"choices": ("l1", "bn-scale")})
    finetune_kimg: float | None = field(default=None, metadata={"ge": 0.0})

    @property
    def steps(self) -> tuple[str, ...]:
        return variant_steps(self.variant)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Any, source: str = "recipe", removed_ok: bool = False) -> Recipe:
        """The recipe in the JSON object ``d`` read from ``source``; a missing, unknown, mistyped or out-of-range
        key, or a variant that is not one, is a one-line :class:`UserError` naming ``source`` and the key.
        ``removed_ok`` lets a variant of a removed form through (see :func:`variant_steps`): it cannot be built,
        only named beside an ONNX graph."""
        recipe = read_record(cls, d, source)
        variant_steps(recipe.variant, f"{source}: {cls.SECTION}.variant", removed_ok)
        if recipe.quantization_backend not in torch.backends.quantized.supported_engines:
            raise UserError(f"{source}: {cls.SECTION}.quantization_backend: {recipe.quantization_backend!r} is "
                            f"not available (available: {', '.join(torch.backends.quantized.supported_engines)})")
        return recipe


def batchnorm_fold_pairs(module: nn.Module) -> list[list[str]]:
    """Names of (conv|linear, batchnorm) neighbours inside Sequentials, the pairs BN folding can merge."""
    pairs = []
    for name, child in module.named_modules():
        if not isinstance(child, nn.Sequential):
            continue
        kids = list(child.named_children())
        for (n1, m1), (n2, m2) in zip(kids, kids[1:], strict=False):
            if isinstance(m1, _FOLDABLE) and isinstance(m2, _BATCHNORMS):
                prefix = f"{name}." if name else ""
                pairs.append([prefix + n1, prefix + n2])
    return pairs


def fold_batchnorm(generator: nn.Module) -> nn.Module:
    """A copy of ``generator`` with every foldable BatchNorm merged into the preceding layer (eval mode)."""
    folded = copy.deepcopy(generator).eval()
    pairs = batchnorm_fold_pairs(folded)
    # torch.ao's fuser folds BN statistics into conv/linear weights and leaves Identity in the BN's place.
    return fuse_modules(folded, pairs) if pairs else folded


class SubPixelConvTranspose(nn.Module):
    """A ``ConvTranspose2d(kernel_size=4, stride=2, padding=1)`` computed as one 3x3 convolution with four
    times the output channels, one per output phase, followed by ``pixel_shuffle(2)``.

    Output pixel (2i + a, 2j + b) sums input pixels (i + di, j + dj), di, dj in {-1, 0, 1}, through kernel
    tap (a + 1 - 2 di, b + 1 - 2 dj) of the transposed conv; taps outside the 4x4 kernel stay zero. The
    result equals the transposed conv up to float rounding, and CPU kernels run a regular convolution much
    faster than a transposed one with few channels (measured: the seed generator's 16 -> 1 channel output
    layer took 9 of its 21 ms at batch 256).

    Args:
        convt: the transposed convolution to replace (groups 1, dilation 1, no output padding).

    Input (B, C_in, H, W); output (B, C_out, 2H, 2W).
    """

    def __init__(self, convt: nn.ConvTranspose2d) -> None:
        super().__init__()
        assert is_stride2_upsampling(convt), convt
        c_in, c_out = convt.in_channels, convt.out_channels
        weight = convt.weight.detach()  # (C_in, C_out, 4, 4)
        kernel = torch.zeros(c_out * 4, c_in, 3, 3, dtype=weight.dtype)  # phase (a, b) of channel c: c*4 + a*2 + b
        for a in range(2):
            for b in range(2):
                for di in (-1, 0, 1):
                    for dj in (-1, 0, 1):
                        ky, kx = kernel_tap(a, di), kernel_tap(b, dj)
                        if ky is not None and kx is not None:
                            kernel[torch.arange(c_out) * 4 + a * 2 + b, :, di + 1, dj + 1] = weight[:, :, ky, kx].T
        self.conv = nn.Conv2d(c_in, c_out * 4, 3, padding=1, bias=convt.bias is not None)
        self.conv.weight.data.copy_(kernel)
        if convt.bias is not None:
            self.conv.bias.data.copy_(convt.bias.detach().repeat_interleave(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.pixel_shuffle(self.conv(x), 2)  # (B, 4 C_out, H, W) -> (B, C_out, 2H, 2W)


def fuse(generator: nn.Module) -> nn.Module:
    """The ``fused`` form: BatchNorm folded, stride-2 transposed convs in sub-pixel form, channels_last."""
    fused = fold_batchnorm(generator)
    for parent in list(fused.modules()):
        for name, child in list(parent.named_children()):
            if is_stride2_upsampling(child):
                setattr(parent, name, SubPixelConvTranspose(child))
    return fused.to(memory_format=torch.channels_last)


def quantize_int8(generator: nn.Module, z_dim: int, recipe: Recipe) -> nn.Module:
    """Post-training static int8 quantization with torch.ao's FX flow, calibrated on seeded latents.

    The FX flow (rather than PT2E) is used because it quantizes ConvTranspose2d on CPU backends. The matrix
    work (linear layers, convolutions) and the activations between them run in int8; two kinds of op stay in
    float, by measurement: elementwise products (``lite``'s skip-layer gates: torch.ao's quantized broadcast
    multiply took 4 of the 16 ms of an int8 ``lite`` forward at batch 256) and the output Tanh (the images
    leave as float anyway, and dequantizing before it measured faster than a quantized Tanh).
    """
    torch.backends.quantized.engine = recipe.quantization_backend
    folded = fold_batchnorm(generator)
    calibration = torch.Generator().manual_seed(recipe.calibration_seed)
    example = (torch.randn(2, z_dim, generator=calibration),)
    # torch.ao announces its own deprecation in favour of torchao on every call; the flow still works and
    # is the one that handles ConvTranspose2d, so keep the pipeline's output readable.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", module=r"torch\.ao\..*")
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", message=".*(quant_min|quantize_per_tensor|reduce_range).*")
        mapping = (get_default_qconfig_mapping(recipe.quantization_backend)
                   .set_object_type(operator.mul, None).set_object_type(torch.mul, None)
                   .set_object_type(nn.Tanh, None))
        prepared = prepare_fx(folded, mapping, example)
        with torch.no_grad():
            for _ in range(recipe.calibration_batches):
                prepared(torch.randn(recipe.calibration_batch_size, z_dim, generator=calibration))
        return convert_fx(prepared).eval()


class ReducedPrecision(nn.Module):
    """Runs a generator in bf16 or fp16 (weights and activations): z (B, z_dim) float32 -> float32 images."""

    def __init__(self, generator: nn.Module, dtype: torch.dtype) -> None:
        super().__init__()
        self.generator, self.dtype = generator.to(dtype), dtype

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.generator(z.to(self.dtype)).float()


class OnnxRuntimeGenerator(nn.Module):
    """An ONNX Runtime session behind the module interface: z (B, z_dim) -> images (B, C, R, R), float32.

    Args:
        onnx_bytes: the exported model, kept in memory so the module outlives the exported file.
        threads: intra-op threads of the session (0: ONNX Runtime decides).
    """

    def __init__(self, onnx_bytes: bytes, threads: int = 0) -> None:
        super().__init__()
        self.onnx_bytes, self.threads = onnx_bytes, threads
        self.session = onnx_session(onnx_bytes, threads)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return run_onnx(self.session, z)


def reduced_precision_support(step: str) -> str | None:
    """None when this CPU computes ``bf16``/``fp16`` natively (AVX-512 or AMX), else why not: emulated
    reduced precision is slower than fp32, so the optimize stage skips it and says so."""
    wanted = {"bf16": {"avx512_bf16", "amx_bf16"}, "fp16": {"avx512_fp16", "amx_fp16"}}[step]
    present = has_any_flag(wanted)
    if present is None:
        return "CPU flags unreadable (no /proc/cpuinfo)"
    return None if present else f"this CPU has none of {', '.join(sorted(wanted))}"


def build_variant(recipe: Recipe, generator: nn.Module, z_dim: int, runtime: bool = True,
                  threads: int = 0) -> nn.Module:
    """Apply ``recipe`` to float weights (already pruned for ``pruned`` recipes); the input is left untouched.

    With ``runtime=False`` the runtime step (``compiled``/``onnxruntime``) is left out: the eager torch
    module that the package ships and ``generate --runtime torch`` runs.
    """
    steps = recipe.steps
    if "int8" in steps:
        module = quantize_int8(generator, z_dim, recipe)
    elif "fused" in steps:
        module = fuse(generator)
    elif "direct" in steps:
        module = direct(fold_batchnorm(generator))
    elif "bf16" in steps or "fp16" in steps:
        module = ReducedPrecision(fuse(generator), _FLOAT_TYPES["bf16" if "bf16" in steps else "fp16"])
    else:
        module = copy.deepcopy(generator).eval()
    if runtime and "compiled" in steps:
        # Specialised per batch size: a generator runs at a few fixed batch sizes, and once it had seen a second
        # size torch.compile's automatic dynamic shapes made a compiled variant a third slower at batch 256.
        module = torch.compile(module, dynamic=False)
    if runtime and "onnxruntime" in steps:
        with tempfile.TemporaryDirectory(prefix="ganforge-variant-") as tmp:
            path = Path(tmp) / "generator.onnx"
            export_onnx(module, z_dim, path, opset=17)
            module = OnnxRuntimeGenerator(path.read_bytes(), threads)
    return module


def float_layers(module: nn.Module) -> list[str]:
    """Leaf modules of a quantized model that still compute in float, and its float elementwise products
    (reported, never hidden)."""
    names = []
    for name, child in module.named_modules():
        if list(child.children()) or isinstance(child, nn.Identity) or not name:
            continue
        if "quantized" not in type(child).__module__:
            names.append(f"{name} ({type(child).__name__})")
    graph = getattr(module, "graph", None)  # the FX GraphModule that convert_fx returns
    for node in graph.nodes if graph is not None else ():
        if node.op == "call_function" and node.target in (operator.mul, torch.mul):
            names.append(f"{node.name} (multiply)")
    return names
