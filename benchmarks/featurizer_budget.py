"""The featurizer's cost on real data: params.yaml's bounded featurizer against a fixed 15 epochs, side by side.

    python benchmarks/featurizer_budget.py [--archive ../shared/datasets/cifar10-jpeg.tar.gz] [--work DIR]

The CIFAR-10 JPEG archive is prepared at 32x32 as the pipeline does (50,000 training images). Then the domain
featurizer trains twice, one after the other, with torch's threads at the machine's cores: once with the
params.yaml featurizer settings (a wall-clock bound, early stopping on held-out accuracy, the first part of the
schedule at half size), once for 15 full epochs at full size throughout, without bound or early stopping
(``--keep-full`` reuses that one from the last results when its settings match). Each run's wall time, why it
stopped and its test accuracy are recorded. Results go to bench/featurizer_budget.json and the generated
section of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

from data_path import prepare_archive
from measure import REPO, cifar_main, machine, machine_line, targets, write_doc_section

RESULTS = REPO / "bench/featurizer_budget.json"
FULL_EPOCHS = 15
TARGET_MINUTES = targets(minutes="featurizer_minutes")["minutes"]


def run(args: argparse.Namespace, work: Path) -> dict:
    from ganforge.config import FeaturizerConfig, load_stage_config
    from ganforge.evaluation.features import train_featurizer

    if not (work / "prepared/manifest.json").is_file():
        print("preparing CIFAR-10 ...", flush=True)
        prepare_archive(args.archive, work)
    bounded = load_stage_config(FeaturizerConfig, REPO / "params.yaml")
    settings = {"params.yaml": bounded,
                f"{FULL_EPOCHS} epochs": dataclasses.replace(bounded, epochs=FULL_EPOCHS, max_minutes=None, patience=0,
                                                         low_res_share=0.0)}
    results: dict = {"machine": machine(), "train_images": json.loads((work / "prepared/manifest.json").read_text())
                     .get("counts", {}).get("train"), "runs": {}}
    kept = json.loads(RESULTS.read_text())["runs"] if args.keep_full and RESULTS.is_file() else {}
    for name, cfg in settings.items():
        settings_record = {k: v for k, v in dataclasses.asdict(cfg).items() if k != "seed"}
        if name != "params.yaml" and kept.get(name, {}).get("settings") == settings_record:
            results["runs"][name] = kept[name] | {"reused": True}
            continue
        print(f"featurizer: {name} ...", flush=True)
        out = work / f"featurizer-{name.replace(' ', '-').replace('.', '-')}"
        start = time.perf_counter()
        metrics = train_featurizer(cfg, work / "prepared", out.with_suffix(".safetensors"), out.with_suffix(".json"))
        results["runs"][name] = {"settings": settings_record, "wall_s": time.perf_counter() - start, **metrics}
    return results


def render(results: dict) -> None:
    runs = results["runs"]
    full, ours = runs[f"{FULL_EPOCHS} epochs"], runs["params.yaml"]
    lines = [machine_line(results["machine"]), "",
             f"The domain featurizer on CIFAR-10 ({results['train_images']:,} training images at 32×32, "
             f"{ours['heldout_images']:,} of them held out), one run after the other. Minutes are the whole call's "
             f"wall time, loading the data and the final accuracy passes included: `featurizer.max_minutes` "
             f"bounds all of it.", "",
             "| settings | epochs, max minutes, patience, half-size share | stopped by | epochs run | minutes | "
             "held-out accuracy | test accuracy |", "|---|---|---|---|---|---|---|"]
    for name, r in runs.items():
        s = r["settings"]
        name = f"{name} (from an earlier run)" if r.get("reused") else name
        bound = "none" if s["max_minutes"] is None else f"{s['max_minutes']:g}"
        lines.append(f"| {name} | {s['epochs']}, {bound}, {s['patience']}, {s.get('low_res_share', 0):g} | "
                     f"{r['stopped']} | {r['epochs']:.2f} | "
                     f"{r['wall_s'] / 60:.2f} | {r['heldout_accuracy']:.4f} | {r['test_accuracy']:.4f} |")
    fast = ours["wall_s"] / 60 <= TARGET_MINUTES
    kept = ours["test_accuracy"] >= full["test_accuracy"]
    lines += ["", f"Target: at most {TARGET_MINUTES:g} minutes ({ours['wall_s'] / 60:.2f}: "
              f"{'met' if fast else '**missed**'}) at no worse test accuracy than {FULL_EPOCHS} epochs give "
              f"({ours['test_accuracy']:.4f} against {full['test_accuracy']:.4f}: {'met' if kept else '**missed**'})."]
    write_doc_section("featurizer-budget", lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--keep-full", action="store_true",
                        help=f"reuse the {FULL_EPOCHS}-epoch run of bench/featurizer_budget.json when its settings "
                             f"match (it takes about 7 minutes)")


if __name__ == "__main__":
    cifar_main(__doc__, RESULTS, run, render, add_arguments)
