"""Every file ganforge reads back is read defensively: bytes that are not UTF-8, a directory in a file's place,
JSON of the wrong shape, garbage types and absurd sizes are each one line naming the file and the field, never
a traceback or a huge allocation. Packages are corrupted *self-consistently* (the manifest re-hashed), so the
readers behind the hash check are the ones tested."""

from __future__ import annotations

import hashlib
import json
import shutil
import struct
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import save_file

from ganforge.errors import UserError
from ganforge.packaging.package import GeneratorPackage, load_package

REPO = Path(__file__).resolve().parents[1]
FUZZ = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

# JSON values of every kind, huge and non-finite numbers included, and values a field could hold, so that
# the fuzz reaches past the first check too.
SCALARS = (st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12)
           | st.sampled_from([0, -1, 2**31, 2**63, 10**12, 10**30, 2**1100, -(2**1100), 1e12, 1e300, float("inf"),
                              float("-inf"), float("nan")])
           | st.sampled_from([1, 2, 3, 8, 16, 100, 1.0, 0.5, True, False, "seed", "lite", "fp32", "fused", "int8",
                              "pruned+fused", "fbgemm", "l1", "ganforge-generator"]))
JSON_VALUES = SCALARS | st.recursive(
    SCALARS, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=6)


def _one_line(e: UserError, *names: str) -> str:
    message = str(e)
    assert len(message.splitlines()) == 1, message
    for name in names:
        assert name in message, (name, message)
    return message


def _paths(obj: Any, prefix: tuple = ()) -> list[tuple]:
    """Every key path into the nested objects of ``obj`` (the root is ``()``)."""
    found = [prefix]
    if isinstance(obj, dict):
        for key, value in obj.items():
            found += _paths(value, (*prefix, key))
    return found


def _replaced(obj: Any, path: tuple, value: Any) -> Any:
    """A copy of ``obj`` with the value at ``path`` replaced (the whole of it for ``()``)."""
    if not path:
        return value
    obj = json.loads(json.dumps(obj))
    node = obj
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    return obj


def _write_json(path: Path, value: Any) -> None:
    path.write_text(json.dumps(value))


def _rehash(package: Path, *names: str) -> None:
    """Update the manifest to the files' new bytes: the package stays self-consistent."""
    manifest_path = package / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    for name in names:
        manifest["files"][name] = hashlib.sha256((package / name).read_bytes()).hexdigest()
    _write_json(manifest_path, manifest)


def _safetensors_header(path: Path, header: dict, data: bytes) -> None:
    text = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(text)) + text + data)


# --- the package: each way of corrupting each file it reads ---

def _config_field(path: tuple, value: Any):
    def corrupt(package: Path) -> None:
        config = json.loads((package / "config.json").read_text())
        _write_json(package / "config.json", _replaced(config, path, value))
        _rehash(package, "config.json")
    return corrupt


def _bytes(name: str, data: bytes, rehash: bool = True):
    def corrupt(package: Path) -> None:
        (package / name).write_bytes(data)
        if rehash:
            _rehash(package, name)
    return corrupt


def _directory(name: str):
    def corrupt(package: Path) -> None:
        (package / name).unlink()
        (package / name).mkdir()
    return corrupt


def _manifest_field(path: tuple, value: Any):
    def corrupt(package: Path) -> None:
        manifest = json.loads((package / "manifest.json").read_text())
        _write_json(package / "manifest.json", _replaced(manifest, path, value))
    return corrupt


def _huge_tensor_header(package: Path) -> None:
    # A header that claims 10^12 floats over a 16-byte file: safetensors checks it against the file's size.
    _safetensors_header(package / "model.safetensors",
                        {"fc.0.weight": {"dtype": "F32", "shape": [10**6, 10**6], "data_offsets": [0, 16]}}, b"\0" * 16)
    _rehash(package, "model.safetensors")


def _nan_weights(package: Path) -> None:
    from safetensors.torch import load_file

    state = load_file(package / "model.safetensors")
    next(t for t in state.values() if t.is_floating_point()).fill_(float("nan"))
    save_file(state, package / "model.safetensors")
    _rehash(package, "model.safetensors")


