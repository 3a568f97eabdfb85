"""``ganforge report --base REV``: what a change did to speed and quality, for a pull-request comment.

It runs DVC's own diffs against ``REV`` (the workspace is the new side):

- ``dvc metrics diff --all --json``: every metric, old and new, with speed-ups and FID changes highlighted;
- ``dvc params diff --json``: the params that changed;
- ``dvc plots diff -o DIR``: an HTML page of every plot side by side;
- the evaluate stage's sample grid at ``REV`` (from git) and now, embedded before and after.

The gate: exit code 1 when FID rose by more than ``max_fid_increase`` or images/s fell by more than
``max_speed_drop`` on a headline metric, so a CI job can fail the pull request.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from ganforge.errors import UserError
from ganforge.reporting.tables import markdown_table

GRID = "plots/evaluate/samples.png"
QUALITY_KEYS = ("fid", "winner_fid")  # lower is better; gated, with every Inception FID (fid_inception_10k)
SPEED_KEYS = ("img_per_s", "winner_img_per_s")  # higher is better; gated
_HIGHLIGHT = QUALITY_KEYS + SPEED_KEYS + ("kid_mean", "precision", "recall", "winner_speedup", "macs_ratio")


def quality(key: str) -> bool:
    """A gated FID: the domain ones, and a generator's Inception FID (not the real-vs-real floor)."""
    return key in QUALITY_KEYS or key.startswith("fid_inception_")


@dataclass(frozen=True)
class Budget:
    """What a change may cost before the gate fails.

    Args:
        max_fid_increase: largest allowed relative FID rise (0.05 = +5%) of a headline FID.
        max_speed_drop: largest allowed relative fall of a headline images/s (0.2 = -20%).
    """

    max_fid_increase: float = 0.05
    max_speed_drop: float = 0.2


