"""Optimize: variants that really differ, measured speed, and selection within the FID budget."""

from __future__ import annotations

import copy
import csv
import dataclasses
import json
import shutil
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from ganforge.errors import UserError
from ganforge.measurement import speed as benchmark
from ganforge.measurement.ceilings import GemmProbe
from ganforge.measurement.speed import (
    flops_per_image,
    peak_tensor_mib,
    serialized_bytes,
    time_generators,
)
from ganforge.models import GeneratorSpec, build_generator, load_generator, save_generator
from ganforge.optimization.pruning import distill, prune_generator
from ganforge.optimization.select import fid_budget, select_winner
from ganforge.runtime import direct as direct_form
from ganforge.runtime.direct import BatchInnermostLinear, DirectUpsampling, compile_kernel, register_block
from ganforge.runtime.lowering import essential_flops_per_image, rewrite_upsampled_convs
from ganforge.runtime.variants import (
    OnnxRuntimeGenerator,
    Recipe,
    batchnorm_fold_pairs,
    build_variant,
    fold_batchnorm,
    is_stride2_upsampling,
    reduced_precision_support,
    variant_steps,
)


def _generator(tiny_run):
    return load_generator(tiny_run.train_dir / "generator.safetensors")


def test_batchnorm_folding_is_exact_and_removes_batchnorm(tiny_run):
    generator, spec = _generator(tiny_run)
    folded = fold_batchnorm(generator)
    z = torch.randn(8, spec.z_dim)
    assert batchnorm_fold_pairs(generator) and not batchnorm_fold_pairs(folded)
    assert not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in folded.modules())
    assert torch.allclose(generator(z), folded(z), atol=1e-5)


def test_int8_is_smaller_and_close(tiny_run):
    generator, spec = _generator(tiny_run)
    int8 = build_variant(Recipe("int8", calibration_batches=2, calibration_batch_size=16), generator, spec.z_dim)
    z = torch.randn(32, spec.z_dim)
    assert serialized_bytes(int8) < serialized_bytes(generator) / 2.5
    assert (int8(z) - generator(z)).abs().mean() < 0.05
    assert any("quantized" in type(m).__module__ for m in int8.modules())


def test_variant_rebuild_is_deterministic(tiny_run):
    generator, spec = _generator(tiny_run)
    recipe = Recipe("int8", calibration_seed=5, calibration_batches=2, calibration_batch_size=16)
    z = torch.randn(4, spec.z_dim)
    assert torch.equal(build_variant(recipe, generator, spec.z_dim)(z), build_variant(recipe, generator, spec.z_dim)(z))


def test_selection_picks_fastest_within_budget():
    speed = {"fp32": 100.0, "fused": 150.0, "int8": 300.0}
    fid = {"fp32": 10.0, "fused": 10.5, "int8": 12.0}
    assert select_winner(speed, fid, "fp32", fid_budget(10.0, 0.1)) == "fused"
    assert select_winner(speed, fid, "fp32", fid_budget(10.0, 0.25)) == "int8"
    assert select_winner(speed, {"fp32": 10.0, "fused": 99.0, "int8": 99.0}, "fp32", 11.0) == "fp32"


def test_optimize_outputs(tiny_run, tiny_configs):
    cfg = tiny_configs["optimize"]
    metrics = json.loads(tiny_run.optimize_metrics.read_text())
    measured = set(metrics["variants"]) | set(metrics.get("skipped", {}))
    assert measured == set(cfg.variants)
    for row in metrics["variants"].values():
        assert row["img_per_s"] > 0 and row["fid"] > 0 and row["macs"] > 0 and row["peak_mem_mib"] >= 0
        assert row["img_per_s_min"] <= row["img_per_s"] <= row["img_per_s_max"]
        assert all(row[f"img_per_s_batch{b}"] > 0 for b in cfg.speed_batches)
        assert row["ceiling_fraction"] == pytest.approx(row["gflops"] / metrics["gemm_gflops"])
    variants = metrics["variants"]
    fused = variants["fused"]
    assert fused["speedup"] == pytest.approx(fused["img_per_s"] / variants["fp32"]["img_per_s"])
    assert variants["pruned+fused"]["macs"] < variants["fp32"]["macs"] / 2  # channels really removed
    assert variants["pruned+fused"]["params"] < variants["fp32"]["params"] / 2
    assert metrics["distillation"]["teacher_l1_after"] < metrics["distillation"]["teacher_l1_before"]
    assert metrics["winner_fid"] <= metrics["fid_budget"] and metrics["baseline_img_per_s"] == variants["fp32"][
        "img_per_s"]
    assert metrics["macs_ratio"] == pytest.approx(variants[metrics["winner"]]["macs"] / variants["fp32"]["macs"])
    assert metrics["threads"] >= 1 and metrics["gemm_gflops"] > 0
    with open(tiny_run.optimize_table) as f:
        rows = list(csv.DictReader(f))
    assert [r["variant"] for r in rows if r["status"] == "ok"] == list(variants)
    assert {r["variant"]: r["status"] for r in rows if r["status"] != "ok"} == {
        name: f"skipped: {why}" for name, why in metrics.get("skipped", {}).items()}
    recipe = json.loads((tiny_run.optimized / "recipe.json").read_text())
    assert recipe["variant"] == metrics["winner"]


