"""The train stage under torchrun: 2 gloo processes on CPU, a stalled rank, and a worker killed mid-run."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from ganforge.models import load_generator
from ganforge.training.checkpoint import load_checkpoint

REPO = Path(__file__).resolve().parents[1]
LAUNCH = [sys.executable, "-m", "ganforge.launch"]  # torchrun, as the train stage's cmd runs it

# Patches the data stream of one rank, then runs the train stage script as torchrun would.
_FAULTY_WORKER = """
import os, runpy, sys, time
from pathlib import Path
from ganforge.data import stream

fault, out = sys.argv.pop(1), Path(sys.argv[sys.argv.index("--out") + 1])
real_next, calls = stream.BatchStream.__next__, {"n": 0}

def next_with_fault(self):
    calls["n"] += 1
    if os.environ["RANK"] == "1":
        if fault == "stall" and calls["n"] == 3:
            time.sleep(120)
        first_attempt = os.environ["TORCHELASTIC_RESTART_COUNT"] == "0"
        if fault == "die" and first_attempt and (out / "checkpoint.pt").exists() and calls["n"] % 4 == 0:
            os._exit(17)
    return real_next(self)

stream.BatchStream.__next__ = next_with_fault
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


# The small seed GAN with the plain loss: these tests are of the process group, and it is the cheapest to run.
TRAIN = {"kimg": 1.0, "batch_size": 32, "log_interval_kimg": 0.25, "checkpoint_kimg": 0.25, "ema_kimg": 0.5,
         "fid_interval_kimg": 0, "snapshot_kimg": 0, "nproc": 2, "arch": "seed", "loss": "nonsaturating",
         "r1_gamma": 0.0, "r2_gamma": 0.0, "d_batchnorm": True, "beta1": 0.5, "beta2": 0.999, "ema_rampup": 0.0}


def _torchrun(tmp_path: Path, prepared: Path, out: str, train: dict, fault: str | None = None,
              max_restarts: int = 0, params_text: str | None = None) -> subprocess.CompletedProcess:
    params = {"seed": 0, "lr": 0.0002, "train": TRAIN | train}
    params_path = tmp_path / f"{out}.yaml"
    params_path.write_text(params_text if params_text is not None else yaml.safe_dump(params))
    script = [str(REPO / "stages/train.py")]
    if fault:
        (tmp_path / "faulty.py").write_text(_FAULTY_WORKER)
        script = [str(tmp_path / "faulty.py"), fault, *script]
    cmd = [*LAUNCH, "--standalone", "--nproc_per_node=2", f"--max-restarts={max_restarts}", *script,
           "--params", str(params_path), "--data", str(prepared), "--out", str(tmp_path / out),
           "--live", str(tmp_path / f"{out}_live")]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=os.environ | {"OMP_NUM_THREADS": "1"})


@pytest.fixture(scope="module")
def two_process_run(tmp_path_factory, tiny_run):
    tmp = tmp_path_factory.mktemp("ddp")
    result = _torchrun(tmp, tiny_run.prepared, "straight", {})
    assert result.returncode == 0, result.stderr[-3000:]
    return tmp


def test_two_gloo_processes_keep_identical_weights_and_write_a_valid_checkpoint(two_process_run):
    out = two_process_run / "straight"
    summary = json.loads((out / "train.json").read_text())
    assert summary["world_size"] == 2
    digests = summary["rank_weight_digests"]  # sha256 of each rank's own G and D parameters
    assert len(digests) == 2 and digests[0] == digests[1]

    state = load_checkpoint(out / "checkpoint.pt")
    assert state["step"] == 32 and len(state["ranks"]) == 2
    # Each rank drew its own latents: their random streams differ, their weights do not.
    assert not torch.equal(state["ranks"][0]["latents"], state["ranks"][1]["latents"])
    generator, spec = load_generator(out / "generator.safetensors")
    assert generator(torch.randn(2, spec.z_dim)).shape == (2, spec.channels, spec.resolution, spec.resolution)


def test_each_ranks_step_time_is_logged(two_process_run):
    metrics = two_process_run / "straight_live/plots/metrics"
    for rank in (0, 1):
        rows = (metrics / "step_ms" / f"rank{rank}.tsv").read_text().splitlines()
        assert len(rows) > 2 and all(float(r.split("\t")[1]) > 0 for r in rows[1:])


