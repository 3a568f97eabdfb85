"""The ``direct`` form: each stride-2 transposed convolution run by a small C kernel (``direct.c``) that ganforge
compiles for the machine it runs on, computing every output pixel directly from its four kernel taps with the
batch innermost.

A matrix multiply over all kernel taps would write 16 tap values per output channel and input pixel (four times
the layer's output) for an overlap-add to read back; at the few channels of a generator's upsampling layers it
has a short inner dimension (16 to 64) and the tap planes are several MiB, so it waits on memory. The kernel
instead keeps a block of output channels by batch vectors in registers (a layer with few output channels, 2 x 2
output pixels), multiplies each input vector it loads into the whole block, and writes each output once. The
same library changes the layout into and out of the chain, a tile of 16 x 16 (8 x 8 on AVX2) at a time, where it
must: the way in is skipped when the chain's input is already stored batch innermost, as the form's fully
connected layers (:class:`BatchInnermostLinear`) leave it, and when the batch is whole vectors the way out is too:
the chain returns a batch-innermost view, the elementwise layers between chains (``lite``'s skip-layer gates)
keep it, and :class:`BatchMajorImages` makes the generator's images batch-major with one transpose at the end.

The kernel is compiled per layer shape with the C compiler in ``$CC`` (default ``cc``; GCC or Clang), ``-O3
-march=native -fopenmp`` (``$GANFORGE_KERNEL_MARCH`` names another target, for example ``x86-64-v3`` for AVX2
without AVX-512) and ``$LDFLAGS``, and cached under ``$XDG_CACHE_HOME/ganforge/kernels`` (default ``~/.cache``)
by a hash of its source, shape, compiler and CPU. OpenMP runs it on torch's thread count. Built by GCC, the
shared library names the same ``libgomp.so.1`` that torch loads, so both share one thread pool; Clang links
LLVM's ``libomp`` (its folder in ``LDFLAGS`` when the compiler does not find it), a second pool, whose idle
threads spin for ``KMP_BLOCKTIME`` ms (0 keeps them off the cores torch uses next). The link refuses undefined
symbols, so a compiler without an OpenMP runtime fails at build time, not at the first call. Without a compiler
the form fails to build with a one-line error, which the optimize stage reports in its table before going on with
the other variants; a package whose winner is ``direct`` still runs without one under ``--runtime onnxruntime``.

torch's extension tooling (``torch.utils.cpp_extension``) would build the same kernel as a C++ extension
against torch's headers; ``benchmarks/direct_kernel.py`` measures that build beside this one (seconds against a
fraction of one, per layer shape), so the plain C build stays.
"""

from __future__ import annotations

import copy
import ctypes
import functools
import hashlib
import math
import os
import shlex
import shutil
import subprocess
from collections.abc import Callable
from importlib import resources
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ganforge.errors import UserError
from ganforge.measurement.machine import cpu_identity
from ganforge.runtime.lowering import (
    Layers,
    in_place_activation,
    kernel_tap,
    lower_upsampling_runs,
    rewrite_upsampled_convs,
)

# (batch images per vector, accumulators per register block) by the target's registers: 32 of 16 floats with
# AVX-512; 16 of 8 floats with AVX2 alone. On an x86-64-v3 build of `seed`, 8 lanes ran about 4x faster than 16
# (whose vectors take two registers each); 8, 12 and 16 accumulators measured within noise of each other.
WIDE, NARROW = (16, 16), (8, 12)
_SPATIAL_MAX_CHANNELS, _SPATIAL_PIXELS = 4, 4  # layers this narrow get 2 x 2 pixel blocks
_FLAGS = ("-O3", "-fopenmp", "-shared", "-fPIC", "-std=gnu11", "-Wl,-z,defs")  # defs: unresolved is an error
MARCH_ENV = "GANFORGE_KERNEL_MARCH"  # the target the kernel is compiled for; default native
_ACTIVATIONS = {nn.ReLU: 1, nn.LeakyReLU: 2}  # done inside the kernel; others (tanh, sigmoid) after it