@pytest.mark.parametrize("name, steps", [("fp32", ()), ("fused", ("fused",)), ("pruned+bf16+compiled",
                                          ("pruned", "bf16", "compiled")), ("pruned+onnxruntime",
                                          ("pruned", "onnxruntime")), ("pruned+direct", ("pruned", "direct"))])
def test_variant_names_parse_into_steps(name, steps):
    assert variant_steps(name) == steps


@pytest.mark.parametrize("name, message", [
    ("fast", "unknown step 'fast'"), ("fused+pruned", "at most one step of each kind, in the order"),
    ("fused+int8", "at most one step of each kind"), ("int8+onnxruntime", "the ONNX export is of the float model"),
    ("int8+compiled", "torch.compile does not take"), ("direct+onnxruntime", "the ONNX export is of the float model"),
    ("fused+direct", "at most one step of each kind"),
    ("pruned+banded", "uses the banded form, which this version of ganforge no longer has: run it with "
                      "--runtime onnxruntime, or rebuild the package"),
])
def test_bad_variant_names_are_one_line_errors(name, message, reliability):
    reliability.bad_input()
    with pytest.raises(UserError, match=f"optimize.variants: .*{message}"):
        variant_steps(name, "optimize.variants")


def test_flop_count_matches_the_seed_generator_by_hand():
    spec = GeneratorSpec("seed", 100, 32, 1)
    linear = 100 * 256 + 256 * 512 + 512 * 1024
    transposed = 4 * 4 * 64 * 32 * 16 + 8 * 8 * 32 * 16 * 16 + 16 * 16 * 16 * 1 * 16  # input pixels x Cin x Cout x k^2
    assert flops_per_image(build_generator(spec).eval(), 100) == 2 * (linear + transposed)


