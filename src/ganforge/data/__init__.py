"""Data: sources, preparation into uint8 arrays, and reading prepared splits."""

from ganforge.data.prepare import prepare
from ganforge.data.prepared import PreparedSplit, load_split, read_manifest

__all__ = ["PreparedSplit", "load_split", "prepare", "read_manifest"]
