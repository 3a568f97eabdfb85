"""Differentiable augmentation and the ADA controller."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from ganforge.config import TrainConfig, config_from_dict
from ganforge.data.augment import AdaptiveProbability, DiffAugment
from ganforge.errors import UserError

POLICY = ("color", "translation", "cutout")


def test_augmentation_changes_images_is_differentiable_and_seeded():
    x = (torch.rand(16, 3, 16, 16) * 2 - 1).requires_grad_()
    a, b = DiffAugment(POLICY, seed=1)(x), DiffAugment(POLICY, seed=1)(x)
    assert a.shape == x.shape and torch.equal(a, b)
    assert not torch.allclose(a, x)
    a.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_probability_zero_is_identity_and_empty_policy_is_identity():
    x = torch.rand(8, 1, 8, 8)
    assert torch.equal(DiffAugment(POLICY, seed=0, p=0.0)(x), x)
    assert torch.equal(DiffAugment((), seed=0)(x), x)


def test_translation_keeps_content_and_cutout_zeroes_a_patch():
    x = torch.ones(64, 1, 16, 16)
    translated = DiffAugment(("translation",), seed=0)(x)
    assert translated.max() == 1 and (translated == 0).any()  # shifted in zeros at some border
    cut = DiffAugment(("cutout",), seed=0)(x)
    zero_fraction = float((cut == 0).float().mean())
    assert 0.05 < zero_fraction < 0.3


def test_ada_raises_p_when_d_is_overconfident_and_lowers_it_otherwise():
    ada = AdaptiveProbability(target=0.6, speed_kimg=1.0, interval_steps=1)
    for _ in range(10):
        ada.observe(1.0, 50)  # sign(D(real)) = +1 > target
    assert ada.p == pytest.approx(0.5)
    for _ in range(20):
        ada.observe(-1.0, 50)
    assert ada.p == 0.0


def test_unknown_policy_is_a_user_error():
    with pytest.raises(UserError, match="train.augment: unknown augmentation 'blur'"):
        config_from_dict(TrainConfig, {"augment": "color,blur"})


def test_training_with_ada_logs_p(tmp_path, tiny_run, tiny_configs):
    from ganforge.training.loop import train

    cfg = dataclasses.replace(tiny_configs["train"], kimg=0.3, augment="color,translation,cutout", ada_target=0.6,
                              fid_interval_kimg=0, snapshot_kimg=0,
                              ada_kimg=1.0, log_interval_kimg=0.1)
    train(cfg, tiny_run.prepared, tmp_path / "out", tmp_path / "live")
    rows = (tmp_path / "live/plots/metrics/augment_p.tsv").read_text().splitlines()
    assert rows[0].split("\t") == ["step", "augment_p"] and len(rows) > 2
    assert any(float(r.split("\t")[1]) > 0 for r in rows[1:])
