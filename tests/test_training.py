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


_RUN_TRAINING = """
import sys
from ganforge.config import TrainConfig, config_from_dict
from ganforge.training.loop import train
cfg = config_from_dict(TrainConfig, {{"kimg": 8.0, "batch_size": 32, "log_interval_kimg": 0.5,
                                      "checkpoint_kimg": 0.4, "ema_kimg": 0.5, "augment": "color,translation",
                                      "ada_target": 0.6, "ada_kimg": 2.0}})
train(cfg, {data!r}, sys.argv[1], sys.argv[2])
"""


def test_sigkill_then_resume_is_bit_identical_to_an_uninterrupted_run(tmp_path, tiny_run):
    import os
    import signal
    import subprocess
    import sys
    import time

    script = _RUN_TRAINING.format(data=str(tiny_run.prepared))
    env = os.environ | {"OMP_NUM_THREADS": "1"}

    def run(out: str) -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "-c", script, str(tmp_path / out), str(tmp_path / f"{out}_live")],
                                env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)

    assert run("straight").wait(timeout=300) == 0
    victim = run("killed")
    checkpoint = tmp_path / "killed" / "checkpoint.pt"
    deadline = time.monotonic() + 300
    while not checkpoint.exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    interrupted_at = load_checkpoint(checkpoint)["step"]
    assert 0 < interrupted_at < 250, "the kill must land mid-run for this test to mean anything"

    resumed = run("killed")
    _, stderr = resumed.communicate(timeout=300)
    assert resumed.returncode == 0 and "resuming from" in stderr
    for name in ("generator.safetensors",):
        assert (tmp_path / "killed" / name).read_bytes() == (tmp_path / "straight" / name).read_bytes()
    final = load_checkpoint(tmp_path / "killed" / "checkpoint.pt")
    straight = load_checkpoint(tmp_path / "straight" / "checkpoint.pt")
    for key in ("generator", "discriminator", "generator_ema"):
        assert all(torch.equal(final[key][k], straight[key][k]) for k in straight[key])
    assert final["ada"] == straight["ada"]


def test_finished_or_foreign_checkpoint_starts_from_scratch(tmp_path, tiny_run, tiny_configs, capsys):
    import dataclasses

    from ganforge.training.loop import train

    cfg = dataclasses.replace(tiny_configs["train"], kimg=0.2)
    train(cfg, tiny_run.prepared, tmp_path / "out", tmp_path / "live")
    first = (tmp_path / "out/generator.safetensors").read_bytes()
    train(cfg, tiny_run.prepared, tmp_path / "out", tmp_path / "live")
    assert "finished run; starting from scratch" in capsys.readouterr().err
    assert (tmp_path / "out/generator.safetensors").read_bytes() == first
    train(dataclasses.replace(cfg, lr=0.001), tiny_run.prepared, tmp_path / "out", tmp_path / "live")
    assert "from other params or data; starting from scratch" in capsys.readouterr().err


def test_nan_loss_stops_cleanly_and_keeps_the_last_checkpoint(tmp_path, tiny_run, tiny_configs, monkeypatch):
    import dataclasses

    from ganforge.training import loop

    cfg = dataclasses.replace(tiny_configs["train"], kimg=1.0, checkpoint_kimg=0.2)
    real_loss = loop.g_loss_nonsaturating
    calls = {"n": 0}

    def poisoned(logits):
        calls["n"] += 1
        return real_loss(logits) * (float("nan") if calls["n"] == 20 else 1.0)

    monkeypatch.setattr(loop, "g_loss_nonsaturating", poisoned)
    with pytest.raises(UserError, match=r"training diverged: loss_g is nan at step 19 .* last good checkpoint"):
        loop.train(cfg, tiny_run.prepared, tmp_path / "out", tmp_path / "live")
    state = load_checkpoint(tmp_path / "out" / "checkpoint.pt")
    every = round(cfg.checkpoint_kimg * 1000 / cfg.batch_size)
    assert state["step"] == 19 // every * every  # the last checkpoint before the NaN
    assert all(torch.isfinite(v).all() for v in state["generator"].values() if v.is_floating_point())


def test_raising_kimg_after_a_finished_run_continues_it_exactly(tmp_path, tiny_run, tiny_configs):
    import dataclasses

    from ganforge.training.loop import train

    short = dataclasses.replace(tiny_configs["train"], kimg=0.2)
    long = dataclasses.replace(short, kimg=0.4)
    train(short, tiny_run.prepared, tmp_path / "a", tmp_path / "live_a")
    result = train(long, tiny_run.prepared, tmp_path / "a", tmp_path / "live_a")
    train(long, tiny_run.prepared, tmp_path / "b", tmp_path / "live_b")
    assert result.cur_nimg == 13 * 32
    assert (tmp_path / "a/generator.safetensors").read_bytes() == (tmp_path / "b/generator.safetensors").read_bytes()
