"""Params validation: typos, wrong types and out-of-range values stop with one line naming the key."""

from __future__ import annotations

import dataclasses
import math
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ganforge.config import TrainConfig, load_stage_config, read_params
from ganforge.errors import UserError

REPO = Path(__file__).resolve().parents[1]


def _write(tmp_path: Path, params: dict) -> Path:
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    return path


def _params() -> dict:
    return read_params(REPO / "params.yaml")


def test_repo_params_load_for_every_stage():
    from ganforge.config import STAGE_CONFIGS

    for cls in STAGE_CONFIGS.values():
        cfg = load_stage_config(cls, REPO / "params.yaml")
        with pytest.raises(AttributeError):
            cfg.seed = 1  # frozen


def test_top_level_keys_reach_the_stages_that_read_them(tmp_path):
    params = _params() | {"lr": 0.0004, "seed": 7}
    cfg = load_stage_config(TrainConfig, _write(tmp_path, params))
    assert (cfg.lr, cfg.seed) == (0.0004, 7)


@pytest.mark.parametrize(
    ("section", "key", "value", "expected"),
    [
        ("train", "kimgg", 5, "train.kimgg: unknown key"),
        ("train", "batch_size", "64", "train.batch_size: expected an integer, got '64'"),
        ("train", "batch_size", True, "train.batch_size: expected an integer, got True"),
        ("train", "arch", "stylegan", "train.arch: expected one of 'seed', 'dcgan', 'lite', got 'stylegan'"),
        ("train", "kimg", -1, "train.kimg: expected a value > 0.0, got -1.0"),
        ("prepare", "resolution", 24, "prepare.resolution: expected one of 8, 16, 32, 64, 128, 256, got 24"),
        ("train", "kimg", 2e30, "train.kimg: expected a value <= 1000000.0, got 2e+30"),
        ("train", "collective_timeout_s", 1e300, "train.collective_timeout_s: expected a value <= 604800.0"),
        ("prepare", "channels", 1.0, "prepare.channels: expected one of 'auto', 1, 3, got 1.0"),
        ("prepare", "path", "data/\0raw", "prepare.path: a NUL character is not allowed"),
        ("train", "nproc", 64, "train.batch_size: 64 over train.nproc=64 leaves 1 image per process"),
        # settings that would silently do nothing
        ("prepare", "download", True, "prepare.download: only cifar10, mnist, fashion-mnist can be downloaded"),
        ("train", "ada_target", 0.6, "train.ada_target: 0.6 adapts the augmentation probability, but train.augment"),
        ("reference", "inception_weights", "w.pth", "reference.inception_weights: only read by feature_extractor"),
    ],
)
def test_bad_section_values_name_the_key_and_value(tmp_path, section, key, value, expected, reliability):
    reliability.bad_input()
    params = _params()
    params[section][key] = value
    from ganforge.config import STAGE_CONFIGS

    cls = STAGE_CONFIGS[section]
    with pytest.raises(UserError) as err:
        load_stage_config(cls, _write(tmp_path, params))
    assert expected in str(err.value)
    assert "\n" not in str(err.value)


def test_negative_learning_rate_is_rejected(tmp_path, reliability):
    reliability.bad_input()
    with pytest.raises(UserError, match=r"lr: expected a value > 0.0, got -0.0002"):
        load_stage_config(TrainConfig, _write(tmp_path, _params() | {"lr": -0.0002}))


