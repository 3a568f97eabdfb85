"""The `direct` kernel on its own: built for this machine (also under torch.compile, through its custom ops) and
for x86-64-v3 (AVX2, no AVX-512), side by side with the `seed` generator in eager fp32 and in the `fused` form,
on an idle machine and beside a second CPU-bound process.

    python benchmarks/direct_kernel.py [--repeats 30] [--render]

The generator is `seed` at 32x32, one channel (the digits default's shape), with random weights and BatchNorm
statistics from a few train-mode batches: speed does not depend on what the weights learned. Each kernel is
compiled into a fresh cache, so its build time is the compiler's. Images per second at batch 256 are measured
by the optimize stage's own side-by-side timer (interleaved repeats, median), first alone, then while one
busy-looping process shares the machine's cores; each ratio is against eager fp32 timed in the same rounds.
Results go to bench/direct_kernel.json and the generated section of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

from measure import REPO, machine, machine_line, save_results, write_doc_section

from ganforge.measurement.timing import busy_neighbour

RESULTS = REPO / "bench/direct_kernel.json"
BATCH = 256
BUILDS = {"native": None, "x86-64-v3": "x86-64-v3"}
SHAPE = (64, 32)  # (C_in, C_out) of the layer whose build is timed
# The same kernel as a torch C++ extension: direct.c compiled as C++ against torch's headers, one op registered.
_EXTENSION = r"""
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>
#define restrict __restrict__
extern "C" {
#include "direct.c"
}
#undef restrict

static at::Tensor run(const at::Tensor& in, const at::Tensor& weight, const at::Tensor& bias, int64_t threads) {
    at::Tensor out = at::empty({C_OUT, 2 * in.size(1), 2 * in.size(2), in.size(3)}, in.options());
    transposed_conv(in.data_ptr<float>(), weight.data_ptr<float>(), bias.data_ptr<float>(), out.data_ptr<float>(),
                    in.size(1), in.size(2), in.size(3), 1, 0.0f, (int)threads);
    return out;
}

TORCH_LIBRARY(ganforge_direct_extension, m) { m.def("transposed_conv", &run); }
"""


def _generators(march_env: str, cache_root: str) -> tuple[dict, dict, int]:
    """(modules to time, kernel build seconds per target, z_dim); the kernels are cached under ``cache_root``."""
    import torch

    from ganforge.models import GeneratorSpec, build_generator
    from ganforge.runtime.direct import compile_kernel
    from ganforge.runtime.variants import Recipe, build_variant

    spec = GeneratorSpec("seed", 100, 32, 1)
    torch.manual_seed(0)
    generator = build_generator(spec).train()
    with torch.no_grad():
        for _ in range(3):
            generator(torch.randn(64, spec.z_dim))
    generator.eval()
    modules = {"fp32": build_variant(Recipe("fp32"), generator, spec.z_dim),
               "fused": build_variant(Recipe("fused"), generator, spec.z_dim)}
    build_s = {}
    for name, march in BUILDS.items():
        os.environ["XDG_CACHE_HOME"] = tempfile.mkdtemp(prefix=f"ganforge-kernels-{name}-", dir=cache_root)
        os.environ.pop(march_env, None)
        if march is not None:
            os.environ[march_env] = march
        start = time.perf_counter()
        compile_kernel(*SHAPE)  # one layer shape from a cold cache: the compiler's time
        build_s[name] = time.perf_counter() - start
        modules[f"direct ({name})"] = build_variant(Recipe("direct"), generator, spec.z_dim)
        if march is None:  # the kernel's custom ops inside one inductor graph
            modules[f"direct+compiled ({name})"] = build_variant(Recipe("direct+compiled"), generator, spec.z_dim)
    os.environ.pop(march_env, None)
    return modules, build_s, spec.z_dim


def _extension_build(cache_root: str) -> dict:
    """Build the native kernel of :data:`SHAPE` through ``torch.utils.cpp_extension`` from a cold build folder,
    and check its op against the plain build's library on one input; skipped without ninja, which it needs."""
    import shutil

    import torch
    from torch.utils import cpp_extension

    from ganforge.runtime import direct

    if shutil.which("ninja") is None:
        return {"skipped": "no ninja on PATH (torch.utils.cpp_extension needs it)"}
    folder = tempfile.mkdtemp(prefix="ganforge-extension-", dir=cache_root)
    source = os.path.join(folder, "extension.cpp")
    with open(source, "w") as out:
        out.write(_EXTENSION)
    shutil.copy(os.path.join(os.path.dirname(direct.__file__), "direct.c"), folder)
    defines = direct.kernel_defines(*SHAPE)
    flags = ["-O3", "-march=native", "-fopenmp", *(f"-D{k}={v}" for k, v in defines.items())]
    start = time.perf_counter()
    cpp_extension.load(name="ganforge_direct_extension", sources=[source], extra_cflags=flags,
                       extra_ldflags=["-fopenmp"], build_directory=folder, is_python_module=False)
    seconds = time.perf_counter() - start
    c_in, c_out = SHAPE
    x = torch.randn(c_in, 4, 4, defines["LANES"] * 4)  # (C_in, H, W, batch)
    weight = direct.pack_weight(torch.randn(c_in, c_out, 4, 4), defines["C_OUT_PADDED"])
    bias = torch.zeros(defines["C_OUT_PADDED"])
    threads = torch.get_num_threads()
    by_extension = torch.ops.ganforge_direct_extension.transposed_conv(x, weight, bias, threads)
    plain = torch.empty_like(by_extension)
    direct._kernel(str(direct.compile_kernel(*SHAPE)))(x.data_ptr(), weight.data_ptr(), bias.data_ptr(),
                                                       plain.data_ptr(), 4, 4, x.shape[3], 1, 0.0, threads)
    return {"build_s": seconds, "same_output": bool(torch.equal(by_extension, plain))}