def _last_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    return lines[-1] if lines else ""


@pytest.mark.slow
def test_a_stalled_rank_times_out_with_an_error_naming_the_rank(tmp_path, tiny_run, reliability):
    reliability.fault()
    result = _torchrun(tmp_path, tiny_run.prepared, "stalled", {"collective_timeout_s": 3}, fault="stall")
    assert result.returncode == 2, result.stderr[-3000:]
    assert _last_line(result.stderr).startswith(
        "train: error: rank 0 of 2: gradient all-reduce failed within the 3 s collective timeout")
    assert "Traceback" not in result.stderr and "ChildFailedError" not in result.stderr


@pytest.mark.parametrize(("params_text", "expected"), [
    pytest.param("seed: 0\nlr: 3e-5\ntrain:\n  kimg: .inf\n  nproc: 2\n",
                 "train.kimg: expected a finite number, got inf", id="infinite-kimg"),
    pytest.param("train:\n  nproc: 2\nseed: 0\ntrain:\n  kimg: 1\n", "duplicate key 'train'",
                 id="duplicate-section"),
    pytest.param("train:\n  nproc: 2\n  kimg: 1\n", "manifest.json", id="missing-data"),
])
def test_a_user_error_under_torchrun_is_one_line_and_exit_2(tmp_path, reliability, params_text, expected):
    reliability.bad_input()
    result = _torchrun(tmp_path, tmp_path / "no-data", "bad", {}, params_text=params_text)
    assert result.returncode == 2, result.stderr[-3000:]
    last = _last_line(result.stderr)
    assert last.startswith("train: error: ") and expected in last, result.stderr[-3000:]
    assert result.stderr.count(last) == 1  # once, however many ranks hit it
    assert "Traceback" not in result.stderr and "ChildFailedError" not in result.stderr
    assert "failed (exitcode" not in result.stderr  # torchrun's report of a handled failure is dropped


def test_a_crash_under_the_launcher_keeps_torchruns_report(tmp_path):
    script = tmp_path / "crash.py"
    script.write_text("raise RuntimeError('not a handled error')\n")
    result = subprocess.run([*LAUNCH, "--standalone", "--nproc_per_node=1", str(script)], capture_output=True,
                            text=True, timeout=120, env=os.environ | {"OMP_NUM_THREADS": "1"})
    assert result.returncode == 1
    assert "RuntimeError: not a handled error" in result.stderr and "ChildFailedError" in result.stderr


@pytest.mark.slow
def test_a_killed_worker_restarts_from_the_last_checkpoint_and_ends_identical(tmp_path, tiny_run,
                                                                               two_process_run, reliability):
    reliability.fault()
    result = _torchrun(tmp_path, tiny_run.prepared, "restarted", {}, fault="die", max_restarts=1)
    assert result.returncode == 0, "\n".join(line for line in result.stderr.splitlines() if not line.startswith("W"))
    # torchrun reports the failure it takes for the first (on a tie of timestamps that can be rank 0, stopped by
    # its SIGTERM at -15 or by its collective failing at 2, rather than rank 1's 17), then restarts the group
    assert re.search(r"failed \(exitcode: (17|2|-15)\)", result.stderr), result.stderr[-3000:]
    assert "train: resuming from" in result.stderr
    summary = json.loads((tmp_path / "restarted/train.json").read_text())
    assert 0 < summary["resumed_from_step"] < 32
    straight = two_process_run / "straight/generator.safetensors"
    assert (tmp_path / "restarted/generator.safetensors").read_bytes() == straight.read_bytes()


def test_a_two_process_checkpoint_continues_on_one_process(tmp_path, tiny_run, two_process_run, capsys):
    import shutil

    from ganforge.config import TrainConfig, config_from_dict
    from ganforge.training.loop import train

    shutil.copytree(two_process_run / "straight", tmp_path / "out")
    cfg = config_from_dict(TrainConfig, TRAIN | {"seed": 0, "lr": 0.0002, "kimg": 1.5, "nproc": 1})
    result = train(cfg, tiny_run.prepared, tmp_path / "out", tmp_path / "live")
    err = capsys.readouterr().err
    assert "written by 2 processes, now 1" in err and "resuming from" in err
    assert result.cur_nimg == 47 * 32
    assert json.loads((tmp_path / "out/train.json").read_text())["resumed_from_step"] == 32