def test_unknown_top_level_key_missing_section_and_malformed_yaml(tmp_path, reliability):
    reliability.bad_input(3)
    with pytest.raises(UserError, match="unknown top-level key 'trian'"):
        read_params(_write(tmp_path, _params() | {"trian": {}}))
    params = _params()
    del params["train"]
    with pytest.raises(UserError, match="missing section 'train'"):
        load_stage_config(TrainConfig, _write(tmp_path, params))
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  kimg: [1,\n")
    with pytest.raises(UserError, match="malformed YAML at line"):
        read_params(bad)


def test_section_cannot_shadow_a_top_level_key(tmp_path, reliability):
    reliability.bad_input()
    params = _params()
    params["train"]["lr"] = 0.1
    with pytest.raises(UserError, match="train.lr: 'lr' is a top-level key"):
        load_stage_config(TrainConfig, _write(tmp_path, params))


_STAGE_ERRORS = {  # each kind of params mistake, and the start of the line the stage must print
    "unknown key": (lambda p: p["train"].update(kimgg=5), "{path}: train.kimgg: unknown key (known: ada_kimg,"),
    "wrong type": (lambda p: p["train"].update(batch_size="64"),
                   "{path}: train.batch_size: expected an integer, got '64'"),
    "out of range": (lambda p: p["train"].update(kimg=-1), "{path}: train.kimg: expected a value > 0.0, got -1.0"),
    "missing section": (lambda p: p.pop("train"), "{path}: missing section 'train'"),
    "malformed YAML": (None, "{path}: malformed YAML at line 3: expected the node content"),
}


@pytest.mark.parametrize("mistake", _STAGE_ERRORS)
def test_stage_script_prints_one_line_and_exits_2(tmp_path, mistake, reliability):
    edit, expected = _STAGE_ERRORS[mistake]
    params = _params()
    if edit is None:
        path = tmp_path / "params.yaml"
        path.write_text("train:\n  kimg: [1,\n")
    else:
        edit(params)
        path = _write(tmp_path, params)
    reliability.bad_input()
    result = subprocess.run(
        [sys.executable, str(REPO / "stages/train.py"), "--params", str(path), "--data", str(tmp_path / "d"),
         "--out", str(tmp_path / "o"), "--live", str(tmp_path / "l")],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 2
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("train: error: " + expected.format(path=path)), line
    assert not (tmp_path / "o").exists()


def test_a_value_for_another_stage_is_ignored_by_this_one(tmp_path, reliability):
    from ganforge.config import OptimizeConfig

    params = _params()
    params["optimize"]["prune_ratio"] = 7  # out of range, but only the optimize stage reads it
    path = _write(tmp_path, params)
    reliability.bad_input()
    assert load_stage_config(TrainConfig, path).kimg == params["train"]["kimg"]
    with pytest.raises(UserError, match="optimize.prune_ratio: expected a value"):
        load_stage_config(OptimizeConfig, path)


# --- fuzzing the params loader: any input is either a config or one UserError line, never another exception ---

_ANY_VALUE = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=8,
)


def _load_every_stage(path: Path, reliability) -> None:
    from ganforge.config import STAGE_CONFIGS

    refused = 0
    for cls in STAGE_CONFIGS.values():
        try:
            load_stage_config(cls, path)
        except UserError as e:
            assert "\n" not in str(e)
            refused += 1
    reliability.bad_input(int(refused > 0))  # one input, however many stages refuse it


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(section=st.sampled_from(["prepare", "train", "featurizer", "reference", "evaluate", "optimize", "package"]),
       key=st.text(max_size=12) | st.sampled_from(["kimg", "batch_size", "arch", "variants", "resolution", "lr"]),
       value=_ANY_VALUE)
def test_fuzzed_values_give_a_config_or_one_line_error(tmp_path, reliability, section, key, value):
    params = _params()
    params[section][key] = value
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    _load_every_stage(path, reliability)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.text(max_size=200) | st.binary(max_size=200))
def test_fuzzed_files_give_a_config_or_one_line_error(tmp_path, reliability, text):
    path = tmp_path / "params.yaml"
    base = (REPO / "params.yaml").read_bytes()
    # splice the random text into the real file, so the fuzz reaches past the first YAML error too
    cut = len(text) * 37 % len(base)
    path.write_bytes(base[:cut] + (text.encode() if isinstance(text, str) else text) + base[cut:])
    _load_every_stage(path, reliability)


# --- numbers as users and DVC write them, non-finite values, duplicate keys ---

def _dvc_dump(value: float) -> str:
    """``value`` as DVC writes it into params.yaml for ``dvc exp run -S`` (ruamel.yaml, YAML 1.2)."""
    import io

    import ruamel.yaml

    buffer = io.StringIO()
    ruamel.yaml.YAML().dump({"value": value}, buffer)
    return buffer.getvalue()