def _timed(modules: dict, z_dim: int, repeats: int) -> dict:
    from ganforge.measurement.speed import time_generators

    timings = time_generators(modules, z_dim, BATCH, warmup=3, repeats=repeats)
    base = timings["fp32"].img_per_s
    return {name: {"img_per_s": t.img_per_s, "img_per_s_min": t.img_per_s_min, "img_per_s_max": t.img_per_s_max,
                   "vs_fp32": t.img_per_s / base} for name, t in timings.items()}


def run(repeats: int) -> dict:

    from ganforge.runtime.direct import MARCH_ENV

    with tempfile.TemporaryDirectory() as cache_root:  # the kernels load at their first call: keep them till the end
        results = _measured(*_generators(MARCH_ENV, cache_root), repeats)
        results["torch_extension"] = _extension_build(cache_root)
        return results


def _measured(modules: dict, build_s: dict, z_dim: int, repeats: int) -> dict:
    import torch

    results = {"machine": machine(), "batch": BATCH, "repeats": repeats,
               "kernel_build_s": build_s, "threads": torch.get_num_threads()}
    results["alone"] = _timed(modules, z_dim, repeats)
    with busy_neighbour():
        results["beside_a_busy_process"] = _timed(modules, z_dim, repeats)
    return results


def render(results: dict) -> None:
    alone, loaded = results["alone"], results["beside_a_busy_process"]
    lines = [machine_line(results["machine"]), "",
             f"The `seed` generator (32×32, one channel) at batch {results['batch']}, {results['threads']} torch "
             f"threads, median of {results['repeats']} interleaved repeats; × fp32 is against eager fp32 timed in "
             f"the same rounds. \"Beside a busy process\": one busy-looping Python process shares the cores.", "",
             "| form | img/s alone | × fp32 alone | img/s beside a busy process | × fp32 beside it |",
             "|---|---|---|---|---|"]
    for name, row in alone.items():
        other = loaded[name]
        lines.append(f"| {name} | {row['img_per_s']:,.0f} | {row['vs_fp32']:.2f} | {other['img_per_s']:,.0f} | "
                     f"{other['vs_fp32']:.2f} |")
    build, extension = results["kernel_build_s"], results.get("torch_extension", {})
    lines += ["", f"Kernel build, one layer shape ({SHAPE[0]} → {SHAPE[1]} channels) from a cold cache: "
              + ", ".join(f"{name} {seconds:.2f} s" for name, seconds in build.items()) + "."]
    if "build_s" in extension:
        same = "the same output" if extension["same_output"] else "**a different output**"
        lines.append(f"The same native kernel as a torch C++ extension (`torch.utils.cpp_extension.load`, torch's "
                     f"headers, one registered op): {extension['build_s']:.2f} s, {same}; so the plain C build "
                     "stays, its calls registered as torch.library custom ops.")
    elif extension:
        lines.append(f"The torch C++ extension build was skipped: {extension['skipped']}.")
    for name in (n for n in loaded if n.startswith("direct")):
        kept = loaded[name]["vs_fp32"] / alone[name]["vs_fp32"]
        lines += ["", f"Beside a busy process `{name}` keeps {loaded[name]['vs_fp32']:.2f}× eager fp32 "
                  f"({alone[name]['vs_fp32']:.2f}× alone): {kept:.0%} of its lead."]
    write_doc_section("direct-kernel", lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--render", action="store_true", help="only regenerate the doc section from the results")
    args = parser.parse_args()
    if args.render:
        render(json.loads(RESULTS.read_text()))
        return
    save_results(RESULTS, run(args.repeats), render)


if __name__ == "__main__":
    main()