def _sizes_that_do_not_fit(package: Path) -> None:
    # A pruned spec takes each layer's size from the file: one row fewer in the first weight leaves its bias,
    # and the next layer, a size apart.
    from safetensors.torch import load_file

    _config_field(("generator", "pruned"), True)(package)
    state = load_file(package / "model.safetensors")
    name = next(k for k, t in state.items() if k.endswith("weight") and t.ndim == 2)
    state[name] = state[name][1:].contiguous()
    save_file(state, package / "model.safetensors")
    _rehash(package, "model.safetensors")


def _other_onnx_graph(z_dim: int, resolution: int, declared: bool):
    def corrupt(package: Path) -> None:
        import onnx

        from ganforge.models import GeneratorSpec, build_generator
        from ganforge.runtime.onnx import export_onnx

        path = package / "generator.onnx"
        export_onnx(build_generator(GeneratorSpec("seed", z_dim, resolution, 1)), z_dim, path, opset=17)
        if not declared:  # names for every dimension: only running it shows the images are another size
            model = onnx.load(path)
            for dim in model.graph.output[0].type.tensor_type.shape.dim[1:]:
                dim.dim_param = "side"
            onnx.save(model, path)
        _rehash(package, "generator.onnx")
    return corrupt


CASES = {  # id -> (corruption, runtime, model, what the error line must name)
    "config-not-utf8": (_bytes("config.json", b'{"format": "\xff\xfe"}'), "torch", "winner",
                        ["config.json", "not UTF-8"]),
    "config-a-directory": (_directory("config.json"), "torch", "winner", ["config.json", "is a directory"]),
    "config-a-list": (_config_field((), [1, 2]), "torch", "winner", ["config.json", "expected a JSON object"]),
    "generator-a-string": (_config_field(("generator",), "seed"), "torch", "winner",
                           ["config.json", "generator: expected a JSON object"]),
    "z_dim-a-string": (_config_field(("generator", "z_dim"), "100"), "torch", "winner",
                       ["config.json", "generator.z_dim: expected an integer"]),
    "z_dim-absurd": (_config_field(("generator", "z_dim"), 1e12), "torch", "winner",
                     ["config.json", "generator.z_dim: expected a value <= 4096"]),
    "resolution-absurd": (_config_field(("generator", "resolution"), 2**40), "onnxruntime", "winner",
                          ["config.json", "generator.resolution"]),
    "width-absurd": (_config_field(("generator", "width"), 1e300), "torch", "winner",
                     ["config.json", "generator.width"]),
    "channels-a-list": (_config_field(("generator", "channels"), [3]), "torch", "winner",
                        ["config.json", "generator.channels"]),
    "pruned-a-string": (_config_field(("generator", "pruned"), "yes"), "torch", "winner",
                        ["config.json", "generator.pruned: expected true or false"]),
    # Within every bound, yet 50 GiB of parameters: the network is sized by its weights file, not config.json.
    "in-range-but-huge": (_config_field(("generator",), {"arch": "dcgan", "z_dim": 4096, "resolution": 256,
                                                         "channels": 3, "width": 16.0, "pruned": False}),
                          "torch", "winner", ["model.safetensors", "weights do not match"]),
    "recipe-missing": (_config_field(("recipe",), None), "torch", "winner", ["config.json", "recipe: expected"]),
    "calibration-absurd": (_config_field(("recipe", "calibration_batch_size"), 10**12), "torch", "winner",
                           ["config.json", "recipe.calibration_batch_size"]),
    "variant-garbage": (_config_field(("recipe", "variant"), "int8+int8"), "torch", "winner",
                        ["config.json", "recipe.variant"]),
    "baseline-a-number": (_config_field(("baseline",), 7), "torch", "baseline",
                          ["config.json", "baseline: expected a JSON object"]),
    "baseline-z_dim-absurd": (_config_field(("baseline", "generator", "z_dim"), -(10**30)), "torch", "baseline",
                              ["config.json", "baseline: generator.z_dim"]),
    "manifest-not-utf8": (_bytes("manifest.json", b"\x80\x81", rehash=False), "torch", "winner",
                          ["manifest.json", "not UTF-8"]),
    "manifest-files-a-list": (_manifest_field(("files",), ["config.json"]), "torch", "winner",
                              ["manifest.json", "files: expected a JSON object"]),
    "manifest-digest-a-number": (_manifest_field(("files", "config.json"), 5), "torch", "winner",
                                 ["manifest.json", "files.config.json: expected a string"]),
    "manifest-digest-not-hex": (_manifest_field(("files", "config.json"), "zz"), "torch", "winner",
                                ["manifest.json", "files.config.json: expected a sha256"]),
    "manifest-name-not-plain": (_manifest_field(("files", "../../etc/passwd"), "0" * 64), "torch", "winner",
                                ["manifest.json", "not a file of the package layout"]),
    "manifest-name-nul": (_manifest_field(("files", "a\0b"), "0" * 64), "torch", "winner",
                          ["manifest.json", "not a file of the package layout"]),
    "weights-garbage": (_bytes("model.safetensors", b"\x00" * 40), "torch", "winner",
                        ["model.safetensors", "not a valid safetensors file"]),
    "weights-huge-header": (_huge_tensor_header, "torch", "winner", ["model.safetensors", "not a valid safetensors"]),
    "weights-nan": (_nan_weights, "torch", "winner", ["model.safetensors", "NaN"]),
    "weights-sizes-do-not-fit": (_sizes_that_do_not_fit, "torch", "winner",
                                 ["model.safetensors", "sizes do not fit together"]),
    "weights-a-directory": (_directory("model.safetensors"), "torch", "winner",
                            ["model.safetensors", "is a directory"]),
    "onnx-garbage": (_bytes("generator.onnx", b"not an onnx model \xff"), "onnxruntime", "winner",
                     ["generator.onnx", "not a loadable ONNX model"]),
    "onnx-another-graph": (_other_onnx_graph(8, 16, True), "onnxruntime", "winner",
                           ["generator.onnx", "declares shapes"]),
    "onnx-undeclared-other-size": (_other_onnx_graph(100, 8, False), "onnxruntime", "winner",
                                   ["generator.onnx", "images of shape (1, 8, 8)"]),
}


