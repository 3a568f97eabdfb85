"""Output paths: checked before any work, and a stage's outputs replaced all together or not at all."""

from __future__ import annotations

import errno
import os
import runpy
import shlex
import sys
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from ganforge.errors import UserError
from ganforge.files import atomic_dir, atomic_path, check_output, replaced_together, write_json

REPO = Path(__file__).resolve().parents[1]
PIPELINE = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]


def _declared_outputs(stage: dict) -> set[str]:
    paths = set()
    for key in ("outs", "metrics", "plots"):
        for entry in stage.get(key, []):
            paths.update(entry if isinstance(entry, dict) else [entry])
    return paths


def _stage_argv(name: str) -> tuple[Path, list[str], dict[str, str]]:
    """The stage's script, its arguments as dvc.yaml gives them, and each output flag with its path."""
    words = shlex.split(PIPELINE[name]["cmd"].replace("${train.nproc}", "1"))
    script_at = next(i for i, word in enumerate(words) if word.endswith(".py"))
    args = words[script_at + 1:]
    flags = dict(zip(args[::2], args[1::2], strict=True))
    declared = _declared_outputs(PIPELINE[name])  # a flag's path is one of them, or a file inside one
    outputs = {flag: path for flag, path in flags.items()
               if any(path == out or path.startswith(f"{out}/") for out in declared)}
    return REPO / words[script_at], args, outputs


STAGE_OUTPUTS = [(name, flag) for name in PIPELINE for flag in _stage_argv(name)[2]]


def _run_stage(script: Path, args: list[str], monkeypatch) -> int:
    monkeypatch.setattr(sys, "argv", [str(script), "--params", str(REPO / "params.yaml"), *args])
    with pytest.raises(SystemExit) as exit_:
        runpy.run_path(str(script), run_name="__main__")
    return exit_.value.code


def _refused_in_one_line(script: Path, args: list[str], monkeypatch, capsys, reliability) -> str:
    """Run the stage on one bad input; it must exit 2 with exactly one stderr line, which is returned."""
    reliability.bad_input()
    capsys.readouterr()
    with monkeypatch.context() as patch:
        code = _run_stage(script, args, patch)
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(lines) == 1, lines
    return lines[0]


def _snapshot(root: Path) -> dict[str, bytes | None]:
    return {str(p.relative_to(root)): (p.read_bytes() if p.is_file() else None) for p in sorted(root.rglob("*"))}


def test_every_stage_declares_its_outputs_on_the_command_line():
    assert {name for name, _ in STAGE_OUTPUTS} == set(PIPELINE)
    assert ("prepare", "--out") in STAGE_OUTPUTS and ("evaluate", "--nearest") in STAGE_OUTPUTS


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=st.sampled_from(STAGE_OUTPUTS), how=st.sampled_from(["wrong kind", "parent is a file"]))
def test_an_output_of_the_wrong_kind_is_refused_before_any_work(tmp_path_factory, monkeypatch, capsys, reliability,
                                                                 case, how):
    name, flag = case
    root = tmp_path_factory.mktemp("outputs")
    script, args, outputs = _stage_argv(name)
    args = [arg if arg.startswith("--") else str(root / arg) for arg in args]  # every path under root
    target = root / outputs[flag]
    if how == "wrong kind":
        target.parent.mkdir(parents=True, exist_ok=True)
        if Path(outputs[flag]).suffix:  # a file output: put a directory there
            target.mkdir()
            (target / "keep.txt").write_text("a user's file\n")
        else:
            target.write_text("a user's file, not a directory\n")
    else:
        target.parent.parent.mkdir(parents=True, exist_ok=True)
        target.parent.write_text("a file where a folder should be\n")
    before = _snapshot(root)
    line = _refused_in_one_line(script, args, monkeypatch, capsys, reliability)
    # the flag itself, or (a shared parent being a file) another output flag of the stage checked before it
    named = line.removeprefix(f"{name}: error: ").split(" ", 1)[0]
    assert named == flag if how == "wrong kind" else named in outputs, line
    assert _snapshot(root) == before  # nothing written, nothing deleted