class _CountingGenerator(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return z


def test_every_timed_sample_starts_with_one_untimed_call(monkeypatch):
    monkeypatch.setattr(benchmark, "_MIN_SAMPLE_S", 0.0)  # one timed call per sample
    counting = _CountingGenerator()
    time_generators({"counting": counting}, z_dim=2, batch=1, warmup=2, repeats=3)
    assert counting.calls == 2 + 1 + 3 * (1 + 1)  # warm-up, the call that sizes the loop, then 3 x (untimed, timed)


def test_the_gemm_ceiling_is_timed_among_the_generators_as_its_flops_over_its_median_call():
    probe = GemmProbe(size=64)
    timings = time_generators({"seed": build_generator(GeneratorSpec("seed", 8, 8, 1)).eval(), "gemm": probe},
                              z_dim=8, batch=2, warmup=1, repeats=3)
    assert set(timings) == {"seed", "gemm"}
    assert probe.gflops(timings["gemm"]) == pytest.approx(2 * 64**3 / (timings["gemm"].ms_per_batch / 1e3) / 1e9)
    torch.testing.assert_close(probe(torch.zeros(2, 8)), probe.a @ probe.b)


@pytest.mark.parametrize("arch, width", [("seed", 1.0), ("dcgan", 0.25), ("lite", 1.0)])
@pytest.mark.parametrize("ratio", [0.3, 0.7])
def test_pruning_removes_channels_and_reloads_from_safetensors(tmp_path, arch, width, ratio):
    spec = GeneratorSpec(arch, 16, 32, 3, width)
    torch.manual_seed(0)
    generator = build_generator(spec).eval()
    pruned = prune_generator(generator, spec.z_dim, ratio, "l1")
    z = torch.randn(4, spec.z_dim)
    assert pruned(z).shape == generator(z).shape
    assert flops_per_image(pruned, spec.z_dim) < flops_per_image(generator, spec.z_dim) * (1 - ratio / 2)
    save_generator(pruned, GeneratorSpec(arch, 16, 32, 3, width, pruned=True), tmp_path / "g.safetensors")
    reloaded, reloaded_spec = load_generator(tmp_path / "g.safetensors")
    assert reloaded_spec.pruned and torch.equal(reloaded(z), pruned(z))


def test_features_reshaped_into_channels_are_pruned_a_whole_channel_at_a_time():
    from ganforge.optimization.pruning import _prune_reshaped_map, _reshaped_maps

    torch.manual_seed(0)
    generator = build_generator(GeneratorSpec("seed", 16, 32, 1)).eval()
    z = torch.randn(8, 16)
    (found,) = _reshaped_maps(generator, z)
    assert found.linear is generator.fc[5] and found.conv is generator.ups[0] and found.norms == [generator.fc[6]]
    dead = [3, 17, 40, 63]  # channels of the 4x4 map that contribute nothing: zero their weights everywhere
    with torch.no_grad():
        for c in dead:
            generator.fc[5].weight[c * 16:(c + 1) * 16] = 0
            generator.ups[0].weight[c] = 0
    expected = generator(z)
    _prune_reshaped_map(found, len(dead) / 64, "l1")
    assert generator.ups[0].in_channels == 60 and generator.fc[5].out_features == 60 * 16
    assert torch.allclose(generator(z), expected, atol=1e-6)


def test_bn_scale_pruning_and_distillation_move_the_student_toward_the_teacher(tiny_run):
    import types

    from ganforge.optimization.pruning import trained_discriminator

    teacher, spec = _generator(tiny_run)
    student = prune_generator(teacher, spec.z_dim, 0.5, "bn-scale")
    settings = types.SimpleNamespace(finetune_kimg=1, finetune_lr=2e-3, finetune_batch=32, adversarial_weight=0.01)
    result = distill(student, teacher, trained_discriminator(tiny_run.train_dir, spec), spec.z_dim, settings, seed=0)
    assert result["teacher_l1_after"] < result["teacher_l1_before"]


def test_runtime_and_precision_variants_compute_the_same_images(tiny_run):
    generator, spec = _generator(tiny_run)
    z = torch.randn(8, spec.z_dim)
    reference = generator(z)
    ort = build_variant(Recipe("fused+onnxruntime"), generator, spec.z_dim)
    assert isinstance(ort, OnnxRuntimeGenerator) and torch.allclose(ort(z), reference, atol=1e-4)
    compiled = build_variant(Recipe("compiled"), generator, spec.z_dim)
    with torch.inference_mode():
        assert torch.allclose(compiled(z), reference, atol=1e-4)
    assert build_variant(Recipe("compiled"), generator, spec.z_dim, runtime=False).__class__ is type(generator)
    if reduced_precision_support("bf16") is None:
        bf16 = build_variant(Recipe("bf16"), generator, spec.z_dim)
        assert bf16(z).dtype == torch.float32 and (bf16(z) - reference).abs().mean() < 0.05
    else:
        assert "this CPU has none of" in reduced_precision_support("bf16")
    assert peak_tensor_mib(generator, spec.z_dim, 64) > 0


def test_measuring_peak_memory_leaves_the_output_clean():
    """The profiler's native library writes start/stop lines to stderr on every profile; the optimize stage
    measures every variant's peak with it and would print them between its own lines."""
    import subprocess
    import sys

    code = ("import sys, torch\n"
            "from ganforge.measurement.speed import peak_tensor_mib\n"
            "assert peak_tensor_mib(torch.nn.Linear(4, 8), 4, 16) > 0\n"
            "print('after', file=sys.stderr)\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == "after", result.stderr  # stderr still works once the profile is done


def test_a_compiled_variant_reports_the_peak_memory_of_its_eager_form():
    """The profiler sees a compiled graph as one call that returns its output, hiding every buffer inside it;
    a compiled variant (a wrapper holding the eager module as ``_orig_mod``, like torch.compile's) reports its
    eager form's peak instead."""
    from ganforge.optimization.optimize import _peak_memory

    spec = GeneratorSpec("seed", 16, 32, 1)
    eager = build_variant(Recipe("fused"), _with_batchnorm_statistics(spec), spec.z_dim)

    class OpaqueGraph(torch.nn.Module):  # allocates its output and nothing the profiler can see
        def __init__(self) -> None:
            super().__init__()
            self._orig_mod = eager

        def forward(self, z: torch.Tensor) -> torch.Tensor:
            return torch.empty(z.shape[0], 1, 32, 32)

    output_mib = 64 * 32 * 32 * 4 / 2**20
    with torch.no_grad():
        assert peak_tensor_mib(OpaqueGraph(), spec.z_dim, 64) <= output_mib
        assert _peak_memory(OpaqueGraph(), spec.z_dim, 64) == _peak_memory(eager, spec.z_dim, 64) > 2 * output_mib


@pytest.mark.parametrize("arch, width", [("dcgan", 0.25), ("lite", 1.0)])
def test_every_architecture_folds_quantizes_and_exports(tmp_path, arch, width):
    from ganforge.runtime.onnx import export_onnx, onnx_session, run_onnx

    spec = GeneratorSpec(arch, 16, 32, 3, width)
    generator = _with_batchnorm_statistics(spec)
    z = torch.randn(16, spec.z_dim)
    reference = generator(z)
    fused = build_variant(Recipe("fused"), generator, spec.z_dim)
    assert not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) or is_stride2_upsampling(m)
                   for m in fused.modules())  # BN folded; stride-2 transposed convs in sub-pixel form
    assert torch.allclose(fused(z), reference, atol=1e-4)
    int8 = build_variant(Recipe("int8", calibration_batches=4, calibration_batch_size=32), generator, spec.z_dim)
    assert any("quantized" in type(m).__module__ for m in int8.modules())
    assert (int8(z) - reference).abs().mean() < 0.05
    export_onnx(generator, spec.z_dim, tmp_path / "g.onnx", opset=17)
    assert torch.allclose(run_onnx(onnx_session(tmp_path / "g.onnx"), z), reference, atol=1e-4)