def register_block(c_out: int, accumulators: int = WIDE[1]) -> tuple[int, int, bool]:
    """(output channels, batch vectors, spatial) per register block, about ``accumulators`` in all.

    Up to that many channels, split evenly over as few blocks as cover ``c_out``, at one output pixel; a layer
    with at most 4 output channels (an RGB or grey last layer) is spatial, with blocks of 2 x 2 output pixels
    that share every input vector loaded (see ``direct.c``). The batch vectors make up the rest."""
    blocks = math.ceil(c_out / accumulators)
    c_block = math.ceil(c_out / blocks)
    pixels = _SPATIAL_PIXELS if c_out <= _SPATIAL_MAX_CHANNELS else 1
    return c_block, max(1, accumulators // (c_block * pixels)), pixels > 1


def padded_channels(c_out: int, accumulators: int = WIDE[1]) -> int:
    """``c_out`` rounded up to whole register blocks: the packed weights' and bias's length (the padding is zero)."""
    c_block = register_block(c_out, accumulators)[0]
    return math.ceil(c_out / c_block) * c_block


def _first_error(stderr: str) -> str:
    """The compiler's first line that names an error (else all it said): the one line a failure is reported in."""
    return next((line for line in stderr.splitlines() if "error" in line), stderr.strip())


def _build_error(compiler: str, stderr: str) -> UserError:
    first = _first_error(stderr)
    if "__kmpc_" in stderr or "-lomp" in stderr or "libomp" in stderr:  # Clang's OpenMP calls, no runtime found
        return UserError(f"direct: {compiler} found no OpenMP runtime to link the kernel with (install LLVM's "
                         f"libomp and name its folder in LDFLAGS, as -L<dir> -Wl,-rpath,<dir>, or set CC=gcc): {first}")
    return UserError(f"direct: {compiler} failed to build the kernel: {first}")


@functools.cache
def _target_has_avx512(compiler: str, march: str) -> bool:
    """Whether ``compiler -march=march`` targets AVX-512, from the macros it predefines."""
    _compiler_version(compiler)  # a missing compiler is a one-line error
    done = subprocess.run([compiler, f"-march={march}", "-dM", "-E", "-x", "c", os.devnull], capture_output=True,
                          text=True)
    if done.returncode != 0:
        raise UserError(f"direct: {compiler} cannot target -march={march}: {_first_error(done.stderr)}")
    return "#define __AVX512F__ 1" in done.stdout


def kernel_target() -> tuple[str, str, tuple[int, int]]:
    """(compiler, -march target, (lanes, accumulators)) that kernels are built for now: ``$CC`` (default ``cc``)
    and ``$GANFORGE_KERNEL_MARCH`` (default ``native``)."""
    compiler = os.environ.get("CC", "cc")
    march = os.environ.get(MARCH_ENV) or "native"
    return compiler, march, WIDE if _target_has_avx512(compiler, march) else NARROW


def pack_weight(weight: torch.Tensor, c_out_padded: int) -> torch.Tensor:
    """A ConvTranspose2d weight (C_in, C_out, 4, 4) as the kernel reads it: [a][a'][s][s'][C_in][C_out_padded],
    the taps that carry input offset ``s`` (0: none, 1: towards phase ``a``'s side) into output phase ``a``."""
    c_in, c_out = weight.shape[:2]
    packed = weight.new_zeros(2, 2, 2, 2, c_in, c_out_padded)
    for a in (0, 1):
        for a2 in (0, 1):
            for s in (0, 1):
                for s2 in (0, 1):
                    ky = kernel_tap(a, s * (2 * a - 1))
                    kx = kernel_tap(a2, s2 * (2 * a2 - 1))
                    packed[a, a2, s, s2, :, :c_out] = weight[:, :, ky, kx]
    return packed.contiguous()


def _cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "ganforge" / "kernels"


@functools.cache
def _compiler_version(compiler: str) -> str:
    if shutil.which(compiler) is None:
        raise UserError(f"direct: no C compiler '{compiler}' on PATH to build the kernel (set CC to one)")
    return subprocess.run([compiler, "--version"], capture_output=True, text=True, check=True).stdout


def kernel_defines(c_in: int, c_out: int) -> dict[str, int]:
    """The macros ``direct.c`` is compiled with for one layer shape on the current target."""
    lanes, accumulators = kernel_target()[2]
    c_block, n_block, spatial = register_block(c_out, accumulators)
    return {"C_IN": c_in, "C_OUT": c_out, "C_BLOCK": c_block, "N_BLOCK": n_block,
            "C_OUT_PADDED": padded_channels(c_out, accumulators), "SPATIAL": int(spatial), "LANES": lanes}


def compile_kernel(c_in: int, c_out: int) -> Path:
    """The shared library of the kernel for one layer shape, compiled once per machine and compiler and cached.
    Raises :class:`UserError`, in one line, when there is no compiler, it fails, or the cache is unwritable."""
    compiler, march, _ = kernel_target()
    defines = kernel_defines(c_in, c_out)
    source = resources.files("ganforge.runtime").joinpath("direct.c").read_text()
    command = [compiler, f"-march={march}", *_FLAGS, *(f"-D{name}={value}" for name, value in defines.items()),
               *shlex.split(os.environ.get("LDFLAGS", ""))]
    # -march=native code built on one CPU can crash another that shares the cache (a cluster's shared home).
    identity = [source, *command, _compiler_version(compiler), cpu_identity()]
    key = hashlib.sha256("\n".join(identity).encode()).hexdigest()[:16]
    library = _cache_dir() / f"direct-{c_in}x{c_out}-{key}.so"
    if library.exists():
        return library
    partial = library.with_suffix(f".{os.getpid()}.tmp")
    c_file = library.with_suffix(f".{os.getpid()}.c")
    try:
        library.parent.mkdir(parents=True, exist_ok=True)
        c_file.write_text(source)
    except OSError as error:
        raise UserError(f"direct: cannot write the kernel cache {library.parent}: {error.strerror}") from error
    try:
        built = subprocess.run([*command, str(c_file), "-o", str(partial)], capture_output=True, text=True)
        if built.returncode != 0:
            raise _build_error(compiler, built.stderr)
        os.replace(partial, library)  # atomic: a concurrent build or reader never sees half a library
    finally:
        c_file.unlink(missing_ok=True)
        partial.unlink(missing_ok=True)
    return library


@functools.cache
def _kernel(library: str) -> Callable[..., None]:
    function = ctypes.CDLL(library).transposed_conv
    function.restype = None
    function.argtypes = [ctypes.c_void_p] * 4 + [ctypes.c_int64] * 3 + [ctypes.c_int, ctypes.c_float, ctypes.c_int]
    return function


@functools.cache
def _transpose(library: str) -> Callable[..., None]:
    function = ctypes.CDLL(library).transpose
    function.restype = None
    function.argtypes = [ctypes.c_void_p] * 2 + [ctypes.c_int64] * 5 + [ctypes.c_int]
    return function


# The kernel's three calls are torch.library custom ops, so torch.compile and torch.export see each as one opaque
# op of known output shape (the fake implementations) instead of failing on ctypes calls.
@torch.library.custom_op("ganforge::direct_to_batch_innermost", mutates_args=())
def _to_batch_innermost_op(x: torch.Tensor, library: str, padded: int) -> torch.Tensor:
    """(B, C, H, W) float32 -> (C, H, W, padded), the images past B zeros."""
    x = x.contiguous()
    batch, features = x.shape[0], x[0].numel()
    out = x.new_empty(*x.shape[1:], padded)
    _transpose(library)(x.data_ptr(), out.data_ptr(), padded, batch, features, features, padded,
                        torch.get_num_threads())
    return out


@_to_batch_innermost_op.register_fake
def _(x: torch.Tensor, library: str, padded: int) -> torch.Tensor:
    return x.new_empty(*x.shape[1:], padded)


@torch.library.custom_op("ganforge::direct_transposed_conv", mutates_args=())
def _transposed_conv_op(h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, library: str, c_out: int,
                        code: int, slope: float) -> torch.Tensor:
    """One layer: (C_in, H, W, P) -> (c_out, 2H, 2W, P), with the kernel's activation ``code`` applied."""
    h = h.contiguous()
    _, height, width, padded = h.shape
    out = h.new_empty(c_out, 2 * height, 2 * width, padded)
    _kernel(library)(h.data_ptr(), weight.data_ptr(), bias.data_ptr(), out.data_ptr(), height, width, padded, code,
                     slope, torch.get_num_threads())
    return out


@_transposed_conv_op.register_fake
def _(h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, library: str, c_out: int, code: int,
      slope: float) -> torch.Tensor:
    return h.new_empty(c_out, 2 * h.shape[1], 2 * h.shape[2], h.shape[3])


@torch.library.custom_op("ganforge::direct_to_batch_major", mutates_args=())
def _to_batch_major_op(h: torch.Tensor, library: str, batch: int) -> torch.Tensor:
    """(C, H, W, padded) -> (batch, C, H, W), the first ``batch`` images."""
    h = h.contiguous()
    features, padded = h[..., 0].numel(), h.shape[-1]
    out = h.new_empty(batch, *h.shape[:3])
    _transpose(library)(h.data_ptr(), out.data_ptr(), features, features, batch, padded, features,
                        torch.get_num_threads())
    return out


@_to_batch_major_op.register_fake
def _(h: torch.Tensor, library: str, batch: int) -> torch.Tensor:
    return h.new_empty(batch, *h.shape[:3])


def _to_batch_innermost(x: torch.Tensor, library: str, padded: int) -> torch.Tensor:
    """(B, C, H, W) -> (C, H, W, padded), the images past B zeros. Nothing moves when ``x`` is already stored
    batch innermost (a :class:`BatchInnermostLinear`'s output) and the batch is whole vectors."""
    x = x.float()
    stored = x.permute(1, 2, 3, 0)  # (C, H, W, B)
    if stored.is_contiguous():
        return stored if padded == x.shape[0] else F.pad(stored, (0, padded - x.shape[0]))
    return _to_batch_innermost_op(x, library, padded)


class DirectUpsampling(nn.Module):
    """A chain of stride-2 transposed convs, each followed by an optional elementwise activation, run by the
    compiled ``direct.c`` kernel in a batch-innermost layout (see the module docstring). fp32 only.

    Args:
        layers: (transposed conv, activation module or None) pairs, in order; BatchNorm already folded.

    Input (B, C_in, H, W); output (B, C_out, H * 2^n, W * 2^n) for n layers, a view of memory stored batch
    innermost when the batch is whole vectors (what the next chain, or :class:`BatchMajorImages` at the end,
    reads without a copy), else contiguous.
    """

    def __init__(self, layers: Layers) -> None:
        super().__init__()
        self.libraries: list[str] = []
        self.out_channels: list[int] = []
        self.codes: list[tuple[int, float]] = []  # (kernel activation code, negative slope)
        self.after: list[Callable[[torch.Tensor], torch.Tensor] | None] = []  # what the kernel does not apply
        self.lanes, accumulators = kernel_target()[2]
        for index, (convt, activation) in enumerate(layers):
            weight = convt.weight.detach().float()  # (C_in, C_out, 4, 4)
            c_in, c_out = weight.shape[:2]
            self.libraries.append(str(compile_kernel(c_in, c_out)))
            c_out_padded = padded_channels(c_out, accumulators)
            self.register_buffer(f"weight{index}", pack_weight(weight, c_out_padded))
            bias = weight.new_zeros(c_out_padded)
            if convt.bias is not None:
                bias[:c_out] = convt.bias.detach()
            self.register_buffer(f"bias{index}", bias)
            self.out_channels.append(c_out)
            code = _ACTIVATIONS.get(type(activation), 0)
            self.codes.append((code, getattr(activation, "negative_slope", 0.0)))
            self.after.append(None if code or activation is None else in_place_activation(activation))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch = x.shape[0]
        padded = math.ceil(batch / self.lanes) * self.lanes  # whole vectors; the extra images are zeros, dropped later
        h = _to_batch_innermost(x, self.libraries[0], padded)  # (C, H, W, padded)
        for index, (library, c_out, (code, slope), after) in enumerate(
                zip(self.libraries, self.out_channels, self.codes, self.after, strict=True)):
            h = _transposed_conv_op(h, getattr(self, f"weight{index}"), getattr(self, f"bias{index}"), library,
                                    c_out, code, slope)
            if after is not None:
                h = after(h)
        if padded != batch:
            return _to_batch_major_op(h, self.libraries[-1], batch)  # (B, C, H, W), contiguous
        return h.permute(3, 0, 1, 2)  # (B, C, H, W), stored batch innermost: see BatchMajorImages


class BatchInnermostLinear(nn.Module):
    """An ``nn.Linear`` computed as ``weight @ x.T``: the same values, with the (B, out) result stored
    (out, B), batch innermost. Feeding a :class:`DirectUpsampling` chain (the seed generator's fc, reshaped to
    (C, 4, 4)), it hands over the layout the kernel reads, with no transpose between; at a few hundred images the
    matrix multiply also runs faster this way round.

    Args:
        linear: the layer to compute (BatchNorm already folded into it).

    Input (B, in), any strides; output (B, out), a transposed view of (out, B) memory.
    """

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        self.register_buffer("weight", linear.weight.detach().float())  # (out, in)
        bias = None if linear.bias is None else linear.bias.detach().float()[:, None]
        self.register_buffer("bias", bias)  # (out, 1): added to every image's column

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        columns = x.float().t()  # (in, B)
        out = torch.mm(self.weight, columns) if self.bias is None else torch.addmm(self.bias, self.weight, columns)
        return out.t()  # (B, out)


def _batch_innermost_linears(module: nn.Module) -> None:
    """Replace, in place, every ``nn.Linear`` in ``module`` by a :class:`BatchInnermostLinear`."""
    for parent in list(module.modules()):
        for name, child in parent.named_children():
            if isinstance(child, nn.Linear):
                setattr(parent, name, BatchInnermostLinear(child))


class BatchMajorImages(nn.Module):
    """A generator lowered to the ``direct`` form, whose images leave contiguous (B, C, H, W): a last chain hands
    them over stored batch innermost (with elementwise work after it, such as ``lite``'s skip-layer gates, done in
    that layout), and the kernel library's transpose moves them once.

    Args:
        generator: the lowered generator.
        library: a kernel library of the same target (each holds the transpose).
    """

    def __init__(self, generator: nn.Module, library: str) -> None:
        super().__init__()
        self.generator, self.library = generator, library

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        images = self.generator(z)
        stored = images.permute(1, 2, 3, 0)  # (C, H, W, B)
        if images.is_contiguous() or not stored.is_contiguous():
            return images.contiguous()
        return _to_batch_major_op(stored, self.library, images.shape[0])


def direct(generator: nn.Module) -> nn.Module:
    """A copy of ``generator`` (BatchNorm already folded) whose nearest 2x upsamplings followed by a 3x3 conv are
    first rewritten as the equal stride-2 transposed convs (:func:`rewrite_upsampled_convs`), whose runs of those
    convs, with the activations between them, are then one :class:`DirectUpsampling` each, and whose fully
    connected layers are :class:`BatchInnermostLinear`, so that their output reaches the chain already in its
    layout. Between chains the activations stay stored batch innermost; :class:`BatchMajorImages` turns the
    images batch-major at the end. The rest is left as it is.

    Raises :class:`UserError` when the generator has nothing to lower or the kernel cannot be compiled on this
    machine.
    """
    copied = rewrite_upsampled_convs(copy.deepcopy(generator).eval())
    lowered = lower_upsampling_runs(copied, "direct", DirectUpsampling)
    _batch_innermost_linears(lowered)
    chains = [m for m in lowered.modules() if isinstance(m, DirectUpsampling)]
    return BatchMajorImages(lowered, chains[-1].libraries[-1])