@pytest.mark.parametrize("case", list(CASES))
def test_a_corrupt_package_is_one_line_naming_the_file_and_field(package_copy, tmp_path, capsys, reliability, case):
    from ganforge.cli import main

    corrupt, runtime, model, names = CASES[case]
    corrupt(package_copy)
    reliability.bad_input()
    with pytest.raises(UserError) as refused:
        load_package(package_copy, runtime, model)
    _one_line(refused.value, str(package_copy), *names)
    capsys.readouterr()
    with pytest.raises(SystemExit) as exited:
        main(["generate", "--package", str(package_copy), "-n", "2", "--out", str(tmp_path / "out"),
              "--runtime", runtime, "--model", model])
    err = capsys.readouterr().err
    assert exited.value.code == 2
    assert len(err.splitlines()) == 1 and all(name in err for name in names), err


def _loads_or_refuses(package: Path, runtime: str, model: str) -> bool:
    """Load the package: a working GeneratorPackage (True) or a one-line UserError naming it (False)."""
    try:
        loaded = load_package(package, runtime, model)
    except UserError as e:
        _one_line(e, str(package))
        return False
    assert isinstance(loaded, GeneratorPackage)
    images = loaded.generate(torch.zeros(2, loaded.spec.z_dim))
    assert images.dtype == torch.uint8 and images.shape == (2, loaded.spec.channels, *[loaded.spec.resolution] * 2)
    return True


@pytest.fixture(scope="module")
def pristine(tiny_run) -> dict[str, bytes]:
    return {name: (tiny_run.package / name).read_bytes() for name in ("config.json", "manifest.json")}


