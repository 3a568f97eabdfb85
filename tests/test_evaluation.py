"""Featurizer and evaluate: torch-fidelity metrics through the registered domain extractor."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
import torch_fidelity
from PIL import Image
from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY

from ganforge.data.prepared import ImageTensorDataset, load_split
from ganforge.evaluation import features
from ganforge.evaluation.features import learning_rate, load_featurizer, train_featurizer
from ganforge.evaluation.fidelity import DOMAIN_EXTRACTOR
from ganforge.evaluation.protocol import make_protocol, score_generator

METRIC_KEYS = {"fid", "kid_mean", "kid_std", "isc_mean", "isc_std", "precision", "recall"}


def test_featurizer_learns_the_classes(tiny_run):
    metrics = json.loads(tiny_run.featurizer_metrics.read_text())
    assert metrics["test_accuracy"] > 0.5  # 10 classes: chance is 0.1
    net = load_featurizer(tiny_run.featurizer)
    features, logits = net(torch.zeros(2, 1, 16, 16, dtype=torch.uint8))
    assert features.shape == (2, metrics["feature_dim"]) and logits.shape == (2, 10)


def test_featurizer_ends_its_schedule_at_the_time_bound(tiny_run, tiny_configs, tmp_path):
    ticks = iter(range(0, 10**6, 20))  # a clock that moves 20 s per reading, however fast the machine is
    # 3 minutes: half goes to the final passes' reserve, the first readings to loading; a few steps remain.
    cfg = dataclasses.replace(tiny_configs["featurizer"], max_minutes=3.0)
    metrics = train_featurizer(cfg, tiny_run.prepared, tmp_path / "f.safetensors", tmp_path / "f.json",
                               clock=lambda: next(ticks))
    assert metrics["stopped"] == "time" and 0 < metrics["epochs"] < 1 and metrics["minutes"] >= 1
    assert json.loads((tmp_path / "f.json").read_text()) == metrics


def test_half_side_is_the_rounded_mean_of_each_2x2_block():
    images = torch.tensor([[[[0, 1, 10, 20], [2, 3, 30, 40], [255, 255, 0, 0], [255, 254, 0, 1]]]], dtype=torch.uint8)
    assert features.half_side(images).tolist() == [[[[2, 25], [255, 0]]]]  # 1.5 -> 2, 254.75 -> 255, 0.25 -> 0


def test_the_first_share_of_the_schedule_trains_at_half_size(tmp_path, tiny_configs, monkeypatch):
    from ganforge.config import PrepareConfig
    from ganforge.data.prepare import prepare

    prepare(PrepareConfig(source="digits", resolution=32, max_images=300), tmp_path / "prepared", tmp_path / "g.png")
    sides = []
    forward = features.DomainFeatureNet.forward
    monkeypatch.setattr(features.DomainFeatureNet, "forward",
                        lambda net, x: (sides.append(x.shape[-1]) if net.training else None) or forward(net, x))
    cfg = dataclasses.replace(tiny_configs["featurizer"], epochs=4, low_res_share=0.5, patience=0)
    train_featurizer(cfg, tmp_path / "prepared", tmp_path / "f.safetensors", tmp_path / "f.json")
    # Training steps only (scoring is in eval mode): the first half at 16 px, then 32 px to the end.
    assert sides == sorted(sides) and set(sides) == {16, 32} and sides.count(16) == len(sides) // 2


def test_featurizer_stops_once_heldout_accuracy_stops_improving(tiny_run, tiny_configs, tmp_path, monkeypatch):
    monkeypatch.setattr(features, "accuracy", lambda *args, **kwargs: 0.5)  # never better than the first score
    cfg = dataclasses.replace(tiny_configs["featurizer"], epochs=10, patience=2)
    metrics = train_featurizer(cfg, tiny_run.prepared, tmp_path / "f.safetensors", tmp_path / "f.json")
    # Small data is scored once per epoch and the first score is the best. Scores count toward patience once the
    # learning rate has fallen to half its peak (from the 7th of 10 epochs), so the 8th epoch's score stops it.
    assert metrics["stopped"] == "plateau" and metrics["epochs"] == 8 and metrics["best_at_epoch"] == 1


def test_learning_rate_rises_then_falls_to_zero():
    rates = [learning_rate(0.01, p / 100) for p in range(101)]
    peak = rates.index(max(rates))
    assert rates[0] == pytest.approx(0.0004) and max(rates) == pytest.approx(0.01) and rates[-1] == pytest.approx(0)
    steps = np.diff(rates)
    assert peak == 25 and (steps[:peak] > 0).all() and (steps[peak:] <= 0).all()


def test_evaluate_metrics_and_protocol(tiny_run, tiny_configs):
    metrics = json.loads(tiny_run.evaluate_metrics.read_text())
    assert metrics.keys() >= METRIC_KEYS
    assert metrics["fid"] > 0 and 0 <= metrics["precision"] <= 1 and 0 <= metrics["recall"] <= 1
    assert 0 <= metrics["fid_real_floor"] < metrics["fid"] and metrics["kid_real_floor"] < metrics["kid_mean"]
    speed = json.loads(tiny_run.evaluate_speed.read_text())
    assert speed["img_per_s_min"] <= speed["img_per_s"] <= speed["img_per_s_max"]
    assert speed["latency_ms_batch1"] > 0 and speed["protocol"]["speed_batch"] == tiny_configs["evaluate"].speed_batch
    assert not {"img_per_s", "latency_ms_batch1"} & metrics.keys()  # timings would break bit-identical reruns
    protocol = metrics["protocol"]
    assert protocol["generator"] == "best"
    assert protocol["num_samples"] == tiny_configs["evaluate"].num_samples
    assert protocol["feature_extractor"] == "domain" and len(protocol["feature_extractor_sha256"]) == 64
    assert Image.open(tiny_run.evaluate_grid).size[0] >= 512
    truncated = metrics["truncation"]
    assert set(truncated) == {"psi_1", "psi_0_5"}  # evaluate.truncation_psis: [1.0, 0.5]
    assert all(0 <= t["precision"] <= 1 and 0 <= t["recall"] <= 1 for t in truncated.values())
    # Truncating harder gives up variety: recall falls (the fidelity/diversity trade truncation makes).
    assert truncated["psi_0_5"]["recall"] <= truncated["psi_1"]["recall"] <= metrics["recall"] + 0.05


def test_nearest_neighbour_grid_pairs_each_sample_with_training_images(tiny_run, tiny_configs):
    grid = np.array(Image.open(tiny_run.evaluate_nearest))
    # nearest_count rows of 1 generated + 5 training images, each 16 px plus 1 px padding, upscaled evenly
    rows, cols = tiny_configs["evaluate"].nearest_count, 6
    height, width = grid.shape[:2]
    assert width / height == pytest.approx((cols * 17 + 1) / (rows * 17 + 1))


def test_domain_extractor_is_registered_with_torch_fidelity():
    assert DOMAIN_EXTRACTOR in FEATURE_EXTRACTORS_REGISTRY


def test_real_data_scores_better_than_noise(tiny_run, tiny_protocol):
    """FID separates a copy of the reference data from noise, so the metric can fail."""
    same = torch_fidelity.calculate_metrics(
        input1=ImageTensorDataset(load_split(tiny_run.prepared, "test")),
        input2=ImageTensorDataset(load_split(tiny_run.prepared, "train")), fid=True,
        feature_extractor=DOMAIN_EXTRACTOR, feature_extractor_weights_path=str(tiny_run.featurizer),
        cuda=False, verbose=False, cache=False, save_cpu_ram=True)["frechet_inception_distance"]

    class Noise(torch.nn.Module):
        def forward(self, z):
            return torch.rand(z.shape[0], 1, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1

    noise = score_generator(Noise(), 8, tiny_protocol)["fid"]
    assert same < noise / 10


def test_scoring_is_deterministic(tiny_run, tiny_configs, tiny_protocol):
    from ganforge.models import load_generator
    from ganforge.models.registry import trained_generator_path

    scored = trained_generator_path(tiny_run.train_dir, tiny_configs["evaluate"].generator)  # best, by default
    generator, spec = load_generator(scored)
    first = score_generator(generator, spec.z_dim, tiny_protocol)
    stored = json.loads(tiny_run.evaluate_metrics.read_text())
    assert first["fid"] == stored["fid"]
    assert np.isfinite(list(first.values())).all()


def test_kid_subset_larger_than_the_data_is_a_user_error(tiny_run, tiny_configs, reliability):
    reliability.bad_input()
    import dataclasses

    from ganforge.errors import UserError

    cfg = dataclasses.replace(tiny_configs["evaluate"], kid_subset_size=10**6)
    with pytest.raises(UserError, match="evaluate.kid_subset_size"):
        make_protocol(cfg, tiny_configs["reference"], tiny_run.reference, tiny_run.featurizer)
