"""The reliability tally: what the reliability tests fed ganforge, what faults they injected, what came through.

A test joins the reliability suite by taking the ``reliability`` fixture (it is then marked ``reliability``, so
``pytest -m reliability`` runs the suite alone) and saying what it does:

- ``bad_input()`` for each bad input it hands to ganforge;
- ``fault()`` for each fault it injects (a signal, an ``OSError``, a NaN, a corrupt file);
- ``guard(path)`` before a fault, for each file or directory that must come through it unchanged, and
  ``check_guarded()`` after the fault, which asserts they did.

A guarded path found changed, or never checked because the test failed first, counts as lost. A test that fails
with anything other than an ``AssertionError`` counts as a crash: ganforge raised where it should have refused.
With ``--reliability-doc PATH`` the run's totals replace the ``counts`` section of that Markdown page.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import os
from pathlib import Path

import pytest

from ganforge.benchmarking.page import write_doc_section

MARKER = "reliability"


def _digest(path: Path) -> str | None:
    """sha256 of a file, or of a directory's relative names and bytes; None when the path is missing."""
    if not path.exists():
        return None
    digest = hashlib.sha256()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for file in files:
        digest.update(str(file.relative_to(path)).encode() + b"\0" + file.read_bytes())
    return digest.hexdigest()


@dataclasses.dataclass
class Tally:
    """One test's counts; see the module docstring."""

    bad_inputs: int = 0
    faults: int = 0
    kept: int = 0
    lost: int = 0
    guarded: dict[Path, str | None] = dataclasses.field(default_factory=dict)

    def bad_input(self, count: int = 1) -> None:
        self.bad_inputs += count

    def fault(self, count: int = 1) -> None:
        self.faults += count

    def guard(self, *paths: str | Path) -> None:
        for path in map(Path, paths):
            digest = _digest(path)
            assert digest is not None, f"{path}: nothing to guard"
            self.guarded[path] = digest

    def check_guarded(self) -> None:
        changed = [str(path) for path, digest in self.guarded.items() if _digest(path) != digest]
        self.lost += len(changed)
        self.kept += len(self.guarded) - len(changed)
        self.guarded.clear()
        assert not changed, f"changed or lost by the fault: {', '.join(changed)}"

    def add(self, other: Tally) -> None:
        """Add a finished test's counts; paths it guarded but never checked (it failed first) count as lost."""
        self.bad_inputs += other.bad_inputs
        self.faults += other.faults
        self.kept += other.kept
        self.lost += other.lost + len(other.guarded)


@dataclasses.dataclass
class _Run:
    tests: int = 0
    passed: int = 0
    crashes: int = 0
    call_s: float = 0.0
    totals: Tally = dataclasses.field(default_factory=Tally)


_RUN = _Run()


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--reliability-doc", metavar="PATH",
                     help="write the reliability tests' counts into the 'counts' section of this Markdown page")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", f"{MARKER}: a reliability case (takes the reliability fixture)")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if MARKER in getattr(item, "fixturenames", ()):
            item.add_marker(MARKER)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    report = yield
    if report.when == "call" and MARKER in getattr(item, "fixturenames", ()):
        _RUN.tests += 1
        _RUN.passed += report.passed
        _RUN.call_s += report.duration
        _RUN.crashes += bool(report.failed and call.excinfo and not call.excinfo.errisinstance(AssertionError))
    return report


@pytest.fixture
def reliability():
    tally = Tally()
    yield tally
    _RUN.totals.add(tally)


def pytest_sessionfinish(session: pytest.Session) -> None:
    doc = session.config.getoption("--reliability-doc")
    if not doc or not _RUN.tests:
        return
    write_doc_section(Path(doc), "counts", [
        f"Counted on {datetime.date.today().isoformat()} by `pytest --reliability-doc` (`make reliability`): "
        f"{_RUN.tests} reliability test cases ran and {_RUN.passed} passed; their bodies took "
        f"{_RUN.call_s / 60:.1f} min on {os.cpu_count()} cores.",
        "",
        "| | count |",
        "|---|---|",
        f"| bad inputs tried | {_RUN.totals.bad_inputs:,} |",
        f"| faults injected | {_RUN.totals.faults:,} |",
        f"| files and directories checked unchanged after a fault | {_RUN.totals.kept:,} |",
        f"| crashes (a test failing with an exception, not a failed check) | {_RUN.crashes} |",
        f"| data or checkpoints lost | {_RUN.totals.lost} |",
    ])