_CONFIG_PATHS = st.sampled_from([(), ("generator",), ("generator", "arch"), ("generator", "z_dim"),
                                 ("generator", "resolution"), ("generator", "channels"), ("generator", "width"),
                                 ("generator", "pruned"), ("recipe",), ("recipe", "variant"),
                                 ("recipe", "calibration_seed"), ("recipe", "calibration_batches"),
                                 ("recipe", "calibration_batch_size"), ("recipe", "quantization_backend"),
                                 ("recipe", "prune_ratio"), ("baseline",), ("baseline", "generator"),
                                 ("baseline", "generator", "z_dim"), ("baseline", "generator", "pruned"),
                                 ("format",), ("generator", "unknown"), ("recipe", "unknown")])


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(path=_CONFIG_PATHS, value=JSON_VALUES, runtime=st.sampled_from(["torch", "onnxruntime"]),
       model=st.sampled_from(["winner", "baseline"]))
def test_fuzzed_config_json_loads_or_is_one_line(package_copy, pristine, reliability, path, value, runtime, model):
    config = json.loads(pristine["config.json"])
    (package_copy / "manifest.json").write_bytes(pristine["manifest.json"])
    _write_json(package_copy / "config.json", _replaced(config, path, value))
    _rehash(package_copy, "config.json")
    reliability.bad_input(int(not _loads_or_refuses(package_copy, runtime, model)))


@FUZZ
@given(path=st.sampled_from([(), ("format",), ("files",), ("files", "config.json"), ("files", "model.safetensors"),
                             ("files", "generator.onnx"), ("files", "samples.png")])
       | st.text(max_size=10).map(lambda name: ("files", name)),
       value=JSON_VALUES)
def test_fuzzed_manifest_loads_or_is_one_line(package_copy, pristine, reliability, path, value):
    manifest = json.loads(pristine["manifest.json"])
    _write_json(package_copy / "manifest.json", _replaced(manifest, path, value))
    reliability.bad_input(int(not _loads_or_refuses(package_copy, "torch", "winner")))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(max_size=300), name=st.sampled_from(["model.safetensors", "generator.onnx"]))
def test_fuzzed_weights_and_onnx_bytes_are_one_line(package_copy, reliability, data, name):
    (package_copy / name).write_bytes(data)
    _rehash(package_copy, name)
    reliability.bad_input()
    assert not _loads_or_refuses(package_copy, "torch" if name == "model.safetensors" else "onnxruntime", "winner")


# --- bench results, read back by `ganforge bench --render` ---

@pytest.fixture
def bench_repo(tmp_path) -> Path:
    """A checkout holding only bench/: render() reads the benchmarks' JSON there."""
    shutil.copytree(REPO / "bench", tmp_path / "repo" / "bench")
    return tmp_path / "repo"


def _renders_or_refuses(results: Any, repo: Path, source: str) -> bool:
    from ganforge.benchmarking.suite import render

    doc = repo / "benchmarks.md"
    try:
        render(results, repo, doc, source)
    except UserError as e:
        _one_line(e)
        assert source in str(e) or str(repo / "bench") in str(e), str(e)
        return False
    assert "<!-- targets:end -->" in doc.read_text()
    return True


_RESULTS = json.loads((REPO / "bench/results.json").read_text())
_BENCH_FILES = [name for name in ("pipeline_budget", "data_path", "time_to_quality", "time_to_quality_6000",
                                   "evaluation_speed", "optimize_speed", "optimize_cifar", "featurizer_budget",
                                   "inception_reference") if (REPO / "bench" / f"{name}.json").is_file()]


def test_the_committed_bench_results_render(bench_repo):
    assert _renders_or_refuses(_RESULTS, bench_repo, "bench/results.json")


