"""The train stage's library function on a tiny budget: architectures, losses, schedules, monitoring, resume."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch

from ganforge.errors import Interrupted, UserError
from ganforge.models import load_generator
from ganforge.training.checkpoint import (
    load_checkpoint,
    load_latest_checkpoint,
    previous_checkpoint,
    save_checkpoint,
)
from ganforge.training.ema import GeneratorEMA

REPO = Path(__file__).resolve().parents[1]


def _quiet(cfg, **changes):
    """``cfg`` without the in-loop FID and sample grids (tests of other features need no featurizer)."""
    return dataclasses.replace(cfg, fid_interval_kimg=0, snapshot_kimg=0, **changes)


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
    from ganforge.training.loop import train

    cfg = _quiet(tiny_configs["train"], kimg=0.2)
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
    ema.update(net, batch_nimg=1000, cur_nimg=1000)  # one half-life: halfway from 0 to 1
    assert ema.average.weight.item() == pytest.approx(0.5)


def test_ema_rampup_caps_the_half_life_early_in_a_run():
    net = torch.nn.Linear(1, 1, bias=False)
    torch.nn.init.zeros_(net.weight)
    ema = GeneratorEMA(net, half_life_kimg=10.0, rampup=0.05)
    assert ema.half_life_nimg(1000) == pytest.approx(50.0) and ema.half_life_nimg(10**6) == pytest.approx(10_000)
    torch.nn.init.ones_(net.weight)
    ema.update(net, batch_nimg=50, cur_nimg=1000)  # capped at 50 images: one half-life, not 1/200 of one
    assert ema.average.weight.item() == pytest.approx(0.5)


def test_truncated_checkpoint_is_a_clear_error(tmp_path, reliability):
    path = tmp_path / "c.pt"
    save_checkpoint(path, {"w": torch.randn(100)})
    path.write_bytes(path.read_bytes()[:50])
    reliability.fault()
    with pytest.raises(UserError, match="unreadable checkpoint"):
        load_checkpoint(path)
    with pytest.raises(UserError, match=r"no previous checkpoint to fall back to: delete .*c.pt to start from scratch"):
        load_latest_checkpoint(path)


def _interrupt_at(monkeypatch, loop, call: int) -> None:
    """Make the ``call``-th G loss raise KeyboardInterrupt, as Ctrl-C would mid-step."""
    real_loss, calls = loop.generator_loss, {"n": 0}

    def interrupted(*args):
        calls["n"] += 1
        if calls["n"] == call:
            raise KeyboardInterrupt
        return real_loss(*args)

    monkeypatch.setattr(loop, "generator_loss", interrupted)


def test_a_corrupt_checkpoint_falls_back_to_the_previous_one_and_ends_identical(tmp_path, tiny_run, tiny_configs,
                                                                                monkeypatch, capsys, reliability):
    from ganforge.training import loop

    cfg = _quiet(tiny_configs["train"], kimg=1.0, checkpoint_kimg=0.2)  # 31 steps, a checkpoint every 6
    loop.train(cfg, tiny_run.prepared, tmp_path / "straight", tmp_path / "live_straight")
    _interrupt_at(monkeypatch, loop, call=20)
    reliability.fault()
    with pytest.raises(Interrupted, match=r"the last checkpoint, \S+checkpoint.pt at 0.6 kimg, is intact"):
        loop.train(cfg, tiny_run.prepared, tmp_path / "out", tmp_path / "live")
    monkeypatch.undo()
    newest = tmp_path / "out" / "checkpoint.pt"
    previous = previous_checkpoint(newest)
    assert load_checkpoint(previous)["step"] == 12 and load_checkpoint(newest)["step"] == 18

    reliability.fault()
    newest.write_bytes(newest.read_bytes()[:1000])  # truncated, as by a crash of the disk rather than of ganforge
    capsys.readouterr()
    loop.train(cfg, tiny_run.prepared, tmp_path / "out", tmp_path / "live")
    err = capsys.readouterr().err
    assert "unreadable checkpoint" in err and f"falling back to the previous checkpoint, {previous}" in err
    assert f"resuming from {previous} at 0.4 kimg" in err
    generator = "generator.safetensors"
    assert (tmp_path / "out" / generator).read_bytes() == (tmp_path / "straight" / generator).read_bytes()
    final, straight = (load_checkpoint(tmp_path / d / "checkpoint.pt") for d in ("out", "straight"))
    assert all(torch.equal(final["discriminator"][k], v) for k, v in straight["discriminator"].items())


def test_a_checkpoint_write_that_fails_partway_keeps_the_previous_file(tmp_path, monkeypatch, capsys, reliability):
    import errno

    from ganforge.entry import run_main

    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, {"step": 1, "w": torch.randn(1000)})
    reliability.guard(path)

    def disk_full(obj, f):
        Path(f).write_bytes(b"the first bytes")
        raise OSError(errno.ENOSPC, "No space left on device", str(f))

    monkeypatch.setattr(torch, "save", disk_full)
    reliability.fault()
    with pytest.raises(SystemExit) as exit_:
        run_main(lambda: save_checkpoint(path, {"step": 2, "w": torch.randn(1000)}, keep_previous=True), "train")
    monkeypatch.undo()
    reliability.check_guarded()
    assert exit_.value.code == 1
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("train: error: ") and "No space left on device" in line
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]  # no temp file left behind, nothing rotated
    assert load_checkpoint(path)["step"] == 1


# Run in a child before the code under test: once training has written its first periodic checkpoint, the child
# says so (a marker file) and waits there for ever, so a signal sent after the marker lands mid-run on any machine,
# however busy: the test waits for this event, never races the training.
_PAUSE_AFTER_FIRST_CHECKPOINT = """
import os, pathlib, time
from ganforge.training import loop
marker, real_save = os.environ.get("PAUSE_MARKER"), loop.save_checkpoint