@pytest.mark.parametrize(("c_in", "c_out", "side", "bias"), [(16, 1, 16, True), (32, 16, 8, False), (5, 3, 3, True)])
def test_sub_pixel_form_equals_the_transposed_conv(c_in, c_out, side, bias):
    from ganforge.runtime.variants import SubPixelConvTranspose

    torch.manual_seed(0)
    convt = torch.nn.ConvTranspose2d(c_in, c_out, kernel_size=4, stride=2, padding=1, bias=bias).eval()
    x = torch.randn(4, c_in, side, side)
    with torch.no_grad():
        expected, got = convt(x), SubPixelConvTranspose(convt)(x)
    assert got.shape == expected.shape == (4, c_out, 2 * side, 2 * side)
    assert torch.allclose(got, expected, atol=1e-5)


def _with_batchnorm_statistics(spec: GeneratorSpec, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    generator = build_generator(spec)
    with torch.no_grad():  # a few train-mode batches give BatchNorm non-trivial statistics to fold
        for _ in range(3):
            generator(torch.randn(32, spec.z_dim))
    return generator.eval()


_LOWERED = {"direct": DirectUpsampling}


@pytest.mark.parametrize("form", sorted(_LOWERED))
@pytest.mark.parametrize("spec", [GeneratorSpec("seed", 100, 32, 1), GeneratorSpec("seed", 16, 16, 3),
                                  GeneratorSpec("dcgan", 16, 32, 3, 0.25), GeneratorSpec("lite", 100, 32, 1),
                                  GeneratorSpec("lite", 16, 64, 3, 0.5)],
                         ids=["seed-32x1", "seed-16x3", "dcgan", "lite-32x1", "lite-64x3"])
def test_lowered_forms_equal_the_float_generator(spec, form):
    generator = _with_batchnorm_statistics(spec)
    lowered = build_variant(Recipe(form), generator, spec.z_dim)
    assert any(isinstance(m, _LOWERED[form]) for m in lowered.modules())
    assert not any(is_stride2_upsampling(m) or isinstance(m, torch.nn.Upsample)  # every upsampling lowered
                   for m in lowered.modules())
    with torch.no_grad():
        for batch in (1, 3, 17, 32):  # 32: whole vectors, so the images come back through BatchMajorImages
            z = torch.randn(batch, spec.z_dim)
            expected, got = generator(z), lowered(z)
            assert got.shape == expected.shape and got.is_contiguous()
            assert torch.allclose(got, expected, atol=1e-5), (batch, (got - expected).abs().max())


@pytest.mark.parametrize("form", sorted(_LOWERED))
def test_lowered_forms_of_a_pruned_generator_equal_it(tiny_run, form):
    generator, spec = _generator(tiny_run)
    pruned = prune_generator(generator, spec.z_dim, 0.7, "l1")
    z = torch.randn(9, spec.z_dim)
    with torch.no_grad():
        assert torch.allclose(build_variant(Recipe(f"pruned+{form}"), pruned, spec.z_dim)(z), pruned(z), atol=1e-5)


@pytest.mark.parametrize("form", sorted(_LOWERED))
def test_lowered_forms_of_a_pruned_lite_generator_equal_it(form):
    spec = GeneratorSpec("lite", 16, 32, 3)
    pruned = prune_generator(_with_batchnorm_statistics(spec), spec.z_dim, 0.7, "l1")
    lowered = build_variant(Recipe(f"pruned+{form}"), pruned, spec.z_dim)
    with torch.no_grad():
        for batch in (9, 32):
            z = torch.randn(batch, spec.z_dim)
            assert torch.allclose(lowered(z), pruned(z), atol=1e-5), batch


@pytest.mark.parametrize("scale", [2, 3])
def test_an_upsampled_3x3_conv_is_rewritten_as_the_equal_transposed_conv_only_at_scale_2(scale):
    torch.manual_seed(0)
    pair = torch.nn.Sequential(torch.nn.Upsample(scale_factor=scale, mode="nearest"),
                               torch.nn.Conv2d(5, 7, 3, padding=1)).eval()
    x = torch.randn(3, 5, 4, 6)
    with torch.no_grad():
        expected = pair(x)
        rewritten = rewrite_upsampled_convs(copy.deepcopy(pair))
        assert isinstance(rewritten[1], torch.nn.ConvTranspose2d) == (scale == 2)
        assert torch.allclose(rewritten(x), expected, atol=1e-5)


def test_flops_count_lite_upsampling_as_the_four_tap_conv_it_equals_and_leave_the_generator_and_rng_alone():
    lite, seed = (build_generator(GeneratorSpec(arch, 16, 32, 1)).eval() for arch in ("lite", "seed"))
    before = copy.deepcopy(lite.state_dict())
    state = torch.random.get_rng_state()
    essential = essential_flops_per_image(lite, 16)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert any(isinstance(m, torch.nn.Upsample) for m in lite.modules())  # counted on a copy
    assert all(torch.equal(before[k], v) for k, v in lite.state_dict().items())
    assert essential < flops_per_image(lite, 16)  # four taps per output pixel instead of nine
    assert essential_flops_per_image(seed, 16) == flops_per_image(seed, 16)  # nothing to rewrite


class _NoUpsampling(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(16, 48), torch.nn.Tanh())

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z).reshape(-1, 3, 4, 4)