@pytest.mark.parametrize(("path", "value", "field"), [
    ((), [], "expected a JSON object"),
    (("ceilings", "fp32_gemm_gflops", "median"), "fast", "ceilings.fp32_gemm_gflops.median: expected a number"),
    (("generation", "rows", "seed", "gflops"), 2**1100, "generation.rows.seed.gflops: expected a number"),
    (("machine", "cpu_flags"), "avx2", "machine.cpu_flags: expected a list"),
    (("training", "ddp"), None, "training.ddp: expected a JSON object"),
    (("pipeline", "noop_repro"), {"wall_s": True}, "pipeline.noop_repro.wall_s"),
    (("quick",), "yes", "quick: expected true or false"),
])
def test_bad_bench_results_are_one_line(bench_repo, reliability, path, value, field):
    from ganforge.benchmarking.suite import render

    reliability.bad_input()
    with pytest.raises(UserError) as refused:
        render(_replaced(_RESULTS, path, value), bench_repo, bench_repo / "benchmarks.md", "bench/results.json")
    _one_line(refused.value, "bench/results.json", field)


def test_a_bench_file_of_the_wrong_shape_names_it(bench_repo, reliability):
    from ganforge.benchmarking.suite import render

    doc = bench_repo / "benchmarks.md"
    reliability.bad_input(3)
    (bench_repo / "bench/time_to_quality.json").write_text(json.dumps({"lite": {"fid": 1.0}, "seed": {"fid": 0}}))
    with pytest.raises(UserError) as refused:
        render(_RESULTS, bench_repo, doc)
    _one_line(refused.value, "time_to_quality.json", "seed.fid: expected a positive number")
    (bench_repo / "bench/time_to_quality.json").write_bytes(b"\xff")
    with pytest.raises(UserError, match="time_to_quality.json: not UTF-8"):
        render(_RESULTS, bench_repo, doc)
    (bench_repo / "bench/time_to_quality.json").unlink()
    (bench_repo / "bench/time_to_quality.json").mkdir()
    with pytest.raises(UserError, match="time_to_quality.json: is a directory"):
        render(_RESULTS, bench_repo, doc)


_RESULT_PATHS = [p for p in _paths(_RESULTS) if len(p) <= 4]


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(path=st.sampled_from(_RESULT_PATHS), value=JSON_VALUES)
def test_fuzzed_bench_results_render_or_are_one_line(bench_repo, reliability, path, value):
    reliability.bad_input(int(not _renders_or_refuses(_replaced(_RESULTS, path, value), bench_repo, "results.json")))


@FUZZ
@given(name=st.sampled_from(_BENCH_FILES), data=st.data(), value=JSON_VALUES)
def test_fuzzed_bench_files_render_or_are_one_line(bench_repo, reliability, name, data, value):
    original = json.loads((REPO / "bench" / f"{name}.json").read_text())
    path = data.draw(st.sampled_from([p for p in _paths(original) if len(p) <= 3]))
    _write_json(bench_repo / "bench" / f"{name}.json", _replaced(original, path, value))
    reliability.bad_input(int(not _renders_or_refuses(_RESULTS, bench_repo, "results.json")))


# --- the other readers: records, the optimize report, reference info, featurizer metadata, train.json,
# checkpoints, ONNX files and DVC's diff output ---

@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(spec=JSON_VALUES | st.fixed_dictionaries({"arch": st.sampled_from(["seed", "dcgan", "lite"]),
                                                 "z_dim": JSON_VALUES, "resolution": JSON_VALUES,
                                                 "channels": JSON_VALUES}),
       recipe=JSON_VALUES | st.fixed_dictionaries({"variant": st.sampled_from(["fp32", "int8", "pruned+fused"]),
                                                   "calibration_batches": JSON_VALUES}))
def test_fuzzed_spec_and_recipe_records_are_checked_or_one_line(reliability, spec, recipe):
    from ganforge.models import GeneratorSpec
    from ganforge.models.registry import MAX_Z_DIM, RESOLUTIONS
    from ganforge.runtime.variants import Recipe

    refused = 0
    for read, value in ((GeneratorSpec.from_dict, spec), (Recipe.from_dict, recipe)):
        try:
            record = read(value, source="x.json")
        except UserError as e:
            _one_line(e, "x.json: ")
            refused += 1
            continue
        if isinstance(record, GeneratorSpec):
            assert 1 <= record.z_dim <= MAX_Z_DIM and record.resolution in RESOLUTIONS and record.channels in (1, 3)
        else:
            assert 1 <= record.calibration_batches <= 1024
    reliability.bad_input(refused)


