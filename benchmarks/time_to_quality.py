"""Time to quality on real data: train generators on CIFAR-10 for the same wall time, then score each.

    python benchmarks/time_to_quality.py [--minutes 30] [--work DIR] [--run NAME=key=value,...]
                                         [--snapshot-minutes 10,20,30,60]

The CIFAR-10 JPEG archive is prepared at 32x32 and the domain featurizer trained on it (as the pipeline
does). Then the runs train side by side, at the same time, one thread each, for ``--minutes`` of wall time
with the params.yaml train settings plus each run's own overrides, logging an in-loop FID. The default runs
are ``seed`` and ``lite`` under the baseline recipe (``BASELINE_RECIPE``); ``--run`` adds one, for example
``--run default=`` (params.yaml as it stands) or ``--run r3=arch=lite,loss=rpgan,r1_gamma=0.1``. Each
generator with the best in-loop FID is then scored by the evaluate protocol, in domain features and in
Inception FID-10k. ``--snapshot-minutes`` keeps each run's EMA generator as it stood at those training
minutes and scores each one too: the run's curve in Inception FID-10k (under a constant learning rate the
30-minute point of a 60-minute run is where a 30-minute run ends). Each run is pinned to its own core.

A ``--work`` directory keeps every step; a later call reuses what it holds (the prepared data, the
featurizer, matching reference statistics, finished runs of the same length and their scores), so a new run
can be measured beside earlier ones without training those again. Keep the runs that train at the same time
to the machine's core count. Results go to bench/time_to_quality.json and the generated section of
docs/benchmarks.md; ``--minutes`` other than 30 and ``--max-images`` each name their own file and section.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from data_path import prepare_archive
from measure import DEFAULT_ARCHIVE, REPO, machine, machine_line, run_in_work_dir, write_doc_section

from ganforge.config import read_params

RESULTS = REPO / "bench/time_to_quality.json"
# The baselines: both architectures under the plain recipe (the non-saturating loss, no R1 or R2, BatchNorm in
# D, Adam betas 0.5/0.999, no EMA ramp), pinned here so that they stay the same whatever params.yaml says.
BASELINE_RECIPE = {"loss": "nonsaturating", "r1_gamma": 0, "r2_gamma": 0, "d_batchnorm": True, "beta1": 0.5,
                   "beta2": 0.999, "ema_rampup": 0}
DEFAULT_RUNS = {"seed": {"arch": "seed"} | BASELINE_RECIPE, "lite": {"arch": "lite"} | BASELINE_RECIPE}


def _configs(run: dict, fid_interval_kimg: float, fid_samples: int) -> tuple:
    """(train, featurizer, reference, evaluate) configs: params.yaml with ``run``'s train overrides."""
    from ganforge.config import EvaluateConfig, FeaturizerConfig, ReferenceConfig, TrainConfig, stage_config

    params = read_params(REPO / "params.yaml")

    def load(cls, **overrides):
        return stage_config(cls, params, **overrides)

    # An endless budget: the time limit ends the run. Checkpoints are rare; they are not what is measured.
    train_cfg = load(TrainConfig, **run, kimg=1e6, checkpoint_kimg=1e5, fid_interval_kimg=fid_interval_kimg,
                     fid_samples=fid_samples, snapshot_kimg=fid_interval_kimg, device="cpu")
    return train_cfg, load(FeaturizerConfig), load(ReferenceConfig), load(EvaluateConfig, generator="best")


def parse_run(text: str) -> tuple[str, dict]:
    """``NAME=key=value,key=value`` -> (NAME, {key: value}), each value read as YAML (``0.1``, ``true``); a
    value may hold commas (``augment=color,translation``)."""
    import yaml

    name, _, settings = text.partition("=")
    items: list[str] = []
    for item in filter(None, settings.split(",")):  # an item without '=' continues the value before it
        if "=" in item or not items:
            items.append(item)
        else:
            items[-1] += "," + item
    pairs = [item.partition("=") for item in items]
    if not name or any(not key or not sep for key, sep, _ in pairs):
        raise argparse.ArgumentTypeError(f"--run {text!r}: expected NAME=key=value,key=value")
    return name, {key: yaml.safe_load(value) for key, _, value in pairs}