@pytest.mark.parametrize("form", sorted(_LOWERED))
def test_lowered_forms_are_a_clear_error_where_there_is_nothing_to_lower(form, reliability):
    reliability.bad_input()
    with pytest.raises(UserError, match=rf"^{form}: _NoUpsampling has no stride-2 transposed convolutions .* "
                                        rf"and no nearest 2x upsampling followed by a 3x3 convolution to lower$"):
        build_variant(Recipe(form), _NoUpsampling().eval(), 16)


@pytest.mark.parametrize(("c_in", "c_out", "side", "batch", "activation"), [
    (3, 17, (1, 1), 1, torch.nn.LeakyReLU(0.2)),  # two channel blocks of 9, the second padded; one image
    (5, 11, (3, 5), 33, torch.nn.ReLU()),  # an odd map; a batch that is not whole vectors
    (7, 4, (4, 4), 80, torch.nn.Sigmoid()),  # four full batch vectors per block, then one more; sigmoid after
    (16, 1, (2, 6), 20, None),  # one output channel: 2 x 2 pixel blocks of four batch vectors
    (6, 3, (1, 1), 40, torch.nn.LeakyReLU(0.1)),  # RGB on a one-pixel map: every pixel block crosses an edge
    (4, 3, (3, 5), 17, torch.nn.Tanh()),  # RGB on an odd map, a batch past one vector; tanh after
])
def test_direct_kernel_equals_the_transposed_conv(c_in, c_out, side, batch, activation):
    torch.manual_seed(0)
    convt = torch.nn.ConvTranspose2d(c_in, c_out, kernel_size=4, stride=2, padding=1, bias=c_out != 4)
    x = torch.randn(batch, c_in, *side)
    with torch.no_grad():
        expected = convt(x) if activation is None else activation(convt(x))
        got = DirectUpsampling([(convt, activation)])(x)
    # whole batch vectors leave stored batch innermost, for the next chain; others leave contiguous
    assert got.shape == expected.shape and (got.permute(1, 2, 3, 0).is_contiguous() or got.is_contiguous())
    assert torch.allclose(got, expected, atol=1e-5), (got - expected).abs().max()