def save_then_pause(*args, **kwargs):
    real_save(*args, **kwargs)
    if marker and kwargs.get("keep_previous"):
        pathlib.Path(marker).write_text("saved")
        while True:
            time.sleep(60)

loop.save_checkpoint = save_then_pause
"""


def _wait_for(marker: Path, process) -> None:
    """Block until the child wrote ``marker``, failing at once if it exited first."""
    import time

    while not marker.exists():
        assert process.poll() is None, f"the run ended before its first checkpoint: {process.communicate()[1][-2000:]}"
        time.sleep(0.05)


def test_ctrl_c_keeps_the_last_checkpoint_and_names_it(tmp_path, tiny_run, reliability):
    import os
    import signal
    import subprocess
    import sys

    import yaml

    settings = {"kimg": 8.0, "batch_size": 32, "log_interval_kimg": 0.5, "checkpoint_kimg": 0.4, "ema_kimg": 0.5,
                "snapshot_kimg": 0, "fid_interval_kimg": 0, "arch": "seed"}
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"train": settings}))
    out, marker = tmp_path / "out", tmp_path / "paused"
    script = _PAUSE_AFTER_FIRST_CHECKPOINT + "import runpy; runpy.run_path(sys.argv[0], run_name='__main__')\n"
    cmd = [sys.executable, "-c", "import sys; sys.argv = sys.argv[1:]\n" + script, str(REPO / "stages/train.py"),
           "--params", str(params), "--data", str(tiny_run.prepared), "--out", str(out), "--live",
           str(tmp_path / "live")]
    env = os.environ | {"OMP_NUM_THREADS": "1", "PAUSE_MARKER": str(marker)}
    victim = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    _wait_for(marker, victim)
    reliability.fault()
    victim.send_signal(signal.SIGINT)
    _, stderr = victim.communicate(timeout=120)
    assert victim.returncode == 130, stderr[-2000:]
    line = stderr.strip().splitlines()[-1]
    state = load_checkpoint(out / "checkpoint.pt")
    assert 0 < state["step"] < 250, "the interrupt must land mid-run for this test to mean anything"
    assert line == (f"train: training interrupted; the last checkpoint, {out / 'checkpoint.pt'} at "
                    f"{state['cur_nimg'] / 1000:.1f} kimg, is intact: run again to resume"), line
    assert "Traceback" not in stderr


_RUN_TRAINING = _PAUSE_AFTER_FIRST_CHECKPOINT + """
import sys
from ganforge.config import TrainConfig, config_from_dict
from ganforge.training.loop import train
cfg = config_from_dict(TrainConfig, {{"kimg": 8.0, "batch_size": 32, "log_interval_kimg": 0.5,
                                      "checkpoint_kimg": 0.4, "ema_kimg": 0.5, "augment": "color,translation",
                                      "ada_target": 0.6, "ada_kimg": 2.0, "fid_interval_kimg": 2.0,
                                      "fid_samples": 100, "snapshot_kimg": 0, "r1_gamma": 0.1, "r1_interval": 4,
                                      "lr_schedule": "cosine", "warmup_kimg": 1.0, "arch": "seed"}})