@FUZZ
@given(data=st.data(), value=JSON_VALUES)
def test_fuzzed_optimize_report_is_checked_before_the_model_card(tiny_run, tiny_configs, reliability, tmp_path, data,
                                                                  value):
    from ganforge.models import load_generator
    from ganforge.packaging.build import read_report
    from ganforge.packaging.card import model_card
    from ganforge.runtime.variants import Recipe

    report = json.loads((tiny_run.optimized / "optimize.json").read_text())
    recipe = Recipe.from_dict(json.loads((tiny_run.optimized / "recipe.json").read_text()))
    rows = (("variants", recipe.variant, key) for key in report["variants"][recipe.variant])
    path = data.draw(st.sampled_from([p for p in _paths(report) if len(p) <= 2] + list(rows)))
    (tmp_path / "optimize.json").write_text(json.dumps(_replaced(report, path, value)))
    try:
        checked = read_report(tmp_path / "optimize.json", recipe.variant)
    except UserError as e:
        _one_line(e, "optimize.json")
        reliability.bad_input()
        return
    _, spec = load_generator(tiny_run.optimized / "generator.safetensors")
    data_manifest = json.loads((tiny_run.prepared / "manifest.json").read_text())
    parity = {"onnx_max_abs_diff": 0.0, "onnx_fid": 1.0, "evaluated_fid": 1.0, "fid_rel_diff": 0.0}
    assert model_card(spec, recipe, checked, data_manifest, parity, report["protocol"], 1, tiny_configs["package"])


@pytest.fixture
def reference_copy(tiny_run, tmp_path) -> Path:
    return Path(shutil.copytree(tiny_run.reference, tmp_path / "reference"))


@FUZZ
@given(data=st.data(), value=JSON_VALUES)
def test_fuzzed_reference_info_loads_or_is_one_line(tiny_run, tiny_configs, reference_copy, reliability, data, value):
    from ganforge.evaluation.reference import INFO_FILE, load_reference

    info = json.loads((tiny_run.reference / INFO_FILE).read_text())
    path = data.draw(st.sampled_from(_paths(info) + [("files", 0)]))
    if path == ("files", 0):
        info["files"][0] = value
        path, value = ("files",), info["files"]
    _write_json(reference_copy / INFO_FILE, _replaced(info, path, value))
    try:
        stats = load_reference(reference_copy, tiny_configs["reference"], tiny_run.featurizer)
    except UserError as e:
        _one_line(e, str(reference_copy))
        reliability.bad_input()
        return
    assert all(stats.cache_name(split) for split in ("train", "test"))


def test_reference_info_names_that_escape_the_directory_are_refused(tiny_run, tiny_configs, reference_copy,
                                                                    reliability):
    from ganforge.evaluation.reference import INFO_FILE, load_reference

    info = json.loads((reference_copy / INFO_FILE).read_text())
    for field, bad in ((("cache_names", "train"), "../../x"), (("files",), ["a\nb"]), (("counts", "test"), "359")):
        reliability.bad_input()
        _write_json(reference_copy / INFO_FILE, _replaced(info, field, bad))
        with pytest.raises(UserError) as refused:
            load_reference(reference_copy, tiny_configs["reference"], tiny_run.featurizer)
        _one_line(refused.value, "reference.json", field[0])


def _featurizer_with(tiny_run, path: Path, metadata: dict[str, str]) -> None:
    from ganforge.models.registry import load_weights

    save_file(load_weights(tiny_run.featurizer), path, metadata=metadata)