def test_direct_kernel_built_for_avx2_without_avx512_gives_the_same_images(tmp_path, monkeypatch):
    """x86-64-v3 (AVX2, FMA, no AVX-512) runs the same C with 8-image vectors and smaller register blocks, adding
    each output's terms in the same order: every output bit must agree with the build for this machine, and both
    with the transposed conv."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.delenv(direct_form.MARCH_ENV, raising=False)
    torch.manual_seed(0)
    layers = [(torch.nn.ConvTranspose2d(12, 6, 4, 2, 1), torch.nn.LeakyReLU(0.2)),
              (torch.nn.ConvTranspose2d(6, 1, 4, 2, 1), None)]
    x = torch.randn(37, 12, 3, 4)
    with torch.no_grad():
        expected = layers[1][0](layers[0][1](layers[0][0](x)))
        for_this_machine = DirectUpsampling(layers)
        native = for_this_machine(x)
        monkeypatch.setenv(direct_form.MARCH_ENV, "x86-64-v3")
        avx2 = DirectUpsampling(layers)
        got = avx2(x)
    assert set(avx2.libraries).isdisjoint(for_this_machine.libraries)  # built apart: their own cache entries
    assert avx2.lanes == 8  # AVX2's registers hold 8 floats
    assert torch.equal(got, native)
    assert torch.allclose(got, expected, atol=1e-5), (got - expected).abs().max()


def test_direct_traces_whole_under_torch_compile_through_its_custom_ops():
    """The kernel's calls are torch.library ops with fake shapes, so dynamo traces the form in one graph."""
    spec = GeneratorSpec("seed", 16, 16, 1)
    generator = _with_batchnorm_statistics(spec)
    lowered = build_variant(Recipe("direct"), generator, spec.z_dim)
    traced = torch.compile(lowered, backend="eager", fullgraph=True)  # dynamo's trace only: no C++ build here
    z = torch.randn(5, spec.z_dim)
    with torch.no_grad():
        assert torch.allclose(traced(z), generator(z), atol=1e-5)
    assert variant_steps("pruned+direct+compiled") == ("pruned", "direct", "compiled")


def test_direct_kernel_source_uses_no_compiler_builtins():
    source = (Path(direct_form.__file__).parent / "direct.c").read_text()
    assert "__builtin" not in source  # GCC's __builtin_shuffle is unknown to Clang, for one


@pytest.mark.skipif(shutil.which("clang") is None, reason="no clang on PATH")
def test_direct_kernel_built_by_clang_gives_the_images_gcc_gives(tmp_path, monkeypatch):
    torch.manual_seed(0)
    layers = [(torch.nn.ConvTranspose2d(8, 5, 4, 2, 1), torch.nn.ReLU()), (torch.nn.ConvTranspose2d(5, 3, 4, 2, 1),
                                                                            torch.nn.Tanh())]
    x = torch.randn(37, 8, 4, 4)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    with torch.no_grad():
        by_gcc = DirectUpsampling(layers)(x)
        monkeypatch.setenv("CC", "clang")
        try:
            by_clang = DirectUpsampling(layers)(x)
        except UserError as error:  # a clang installed without LLVM's OpenMP runtime: said in one line
            assert "found no OpenMP runtime" in str(error), error
            pytest.skip(str(error))
    assert torch.allclose(by_clang, by_gcc, rtol=0, atol=1e-6)  # the compilers may contract multiply-adds differently


def test_a_compiler_without_an_openmp_runtime_fails_at_build_time_in_one_line(tmp_path, monkeypatch, reliability):
    reliability.fault()
    fake = tmp_path / "clang-without-libomp"  # asks the real compiler about targets, fails the link as lld does
    fake.write_text('#!/bin/sh\ncase " $* " in *" -dM "*|*" --version "*) exec cc "$@";; esac\n'
                    'echo "ld.lld: error: undefined symbol: __kmpc_fork_call" >&2\nexit 1\n')
    fake.chmod(0o755)
    monkeypatch.setenv("CC", str(fake))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    with pytest.raises(UserError, match=r"^direct: \S+clang-without-libomp found no OpenMP runtime .*LDFLAGS.*"
                                        r"__kmpc_fork_call$") as error:
        compile_kernel(5, 7)
    assert "\n" not in str(error.value)