def _dvc(repo: Path, *args: str) -> str:
    env = os.environ | {"PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
                        "DVC_NO_ANALYTICS": "1"}
    done = subprocess.run([sys.executable, "-m", "dvc", *args], cwd=repo, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        last = (done.stderr.strip() or done.stdout.strip()).splitlines()[-1:] or ["no output"]
        raise UserError(f"dvc {' '.join(args)} failed: {last[0]}")
    return done.stdout


def headline(key: str) -> bool:
    """A top-level metric (``fid``, not ``variants.int8.fid``): the ones the gate and the highlights use."""
    return "." not in key


def _number(value: object) -> bool:
    # bools are ints to Python, and an integer past a float's range makes division raise OverflowError
    return isinstance(value, float) or (isinstance(value, int) and not isinstance(value, bool)
                                        and abs(value) < 2**1023)


def relative_change(change: dict) -> float | None:
    old, new = change.get("old"), change.get("new")
    if not _number(old) or not _number(new) or old == 0:
        return None
    return new / old - 1


def parse_diff(text: str, command: str) -> dict[str, dict[str, dict]]:
    """The JSON that ``dvc metrics diff --json`` or ``dvc params diff --json`` printed: file -> key -> change
    (``old``, ``new``, ...). Anything else is a one-line :class:`UserError` naming ``command`` and the entry."""
    try:
        diff = json.loads(text or "{}")
    except (ValueError, RecursionError) as e:  # ValueError: malformed, or an integer of over 4300 digits
        raise UserError(f"{command}: malformed JSON output ({str(e).splitlines()[0][:200]})") from None
    if not isinstance(diff, dict):
        raise UserError(f"{command}: expected a JSON object of files, got {type(diff).__name__}")
    for path, changes in diff.items():
        if not isinstance(changes, dict):
            raise UserError(f"{command}: {path!r}: expected an object of changed keys, got {type(changes).__name__}")
        for key, change in changes.items():
            if not isinstance(change, dict):
                raise UserError(f"{command}: {path!r}: {key!r}: expected an object with old and new, got "
                                f"{type(change).__name__}")
    return diff


def gate(metrics_diff: dict, budget: Budget) -> list[str]:
    """The broken budgets (one line each) in a ``dvc metrics diff --json`` result; empty when all hold."""
    broken = []
    for path, changes in metrics_diff.items():
        for key, change in changes.items():
            rel = relative_change(change)
            if rel is None or not headline(key):
                continue
            if quality(key) and rel > budget.max_fid_increase:
                broken.append(f"{path}: {key} rose {rel:+.1%} ({change['old']:.4g} -> {change['new']:.4g}), "
                              f"more than the allowed {budget.max_fid_increase:+.0%}")
            if key in SPEED_KEYS and rel < -budget.max_speed_drop:
                broken.append(f"{path}: {key} fell {rel:+.1%} ({change['old']:,.0f} -> {change['new']:,.0f}), "
                              f"more than the allowed -{budget.max_speed_drop:.0%}")
    return broken


def _fmt(value: object) -> str:
    if isinstance(value, float):
        return f"{value:,.4g}" if abs(value) < 1000 else f"{value:,.0f}"
    return "—" if value is None else str(value)


def _metric_rows(metrics_diff: dict) -> list[str]:
    rows = []
    for path, changes in sorted(metrics_diff.items()):
        for key, change in sorted(changes.items(), key=lambda kv: (not headline(kv[0]), kv[0])):
            if not headline(key) and change.get("old") == change.get("new"):
                continue  # unchanged per-variant rows would drown the table
            rel = relative_change(change)
            shown = "" if rel is None else f"{rel:+.1%}"
            if rel is not None and quality(key):
                shown = f"**{shown}** {'worse' if rel > 0 else 'better'}" if abs(rel) > 1e-9 else shown
            if rel is not None and key in SPEED_KEYS:
                shown = f"**{rel + 1:.2f}×** {'faster' if rel > 0 else 'slower'}" if abs(rel) > 1e-9 else shown
            name = f"**{key}**" if key in _HIGHLIGHT or quality(key) else key
            rows.append((f"`{path}` {name}", _fmt(change.get("old")), _fmt(change.get("new")), shown))
    return markdown_table(pd.DataFrame(rows, columns=["metric", "base", "this change", "change"]))


def _param_rows(params_diff: dict) -> list[str]:
    rows = [(f"`{path}` {key}", _fmt(change.get("old")), _fmt(change.get("new")))
            for path, changes in sorted(params_diff.items()) for key, change in sorted(changes.items())]
    if not rows:
        return ["No params changed."]
    return markdown_table(pd.DataFrame(rows, columns=["param", "base", "this change"]))


def _grid_at(repo: Path, rev: str, out: Path) -> bool:
    done = subprocess.run(["git", "show", f"{rev}:{GRID}"], cwd=repo, capture_output=True)
    if done.returncode != 0:
        return False
    out.write_bytes(done.stdout)
    return True


def write_report(repo: str | Path, base: str, out_dir: str | Path, budget: Budget) -> tuple[Path, list[str]]:
    """Write ``report.md``, the sample grids and ``plots/index.html`` to ``out_dir``; return the markdown
    path and the broken budgets."""
    repo, out_dir = Path(repo).resolve(), Path(out_dir).resolve()
    if subprocess.run(["git", "rev-parse", "--verify", "--quiet", f"{base}^{{commit}}"], cwd=repo,
                      capture_output=True).returncode != 0:
        raise UserError(f"--base {base}: not a git revision of {repo}")
    out_dir.mkdir(parents=True, exist_ok=True)
    metrics_diff = parse_diff(_dvc(repo, "metrics", "diff", base, "--all", "--json"), "dvc metrics diff --json")
    params_diff = parse_diff(_dvc(repo, "params", "diff", base, "--json"), "dvc params diff --json")
    _dvc(repo, "plots", "diff", base, "-o", str(out_dir / "plots"))
    broken = gate(metrics_diff, budget)
    lines = [f"## ganforge: this change against `{base}`", ""]
    if broken:
        lines += ["**Budget broken:**", "", *(f"- {line}" for line in broken), ""]
    else:
        lines += [f"Within budget: headline FID up at most {budget.max_fid_increase:+.0%}, images/s down at most "
                  f"-{budget.max_speed_drop:.0%}.", ""]
    lines += ["### Metrics", "", *_metric_rows(metrics_diff), "", "### Params", "", *_param_rows(params_diff), ""]
    before = _grid_at(repo, base, out_dir / "samples-before.png")
    after = (repo / GRID).is_file()
    if after:
        (out_dir / "samples-after.png").write_bytes((repo / GRID).read_bytes())
    if before or after:
        lines += ["### Samples", "", "| before | after |", "|---|---|",
                  f"| {'![before](samples-before.png)' if before else '—'} | "
                  f"{'![after](samples-after.png)' if after else '—'} |", ""]
    lines += ["All plots side by side (`dvc plots diff`): [plots/index.html](plots/index.html)", ""]
    report = out_dir / "report.md"
    report.write_text("\n".join(lines))
    return report, broken