@pytest.mark.parametrize(("metadata", "field"), [
    ({}, "metadata: config: missing"),
    ({"config": "{"}, "metadata: config: malformed JSON"),
    ({"config": "[" * 100_000}, "metadata: config: malformed JSON"),
    ({"config": "[1]"}, "config: expected a JSON object"),
    ({"config": json.dumps({"channels": 1, "num_classes": 10, "width": 10**9, "feature_dim": 64})}, "config.width"),
    ({"config": json.dumps({"channels": 1, "num_classes": 10**9, "width": 32, "feature_dim": 64})},
     "config.num_classes"),
    ({"config": json.dumps({"channels": 1, "num_classes": 10, "width": 1024, "feature_dim": 4096})},
     "weights do not match"),  # in range, but not these weights: nothing the size of it is allocated
])
def test_bad_featurizer_metadata_is_one_line(tiny_run, tmp_path, reliability, metadata, field):
    from ganforge.evaluation.features import load_featurizer

    path = tmp_path / "featurizer.safetensors"
    _featurizer_with(tiny_run, path, metadata)
    reliability.bad_input()
    with pytest.raises(UserError) as refused:
        load_featurizer(path)
    _one_line(refused.value, str(path), field)


@FUZZ
@given(key=st.sampled_from(["channels", "num_classes", "width", "feature_dim", "extra"]), value=JSON_VALUES)
def test_fuzzed_featurizer_metadata_loads_or_is_one_line(tiny_run, tmp_path, reliability, key, value):
    from ganforge.evaluation.features import load_featurizer

    config = {"channels": 1, "num_classes": 10, "width": 32, "feature_dim": 64} | {key: value}
    path = tmp_path / "featurizer.safetensors"
    _featurizer_with(tiny_run, path, {"config": json.dumps(config)})
    try:
        net = load_featurizer(path)
    except UserError as e:
        _one_line(e, str(path))
        reliability.bad_input()
        return
    features, logits = net(torch.zeros(2, 1, 16, 16, dtype=torch.uint8))
    assert features.shape == (2, 64) and logits.shape == (2, 10)


@pytest.fixture
def train_copy(tiny_run, tmp_path) -> Path:
    out = tmp_path / "train"
    out.mkdir()
    for name in ("train.json", "checkpoint.pt"):
        shutil.copy(tiny_run.train_dir / name, out / name)
    return out


@FUZZ
@given(key=st.sampled_from(["arch", "width", "d_spectral_norm"]), value=JSON_VALUES, whole=st.booleans())
def test_fuzzed_train_json_rebuilds_the_discriminator_or_is_one_line(tiny_run, train_copy, reliability, key, value,
                                                                     whole):
    from ganforge.models import load_generator
    from ganforge.optimization.pruning import trained_discriminator

    record = json.loads((tiny_run.train_dir / "train.json").read_text())
    _write_json(train_copy / "train.json", _replaced(record, ("params",) if whole else ("params", key), value))
    _, spec = load_generator(tiny_run.train_dir / "generator.safetensors")
    try:
        discriminator = trained_discriminator(train_copy, spec)
    except UserError as e:
        _one_line(e, str(train_copy))
        reliability.bad_input()
        return
    assert discriminator(torch.zeros(2, spec.channels, spec.resolution, spec.resolution)).shape[0] == 2


@pytest.mark.parametrize(("write", "message"), [
    (lambda p: torch.save([1, 2], p), "not a ganforge checkpoint"),
    (lambda p: torch.save({1: torch.zeros(1)}, p), "not a ganforge checkpoint"),
    (lambda p: torch.save({"step": 1}, p), "discriminator: missing from the checkpoint"),
    (lambda p: p.mkdir(), "is a directory"),
    (lambda p: p.write_bytes(b"\xff" * 64), "unreadable checkpoint"),
])
def test_bad_checkpoints_are_one_line(tmp_path, reliability, write, message):
    from ganforge.training.checkpoint import load_checkpoint

    path = tmp_path / "checkpoint.pt"
    write(path)
    reliability.bad_input()
    with pytest.raises(UserError) as refused:
        load_checkpoint(path, required=("discriminator",))
    _one_line(refused.value, str(path), message)


