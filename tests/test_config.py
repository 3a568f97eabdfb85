"""Params validation: typos, wrong types and out-of-range values stop with one line naming the key."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from ganforge.config import TrainConfig, load_stage_config, read_params
from ganforge.errors import UserError

REPO = Path(__file__).resolve().parents[1]


def _write(tmp_path: Path, params: dict) -> Path:
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    return path


def _params() -> dict:
    return yaml.safe_load((REPO / "params.yaml").read_text())


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
    ],
)
def test_bad_section_values_name_the_key_and_value(tmp_path, section, key, value, expected):
    params = _params()
    params[section][key] = value
    cls = {"train": TrainConfig}.get(section)
    if cls is None:
        from ganforge.config import PrepareConfig as cls
    with pytest.raises(UserError) as err:
        load_stage_config(cls, _write(tmp_path, params))
    assert expected in str(err.value)
    assert "\n" not in str(err.value)


def test_negative_learning_rate_is_rejected(tmp_path):
    with pytest.raises(UserError, match=r"lr: expected a value > 0.0, got -0.0002"):
        load_stage_config(TrainConfig, _write(tmp_path, _params() | {"lr": -0.0002}))


def test_unknown_top_level_key_missing_section_and_malformed_yaml(tmp_path):
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


def test_section_cannot_shadow_a_top_level_key(tmp_path):
    params = _params()
    params["train"]["lr"] = 0.1
    with pytest.raises(UserError, match="train.lr: 'lr' is a top-level key"):
        load_stage_config(TrainConfig, _write(tmp_path, params))


def test_stage_script_prints_one_line_and_exits_2(tmp_path):
    params = _params()
    params["train"]["kimgg"] = 5
    path = _write(tmp_path, params)
    result = subprocess.run(
        [sys.executable, str(REPO / "stages/train.py"), "--params", str(path), "--data", str(tmp_path / "d"),
         "--out", str(tmp_path / "o"), "--live", str(tmp_path / "l")],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 2
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith(f"train: error: {path}: train.kimgg: unknown key (known: ada_kimg, ada_target, arch,")
    assert not (tmp_path / "o").exists()