@pytest.mark.parametrize("text", ["2e-4", "3e-05", "1e300", "5e-2", "1e3", "1_000.5", ".5", "-1.5E+3"])
def test_numbers_in_exponent_notation_are_numbers(text, reliability):  # in the suite; good input, no bad one
    from ganforge.config import parse_yaml

    assert parse_yaml(f"value: {text}", "params.yaml")["value"] == float(text.replace("_", ""))


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(value=st.floats(allow_nan=False, allow_infinity=False) | st.integers(-10**30, 10**30))
def test_every_number_dvc_writes_reads_back_as_dvc_reads_it(value, reliability):
    import ruamel.yaml

    from ganforge.config import parse_yaml

    text = _dvc_dump(ruamel.yaml.YAML().load(repr(value)))  # as `-S key=<repr>` would parse and write it
    ours = parse_yaml(text, "params.yaml")["value"]
    assert ours == ruamel.yaml.YAML().load(text)["value"]  # what DVC itself reads back (`dvc params diff`)
    # DVC's writer can drop a last digit (5.17626730508219e+33 is written ...218e+33): that is its rounding, not ours
    assert type(ours) is type(value) and math.isclose(ours, value, rel_tol=1e-12)


def _float_keys() -> list[tuple[type, str]]:
    import dataclasses
    import typing

    from ganforge.config import STAGE_CONFIGS

    keys = []
    for cls in STAGE_CONFIGS.values():
        for f in dataclasses.fields(cls):
            hint = typing.get_type_hints(cls)[f.name]
            if float in (hint, *typing.get_args(hint)) and f.name not in cls.TOP_LEVEL:
                keys.append((cls, f.name))
    return keys


@pytest.mark.parametrize(("cls", "key"), _float_keys(), ids=lambda x: getattr(x, "SECTION", x))
def test_non_finite_values_are_refused_for_every_float_key(tmp_path, reliability, cls, key):
    for text in (".inf", "-.inf", ".nan", "[.inf]"):
        params = _params()
        params[cls.SECTION][key] = "VALUE"
        path = tmp_path / "params.yaml"
        path.write_text(yaml.safe_dump(params).replace(" VALUE\n", f" {text}\n"))  # as a user would write it
        reliability.bad_input()
        with pytest.raises(UserError) as e:
            load_stage_config(cls, path)
        message = str(e.value)
        assert f"{cls.SECTION}.{key}" in message and "\n" not in message
        assert "finite" in message or "expected a list" in message or "expected a number" in message, message


def test_top_level_lr_refuses_non_finite_values_too(tmp_path, reliability):
    for text in (".inf", ".nan"):
        path = tmp_path / "params.yaml"
        path.write_text(yaml.safe_dump({k: v for k, v in _params().items() if k != "lr"}) + f"lr: {text}\n")
        reliability.bad_input()
        with pytest.raises(UserError, match=r"lr: expected a finite number"):
            load_stage_config(TrainConfig, path)


def test_integers_in_float_notation_are_integers_and_fractions_are_refused(tmp_path):
    params = _params()
    params["train"]["fid_samples"] = 1e3
    assert load_stage_config(TrainConfig, _write(tmp_path, params)).fid_samples == 1000
    params["train"]["fid_samples"] = 2.5
    with pytest.raises(UserError, match=r"train.fid_samples: expected an integer, got 2.5"):
        load_stage_config(TrainConfig, _write(tmp_path, params))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_a_duplicated_key_or_section_names_the_key_and_its_line(tmp_path, reliability, data):
    lines = (REPO / "params.yaml").read_text().splitlines()
    keyed = [i for i, line in enumerate(lines) if ":" in line and not line.lstrip().startswith("#")
             and line.split(":")[0].strip() and not line.startswith(" " * 13)  # not continuation lines
             and line.count("[") == line.count("]")]  # nor the first line of a list that goes on
    first = data.draw(st.sampled_from(keyed))
    key, indent = lines[first].split(":")[0].strip(), len(lines[first]) - len(lines[first].lstrip())
    if indent:  # a key inside a section: a second copy at the end of that section
        end = next((j for j in range(first + 1, len(lines)) if lines[j] and not lines[j].startswith(" ")), len(lines))
        copy = " " * indent + f"{key}: {lines[first].split(':', 1)[1].split('#')[0].strip() or 'null'}"
    else:  # a top-level key or a whole section, again at the end of the file
        end, copy = len(lines), f"{key}: {{}}" if lines[first].rstrip().endswith(":") else lines[first]
    while end > first + 1 and not lines[end - 1].strip():
        end -= 1
    edited = [*lines[:end], copy, *lines[end:]]
    path = tmp_path / "params.yaml"
    path.write_text("\n".join(edited) + "\n")
    reliability.bad_input()
    with pytest.raises(UserError) as e:
        read_params(path)
    assert str(e.value) == (f"{path}: malformed YAML at line {end + 1}: duplicate key {key!r} "
                            f"(first at line {first + 1})"), str(e.value)