def test_a_garbage_rng_state_is_one_line(reliability):
    from ganforge.training.checkpoint import capture_rng, restore_rng

    good = capture_rng()
    bad_states = [{}, good | {"torch": torch.zeros(3)}, good | {"numpy": {"name": 5}},
                  good | {"python": {"version": 3, "internal": [1], "gauss_next": None}}]
    for bad in bad_states:
        with pytest.raises(UserError) as refused:
            restore_rng(bad, "checkpoint.pt")
        _one_line(refused.value, "checkpoint.pt: rng: not a captured RNG state")
    reliability.bad_input(len(bad_states))
    restore_rng(good)  # the state it captured goes back


@FUZZ
@given(diff=JSON_VALUES | st.dictionaries(st.text(max_size=6), st.dictionaries(
    st.sampled_from(["fid", "img_per_s", "winner_fid", "x.y"]),
    st.fixed_dictionaries({"old": JSON_VALUES, "new": JSON_VALUES}) | JSON_VALUES, max_size=3), max_size=2))
def test_fuzzed_dvc_diff_output_reports_or_is_one_line(reliability, diff):
    from ganforge.reporting.report import Budget, _metric_rows, _param_rows, gate, parse_diff

    try:
        parsed = parse_diff(json.dumps(diff), "dvc metrics diff --json")
    except UserError as e:
        _one_line(e, "dvc metrics diff --json")
        reliability.bad_input()
        return
    assert all(len(line.splitlines()) == 1 for line in gate(parsed, Budget()))
    assert _metric_rows(parsed) and _param_rows(parsed)


def test_malformed_dvc_diff_output_is_one_line(reliability):
    from ganforge.reporting.report import parse_diff

    reliability.bad_input(2)
    with pytest.raises(UserError, match="^dvc params diff --json: malformed JSON output"):
        parse_diff("{not json", "dvc params diff --json")
    with pytest.raises(UserError, match="^dvc params diff --json: malformed JSON output"):
        parse_diff("1" * 5000, "dvc params diff --json")  # an integer past Python's 4300-digit limit



def test_the_long_run_curve_reads_as_targets_at_30_and_60_minutes(bench_repo):
    from ganforge.benchmarking.suite import render

    curve = {"summary": {"best": "default", "snapshot_key": "fid_inception_10k",
                         "snapshot_over_best": {"10": 1.0, "20": 1.0, "30": 1.02, "60": 1.3}}}
    (bench_repo / "bench/time_to_quality_60min.json").write_text(json.dumps(curve))
    render(_RESULTS, bench_repo, bench_repo / "benchmarks.md")
    rows = {line.split(" | ")[0]: line for line in (bench_repo / "benchmarks.md").read_text().splitlines()
            if "60 min: `default`" in line}
    assert len(rows) == 2
    at_30, at_60 = (next(line for line in rows.values() if f"minute {m} " in line) for m in (30, 60))
    assert "| 1.02 |" in at_30 and "**missed**" not in at_30
    assert "| 1.3 |" in at_60 and "**missed**" in at_60


@pytest.mark.parametrize(("entry", "what"), [
    ("{what: x, by: y}", "no bound"), ("{what: x, by: y, at_most: 1, at_least: 0}", "two bounds"),
    ("{what: x, by: y, at_most: ten}", "a bound that is not a number"), ("[1, 2]", "not a mapping")])
def test_a_malformed_target_is_a_one_line_error_naming_it(tmp_path, entry, what, reliability):
    from ganforge.benchmarking.targets import load_targets

    path = tmp_path / "targets.yaml"
    path.write_text(f"fine: {{what: a, by: b, at_least: 2}}\nbroken: {entry}\n")
    reliability.bad_input()
    with pytest.raises(UserError, match=r"targets\.yaml: broken: expected what, by and one number at_most or "
                                        r"at_least, got "):
        load_targets(path)


def test_the_shipped_targets_file_holds_every_target_the_bench_page_renders():
    from ganforge.benchmarking.targets import TARGETS_FILE, load_targets

    targets = load_targets(REPO / "bench" / TARGETS_FILE)
    assert targets["featurizer_minutes"].bound == 2 and targets["featurizer_minutes"].at_most
    assert targets["recipe_recall"].bound == 0.45 and not targets["recipe_recall"].at_most