class MinuteSnapshots:
    """A train ``on_step`` observer: save the EMA generator the first time the training minutes reach each
    mark, into ``directory`` (``ema-010.0min.safetensors``), listed with its kimg in ``snapshots.json``."""

    def __init__(self, directory: Path, marks: list[float]) -> None:
        self.directory, self.marks, self.taken = directory, sorted(marks), []
        directory.mkdir(parents=True, exist_ok=True)

    def __call__(self, minutes: float, cur_nimg: int, generator, spec) -> None:
        from ganforge.models import save_generator

        while self.marks and minutes >= self.marks[0]:
            mark = self.marks.pop(0)
            name = f"ema-{mark:05.1f}min.safetensors"
            save_generator(generator, spec, self.directory / name)
            self.taken.append({"minutes": mark, "trained_minutes": round(minutes, 3), "kimg": cur_nimg / 1000,
                               "file": name})
            (self.directory / "snapshots.json").write_text(json.dumps(self.taken, indent=1))


def worker(name: str, run: dict, work: Path, minutes: float, fid_interval_kimg: float, fid_samples: int,
           snapshot_minutes: list[float], core: int | None) -> None:
    """One training run, one thread, stopped by the time limit (run in its own process)."""
    import torch

    from ganforge.training.loop import train

    torch.set_num_threads(1)
    if core is not None:  # one core per run: the runs do not trade places on the cores
        os.sched_setaffinity(0, {core})
    cfg, *_ = _configs(run, fid_interval_kimg, fid_samples)
    # A mark at the time limit itself is taken on the last step (the limit ends the run on reaching it).
    observer = MinuteSnapshots(work / name / "snapshots", snapshot_minutes) if snapshot_minutes else None
    result = train(cfg, work / "prepared", work / name / "train", work / name / "live",
                   featurizer_path=work / "featurizer.safetensors", time_limit_s=minutes * 60, on_step=observer)
    (work / name / "result.json").write_text(json.dumps({"kimg": result.cur_nimg / 1000,
                                                         "train_img_per_s": result.train_img_per_s,
                                                         "overrides": run}))