def test_check_output_names_the_label_and_the_problem(tmp_path):
    (tmp_path / "file").write_text("x")
    (tmp_path / "dir").mkdir()
    cases = {(tmp_path / "file", "dir"): "exists as a file, expected a directory",
             (tmp_path / "dir", "file"): "exists as a directory, expected a file",
             (tmp_path / "file" / "sub" / "out.json", "file"): "is a file, not a directory"}
    for (path, kind), problem in cases.items():
        with pytest.raises(UserError, match=problem) as e:
            check_output(path, kind, "--out")
        assert str(e.value).startswith(f"--out {path}: ")
    assert check_output(tmp_path / "new" / "deep" / "out", "dir", "--out") == tmp_path / "new" / "deep" / "out"
    assert not (tmp_path / "new").exists()  # checking creates nothing


def test_atomic_writes_refuse_to_replace_the_other_kind(tmp_path, reliability):
    (tmp_path / "a file").write_text("kept\n")
    (tmp_path / "a dir").mkdir()
    reliability.bad_input(2)
    with pytest.raises(UserError, match="exists as a file"), atomic_dir(tmp_path / "a file"):
        raise AssertionError("the block must not run")
    with pytest.raises(UserError, match="exists as a directory"), atomic_path(tmp_path / "a dir"):
        raise AssertionError("the block must not run")
    assert (tmp_path / "a file").read_text() == "kept\n" and (tmp_path / "a dir").is_dir()


def _previous_outputs(root: Path) -> tuple[Path, Path]:
    out, grid = root / "prepared", root / "grid.png"
    out.mkdir()
    (out / "manifest.json").write_text('{"old": true}\n')
    grid.write_bytes(b"old grid")
    return out, grid


def _write_both(out: Path, grid: Path, fail_after: str | None = None) -> None:
    with atomic_dir(out) as tmp:
        write_json(tmp / "manifest.json", {"new": True})
    if fail_after == "dir":
        raise OSError(errno.ENOSPC, "No space left on device", str(grid))
    with atomic_path(grid) as tmp:
        tmp.write_bytes(b"new grid")


def test_outputs_replaced_together_all_land_at_the_end(tmp_path):
    out, grid = _previous_outputs(tmp_path)
    with replaced_together({"--out": (out, "dir"), "--grid": (grid, "file")}):
        _write_both(out, grid)
        assert (out / "manifest.json").read_text() == '{"old": true}\n'  # held back until the block ends
    assert (out / "manifest.json").read_text() == '{\n  "new": true\n}\n' and grid.read_bytes() == b"new grid"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["grid.png", "prepared"]  # no temporaries left


@pytest.mark.parametrize("where", ["between the outputs", "in the second swap"])
def test_a_failure_replaces_none_of_the_outputs(tmp_path, monkeypatch, reliability, where):
    out, grid = _previous_outputs(tmp_path)
    reliability.guard(out, grid)
    reliability.fault()
    real_replace, failed = os.replace, []

    def replace_failing_on_the_grid(src, dst):  # the new grid's swap fails once; putting the old one back works
        if Path(dst) == grid and not failed:
            failed.append(dst)
            raise OSError(errno.EIO, "Input/output error", str(dst))
        return real_replace(src, dst)

    if where == "in the second swap":
        monkeypatch.setattr(os, "replace", replace_failing_on_the_grid)
    with pytest.raises(OSError), replaced_together({"--out": (out, "dir"), "--grid": (grid, "file")}):
        _write_both(out, grid, fail_after="dir" if where == "between the outputs" else None)
    monkeypatch.undo()
    reliability.check_guarded()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["grid.png", "prepared"]


def test_a_finished_output_reads_back_before_the_swap(tmp_path):
    from ganforge.files import read_json, sha256_file

    path = tmp_path / "metrics.json"
    with replaced_together({"--metrics": (path, "file")}):
        write_json(path, {"a": 1})
        assert read_json(path) == {"a": 1} and len(sha256_file(path)) == 64 and not path.exists()
    assert read_json(path) == {"a": 1}


