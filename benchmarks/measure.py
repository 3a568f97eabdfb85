"""Shared helpers of the benchmark scripts: the repo's paths, and ganforge's own timing and reporting helpers
bound to docs/benchmarks.md."""

from __future__ import annotations

import json
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from ganforge.benchmarking import measure as _measure
from ganforge.benchmarking.measure import machine, machine_line  # noqa: F401 (re-exported for the scripts)

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs/benchmarks.md"


def timed(cmd: list[str], cwd: Path, env: dict | None = None) -> dict:
    """Wall seconds (0.1 s) and peak process-tree RSS (MiB) of ``cmd``."""
    result = _measure.timed(cmd, cwd, env)
    return {"wall_s": round(result["wall_s"], 1), "peak_rss_mib": round(result["peak_rss_mib"])}


def write_doc_section(name: str, lines: list[str]) -> None:
    """Replace (or append) the generated section ``name`` of docs/benchmarks.md."""
    _measure.write_doc_section(DOC, name, lines)


def save_results(path: Path, results: dict, render: Callable[[dict], None]) -> None:
    """Write the raw results JSON, regenerate the benchmark's section of docs/benchmarks.md, print a summary."""
    path.parent.mkdir(exist_ok=True)
    path.write_text(json.dumps(results, indent=2) + "\n")
    render(results)
    print(json.dumps({k: v for k, v in results.items() if k not in ("rows", "layer_profile_batch256")}, indent=2))


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
