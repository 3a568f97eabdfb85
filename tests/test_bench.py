"""ganforge bench --quick: one command measures every section and regenerates the doc's tables."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SECTIONS = ("machine", "ceilings", "generation", "training", "data", "pipeline")


def _numbers(tree) -> list[float]:
    if isinstance(tree, dict):
        return [n for value in tree.values() for n in _numbers(value)]
    if isinstance(tree, list):
        return [n for value in tree for n in _numbers(value)]
    return [tree] if isinstance(tree, int | float) and not isinstance(tree, bool) else []


def test_bench_quick_measures_every_section_and_writes_the_tables(tmp_path):
    doc = tmp_path / "benchmarks.md"
    doc.write_text("# Benchmarks\n\n<!-- bench:begin -->\nold\n<!-- bench:end -->\n")
    results_path = tmp_path / "results.json"
    done = subprocess.run([sys.executable, "-m", "ganforge.cli", "bench", "--quick", "--repo", str(REPO),
                           "--results", str(results_path), "--doc", str(doc)],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads(results_path.read_text())
    assert all(section in results for section in SECTIONS)
    for section in SECTIONS[1:]:
        numbers = _numbers(results[section])
        assert numbers and all(n > 0 for n in numbers), (section, numbers)
    assert results["ceilings"]["fp32_gemm_gflops"]["median"] > 1
    rows = results["generation"]["rows"]
    assert {"seed", "lite"} <= set(rows) and rows["seed"]["vs_seed_fp32"] == 1.0
    assert set(results["training"]["archs"]) == {"seed", "dcgan", "lite"} and results["training"]["ddp"]["ratio"] > 0
    assert "noop_repro" in results["pipeline"] or "noop_repro_skipped" in results["pipeline"]
    text = doc.read_text()
    assert "old" not in text and "| fp32 GEMM (1024³) |" in text and "<!-- targets:begin -->" in text
    assert "| `dcgan`, 1 process |" in text and "DDP ratio" in text
