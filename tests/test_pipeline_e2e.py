"""The real thing: `dvc repro` in a temp git repo on shrunk params, a no-op rerun, and an experiment."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from ganforge.config import read_params
from tests.conftest import REPO, tiny_params

pytestmark = pytest.mark.slow  # real dvc runs; later tests build on the first run

STAGES = ("prepare", "train", "featurizer", "reference", "evaluate", "optimize", "package")


def _run(cmd: list[str], cwd: Path, env: dict) -> str:
    result = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, f"{cmd} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result.stdout


def clone_worktree(root: Path, params: dict) -> dict:
    """Make ``root`` a git repo holding what a clone would (tracked plus not-ignored files, minus the committed
    pipeline results) with ``params`` as its params.yaml; return the environment to run dvc in it."""
    listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                            capture_output=True, text=True, check=True).stdout.splitlines()
    for name in listed:
        if name == "dvc.lock" or name.split("/")[0] in ("metrics", "plots", "dvclive") or not (REPO / name).is_file():
            continue
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / name, root / name)
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = os.environ | {"PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
                        "PYTHONPATH": str(root / "src"), "DVC_NO_ANALYTICS": "1", "GIT_AUTHOR_NAME": "t",
                        "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}
    _run(["git", "init", "-q"], root, env)
    _run(["git", "add", "-A"], root, env)
    _run(["git", "commit", "-qm", "tiny"], root, env)
    return env


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("e2e") / "ganforge"
    return root, clone_worktree(root, tiny_params())


def _dvc(repo: tuple[Path, dict], *args: str) -> str:
    root, env = repo
    return _run([sys.executable, "-m", "dvc", *args], root, env)


def test_repro_runs_every_stage_then_is_a_noop(repo, reliability):  # the first of the two runs compared
    root, env = repo
    out = _dvc(repo, "repro")
    for stage in STAGES:
        assert f"Running stage '{stage}'" in out
    for path in ("data/prepared/manifest.json", "models/train/generator.safetensors", "metrics/evaluate.json",
                 "metrics/optimize.json", "dist/generator/manifest.json", "plots/evaluate/samples.png"):
        assert (root / path).is_file(), path
    again = _dvc(repo, "repro")
    assert "Running stage" not in again and "up to date" in again
    _run(["git", "add", "-A"], root, env)
    _run(["git", "commit", "-qm", "baseline run"], root, env)


def test_two_forced_reruns_give_bit_identical_quality_metrics(repo, reliability):
    root, env = repo
    first = (root / "metrics/evaluate.json").read_bytes()
    for _ in range(2):
        out = _dvc(repo, "repro", "--force")
        assert all(f"Running stage '{stage}'" in out for stage in STAGES)
        assert (root / "metrics/evaluate.json").read_bytes() == first
    _run(["git", "add", "-A"], root, env)  # the timings (and so possibly the winner) moved: keep the rerun
    _run(["git", "commit", "-qm", "forced rerun"], root, env)


@pytest.mark.parametrize(
    ("key", "value", "affected"),
    [("optimize.prune_ratio", 0.5, {"optimize"}),  # package reads the winner, not the optimize params
     ("package.grid_size", 4, {"package"}),
     ("evaluate.grid_size", 4, {"evaluate", "optimize", "package"}),  # optimize and package score as evaluate does
     ("featurizer.epochs", 2, {"featurizer"})],
)
def test_a_param_edit_reruns_exactly_the_stages_that_read_it(repo, key, value, affected, reliability):
    root, _ = repo
    path = root / "params.yaml"
    original = path.read_text()
    params = yaml.safe_load(original)
    section, name = key.split(".")
    params[section][name] = value
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    try:
        status = _dvc(repo, "status")
        assert {stage for stage in STAGES if f"{stage}:" in status} == affected
    finally:
        path.write_text(original)


@pytest.mark.parametrize(
    ("edited", "affected"),
    [("src/ganforge/runtime/onnx.py", {"optimize", "package"}),
     ("src/ganforge/data/decode.py", {"prepare"}),
     ("src/ganforge/training/losses.py", {"train", "optimize"}),  # optimize's distillation uses G's loss
     ("src/ganforge/evaluation/reference.py", {"reference", "evaluate", "optimize", "package"})],
)
def test_library_edit_reruns_exactly_the_affected_stages(repo, edited, affected, reliability):
    root, _ = repo
    target = root / edited
    original = target.read_text()
    target.write_text(original + "\n# touched\n")
    try:
        status = _dvc(repo, "status")
        assert {stage for stage in STAGES if f"{stage}:" in status} == affected
    finally:
        target.write_text(original)


def test_a_new_torch_fidelity_pin_reruns_the_reference_statistics(repo):
    root, _ = repo
    target = root / "pyproject.toml"
    original = target.read_text()
    assert '"torch-fidelity==' in original
    target.write_text(original.replace('"torch-fidelity==', '"torch-fidelity>=0.1,=='))
    try:
        status = _dvc(repo, "status")
        assert {stage for stage in STAGES if f"{stage}:" in status} == {"reference"}
    finally:
        target.write_text(original)


def test_failed_stage_keeps_the_previous_outputs(repo, reliability):
    reliability.bad_input()
    root, env = repo
    params_path = root / "params.yaml"
    original = params_path.read_text()
    reliability.guard(root / "data/prepared", root / "models/train", root / "dist/generator")
    params = yaml.safe_load(original)
    params["prepare"]["resolution"] = 24
    params_path.write_text(yaml.safe_dump(params, sort_keys=False))
    try:
        result = subprocess.run([sys.executable, "-m", "dvc", "repro"], cwd=root, env=env, capture_output=True,
                                text=True, timeout=600)
        assert result.returncode != 0
        assert "prepare.resolution: expected one of 8, 16, 32, 64, 128, 256, got 24" in result.stderr
        reliability.check_guarded()
    finally:
        params_path.write_text(original)


def test_a_changed_source_folder_reruns_prepare(tmp_path, reliability):
    from PIL import Image

    params = tiny_params()
    params["prepare"].update(source="folder", path="data/raw", resolution=8)
    root = tmp_path / "ganforge"
    folder_repo = root, clone_worktree(root, params)
    rng = np.random.default_rng(0)

    def add_image(name: str) -> None:
        path = root / "data/raw" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (10, 10, 3), dtype=np.uint8)).save(path)

    for i in range(20):
        add_image(f"{'ab'[i % 2]}/{i}.png")
    assert "Running stage 'prepare'" in _dvc(folder_repo, "repro", "prepare")
    seen = json.loads((root / "data/prepared/manifest.json").read_text())["files_seen"]
    assert "up to date" in _dvc(folder_repo, "status", "prepare")
    add_image("a/new.png")
    status = _dvc(folder_repo, "status", "prepare")
    assert "changed deps" in status and "data/raw" in status
    assert "Running stage 'prepare'" in _dvc(folder_repo, "repro", "prepare")
    assert json.loads((root / "data/prepared/manifest.json").read_text())["files_seen"] == seen + 1


def test_experiment_with_an_exponent_lr_changes_the_metrics(repo, reliability):
    root, env = repo
    head = _run(["git", "rev-parse", "HEAD"], root, env)
    before = json.loads((root / "metrics/evaluate.json").read_text())
    # 3e-5, not 0.0004: DVC writes it back in exponent notation, which YAML 1.1 (PyYAML's default) reads as a string
    _dvc(repo, "exp", "run", "-S", "lr=3e-5")
    assert isinstance(yaml.safe_load((root / "params.yaml").read_text())["lr"], str)
    assert read_params(root / "params.yaml")["lr"] == 3e-5
    after = json.loads((root / "metrics/evaluate.json").read_text())
    assert after["fid"] != before["fid"]
    diff = json.loads(_dvc(repo, "metrics", "diff", "--all", "--json"))
    # quality and speed side by side, old and new value of each
    assert diff["metrics/evaluate.json"].keys() >= {"fid", "kid_mean", "precision", "recall"}
    assert diff["metrics/evaluate_speed.json"].keys() >= {"img_per_s", "latency_ms_batch1"}
    assert diff["metrics/evaluate.json"]["fid"]["new"] == after["fid"]
    # As DVC documents: HEAD does not move, the experiment is saved under a ref of its own, and the workspace
    # holds its results uncommitted and consistent with its dvc.lock.
    assert _run(["git", "rev-parse", "HEAD"], root, env) == head
    assert len(_dvc(repo, "exp", "list", "--name-only").split()) == 1
    changed = {line[3:] for line in _run(["git", "status", "--porcelain"], root, env).splitlines()}
    assert {"params.yaml", "dvc.lock", "metrics/evaluate.json"} <= changed
    assert "up to date" in _dvc(repo, "status")


def test_a_queued_prune_ratio_sweep_does_not_retrain(repo):
    root, _ = repo
    _dvc(repo, "exp", "run", "--queue", "-S", "optimize.prune_ratio=0.3,0.6")
    _dvc(repo, "queue", "start", "--jobs", "1")
    deadline = time.monotonic() + 500
    while True:
        status = _dvc(repo, "queue", "status")
        if "Queued" not in status and "Running" not in status:
            break
        assert time.monotonic() < deadline, status
        time.sleep(3)
    done = [line.split()[1] for line in status.splitlines() if "Success" in line]
    assert len(done) == 2, status
    for name in done:
        log = _dvc(repo, "queue", "logs", name)
        assert "Running stage 'optimize'" in log and "Running stage 'train'" not in log, log[-2000:]
    shown = json.loads(_dvc(repo, "exp", "show", "--json"))
    ratios = {exp["data"]["params"]["params.yaml"]["data"]["optimize"]["prune_ratio"]
              for commit in shown for exp in (commit.get("experiments") or []) for exp in exp.get("revs", [])
              if exp.get("data", {}).get("params")}
    assert {0.3, 0.6} <= ratios


def test_pull_request_report_from_two_real_commits(repo, tmp_path):
    root, env = repo
    # The workspace holds the lr=3e-5 experiment's results: commit them as the pull request's change.
    _run(["git", "add", "-A"], root, env)
    _run(["git", "commit", "-qm", "lr 3e-5"], root, env)
    old = json.loads(_run(["git", "show", "HEAD~1:metrics/evaluate.json"], root, env))["fid"]
    new = json.loads((root / "metrics/evaluate.json").read_text())["fid"]
    cmd = [sys.executable, "-m", "ganforge.cli", "report", "--base", "HEAD~1", "--out", str(tmp_path / "r")]
    loose = subprocess.run([*cmd, "--max-fid-increase", "100", "--max-speed-drop", "0.99"], cwd=root, env=env,
                           capture_output=True, text=True, timeout=600)
    assert loose.returncode == 0, loose.stderr[-3000:]
    report = (tmp_path / "r/report.md").read_text()
    assert "| `params.yaml` lr | 0.0002 | 3e-05 |" in report  # the changed param
    assert f"| `metrics/evaluate.json` **fid** | {old:,.4g} | {new:,.4g} |" in report  # the changed metric
    assert "![before](samples-before.png)" in report and (tmp_path / "r/samples-before.png").stat().st_size > 0
    assert (tmp_path / "r/plots/index.html").is_file()
    # A budget no change can meet (FID must fall to zero): the gate fails the run with exit code 1.
    tight = subprocess.run([*cmd, "--max-fid-increase", "-1"], cwd=root, env=env, capture_output=True, text=True,
                           timeout=600)
    assert tight.returncode == 1 and "budget(s) broken" in tight.stderr
    nan = subprocess.run([*cmd, "--max-fid-increase", "nan"], cwd=root, env=env, capture_output=True, text=True)
    assert nan.returncode == 2 and "expected a finite number" in nan.stderr  # a NaN budget would never be broken
    assert "**Budget broken:**" in (tmp_path / "r/report.md").read_text()


BENCH_SECTIONS = ("machine", "ceilings", "generation", "training", "data", "pipeline")


def _numbers(tree) -> list[float]:
    if isinstance(tree, dict):
        return [n for value in tree.values() for n in _numbers(value)]
    if isinstance(tree, list):
        return [n for value in tree for n in _numbers(value)]
    return [tree] if isinstance(tree, int | float) and not isinstance(tree, bool) else []


def test_bench_quick_measures_every_section_and_writes_the_tables(repo, tmp_path):
    root, env = repo  # an up-to-date pipeline, so the no-op `dvc repro` is measured too
    doc = tmp_path / "benchmarks.md"
    doc.write_text("# Benchmarks\n\n<!-- bench:begin -->\nold\n<!-- bench:end -->\n")
    results_path = tmp_path / "results.json"
    done = subprocess.run([sys.executable, "-m", "ganforge.cli", "bench", "--quick", "--results", str(results_path),
                           "--doc", str(doc)], cwd=root, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads(results_path.read_text())
    assert all(section in results for section in BENCH_SECTIONS)
    for section in BENCH_SECTIONS[1:]:
        numbers = _numbers(results[section])
        assert numbers and all(n > 0 for n in numbers), (section, numbers)
    assert results["ceilings"]["fp32_gemm_gflops"]["median"] > 1
    assert results["pipeline"]["noop_repro"]["wall_s"] > 0
    rows = results["generation"]["rows"]
    assert {"seed", "lite"} <= set(rows) and rows["seed"]["vs_seed_fp32"] == 1.0
    assert rows["seed"]["vs_seed_fp32_busy"] == 1.0 and all(r["img_per_s_batch256_busy"] > 0 for r in rows.values())
    assert "winner_skipped" in results["generation"]  # the fixture's pipeline is at 16x16, the table's shape 32x32
    assert set(results["training"]["archs"]) == {"seed", "dcgan", "lite"} and results["training"]["ddp"]["ratio"] > 0
    text = doc.read_text()
    assert "old" not in text and "| fp32 GEMM (1024³) |" in text and "<!-- targets:begin -->" in text
    assert "while a busy-looping process shares the cores" in text
    assert "| `dcgan`, 1 process |" in text and "DDP ratio" in text and "| no-op `dvc repro` |" in text
