"""Every ``ganforge`` command checks the paths it is given before doing any work: an output that exists as the wrong
kind or sits under a file, and an input that is missing or the wrong kind, is one line and exit code 2."""

from __future__ import annotations

from pathlib import Path

import pytest

from ganforge import cli
from ganforge.benchmarking import suite
from ganforge.reporting import report
from ganforge.serving import generate as generate_module
from ganforge.serving import server as server_module


@pytest.fixture
def no_work(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each command's work (loading the package, running the bench, writing the report) fails the test if
    reached: the refusal must come first."""
    def started(*args, **kwargs):
        raise AssertionError("the command's work started before its paths were checked")

    for module, name in [(generate_module, "load_package"), (server_module, "load_package"), (suite, "run_bench"),
                         (suite, "render"), (report, "write_report")]:
        monkeypatch.setattr(module, name, started)


def _run(capsys: pytest.CaptureFixture, root: Path, args: list[str]) -> tuple[int, list[str]]:
    with pytest.raises(SystemExit) as exited:
        cli.main([arg.format(root=root) for arg in args])
    return exited.value.code, capsys.readouterr().err.strip().splitlines()


GENERATE = ["generate", "--package", "{root}/pkg"]
BENCH = ["bench", "--repo", "{root}"]
REPORT = ["report", "--base", "main", "--repo", "{root}"]

# (arguments, the start of the one line expected after "ganforge: error: "); {root} holds pkg/, a-dir/, a-file.
WRONG_OUTPUTS = [
    ([*GENERATE, "--out", "{root}/a-file"], "--out {root}/a-file: exists as a file, expected a directory"),
    ([*GENERATE, "--out", "{root}/a-file/sub"], "--out {root}/a-file/sub: {root}/a-file is a file, not a directory"),
    ([*GENERATE, "--grid", "{root}/a-dir"], "--grid {root}/a-dir: exists as a directory, expected a file"),
    ([*GENERATE, "--grid", "{root}/a-file/g.png"], "--grid {root}/a-file/g.png: {root}/a-file is a file, not a"),
    ([*GENERATE, "--out", "{root}/new", "--grid", "{root}/a-dir"], "--grid {root}/a-dir: exists as a directory"),
    ([*GENERATE, "--out", "{root}/new", "--grid", "{root}/new"], "--grid {root}/new: the same path as --out"),
    ([*BENCH, "--results", "{root}/a-dir"], "--results {root}/a-dir: exists as a directory, expected a file"),
    ([*BENCH, "--results", "{root}/a-file/r.json"], "--results {root}/a-file/r.json: {root}/a-file is a file"),
    ([*BENCH, "--results", "{root}/r.json", "--doc", "{root}/a-dir"], "--doc {root}/a-dir: exists as a directory"),
    ([*BENCH, "--render", "--results", "{root}/a-file", "--doc", "{root}/a-dir"],
     "--doc {root}/a-dir: exists as a directory"),
    ([*REPORT, "--out", "{root}/a-file"], "--out {root}/a-file: exists as a file, expected a directory"),
    ([*REPORT, "--out", "{root}/a-file/sub"], "--out {root}/a-file/sub: {root}/a-file is a file, not a directory"),
]

BAD_INPUTS = [
    ([*GENERATE[:2], "{root}/missing", "--out", "{root}/new"], "--package {root}/missing: package directory not found"),
    ([*GENERATE[:2], "{root}/a-file", "--out", "{root}/new"], "--package {root}/a-file: is a file, expected a package"),
    (["serve", "--package", "{root}/a-file"], "--package {root}/a-file: is a file, expected a package directory"),
    (["bench", "--repo", "{root}/missing"], "--repo {root}/missing: directory not found"),
    (["report", "--base", "main", "--repo", "{root}/a-file"], "--repo {root}/a-file: is a file, expected a directory"),
    ([*BENCH, "--render", "--results", "{root}/missing.json"], "--results {root}/missing.json: file not found"),
    ([*BENCH, "--render", "--results", "{root}/a-dir"], "--results {root}/a-dir: is a directory, expected a file"),
    ([*GENERATE, "--out", ""], "argument --out: expected a path, got an empty string"),
    (["report", "--base", "main", "--out", ""], "argument --out: expected a path, got an empty string"),
]


@pytest.mark.parametrize(("args", "message"), WRONG_OUTPUTS + BAD_INPUTS)
def test_bad_paths_are_refused_in_one_line_before_any_work(tmp_path, capsys, no_work, reliability, args, message):
    reliability.bad_input()
    (tmp_path / "pkg").mkdir()
    (tmp_path / "a-dir").mkdir()
    (tmp_path / "a-file").write_text("kept")
    code, lines = _run(capsys, tmp_path, args)
    assert code == 2 and len(lines) == 1, lines
    assert lines[0].startswith("ganforge: error: " + message.format(root=tmp_path)), lines
    # Nothing was created or changed.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-dir", "a-file", "pkg"]
    assert (tmp_path / "a-file").read_text() == "kept" and not any((tmp_path / "a-dir").iterdir())


def test_the_grid_limit_in_the_help_is_the_one_enforced():
    assert cli.MAX_GRID_IMAGES == generate_module.MAX_GRID_IMAGES


def test_a_grid_not_named_png_is_refused(tmp_path, capsys, reliability):
    from ganforge.cli import main

    (tmp_path / "pkg").mkdir()
    for name in ("grid.jpg", "grid", "grid.PNG.gif"):
        reliability.bad_input()
        with pytest.raises(SystemExit) as exit_:
            main(["generate", "--package", str(tmp_path / "pkg"), "-n", "4", "--grid", str(tmp_path / name)])
        (line,) = capsys.readouterr().err.strip().splitlines()
        assert exit_.value.code == 2 and "give a file name ending in .png" in line, line
    assert not any(p.name.startswith("grid") for p in tmp_path.iterdir())