train(cfg, {data!r}, sys.argv[1], sys.argv[2], featurizer_path={featurizer!r})
"""


@pytest.mark.slow
def test_sigkill_then_resume_is_bit_identical_to_an_uninterrupted_run(tmp_path, tiny_run, reliability):
    import os
    import signal
    import subprocess
    import sys

    script = _RUN_TRAINING.format(data=str(tiny_run.prepared), featurizer=str(tiny_run.featurizer))
    # A SIGKILLed run cannot remove its in-loop FID's temporary folder: keep such folders in the test's own.
    env = os.environ | {"OMP_NUM_THREADS": "1", "TMPDIR": str(tmp_path)}

    def run(out: str, pause_marker: Path | None = None) -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "-c", script, str(tmp_path / out), str(tmp_path / f"{out}_live")],
                                env=env | {"PAUSE_MARKER": str(pause_marker or "")}, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True)

    assert run("straight").wait(timeout=300) == 0
    marker = tmp_path / "paused"
    victim = run("killed", marker)
    checkpoint = tmp_path / "killed" / "checkpoint.pt"
    _wait_for(marker, victim)
    reliability.fault()
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    interrupted_at = load_checkpoint(checkpoint)["step"]
    assert 0 < interrupted_at < 250, "the kill must land mid-run for this test to mean anything"

    resumed = run("killed")
    _, stderr = resumed.communicate(timeout=300)
    assert resumed.returncode == 0 and "resuming from" in stderr
    for name in ("generator.safetensors", "generator-best.safetensors"):
        assert (tmp_path / "killed" / name).read_bytes() == (tmp_path / "straight" / name).read_bytes()
    final = load_checkpoint(tmp_path / "killed" / "checkpoint.pt")
    straight = load_checkpoint(tmp_path / "straight" / "checkpoint.pt")
    for key in ("generator", "discriminator", "generator_ema"):
        assert all(torch.equal(final[key][k], straight[key][k]) for k in straight[key])
    assert final["ada"] == straight["ada"] and final["best"]["fid"] == straight["best"]["fid"]
    # The time-to-quality curve spans the whole run, the points from before the kill included.
    def curve(points: list[dict]) -> list[tuple[float, float]]:
        return [(p["kimg"], p["fid_inloop"]) for p in points]

    assert len(curve(straight["progress"]["curve"])) == 4  # at 2, 4, 6 and 8 kimg
    assert curve(final["progress"]["curve"]) == curve(straight["progress"]["curve"])
    plotted = json.loads((tmp_path / "killed_live/plots/custom/fid_inloop.json").read_text())
    assert curve(plotted) == curve(straight["progress"]["curve"])
    assert all(a["minutes"] < b["minutes"] for a, b in zip(plotted, plotted[1:], strict=False))  # from step 0
    assert final["progress"]["trained_s"] >= 60 * plotted[-1]["minutes"]
    for key in ("sched_g", "sched_d"):
        assert final[key] == straight[key]


def test_finished_or_foreign_checkpoint_starts_from_scratch(tmp_path, tiny_run, tiny_configs, capsys):
    from ganforge.training.loop import train

    cfg = _quiet(tiny_configs["train"], kimg=0.2)
    train(cfg, tiny_run.prepared, tmp_path / "out", tmp_path / "live")
    first = (tmp_path / "out/generator.safetensors").read_bytes()
    train(cfg, tiny_run.prepared, tmp_path / "out", tmp_path / "live")
    assert "finished run; starting from scratch" in capsys.readouterr().err
    assert (tmp_path / "out/generator.safetensors").read_bytes() == first
    train(dataclasses.replace(cfg, lr=0.001), tiny_run.prepared, tmp_path / "out", tmp_path / "live")
    assert "from other params or data; starting from scratch" in capsys.readouterr().err


def test_nan_loss_stops_cleanly_and_keeps_the_last_checkpoint(tmp_path, tiny_run, tiny_configs, monkeypatch,
                                                             reliability):
    from ganforge.training import loop

    cfg = _quiet(tiny_configs["train"], kimg=1.0, checkpoint_kimg=0.2)
    real_loss = loop.generator_loss
    calls = {"n": 0}

    def poisoned(*args):
        calls["n"] += 1
        return real_loss(*args) * (float("nan") if calls["n"] == 20 else 1.0)

    monkeypatch.setattr(loop, "generator_loss", poisoned)
    reliability.fault()
    with pytest.raises(UserError, match=r"training diverged: loss_g is nan at step 19 .* last good checkpoint"):
        loop.train(cfg, tiny_run.prepared, tmp_path / "out", tmp_path / "live")
    state = load_checkpoint(tmp_path / "out" / "checkpoint.pt")
    every = round(cfg.checkpoint_kimg * 1000 / cfg.batch_size)
    assert state["step"] == 19 // every * every  # the last checkpoint before the NaN
    assert all(torch.isfinite(v).all() for v in state["generator"].values() if v.is_floating_point())


def test_raising_kimg_after_a_finished_run_continues_it_exactly(tmp_path, tiny_run, tiny_configs):
    from ganforge.training.loop import train

    short = _quiet(tiny_configs["train"], kimg=0.2)
    long = dataclasses.replace(short, kimg=0.4)
    train(short, tiny_run.prepared, tmp_path / "a", tmp_path / "live_a")
    result = train(long, tiny_run.prepared, tmp_path / "a", tmp_path / "live_a")
    train(long, tiny_run.prepared, tmp_path / "b", tmp_path / "live_b")
    assert result.cur_nimg == 13 * 32
    assert (tmp_path / "a/generator.safetensors").read_bytes() == (tmp_path / "b/generator.safetensors").read_bytes()


@pytest.mark.parametrize("arch, options", [
    ("dcgan", {"loss": "hinge", "r1_gamma": 1.0, "r1_interval": 2, "d_spectral_norm": True, "width": 0.25}),
    ("lite", {"loss": "rpgan", "r1_gamma": 0.5, "r2_gamma": 0.5, "r1_interval": 2, "ema_rampup": 0.05,
              "augment": "color,translation", "width": 0.25}),
    ("lite", {"precision": "bf16", "channels_last": True, "d_lr_ratio": 2.0, "augment": "translation"}),
])
def test_every_architecture_and_option_trains(tmp_path, tiny_run, tiny_configs, arch, options):
    from ganforge.training.loop import train

    cfg = _quiet(tiny_configs["train"], arch=arch, kimg=0.3, log_interval_kimg=0.1, **options)
    result = train(cfg, tiny_run.prepared, tmp_path / "out", tmp_path / "live")
    generator, spec = load_generator(tmp_path / "out/generator.safetensors")
    assert (spec.arch, spec.width) == (arch, cfg.width)
    assert torch.isfinite(generator(torch.randn(4, spec.z_dim))).all()
    assert all(map(lambda v: v == v, (result.loss_d, result.loss_g)))  # not NaN
    metrics = tmp_path / "live/plots/metrics"
    lr_g = [float(r.split("\t")[1]) for r in (metrics / "lr_g.tsv").read_text().splitlines()[1:]]
    lr_d = [float(r.split("\t")[1]) for r in (metrics / "lr_d.tsv").read_text().splitlines()[1:]]
    assert lr_d == pytest.approx([g * cfg.d_lr_ratio for g in lr_g])
    for name in ("grad_norm_g", "grad_norm_d", "d_real", "d_fake", "img_per_s"):
        assert (metrics / f"{name}.tsv").is_file(), name
    if cfg.r1_gamma or cfg.r2_gamma:
        r1 = [float(r.split("\t")[1]) for r in (metrics / "loss_r1.tsv").read_text().splitlines()[1:]]
        assert any(v > 0 for v in r1)


def test_warmup_then_cosine_schedule():
    from ganforge.training.schedule import lr_scheduler

    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = lr_scheduler(opt, "cosine", warmup_steps=4, total_steps=12)
    lrs = []
    for _ in range(12):
        lrs.append(sched.get_last_lr()[0])
        opt.step()
        sched.step()
    assert lrs[:4] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    assert lrs[4] == pytest.approx(1.0) and lrs[8] == pytest.approx(0.5) and lrs[-1] < 0.05
    assert all(a >= b for a, b in zip(lrs[3:], lrs[4:], strict=False))


def test_hinge_nonsaturating_and_rpgan_losses_and_the_gradient_penalty():
    from ganforge.training.losses import discriminator_loss, generator_loss, gradient_penalty

    real, fake = torch.tensor([2.0, 0.5]), torch.tensor([-2.0, 0.0])
    assert discriminator_loss("hinge", real, fake).item() == pytest.approx((0 + 0.5) / 2 + (0 + 1) / 2)
    assert generator_loss("hinge", fake).item() == pytest.approx(1.0)
    assert discriminator_loss("nonsaturating", real, fake).item() == pytest.approx(
        (torch.nn.functional.softplus(-real).mean() + torch.nn.functional.softplus(fake).mean()).item())
    # rpgan pairs the i-th real with the i-th fake: softplus(-(2 - -2)) and softplus(-(0.5 - 0)).
    softplus = torch.nn.functional.softplus
    assert discriminator_loss("rpgan", real, fake).item() == pytest.approx(
        (softplus(torch.tensor(-4.0)) + softplus(torch.tensor(-0.5))).item() / 2)
    assert generator_loss("rpgan", fake, real).item() == pytest.approx(
        (softplus(torch.tensor(4.0)) + softplus(torch.tensor(0.5))).item() / 2)
    # A relativistic loss sees only differences: shifting every logit by the same amount changes nothing.
    assert discriminator_loss("rpgan", real + 7, fake + 7).item() == pytest.approx(
        discriminator_loss("rpgan", real, fake).item())
    # D(x) = <w, x> has gradient w everywhere, so R1 = ||w||^2 for every sample.
    w = torch.tensor([[[[1.0, -2.0], [0.5, 3.0]]]])
    x = torch.randn(3, 1, 2, 2, requires_grad=True)
    assert gradient_penalty((x * w).sum(dim=(1, 2, 3)), x).item() == pytest.approx(w.square().sum().item())


def test_inloop_fid_keeps_the_best_generator_and_logs_grids(tiny_run, tiny_configs):
    from ganforge.models.registry import trained_generator_path

    summary = json.loads((tiny_run.train_dir / "train.json").read_text())
    rows = (tiny_run.live_dir / "plots/metrics/fid_inloop.tsv").read_text().splitlines()[1:]
    fids = [float(r.split("\t")[1]) for r in rows]
    assert len(fids) >= 3 and summary["best_fid_inloop"] == min(fids)
    curve = json.loads((tiny_run.live_dir / "plots/custom/fid_inloop.json").read_text())  # time to quality
    assert [p["fid_inloop"] for p in curve] == pytest.approx(fids)
    assert curve[-1]["kimg"] == summary["cur_nimg"] / 1000 and curve[-1]["minutes"] > 0
    assert trained_generator_path(tiny_run.train_dir, "best").name == "generator-best.safetensors"
    best = load_checkpoint(tiny_run.train_dir / "checkpoint.pt")["best"]
    generator, _ = load_generator(tiny_run.train_dir / "generator-best.safetensors")
    assert all(torch.equal(v, best["generator_ema"][k]) for k, v in generator.state_dict().items())
    grids = sorted((tiny_run.live_dir / "plots/images/samples").glob("*kimg.png"))
    assert [g.name for g in grids] == ["00000.8kimg.png", "00001.5kimg.png"]  # past 0.75 and 1.5 kimg


def test_best_generator_without_inloop_fid_is_a_clear_error(tmp_path, tiny_run, tiny_configs):
    from ganforge.models.registry import trained_generator_path
    from ganforge.training.loop import train

    train(_quiet(tiny_configs["train"], kimg=0.1), tiny_run.prepared, tmp_path / "out", tmp_path / "live")
    with pytest.raises(UserError, match="best generator is missing .*set train.fid_interval_kimg or use last"):
        trained_generator_path(tmp_path / "out", "best")
    with pytest.raises(UserError, match="in-loop FID needs the featurizer"):
        train(dataclasses.replace(tiny_configs["train"], kimg=0.1), tiny_run.prepared, tmp_path / "o", tmp_path / "l")


def test_time_limit_stops_early_with_complete_outputs(tmp_path, tiny_run, tiny_configs):
    from ganforge.training.loop import train

    result = train(_quiet(tiny_configs["train"], kimg=1000.0), tiny_run.prepared, tmp_path / "out",
                   tmp_path / "live", time_limit_s=1.0)
    summary = json.loads((tmp_path / "out/train.json").read_text())
    assert summary["stopped_by_time_limit"] and 0 < result.cur_nimg < 1_000_000
    assert load_checkpoint(tmp_path / "out/checkpoint.pt")["step"] == result.steps


def test_the_step_observer_sees_every_step_with_the_ema_generator(tmp_path, tiny_run, tiny_configs):
    from ganforge.models import GeneratorSpec
    from ganforge.training.loop import train

    cfg = _quiet(tiny_configs["train"], kimg=0.2)
    seen: list[tuple[float, int]] = []

    def observe(minutes: float, cur_nimg: int, generator: torch.nn.Module, spec: GeneratorSpec) -> None:
        assert not generator.training and spec.arch == cfg.arch  # the EMA copy, never the trained G
        seen.append((minutes, cur_nimg))

    result = train(cfg, tiny_run.prepared, tmp_path / "out", tmp_path / "live", on_step=observe)
    assert [nimg for _, nimg in seen] == [cfg.batch_size * (i + 1) for i in range(result.steps)]
    assert all(0 < a <= b for (a, _), (b, _) in zip(seen, seen[1:], strict=False))