def inloop_curve(live_dir: Path) -> list[dict]:
    """(minutes since the first log line, kimg, in-loop FID) from dvclive's TSVs."""
    def rows(name: str) -> list[dict]:
        with (live_dir / "plots/metrics" / f"{name}.tsv").open() as f:
            return list(csv.DictReader(f, delimiter="\t"))

    kimg = {r["step"]: float(r["kimg"]) for r in rows("kimg")}
    minutes = {r["step"]: float(r["elapsed_min"]) for r in rows("elapsed_min")}
    return [{"minutes": round(minutes[r["step"]], 1), "kimg": kimg[r["step"]],
             "fid_inloop": round(float(r["fid_inloop"]), 2)} for r in rows("fid_inloop")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--archive", type=Path, default=DEFAULT_ARCHIVE)
    parser.add_argument("--minutes", type=float, default=30.0, help="wall time of each training run")
    parser.add_argument("--featurizer-epochs", type=int, default=6)
    parser.add_argument("--fid-interval-kimg", type=float, default=100.0)
    parser.add_argument("--fid-samples", type=int, default=1000)
    parser.add_argument("--work", type=Path, help="keep intermediate files here (default: a temp dir)")
    parser.add_argument("--no-inception", dest="inception", action="store_false",
                        help="skip Inception FID-10k (it needs pip install -e '.[inception]' and about 25 minutes)")
    parser.add_argument("--run", type=parse_run, action="append", default=[], metavar="NAME=key=value,...",
                        help="a run beside seed and lite: train settings over params.yaml (repeatable)")
    parser.add_argument("--max-images", type=int,
                        help="prepare.max_images: a seeded subset of the archive (6000 keeps about 5,000 training "
                             "images); results then go to bench/time_to_quality_<N>.json and their own doc section")
    parser.add_argument("--only-listed", action="store_true", help="train and score the --run runs alone")
    parser.add_argument("--snapshot-minutes", type=_minutes_list, default=[], metavar="M,M,...",
                        help="keep each run's EMA generator at these training minutes and score each (Inception "
                             "FID-10k costs about 10 minutes per point on 2 cores)")
    parser.add_argument("--beside", help="what ran on the other cores while the runs trained, for the page (default: "
                                         "the other runs, or nothing)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--core", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--overrides", type=json.loads, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker, args.overrides, args.work, args.minutes, args.fid_interval_kimg, args.fid_samples,
               args.snapshot_minutes, args.core)
        return
    args.runs = ({} if args.only_listed else DEFAULT_RUNS) | dict(args.run)
    if not args.runs:
        parser.error("--only-listed needs at least one --run")
    run_in_work_dir(args.archive, args.work, lambda work: run(args, work),
                    REPO / "bench" / f"{results_name(args.max_images, args.minutes)}.json", render)


def _minutes_list(text: str) -> list[float]:
    try:
        marks = [float(item) for item in text.split(",") if item]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--snapshot-minutes {text!r}: expected minutes such as 10,20,30") from None
    if not marks or any(m <= 0 for m in marks):
        raise argparse.ArgumentTypeError(f"--snapshot-minutes {text!r}: expected positive minutes")
    return marks


def results_name(max_images: int | None, minutes: float) -> str:
    """time_to_quality, with ``_<N>`` for a run on a subset of N images and ``_<M>min`` for M minutes but 30:
    the results file's stem (under bench/) and, with dashes, the doc section's name."""
    return (RESULTS.stem + (f"_{max_images}" if max_images is not None else "")
            + (f"_{minutes:g}min" if minutes != 30 else ""))


def featurizer_and_reference(work: Path, featurizer_cfg, reference_cfg, reused: list[str]) -> None:
    """Train the featurizer on ``work``/prepared and compute the reference statistics, each unless ``work``
    already holds it for these settings (then it is named in ``reused``)."""
    from ganforge.evaluation.features import train_featurizer
    from ganforge.evaluation.reference import compute_reference, extractors

    if (work / "featurizer.safetensors").is_file():
        reused.append("featurizer")
    else:
        print(f"training the featurizer ({featurizer_cfg.epochs} epochs) ...", flush=True)
        train_featurizer(featurizer_cfg, work / "prepared", work / "featurizer.safetensors", work / "featurizer.json")
    if reference_matches(reference_cfg, work):  # checked against these params, weights and versions
        reused.append("reference statistics")
    else:
        print(f"reference statistics ({', '.join(extractors(reference_cfg))}) ...", flush=True)
        compute_reference(reference_cfg, work / "prepared", work / "featurizer.safetensors", work / "reference",
                          work / "reference-metrics.json")


def run(args: argparse.Namespace, work: Path) -> dict:
    import dataclasses

    from ganforge.evaluation.evaluate import evaluate

    results: dict = {"machine": machine(), "minutes": args.minutes, "threads_per_run": 1, "max_images": args.max_images,
                     "fid_interval_kimg": args.fid_interval_kimg, "fid_samples_inloop": args.fid_samples,
                     "inception": args.inception, "snapshot_minutes": args.snapshot_minutes,
                     "runs_side_by_side": len(args.runs), "beside": args.beside}
    results["reused"] = []  # a kept --work dir skips what it already holds
    if (work / "prepared/manifest.json").is_file():
        results["reused"].append("prepared data")
    else:
        print("preparing CIFAR-10 ...", flush=True)
        prepare_archive(args.archive, work, **({} if args.max_images is None else {"max_images": args.max_images}))
    counts = json.loads((work / "prepared/manifest.json").read_text())["counts"]
    results["train_images"] = counts["train"]
    if args.max_images is not None and sum(counts.values()) > args.max_images:
        sys.exit(f"{work}/prepared holds {sum(counts.values())} images, more than --max-images {args.max_images}: "
                 f"use another --work directory")
    _, featurizer_cfg, reference_cfg, evaluate_cfg = _configs({}, args.fid_interval_kimg, args.fid_samples)
    # The epochs asked for, unbounded by minutes, so that domain figures compare across calls and machines.
    featurizer_cfg = dataclasses.replace(featurizer_cfg, epochs=args.featurizer_epochs, max_minutes=None)
    if args.inception:  # the domain figures, and Inception FID-10k beside them
        reference_cfg = dataclasses.replace(reference_cfg, feature_extractor="inception-v3-compat")
    featurizer_and_reference(work, featurizer_cfg, reference_cfg, results["reused"])
    results["featurizer"] = json.loads((work / "featurizer.json").read_text())

    fresh = {name: run for name, run in args.runs.items() if not trained(work / name, run, args.minutes)}
    results["reused"] += [f"the {name} run" for name in args.runs if name not in fresh]
    results["wall_s_side_by_side"] = train_side_by_side(args, work, fresh) if fresh else None

    results["runs"] = list(args.runs)
    for name, run in args.runs.items():
        train_cfg, *_ = _configs(run, args.fid_interval_kimg, args.fid_samples)
        scored = work / name / "evaluate.json"
        if name not in fresh and scored.is_file() and _inception_as_asked(scored, args.inception):
            results["reused"].append(f"the {name} run's scores")
        else:
            print(f"scoring {name} ...", flush=True)
            evaluate(evaluate_cfg, reference_cfg, work / name / "train", work / "prepared",
                     work / "featurizer.safetensors", work / "reference", scored, work / name / "samples.png",
                     work / name / "nearest.png", work / name / "speed.json")
        metrics = json.loads(scored.read_text())
        results[name] = {
            "overrides": run, "width": train_cfg.width,
            **{k: v for k, v in json.loads((work / name / "result.json").read_text()).items() if k != "overrides"},
            "fid": metrics["fid"], "kid_mean": metrics["kid_mean"], "precision": metrics["precision"],
            "recall": metrics["recall"], "fid_real_floor": metrics["fid_real_floor"],
            "protocol": metrics["protocol"],
            "inloop": inloop_curve(work / name / "live"),
            **{k: v for k, v in metrics.items() if "inception" in k},
        }
        if args.snapshot_minutes:
            results[name]["snapshots"] = score_snapshots(work / name / "snapshots", evaluate_cfg, reference_cfg,
                                                         work, args.inception)
    results["summary"] = summary(results)
    return results


def score_snapshots(directory: Path, evaluate_cfg, reference_cfg, work: Path, inception: bool) -> list[dict]:
    """Each kept generator's domain FID, recall and (``inception``) Inception FID-10k, by the evaluate protocol;
    the scores are kept in ``directory/scores.json`` and reused."""
    from tqdm import tqdm

    from ganforge.evaluation.fidelity import INCEPTION_EXTRACTOR
    from ganforge.evaluation.protocol import make_protocol, score_generator
    from ganforge.models import load_generator

    kept = directory / "scores.json"
    scores = json.loads(kept.read_text()) if kept.is_file() else {}
    snaps = json.loads((directory / "snapshots.json").read_text())
    todo = [s for s in snaps if s["file"] not in scores or ("fid_inception_10k" in scores[s["file"]]) != inception]
    protocols = {name: make_protocol(evaluate_cfg, reference_cfg, work / "reference", work / "featurizer.safetensors",
                                     *extractor)  # made once, for the snapshots still to score
                 for name, extractor in (("domain", ()), ("inception", (INCEPTION_EXTRACTOR,)))
                 if todo and (inception or name == "domain")}
    for snap in tqdm(todo, desc=f"scoring {directory.parent.name} snapshots", unit="generator"):
        generator, spec = load_generator(directory / snap["file"])
        domain = score_generator(generator, spec.z_dim, protocols["domain"])
        scores[snap["file"]] = {"fid": domain["fid"], "precision": domain["precision"], "recall": domain["recall"]}
        if inception:
            scores[snap["file"]]["fid_inception_10k"] = score_generator(generator, spec.z_dim,
                                                                        protocols["inception"])["fid"]
        kept.write_text(json.dumps(scores, indent=1))
    return [snap | scores[snap["file"]] for snap in snaps]


def summary(results: dict) -> dict:
    """The figures the targets read: the run with the lowest FID (Inception FID-10k when measured), its FID
    against the better of ``seed`` and ``lite`` (when both ran), its in-loop FID's last point over its best,
    and its recall."""
    key = "fid_inception_10k" if results["inception"] else "fid"
    best = min(results["runs"], key=lambda name: results[name][key])
    curve = [p["fid_inloop"] for p in results[best]["inloop"]]
    out = {"best": best, "fid_key": key, "fid": results[best][key], "recall": results[best]["recall"],
           "last_over_best": curve[-1] / min(curve)}
    if all(name in results["runs"] for name in DEFAULT_RUNS):
        out["baseline_fid"] = min(results[name][key] for name in DEFAULT_RUNS)
    snapshots = results[best].get("snapshots")
    if snapshots:  # the kept generators' curve: each mark's FID over the best up to it
        out["snapshot_key"], ratios = over_best_so_far(snapshots)
        out["snapshot_over_best"] = {f"{s['minutes']:g}": ratio for s, ratio in zip(snapshots, ratios, strict=True)}
    return out


def over_best_so_far(snapshots: list[dict]) -> tuple[str, list[float]]:
    """The FID the kept generators are judged by (Inception FID-10k when measured, else domain) and each one's
    FID over the lowest up to it."""
    key = "fid_inception_10k" if "fid_inception_10k" in snapshots[0] else "fid"
    fids = [s[key] for s in snapshots]
    return key, [fid / min(fids[:i + 1]) for i, fid in enumerate(fids)]


def _inception_as_asked(scored: Path, inception: bool) -> bool:
    """Whether a kept evaluate.json has the Inception figures exactly when this call asks for them."""
    return ("fid_inception_10k" in json.loads(scored.read_text())) == inception


def train_side_by_side(args: argparse.Namespace, work: Path, runs: dict[str, dict]) -> int:
    """Train ``runs`` at the same time, one thread each, for ``args.minutes``; the wall time in seconds."""
    print(f"training {' and '.join(runs)} side by side for {args.minutes} min each ...", flush=True)
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    procs = {}
    cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    for index, (name, run) in enumerate(runs.items()):
        (work / name).mkdir(exist_ok=True)
        for stale in ("result.json", "evaluate.json"):
            (work / name / stale).unlink(missing_ok=True)
        cmd = [sys.executable, __file__, "--worker", name, "--overrides", json.dumps(run), "--work", str(work),
               "--minutes", str(args.minutes), "--fid-interval-kimg", str(args.fid_interval_kimg),
               "--fid-samples", str(args.fid_samples),
               *(["--snapshot-minutes", ",".join(map(str, args.snapshot_minutes))] if args.snapshot_minutes else []),
               *(["--core", str(cores[index])] if len(runs) <= len(cores) else [])]
        log = (work / name / "log.txt").open("w")
        procs[name] = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
    start = time.perf_counter()
    for name, proc in procs.items():
        if proc.wait() != 0:
            sys.exit(f"training {name} failed:\n{(work / name / 'log.txt').read_text()[-4000:]}")
    return round(time.perf_counter() - start)


def trained(run_dir: Path, run: dict, minutes: float) -> bool:
    """Whether ``run_dir`` holds a finished run of these overrides that trained for ``minutes``."""
    if not (run_dir / "result.json").is_file() or not (run_dir / "train/generator-best.safetensors").is_file():
        return False
    recorded = json.loads((run_dir / "result.json").read_text()).get("overrides", {"arch": run_dir.name})
    with (run_dir / "live/plots/metrics/elapsed_min.tsv").open() as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    return recorded == run and bool(rows) and float(rows[-1]["elapsed_min"]) >= 0.99 * minutes


def reference_matches(reference_cfg, work: Path) -> bool:
    """Whether ``work`` already holds reference statistics for ``reference_cfg`` (every extractor)."""
    from ganforge.errors import UserError
    from ganforge.evaluation.reference import extractors, load_reference

    try:
        for extractor in extractors(reference_cfg):
            load_reference(work / "reference", reference_cfg, work / "featurizer.safetensors", extractor)
    except UserError:
        return False
    return True


def render(results: dict) -> None:
    runs = results.get("runs", list(DEFAULT_RUNS))
    first = results[runs[0]]
    e = first["protocol"]
    lines = [machine_line(results["machine"]), "",
             f"Every run trained with {results['threads_per_run']} thread, "
             f"{results.get('beside') or _beside(results.get('runs_side_by_side', 2))}, for "
             f"{results['minutes']:.0f} minutes of wall time on CIFAR-10 ({results.get('train_images', 50_000):,} "
             f"training images{' (prepare.max_images)' if results.get('max_images') else ''}, 32×32), with "
             f"the params.yaml train settings and the run's own overrides. FID: the best in-loop generator scored "
             f"by the evaluate protocol ({e['num_samples']} samples against the {e['reference_split']} split, "
             f"domain features; real-vs-real floor {first['fid_real_floor']:.2f}; featurizer test accuracy "
             f"{results['featurizer']['test_accuracy']:.3f})."
             + (f" Reused from an earlier call in the same work directory: {', '.join(results['reused'])}."
                if results.get("reused") else ""), "",
             "| run | overrides | kimg reached | train img/s | FID | KID | precision | recall | Inception FID-10k |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name in runs:
        r = results[name]
        overrides = ", ".join(f"`{k}={v}`" for k, v in r.get("overrides", {"arch": name}).items())
        inception = f"{r['fid_inception_10k']:.2f}" if "fid_inception_10k" in r else "not measured"
        lines.append(f"| `{name}` | {overrides} | {r['kimg']:.0f} | {r['train_img_per_s']:.0f} | "
                     f"{r['fid']:.2f} | {r['kid_mean']:.4f} | {r['precision']:.3f} | {r['recall']:.3f} | "
                     f"{inception} |")
    if "protocol_inception_10k" in first:
        p = first["protocol_inception_10k"]
        lines += ["", f"Inception FID-10k: {p['num_samples']:,} generated images against {p['reference_count']:,} "
                  f"{p['reference_split']} images (a seeded subset), {p['resize']}; weights: "
                  f"{p['feature_extractor_source']} (sha256 `{p['feature_extractor_sha256'][:16]}…`). Real-vs-real "
                  f"floor: {first['fid_real_floor_inception_10k']:.2f}."]
    lines += ["", f"In-loop FID ({results['fid_samples_inloop']} samples against as many training images, domain "
              f"features) along the way, then each run's best point against its last:", "",
              "| run | minutes | kimg | in-loop FID |", "|---|---|---|---|"]
    for name in runs:
        curve = results[name]["inloop"]
        lines += [f"| `{name}` | {p['minutes']:.1f} | {p['kimg']:.0f} | {p['fid_inloop']:.2f} |" for p in curve]
    lines += ["", "| run | best in-loop FID | at minute | last | last / best |", "|---|---|---|---|---|"]
    for name in runs:
        curve = results[name]["inloop"]
        best = min(curve, key=lambda p: p["fid_inloop"])
        lines.append(f"| `{name}` | {best['fid_inloop']:.2f} | {best['minutes']:.1f} | {curve[-1]['fid_inloop']:.2f} "
                     f"| {curve[-1]['fid_inloop'] / best['fid_inloop']:.2f} |")
    lines += _snapshot_lines(results)
    name = results_name(results.get("max_images"), results["minutes"])
    write_doc_section(name.replace("_", "-"), lines)


def _beside(runs: int) -> str:
    if runs == 1:
        return "alone"
    return "side by side with another" if runs == 2 else f"side by side with {runs - 1} others"


def _snapshot_lines(results: dict) -> list[str]:
    """The kept generators' table, each run's 30-minute Inception FID-10k from the 30-minute table beside it."""
    runs = [name for name in results["runs"] if results[name].get("snapshots")]
    if not runs:
        return []
    lines = ["", "Each run's EMA generator kept at these training minutes, scored by the same protocol:", "",
             "| run | minutes | kimg | Inception FID-10k | FID (domain) | precision | recall | FID / best so far |",
             "|---|---|---|---|---|---|---|---|"]
    for name in runs:
        snaps = results[name]["snapshots"]
        for p, ratio in zip(snaps, over_best_so_far(snaps)[1], strict=True):
            inception = f"{p['fid_inception_10k']:.2f}" if "fid_inception_10k" in p else "not measured"
            lines.append(f"| `{name}` | {p['minutes']:g} | {p['kimg']:.0f} | {inception} | {p['fid']:.2f} | "
                         f"{p['precision']:.3f} | {p['recall']:.3f} | {ratio:.2f} |")
    if results["minutes"] != 30 and RESULTS.is_file():  # the 30-minute table's seed and lite, at their end
        recorded = json.loads(RESULTS.read_text())
        beside = [f"`{n}` {recorded[n]['fid_inception_10k']:.2f} ({recorded[n]['kimg']:.0f} kimg)"
                  for n in DEFAULT_RUNS if "fid_inception_10k" in recorded.get(n, {})]
        if beside:
            lines += ["", f"Beside them, at 30 minutes in the 30-minute table above (the same protocol, trained side "
                      f"by side with one thread each): {', '.join(beside)}."]
    return lines


if __name__ == "__main__":
    main()