def test_direct_chain_equals_the_transposed_convs():
    # the first layer is written channel-major with a padded channel block and a part-filled batch vector; the
    # second reads it and writes batch-major
    torch.manual_seed(0)
    first = torch.nn.ConvTranspose2d(3, 17, kernel_size=4, stride=2, padding=1)
    second = torch.nn.ConvTranspose2d(17, 3, kernel_size=4, stride=2, padding=1)
    x = torch.randn(33, 3, 3, 5)
    with torch.no_grad():
        expected = torch.tanh(second(F.leaky_relu(first(x), 0.2)))
        got = DirectUpsampling([(first, torch.nn.LeakyReLU(0.2)), (second, torch.nn.Tanh())])(x)
    assert got.shape == (33, 3, 12, 20) and torch.allclose(got, expected, atol=1e-5), (got - expected).abs().max()


@pytest.mark.parametrize("bias", [True, False])
def test_batch_innermost_linear_equals_the_linear_and_stores_the_batch_innermost(bias):
    torch.manual_seed(0)
    linear = torch.nn.Linear(7, 48, bias=bias)
    layer = BatchInnermostLinear(linear)
    for x in (torch.randn(5, 7), torch.randn(7, 33).t()):  # contiguous, and itself stored batch innermost
        with torch.no_grad():
            got = layer(x)
        assert torch.allclose(got, linear(x), atol=1e-6)
        assert got.shape == (x.shape[0], 48) and got.t().is_contiguous()  # (out, B) in memory


def test_direct_fc_hands_the_chain_its_layout_without_a_transpose(monkeypatch):
    generator = build_generator(GeneratorSpec("seed", 16, 16, 1)).eval()
    lowered = build_variant(Recipe("direct"), generator, 16)
    calls = []
    monkeypatch.setattr(direct_form, "_transpose", lambda library: lambda *args: calls.append(args[2:4]))
    z = torch.randn(32, 16)
    with torch.no_grad():
        h = lowered.generator.fc(z).unflatten(1, (-1, 4, 4))  # (B, C, 4, 4)
        assert h.permute(1, 2, 3, 0).is_contiguous()
        lowered(z)
    assert len(calls) == 1  # only the layout change out of the generator


def test_direct_lite_keeps_the_batch_innermost_layout_through_its_gates(monkeypatch):
    spec = GeneratorSpec("lite", 16, 32, 1)
    lowered = build_variant(Recipe("direct"), _with_batchnorm_statistics(spec), spec.z_dim)
    assert sum(isinstance(m, DirectUpsampling) for m in lowered.modules()) == 3  # 4->8, 8->16, 16->32
    calls = []
    monkeypatch.setattr(direct_form, "_transpose", lambda library: lambda *args: calls.append(args[2:4]))
    with torch.no_grad():
        lowered(torch.randn(32, spec.z_dim))
    assert len(calls) == 1  # the skip-layer gates work in the kernel's layout: one transpose, at the end


def test_direct_register_blocks_cover_every_channel_evenly():
    assert [register_block(c) for c in (1, 3, 4, 5, 16, 17, 32, 33)] == [
        (1, 4, True), (3, 1, True), (4, 1, True), (5, 3, False), (16, 1, False), (9, 1, False), (16, 1, False),
        (11, 1, False)]


