"""dvc.yaml declares what each stage really depends on: its imports and exactly the params it reads."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import yaml

from ganforge.config import STAGE_CONFIGS

REPO = Path(__file__).resolve().parents[1]
SRC = REPO / "src"
PIPELINE = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]


def _module_file(module: str) -> Path | None:
    base = SRC.joinpath(*module.split("."))
    for candidate in (base / "__init__.py", base.with_suffix(".py")):
        if candidate.is_file():
            return candidate
    return None


def _ganforge_imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "ganforge":
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            names.update(a.name for a in node.names if a.name.split(".")[0] == "ganforge")
    return names


def imported_files(script: Path) -> set[Path]:
    """Every src/ganforge file the script imports, transitively (including package __init__ files)."""
    seen: set[Path] = set()
    todo = [script]
    while todo:
        for module in _ganforge_imports(todo.pop()):
            parts = module.split(".")
            for i in range(1, len(parts) + 1):
                file = _module_file(".".join(parts[:i]))
                if file is not None and file not in seen:
                    seen.add(file)
                    todo.append(file)
    return seen


@pytest.mark.parametrize("stage", sorted(PIPELINE))
def test_deps_cover_every_imported_library_file(stage):
    spec = PIPELINE[stage]
    deps = [REPO / d for d in spec["deps"]]
    script = REPO / "stages" / f"{stage}.py"
    assert script in deps and f"stages/{stage}.py" in spec["cmd"]
    imported = imported_files(script)
    companions = {c for f in imported for c in f.parent.glob(f"{f.stem}.*") if c.suffix not in (".py", ".pyc")}
    uncovered = [f for f in imported | companions if not any(f == d or d in f.parents for d in deps)]
    assert not uncovered, f"{stage}: add to deps: {[str(f.relative_to(REPO)) for f in uncovered]}"


@pytest.mark.parametrize("stage", sorted(PIPELINE))
def test_deps_list_no_library_file_the_stage_does_not_import(stage):
    deps = [REPO / d for d in PIPELINE[stage]["deps"] if d.startswith("src/")]
    listed = {f for d in deps for f in ([d] if d.is_file() else d.rglob("*.py")) if f.suffix == ".py"}
    extra = listed - imported_files(REPO / "stages" / f"{stage}.py")  # a module's companion (direct.c) goes with it
    assert not extra, f"{stage}: deps it never imports: {[str(f.relative_to(REPO)) for f in extra]}"


def _configs_loaded_by(script: Path) -> set[str]:
    """Names of the config classes a stage script passes to load_stage_config."""
    names = set()
    for node in ast.walk(ast.parse(script.read_text())):
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "load_stage_config":
            names.add(node.args[0].id)
    return names


@pytest.mark.parametrize("stage", sorted(PIPELINE))
def test_params_are_exactly_what_the_stage_reads(stage):
    by_name = {cls.__name__: cls for cls in STAGE_CONFIGS.values()}
    loaded = [by_name[name] for name in _configs_loaded_by(REPO / "stages" / f"{stage}.py")]
    assert STAGE_CONFIGS[stage] in loaded
    reads = {key for cls in loaded for key in (cls.SECTION, *cls.TOP_LEVEL)}
    sections = {p for p in PIPELINE[stage]["params"] if isinstance(p, str)}  # the rest name other params files
    assert sections == reads


@pytest.mark.parametrize("stage", sorted(PIPELINE))
def test_outs_persist_so_a_failed_run_keeps_the_previous_output(stage):
    for out in PIPELINE[stage].get("outs", []):
        assert isinstance(out, dict) and next(iter(out.values())).get("persist") is True, out


def test_stage_name_script_and_section_share_one_word():
    assert set(PIPELINE) == set(STAGE_CONFIGS)
    assert {p.stem for p in (REPO / "stages").glob("*.py")} == set(PIPELINE)
