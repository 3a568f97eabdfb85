"""The measured sections of ``ganforge bench``: generation, training, data and evaluation, and the pipeline's
own overhead. Each returns a flat-ish dict of figures with their spread; none reads params.yaml except
through the stage scripts it runs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml

from ganforge.config import PrepareConfig, read_params
from ganforge.contracts import RECIPE_FILE, WINNER_FILE
from ganforge.data.augment import DiffAugment
from ganforge.data.prepare import prepare
from ganforge.data.prepared import load_split
from ganforge.data.stream import BatchStream
from ganforge.errors import UserError
from ganforge.evaluation.features import DomainFeatureNet
from ganforge.files import check_json, read_json
from ganforge.measurement.speed import Timing, time_generators
from ganforge.measurement.timing import busy_neighbour, rate_spread, spread, timed
from ganforge.models import GeneratorSpec, build_generator, load_generator
from ganforge.runtime.lowering import essential_flops_per_image
from ganforge.runtime.variants import Recipe, build_variant

ARCHS = ("seed", "dcgan", "lite")
AUGMENT = ("color", "translation", "cutout")
_Z_DIM, _SIDE, _CHANNELS = 100, 32, 3


def generation(optimized_dir: Path, gemm_gflops: float, quick: bool) -> dict:
    """Images/s at batch 256 and batch-1 latency at 32x32 of ``seed`` and ``lite`` in eager fp32 and of the
    optimize stage's winner (``optimized_dir``), side by side; each as a ratio to ``seed`` and as achieved
    GFLOP/s against ``gemm_gflops``. Batch 256 is timed again beside a busy neighbour process, and the winner is
    compared with its own architecture in eager fp32 (the packaged baseline) in both conditions."""
    winner, channels, arch, width, skipped = None, _CHANNELS, None, 1.0, None
    if not (optimized_dir / RECIPE_FILE).is_file():
        skipped = f"{optimized_dir}: no optimize output (run `dvc repro` first)"
    else:
        generator, spec = load_generator(optimized_dir / WINNER_FILE)
        recipe = Recipe.from_dict(read_json(optimized_dir / RECIPE_FILE), source=str(optimized_dir / RECIPE_FILE))
        if spec.z_dim == _Z_DIM and spec.resolution == _SIDE and spec.arch in ("seed", "lite"):
            winner, channels, arch, width = f"winner ({recipe.variant})", spec.channels, spec.arch, spec.width
        else:
            skipped = (f"{optimized_dir}: the winner is `{spec.arch}` at {spec.resolution}x{spec.resolution} with "
                       f"z_dim {spec.z_dim}; this table compares `seed` and `lite` at {_SIDE}x{_SIDE}, z_dim {_Z_DIM}")
    # the winner's own architecture at its width is its baseline
    modules = {name: build_generator(GeneratorSpec(name, _Z_DIM, _SIDE, channels, width if name == arch else 1.0))
               .eval() for name in ("seed", "lite")}
    if winner is not None:
        modules[winner] = build_variant(recipe, generator, _Z_DIM)
    flops = {name: essential_flops_per_image(generator if name == winner else module, _Z_DIM)
             for name, module in modules.items()}
    repeats = 8 if quick else 30
    with torch.inference_mode():
        at_256 = time_generators(modules, _Z_DIM, 256, 3, repeats)
        at_1 = time_generators(modules, _Z_DIM, 1, 3, repeats)
        with busy_neighbour():
            busy = time_generators(modules, _Z_DIM, 256, 3, repeats)
    rows = {name: _generation_row(at_256[name], at_1[name], busy[name], at_256["seed"], busy["seed"], flops[name],
                                  f"{channels}x{_SIDE}x{_SIDE}", gemm_gflops) for name in modules}
    result = {"batch": 256, "rows": rows}
    if winner is None:
        result["winner_skipped"] = skipped
    else:
        result["winner_vs_baseline"] = {
            "baseline": arch, "alone": at_256[winner].img_per_s / at_256[arch].img_per_s,
            "beside_a_busy_process": busy[winner].img_per_s / busy[arch].img_per_s}
    return result


def _generation_row(at_256: Timing, at_1: Timing, busy: Timing, seed_256: Timing, seed_busy: Timing, flops: float,
                    shape: str, gemm_gflops: float) -> dict:
    return {"shape": shape, "img_per_s_batch256": at_256.img_per_s, "img_per_s_batch256_min": at_256.img_per_s_min,
            "img_per_s_batch256_max": at_256.img_per_s_max, "latency_ms_batch1": at_1.ms_per_batch,
            "vs_seed_fp32": at_256.img_per_s / seed_256.img_per_s, "img_per_s_batch256_busy": busy.img_per_s,
            "vs_seed_fp32_busy": busy.img_per_s / seed_busy.img_per_s, "gflops": flops * at_256.img_per_s / 1e9,
            "ceiling_fraction": flops * at_256.img_per_s / 1e9 / gemm_gflops}


def generation_cuda(quick: bool, batch: int = 4096) -> dict | None:
    """On CUDA: images/s of ``seed`` and ``lite`` at 32x32x3 in fp32 and bf16 at ``batch``; None without CUDA."""
    if not torch.cuda.is_available():
        return None
    rows = {}
    for arch in ("seed", "lite"):
        generator = build_generator(GeneratorSpec(arch, _Z_DIM, _SIDE, _CHANNELS)).eval().cuda()
        flops = essential_flops_per_image(generator.cpu(), _Z_DIM)
        generator.cuda()
        for dtype, label in ((torch.float32, "fp32"), (torch.bfloat16, "bf16")):
            module = generator.to(dtype)
            z = torch.randn(batch, _Z_DIM, device="cuda", dtype=dtype)

            def run(module=module, z=z) -> None:
                with torch.inference_mode():
                    module(z)
                torch.cuda.synchronize()

            rate = rate_spread(run, batch, 10 if quick else 30, warmup=5)
            rows[f"{arch} {label}"] = {"img_per_s": rate, "gflops": flops * rate["median"] / 1e9}
    return {"batch": batch, "device": torch.cuda.get_device_name(0), "rows": rows}


def prepared_digits(work: Path) -> dict:
    """Prepare the bundled digits at 32x32x3 into ``work/prepared``, timing the prepare library call."""
    start = time.perf_counter()
    manifest = prepare(PrepareConfig(resolution=_SIDE, channels=_CHANNELS), work / "prepared", work / "grid.png")
    wall_s = time.perf_counter() - start
    return {"source": "digits", "files": manifest["files_seen"], "wall_s": wall_s,
            "files_per_s": manifest["files_seen"] / wall_s}


def train_stage_img_per_s(repo: Path, work: Path, name: str, train: dict, nproc: int, threads: int) -> float:
    """One run of the real train stage script under torchrun; returns the images/s it reports."""
    params = read_params(repo / "params.yaml")
    if not isinstance(params.get("train"), dict):
        raise UserError(f"{repo / 'params.yaml'}: train: expected a mapping of the train stage's params")
    params["train"] |= {"fid_interval_kimg": 0, "snapshot_kimg": 0, "checkpoint_kimg": 1000, "nproc": nproc,
                        "device": "cpu", **train}
    params_path = work / f"{name}.yaml"
    params_path.write_text(yaml.safe_dump(params))
    out = work / name
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           str(repo / "stages/train.py"), "--params", str(params_path), "--data", str(work / "prepared"),
           "--out", str(out), "--live", str(work / f"{name}_live")]
    done = subprocess.run(cmd, env=os.environ | {"OMP_NUM_THREADS": str(threads)}, capture_output=True, text=True)
    if done.returncode != 0:
        raise UserError(f"train stage ({name}) failed: {done.stderr.strip().splitlines()[-1:]}")
    record = read_json(out / "train.json")
    check_json(record, {"train_img_per_s": float}, str(out / "train.json"))
    return record["train_img_per_s"]


def training(repo: Path, work: Path, quick: bool) -> dict:
    """Training images/s of the train stage for each architecture (1 process, all threads), and 2 gloo
    processes x 1 thread against 1 process x 2 threads at the same global batch, interleaved."""
    kimg, repeats = (0.5, 1) if quick else (4.0, 3)
    threads = torch.get_num_threads()
    runs: dict[str, list[float]] = {}
    for repeat in range(repeats):
        for arch in ARCHS:
            runs.setdefault(arch, []).append(
                train_stage_img_per_s(repo, work, f"{arch}{repeat}", {"arch": arch, "kimg": kimg}, 1, threads))
        for key, nproc, per_process in (("ddp_1x2", 1, 2), ("ddp_2x1", 2, 1)):
            runs.setdefault(key, []).append(
                train_stage_img_per_s(repo, work, f"{key}{repeat}", {"arch": "seed", "kimg": kimg}, nproc, per_process))
    result = {"kimg_per_run": kimg, "archs": {arch: spread(runs[arch]) for arch in ARCHS},
              "ddp": {"1_process_2_threads": spread(runs["ddp_1x2"]), "2_processes_1_thread": spread(runs["ddp_2x1"])}}
    result["ddp"]["ratio"] = (result["ddp"]["2_processes_1_thread"]["median"]
                              / result["ddp"]["1_process_2_threads"]["median"])
    return result


def data_and_evaluation(work: Path, prepare_timing: dict, quick: bool) -> dict:
    """Prepare throughput (already timed), data-loader images/s with and without DiffAugment, and the domain
    feature network's images/s, all at 32x32x3."""
    repeats = 5 if quick else 15
    split = load_split(work / "prepared", "train")
    stream = iter(BatchStream(split, 64, seed=0))
    augmenter = DiffAugment(AUGMENT, seed=0)
    net = DomainFeatureNet(_CHANNELS, 10).eval().to(memory_format=torch.channels_last)
    images = torch.randint(0, 256, (250, _CHANNELS, _SIDE, _SIDE), dtype=torch.uint8,
                           generator=torch.Generator().manual_seed(0))
    batches = 20

    def loader() -> None:
        for _ in range(batches):
            next(stream)

    def augmented() -> None:
        for _ in range(batches):
            augmenter(next(stream))

    with torch.inference_mode():
        features = rate_spread(lambda: net(images), images.shape[0], repeats)
    return {"prepare": prepare_timing,
            "loader_img_per_s": rate_spread(loader, 64 * batches, repeats),
            "loader_augmented_img_per_s": rate_spread(augmented, 64 * batches, repeats),
            "domain_features_img_per_s": features}


