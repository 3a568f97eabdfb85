"""The inception-v3-compat extractor: loading from a local weights file (a stand-in built here, since the real
weights need a download), the offline error, and refusal of a weights file that carries code."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from ganforge.config import EvaluateConfig, PrepareConfig, ReferenceConfig
from ganforge.errors import UserError
from ganforge.evaluation.fidelity import inception_weights
from ganforge.evaluation.protocol import make_protocol, score_generator
from ganforge.evaluation.reference import compute_reference
from ganforge.models import GeneratorSpec, build_generator


@pytest.fixture(scope="module")
def stand_in_weights(tmp_path_factory) -> str:
    """A randomly initialised state dict of torch-fidelity's Inception, saved like the real weights file."""
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
def test_inception_scores_a_grey_generator_from_a_local_weights_file(tmp_path, stand_in_weights):
    from ganforge.data.prepare import prepare

    prepare(PrepareConfig(resolution=16, max_images=40), tmp_path / "prepared", tmp_path / "grid.png")
    reference = ReferenceConfig(feature_extractor="inception-v3-compat", inception_weights=stand_in_weights,
                                batch_size=12)
    no_featurizer = tmp_path / "no-featurizer-needed.safetensors"
    real = compute_reference(reference, tmp_path / "prepared", no_featurizer, tmp_path / "reference",
                             tmp_path / "reference.json")
    assert real["train"]["count"] + real["test"]["count"] == 40 and math.isfinite(real["train"]["isc_mean"])
    cfg = EvaluateConfig(num_samples=12, batch_size=12, kid_subset_size=6, kid_subsets=2)
    protocol = make_protocol(cfg, reference, tmp_path / "reference", no_featurizer)
    generator = build_generator(GeneratorSpec("seed", 8, 16, 1)).eval()
    metrics = score_generator(generator, 8, protocol)
    assert all(math.isfinite(v) for v in metrics.values()) and metrics["fid"] > 0
    described = protocol.describe()
    assert described["feature_extractor"] == "inception-v3-compat" and "299x299" in described["resize"]


def test_offline_without_weights_is_a_one_line_error(tmp_path, monkeypatch, reliability):
    reliability.bad_input()
    def offline(*args, **kwargs):
        raise OSError("network unreachable")

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    with pytest.raises(UserError, match="could not be downloaded .* set reference.inception_weights to the file"):
        inception_weights(ReferenceConfig(feature_extractor="inception-v3-compat"))
    with pytest.raises(UserError, match="reference.inception_weights: .*missing.pth not found"):
        inception_weights(ReferenceConfig(feature_extractor="inception-v3-compat",
                                          inception_weights=str(tmp_path / "missing.pth")))


class _Payload:
    pass


def test_a_weights_file_carrying_code_is_refused(tmp_path, reliability):
    reliability.bad_input()
    path = tmp_path / "evil.pth"
    torch.save({"x": _Payload()}, path)
    cfg = dataclasses.replace(ReferenceConfig(), feature_extractor="inception-v3-compat", inception_weights=str(path))
    with pytest.raises(UserError, match="is not a plain state dict"):
        inception_weights(cfg)
