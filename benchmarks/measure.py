"""Shared helpers of the benchmark scripts: the repo's paths, and ganforge's own timing and reporting helpers
bound to docs/benchmarks.md."""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from ganforge.benchmarking import page as _page
from ganforge.measurement import timing as _timing
from ganforge.measurement.machine import machine, machine_line  # noqa: F401 (re-exported for the scripts)

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs/benchmarks.md"
DEFAULT_ARCHIVE = REPO.parent / "shared/datasets/cifar10-jpeg.tar.gz"


def targets(**names: str) -> dict[str, float]:
    """Bounds from bench/targets.yaml, the one file of targets, under the names a script records them by:
    ``targets(fid_ratio="winner_fid_ratio")`` -> {"fid_ratio": 1.1}."""
    from ganforge.benchmarking.targets import TARGETS_FILE, load_targets

    every = load_targets(REPO / "bench" / TARGETS_FILE)
    return {name: every[key].bound for name, key in names.items()}


def timed(cmd: list[str], cwd: Path, env: dict | None = None) -> dict:
    """Wall seconds (0.1 s) and peak process-tree RSS (MiB) of ``cmd``."""
    result = _timing.timed(cmd, cwd, env)
    return {"wall_s": round(result["wall_s"], 1), "peak_rss_mib": round(result["peak_rss_mib"])}


def write_doc_section(name: str, lines: list[str]) -> None:
    """Replace (or append) the generated section ``name`` of docs/benchmarks.md."""
    _page.write_doc_section(DOC, name, lines)


def save_results(path: Path, results: dict, render: Callable[[dict], None]) -> None:
    """Write the raw results JSON, regenerate the benchmark's section of docs/benchmarks.md, print a summary."""
    path.parent.mkdir(exist_ok=True)
    path.write_text(json.dumps(results, indent=2) + "\n")
    render(results)
    print(json.dumps({k: v for k, v in results.items() if k not in ("rows", "layer_profile_batch256")}, indent=2))


def cifar_main(description: str, results_path: Path, run: Callable[[argparse.Namespace, Path], dict],
               render: Callable[[dict], None], add_arguments: Callable[[argparse.ArgumentParser], None] | None = None,
               ) -> None:
    """The command line of a CIFAR-10 benchmark: ``--archive``, ``--work``, ``--render`` (only regenerate the doc
    section from the saved results) and the benchmark's own arguments."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--archive", type=Path, default=DEFAULT_ARCHIVE)
    parser.add_argument("--work", type=Path, help="keep intermediate files here (default: a temp dir)")
    parser.add_argument("--render", action="store_true", help="only regenerate the doc section from the results")
    if add_arguments is not None:
        add_arguments(parser)
    args = parser.parse_args()
    if args.render:
        render(json.loads(results_path.read_text()))
        return
    run_in_work_dir(args.archive, args.work, lambda work: run(args, work), results_path, render)


def run_in_work_dir(archive: Path, work: Path | None, run: Callable[[Path], dict], path: Path,
                    render: Callable[[dict], None]) -> None:
    """Run a CIFAR-10 benchmark in ``work`` (kept) or a temp dir, then save and render its results."""
    if not archive.is_file():
        sys.exit(f"{archive}: CIFAR-10 JPEG archive not found; this benchmark needs real data")
    with tempfile.TemporaryDirectory() as tmp:
        work = work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        results = run(work)
    save_results(path, results, render)