def pipeline(repo: Path, quick: bool) -> dict:
    """Wall time of a no-op ``dvc repro`` in ``repo`` (only when it is up to date) and, unless ``quick``, of
    the default ``dvc repro`` from scratch in a copy of the working tree."""
    env = os.environ | {"PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    dvc = [sys.executable, "-m", "dvc"]
    status = subprocess.run([*dvc, "status", "--json"], cwd=repo, env=env, capture_output=True, text=True)
    result: dict = {}
    try:
        up_to_date = status.returncode == 0 and json.loads(status.stdout or "{}") == {}
    except ValueError:  # not JSON (a dvc that prints a warning first, say): measure nothing rather than guess
        up_to_date = False
    if up_to_date:
        result["noop_repro"] = timed([*dvc, "repro"], repo, env)
    else:
        result["noop_repro_skipped"] = "the pipeline is not up to date here: run `dvc repro` first"
    if quick:
        result["default_repro_skipped"] = "not run with --quick (it takes minutes)"
        return result
    with tempfile.TemporaryDirectory(prefix="ganforge-bench-") as tmp:
        copy = Path(tmp) / "ganforge"
        copy_worktree(repo, copy)
        git_env = env | {"GIT_AUTHOR_NAME": "bench", "GIT_AUTHOR_EMAIL": "bench@localhost",
                         "GIT_COMMITTER_NAME": "bench", "GIT_COMMITTER_EMAIL": "bench@localhost"}
        for cmd in (["git", "init", "-q"], ["git", "add", "-A"], ["git", "commit", "-qm", "bench"]):
            subprocess.run(cmd, cwd=copy, env=git_env, check=True)
        result["default_repro"] = timed([*dvc, "repro", "--force"], copy, env)
    return result


def copy_worktree(repo: Path, dest: Path) -> None:
    """Copy the tracked and untracked-but-not-ignored files of ``repo`` (no outputs, caches or venv)."""
    import shutil

    listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=repo,
                            capture_output=True, text=True, check=True).stdout.splitlines()
    for name in listed:
        if (repo / name).is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(repo / name, dest / name)