def test_a_message_holding_a_newline_is_still_printed_as_one_line(capsys, reliability):
    from ganforge.entry import run_main

    def fail() -> None:
        raise UserError("data/raw/evil\nname.png: not an image\r\x1b[2J")

    reliability.bad_input()
    with pytest.raises(SystemExit) as exit_:
        run_main(fail, "prepare")
    assert exit_.value.code == 2
    assert capsys.readouterr().err == "prepare: error: data/raw/evil\\nname.png: not an image\\r\\x1b[2J\n"


def test_a_params_path_that_is_not_a_readable_file_is_one_line(tmp_path, reliability):
    import os

    os.mkfifo(tmp_path / "fifo.yaml")  # opening it would block for ever
    (tmp_path / "loop_a").symlink_to(tmp_path / "loop_b")
    (tmp_path / "loop_b").symlink_to(tmp_path / "loop_a")
    cases = {tmp_path / "fifo.yaml": "not a regular file", tmp_path / "loop_a": "Too many levels of symbolic links",
             tmp_path / ("x" * 300): "File name too long", tmp_path: "is a directory"}
    for path, problem in cases.items():
        reliability.bad_input()
        with pytest.raises(UserError, match=problem) as e:
            read_params(path)
        assert "\n" not in str(e.value)


@pytest.mark.parametrize("text", [
    "prepare:\n  test_fraction: [" + ", ".join(
        ["&l0 [" + ",".join("x" * 9) + "]"] + [f"&l{i} [" + ",".join([f"*l{i - 1}"] * 9) + "]" for i in range(1, 10)])
    + "]\n",  # a billion laughs: 9^10 leaves, shared by aliases
    "seed: 0x" + "f" * 5000 + "\n",  # an integer too long for repr()
    "featurizer:\n  lr: 0b" + "1" * 20000 + "\n",
    "prepare:\n  source: " + "a" * 300_000 + "\n",  # a 300 kB string
    "prepare:\n  resolution: 8\n  \x07: 1\n",  # a control character
])
def test_a_huge_or_self_multiplying_value_is_a_short_line_at_once(tmp_path, reliability, text):
    from ganforge.config import STAGE_CONFIGS

    path = tmp_path / "params.yaml"
    path.write_text(text)
    reliability.bad_input()
    for cls in STAGE_CONFIGS.values():
        try:
            load_stage_config(cls, path)
        except UserError as e:
            assert "\n" not in str(e) and len(str(e)) < 400, str(e)[:500]


def test_merge_keys_are_read_as_dvc_reads_them(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("seed: 0\ntrain:\n  <<: {kimg: 1, batch_size: 32}\n  kimg: 2\n")
    cfg = load_stage_config(TrainConfig, path)
    assert (cfg.kimg, cfg.batch_size) == (2.0, 32)


def test_the_typed_defaults_are_the_shipped_params_value_for_value():
    from ganforge.config import STAGE_CONFIGS, read_params, stage_config

    params = read_params(REPO / "params.yaml")
    for section, cls in STAGE_CONFIGS.items():
        shipped, default = stage_config(cls, params), cls()
        differing = {f.name: (getattr(default, f.name), getattr(shipped, f.name))
                     for f in dataclasses.fields(cls) if getattr(default, f.name) != getattr(shipped, f.name)}
        assert not differing, f"{section}: default != params.yaml: {differing}"