def test_direct_kernel_is_compiled_once_per_shape(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    first = compile_kernel(2, 3)
    built_at = first.stat().st_mtime_ns
    assert compile_kernel(2, 3) == first and first.stat().st_mtime_ns == built_at
    assert compile_kernel(3, 2) != first
    monkeypatch.setattr(direct_form, "cpu_identity", lambda: "another CPU")  # a cluster node sharing the cache
    assert compile_kernel(2, 3) != first
    assert sorted(p.suffix for p in first.parent.iterdir()) == [".so"] * 3  # no temporary files left


def test_direct_without_a_compiler_is_a_one_line_error(tmp_path, monkeypatch, reliability):
    reliability.fault()
    monkeypatch.setenv("CC", "no-such-cc")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    generator = build_generator(GeneratorSpec("seed", 16, 16, 1)).eval()
    with pytest.raises(UserError, match=r"^direct: no C compiler 'no-such-cc' on PATH"):
        build_variant(Recipe("direct"), generator, 16)


def test_a_kernel_target_the_compiler_does_not_know_is_a_one_line_error(tmp_path, monkeypatch, reliability):
    reliability.bad_input()
    monkeypatch.setenv(direct_form.MARCH_ENV, "no-such-cpu")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    with pytest.raises(UserError, match=r"^direct: \S+ cannot target -march=no-such-cpu: .*no-such-cpu") as error:
        compile_kernel(5, 7)
    assert "\n" not in str(error.value)


def test_direct_with_an_unwritable_kernel_cache_is_a_one_line_error(tmp_path, monkeypatch, reliability):
    reliability.fault()
    (tmp_path / "ganforge").write_text("a file where the cache folder would go")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    with pytest.raises(UserError, match=r"^direct: cannot write the kernel cache .*ganforge/kernels: "):
        compile_kernel(5, 7)


def test_a_variant_that_fails_to_build_is_reported_and_the_others_go_on(tiny_run, tiny_configs, tmp_path,
                                                                        monkeypatch, reliability):
    from ganforge.optimization import optimize as optimize_module

    real_build = optimize_module.build_variant

    def build_without_int8_kernels(recipe, *args, **kwargs):
        if "int8" in recipe.steps:
            raise RuntimeError("Didn't find engine for operation quantized::conv_transpose2d_prepack NoQEngine\n...")
        return real_build(recipe, *args, **kwargs)

    monkeypatch.setattr(optimize_module, "build_variant", build_without_int8_kernels)
    reliability.fault()
    cfg = dataclasses.replace(tiny_configs["optimize"], variants=("fp32", "int8", "fused"), speed_batches=(16,))
    table = tmp_path / "optimize.csv"
    metrics = optimize_module.optimize(cfg, tiny_configs["evaluate"], tiny_configs["reference"], tiny_run.train_dir,
                                       tiny_run.featurizer, tiny_run.reference, tmp_path / "optimized",
                                       tmp_path / "optimize.json", table)
    reason = "RuntimeError: Didn't find engine for operation quantized::conv_transpose2d_prepack NoQEngine"
    assert metrics["failed"] == {"int8": reason}
    assert set(metrics["variants"]) == {"fp32", "fused"} and metrics["winner"] in {"fp32", "fused"}
    with open(table) as f:
        rows = {r["variant"]: r for r in csv.DictReader(f)}
    assert rows["int8"]["status"] == f"failed: {reason}" and rows["int8"]["img_per_s"] == ""
    assert rows["fused"]["status"] == "ok" and float(rows["fused"]["img_per_s"]) > 0


def test_when_no_variant_meets_the_budget_the_stage_says_so_and_keeps_the_baseline(tiny_run, tiny_configs, tmp_path,
                                                                                   reliability):
    from ganforge.optimization.optimize import optimize, summary_lines

    reliability.bad_input()
    # A budget below the baseline's own FID: only the baseline, which always qualifies, is left.
    cfg = dataclasses.replace(tiny_configs["optimize"], variants=("fp32", "fused", "int8"), speed_batches=(16,),
                              max_fid_increase=-0.5)
    metrics = optimize(cfg, tiny_configs["evaluate"], tiny_configs["reference"], tiny_run.train_dir,
                       tiny_run.featurizer, tiny_run.reference, tmp_path / "optimized", tmp_path / "optimize.json",
                       tmp_path / "optimize.csv")
    assert metrics["winner"] == "fp32"
    assert metrics["fallback"].startswith(f"no variant met the FID budget {metrics['fid_budget']:.3f}")
    assert metrics["fallback"].endswith("; falling back to the baseline fp32")
    assert "fused " in metrics["fallback"] and "int8 " in metrics["fallback"]
    lines = summary_lines(metrics, tmp_path / "optimized")
    assert lines[0].startswith("optimize: winner fp32") and lines[1] == f"optimize: {metrics['fallback']}"
    assert json.loads((tmp_path / "optimized" / "recipe.json").read_text())["variant"] == "fp32"


def test_int8_keeps_gating_products_and_the_output_tanh_in_float_and_says_so():
    from ganforge.runtime.variants import float_layers

    spec = GeneratorSpec("lite", 16, 32, 3)
    generator = _with_batchnorm_statistics(spec)
    int8 = build_variant(Recipe("int8", calibration_batches=2, calibration_batch_size=16), generator, spec.z_dim)
    reported = float_layers(int8)
    assert any(entry.endswith("(multiply)") for entry in reported)  # the skip-layer gate
    assert "to_rgb.2 (Tanh)" in reported
    assert any("quantized" in type(m).__module__ for m in int8.modules())
    z = torch.randn(8, spec.z_dim)
    assert (int8(z) - generator(z)).abs().mean() < 0.05


def test_the_busy_neighbour_spins_through_the_body_and_is_gone_after():
    import psutil

    from ganforge.measurement.timing import busy_neighbour

    with busy_neighbour() as spinner:
        assert spinner.poll() is None  # it announced itself, so it is past start-up and in its loop
        assert psutil.Process(spinner.pid).status() in (psutil.STATUS_RUNNING, psutil.STATUS_SLEEPING)
    assert spinner.poll() is not None
