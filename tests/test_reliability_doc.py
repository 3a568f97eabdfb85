"""docs/reliability.md lists every test of the reliability suite, and only tests that exist."""

from __future__ import annotations

import ast
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs/reliability.md"


def _tests(path: Path) -> dict[str, ast.FunctionDef]:
    tree = ast.parse(path.read_text())
    return {node.name: node for node in tree.body
            if isinstance(node, ast.FunctionDef) and node.name.startswith("test_")}


def test_the_doc_tables_name_exactly_the_reliability_tests():
    existing, in_suite = set(), set()
    for path in sorted((REPO / "tests").glob("test_*.py")):
        for name, node in _tests(path).items():
            test_id = f"tests/{path.name}::{name}"
            existing.add(test_id)
            if "reliability" in [arg.arg for arg in node.args.args]:
                in_suite.add(test_id)
    named = set(re.findall(r"`(tests/test_\w+\.py::\w+)`", DOC.read_text()))
    assert not named - existing, f"named in {DOC.name} but not a test: {sorted(named - existing)}"
    assert not in_suite - named, f"reliability tests missing from {DOC.name}: {sorted(in_suite - named)}"
    assert named <= in_suite, f"named in {DOC.name} without the reliability fixture: {sorted(named - in_suite)}"
