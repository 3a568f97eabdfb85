"""Tables as pandas DataFrames, written as the markdown that pull-request comments and docs/benchmarks.md show."""

from __future__ import annotations

import pandas as pd


def markdown_table(frame: pd.DataFrame) -> list[str]:
    """The lines of a GitHub markdown table: the header, the rule, one line per row (cells as ``str`` gives
    them, so format numbers before)."""
    def line(cells) -> str:
        return "| " + " | ".join(str(cell) for cell in cells) + " |"

    rule = "|" + "---|" * len(frame.columns)
    return [line(frame.columns), rule, *(line(row) for row in frame.itertuples(index=False))]
