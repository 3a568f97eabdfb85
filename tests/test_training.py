"""The train stage's library function on a tiny budget."""

from __future__ import annotations

import json

import pytest
import torch

from ganforge.errors import UserError
from ganforge.models import load_generator
from ganforge.training.checkpoint import load_checkpoint, save_checkpoint
from ganforge.training.ema import GeneratorEMA


def test_train_writes_generator_checkpoint_and_loss_curves(tiny_run, tiny_configs):
    cfg = tiny_configs["train"]
    generator, spec = load_generator(tiny_run.train_dir / "generator.safetensors")
    assert (spec.resolution, spec.channels, spec.z_dim) == (16, 1, cfg.z_dim)
    images = generator(torch.randn(5, spec.z_dim))
    assert images.shape == (5, 1, 16, 16) and torch.isfinite(images).all()

    state = load_checkpoint(tiny_run.train_dir / "checkpoint.pt")
    assert state["cur_nimg"] == state["step"] * cfg.batch_size >= cfg.kimg * 1000
    assert {"generator", "generator_ema", "discriminator", "opt_g", "opt_d"} <= state.keys()

    for name in ("loss_d", "loss_g"):
        rows = (tiny_run.live_dir / "plots/metrics" / f"{name}.tsv").read_text().splitlines()
        assert rows[0].split("\t") == ["step", name] and len(rows) >= 3
    summary = json.loads((tiny_run.live_dir / "metrics.json").read_text())
    assert summary["train_img_per_s"] > 0


def test_training_changes_the_weights_and_is_deterministic(tmp_path, tiny_run, tiny_configs):
    import dataclasses

    from ganforge.training.loop import train

    cfg = dataclasses.replace(tiny_configs["train"], kimg=0.2)
    for name in ("a", "b"):
        train(cfg, tiny_run.prepared, tmp_path / name, tmp_path / f"live_{name}")
    a = (tmp_path / "a/generator.safetensors").read_bytes()
    assert a == (tmp_path / "b/generator.safetensors").read_bytes()
    assert a != (tiny_run.train_dir / "generator.safetensors").read_bytes()


def test_ema_half_life():
    net = torch.nn.Linear(1, 1, bias=False)
    torch.nn.init.zeros_(net.weight)
    ema = GeneratorEMA(net, half_life_kimg=1.0)
    torch.nn.init.ones_(net.weight)
    ema.update(net, batch_nimg=1000)  # one half-life: halfway from 0 to 1
    assert ema.average.weight.item() == pytest.approx(0.5)


def test_truncated_checkpoint_is_a_clear_error(tmp_path):
    path = tmp_path / "c.pt"
    save_checkpoint(path, {"w": torch.randn(100)})
    path.write_bytes(path.read_bytes()[:50])
    with pytest.raises(UserError, match="unreadable checkpoint"):
        load_checkpoint(path)
