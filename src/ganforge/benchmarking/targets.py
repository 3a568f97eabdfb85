"""The project's targets, read from the one data file that holds them (``bench/targets.yaml``), and the
met-or-missed table of measured values against them."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from ganforge.errors import UserError
from ganforge.files import read_text, shown
from ganforge.reporting.tables import markdown_table

TARGETS_FILE = "targets.yaml"


@dataclass(frozen=True)
class Target:
    """One target: ``what`` is measured (with {fields} filled from the results), ``by`` which command, and
    the ``bound`` it must stay ``at_most`` (else at least)."""

    what: str
    by: str
    bound: float
    at_most: bool

    def row(self, value: float | None, also: bool = True, by: str | None = None, **fields: Any) -> dict[str, str]:
        """The table row of ``value`` (None: not measured yet); ``also`` is a side condition that must hold too."""
        sign = "≤" if self.at_most else "≥"
        row = {"target": self.what.format(**fields), "measured by": by or self.by, "value": "not measured yet",
               "bound": f"{sign} {self.bound:,g}", "": "—"}
        if value is not None:
            met = (value <= self.bound if self.at_most else value >= self.bound) and also
            row |= {"value": f"{value:,.0f}" if abs(value) >= 100 else f"{value:.3g}",
                    "": "met" if met else "**missed**"}
        return row


def load_targets(path: str | Path) -> dict[str, Target]:
    """Every target in ``path``; an entry without ``what``, ``by`` and exactly one numeric ``at_most`` or
    ``at_least`` is a one-line :class:`UserError` naming it."""
    try:
        entries = yaml.safe_load(read_text(path))
    except yaml.YAMLError as e:
        raise UserError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(entries, dict):
        raise UserError(f"{path}: expected a mapping of targets, got {shown(entries)}")
    targets = {}
    for key, entry in entries.items():
        bounds = [k for k in ("at_most", "at_least") if isinstance(entry, dict) and k in entry]
        if (not isinstance(entry, dict) or len(bounds) != 1 or not isinstance(entry.get("what"), str)
                or not isinstance(entry.get("by"), str) or not isinstance(entry[bounds[0]], int | float)):
            raise UserError(f"{path}: {key}: expected what, by and one number at_most or at_least, got {shown(entry)}")
        targets[key] = Target(entry["what"], entry["by"], float(entry[bounds[0]]), bounds[0] == "at_most")
    return targets


def target_table(rows: list[dict[str, str]]) -> list[str]:
    """The met-or-missed markdown table of :meth:`Target.row` rows."""
    return markdown_table(pd.DataFrame(rows, columns=["target", "measured by", "value", "bound", ""]))