def test_prepare_whose_grid_fails_keeps_the_previous_prepared_data(tmp_path, monkeypatch, reliability):
    import ganforge.images

    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"seed": 0, "prepare": {"resolution": 8, "max_images": 200}}))
    out, grid = tmp_path / "prepared", tmp_path / "grid.png"
    argv = [str(REPO / "stages/prepare.py"), "--params", str(params), "--out", str(out), "--grid", str(grid)]
    monkeypatch.setattr(sys, "argv", argv)
    with pytest.raises(SystemExit) as first:
        runpy.run_path(argv[0], run_name="__main__")
    assert first.value.code == 0 and (out / "manifest.json").is_file() and grid.is_file()
    reliability.guard(out, grid)

    def full_disk(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(grid))

    params.write_text(yaml.safe_dump({"seed": 1, "prepare": {"resolution": 8, "max_images": 200}}))
    monkeypatch.setattr(ganforge.images, "save_grid", full_disk)
    monkeypatch.setattr("ganforge.data.prepare.save_grid", full_disk)
    reliability.fault()
    with pytest.raises(SystemExit) as second:
        runpy.run_path(argv[0], run_name="__main__")
    assert second.value.code == 1
    reliability.check_guarded()  # the new data/prepared was held back, so the old one is still whole
    assert sorted(p.name for p in tmp_path.iterdir()) == ["grid.png", "params.yaml", "prepared"]


def _inputs(name: str) -> dict[str, str]:
    _, args, outputs = _stage_argv(name)
    flags = dict(zip(args[::2], args[1::2], strict=True))
    return {flag: path for flag, path in flags.items() if flag not in outputs}


OVERLAPS = ([(name, flag, "an input", other) for name, flag in STAGE_OUTPUTS for other in _inputs(name)]
            + [(name, flag, "another output", other) for name, flag in STAGE_OUTPUTS for other in _stage_argv(name)[2]
               if other != flag])


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=st.sampled_from(OVERLAPS), inside=st.booleans())
def test_an_output_on_an_input_or_another_output_is_refused(tmp_path_factory, monkeypatch, capsys, reliability,
                                                            case, inside):
    name, flag, what, other = case
    root = tmp_path_factory.mktemp("overlap")
    script, args, outputs = _stage_argv(name)
    flags = {arg: str(root / value) for arg, value in zip(args[::2], args[1::2], strict=True)}
    if what == "another output":  # the other output must be of the kind made here, or it is refused as such first
        other_is_dir, flag_is_dir = not Path(outputs[other]).suffix, not Path(outputs[flag]).suffix
        assume(other_is_dir if inside else other_is_dir == flag_is_dir)
    shared = root / "shared"
    if inside or not Path(outputs[flag]).suffix:  # a folder the output sits in, or a folder output on it
        shared.mkdir()
        (shared / "keep.txt").write_text("read, never written\n")
    else:  # a file output on the very file the other path names
        shared.write_text("read, never written\n")
    flags[other] = str(shared)
    flags[flag] = str(shared / "sub") if inside else str(shared)
    argv = [word for pair in flags.items() for word in pair]
    before = _snapshot(root)
    line = _refused_in_one_line(script, argv, monkeypatch, capsys, reliability)
    assert line.startswith(f"{name}: error: ") and "the path of --" in line, line
    assert f"{flag} " in line and f"{other} " in line, line  # both paths named
    assert _snapshot(root) == before  # nothing read is replaced, nothing written


def test_a_fifo_at_an_output_path_is_refused_not_replaced(tmp_path, reliability):
    fifo = tmp_path / "grid.png"
    os.mkfifo(fifo)
    reliability.bad_input()
    with pytest.raises(UserError, match="exists as a special file"):
        check_output(fifo, "file", "--grid")
    with pytest.raises(UserError, match="exists as a special file"), atomic_path(fifo):
        raise AssertionError("the block must not run")
    assert fifo.is_fifo()


def test_prepare_refuses_to_write_into_its_own_source_folder(tmp_path, monkeypatch, capsys, reliability):
    source = tmp_path / "images"
    source.mkdir()
    (source / "0.png").write_bytes(b"an image the user keeps")
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"seed": 0, "prepare": {"source": "folder", "path": str(source)}}))
    before = _snapshot(tmp_path)
    cases = ((source, tmp_path / "g.png"), (tmp_path, tmp_path / "g.png"), (tmp_path / "p", source / "0.png"))
    for out, grid in cases:
        reliability.bad_input()
        argv = ["prepare.py", "--params", str(params), "--out", str(out), "--grid", str(grid)]
        monkeypatch.setattr(sys, "argv", argv)
        with pytest.raises(SystemExit) as exit_:
            runpy.run_path(str(REPO / "stages/prepare.py"), run_name="__main__")
        (line,) = capsys.readouterr().err.strip().splitlines()
        assert exit_.value.code == 2 and "prepare.path" in line, line
    assert _snapshot(tmp_path) == before
