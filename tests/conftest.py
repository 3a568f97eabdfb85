"""Shared fixtures: the real params.yaml shrunk to seconds, and one tiny pipeline run reused by many tests."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import pytest
import yaml

from ganforge.config import (
    EvaluateConfig,
    FeaturizerConfig,
    OptimizeConfig,
    PackageConfig,
    PrepareConfig,
    ReferenceConfig,
    TrainConfig,
    read_params,
)

REPO = Path(__file__).resolve().parents[1]

# Overrides that shrink every stage of params.yaml to a few seconds on 2 cores.
TINY = {
    "prepare": {"resolution": 16},
    # seed: the generator with stride-2 transposed convs, which every kernel form of the optimize stage lowers
    "train": {"arch": "seed", "kimg": 1.5, "batch_size": 32, "log_interval_kimg": 0.5, "ema_kimg": 0.5,
              "snapshot_kimg": 0.75, "fid_interval_kimg": 0.5, "fid_samples": 100},
    "featurizer": {"epochs": 5, "max_minutes": None},  # no wall-clock bound: the same net on a busy machine
    "evaluate": {"num_samples": 200, "batch_size": 100, "kid_subset_size": 100, "kid_subsets": 10, "grid_size": 16,
                 "speed_batch": 64, "speed_repeats": 3, "nearest_count": 4},
    "optimize": {"variants": ["fp32", "fused", "int8", "bf16", "onnxruntime", "pruned+fused",
                              "pruned+direct"],
                 "batch": 16,
                 "speed_batches": [1, 16, 32], "warmup": 1, "repeats": 3, "calibration_batches": 2,
                 "finetune_kimg": 2, "finetune_batch": 32},
    "package": {"parity_batch": 4, "grid_size": 16},
}


def tiny_params() -> dict:
    """The repo's params.yaml with :data:`TINY` applied."""
    params = read_params(REPO / "params.yaml")
    for section, overrides in TINY.items():
        params[section].update(overrides)
    return params


@pytest.fixture
def params_file(tmp_path: Path) -> Path:
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(tiny_params(), sort_keys=False))
    return path


@dataclasses.dataclass(frozen=True)
class TinyRun:
    """Paths written by one tiny run of every stage's library function, in a temp directory."""

    root: Path
    prepared: Path
    prepare_grid: Path
    train_dir: Path
    live_dir: Path
    featurizer: Path
    featurizer_metrics: Path
    reference: Path
    reference_metrics: Path
    evaluate_metrics: Path
    evaluate_speed: Path
    evaluate_grid: Path
    evaluate_nearest: Path
    optimized: Path
    optimize_metrics: Path
    optimize_table: Path
    package: Path
    package_metrics: Path


def _configs(params: dict) -> dict:
    from ganforge.config import STAGE_CONFIGS, stage_config

    return {section: stage_config(cls, params) for section, cls in STAGE_CONFIGS.items()}


@pytest.fixture(scope="session")
def tiny_configs() -> dict:
    configs = _configs(tiny_params())
    assert isinstance(configs["prepare"], PrepareConfig) and isinstance(configs["train"], TrainConfig)
    assert isinstance(configs["featurizer"], FeaturizerConfig) and isinstance(configs["evaluate"], EvaluateConfig)
    assert isinstance(configs["reference"], ReferenceConfig)
    assert isinstance(configs["optimize"], OptimizeConfig) and isinstance(configs["package"], PackageConfig)
    return configs


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory: pytest.TempPathFactory, tiny_configs: dict) -> TinyRun:
    """Run prepare -> featurizer -> reference -> train -> evaluate -> optimize -> package once, on tiny params."""
    from ganforge.data.prepare import prepare
    from ganforge.evaluation.evaluate import evaluate
    from ganforge.evaluation.features import train_featurizer
    from ganforge.evaluation.protocol import make_protocol
    from ganforge.evaluation.reference import compute_reference
    from ganforge.optimization.optimize import optimize
    from ganforge.packaging.build import write_package
    from ganforge.training.loop import train

    root = tmp_path_factory.mktemp("tiny_run")
    run = TinyRun(
        root=root,
        prepared=root / "data/prepared", prepare_grid=root / "plots/prepare/grid.png",
        train_dir=root / "models/train", live_dir=root / "dvclive/train",
        featurizer=root / "models/featurizer/featurizer.safetensors",
        featurizer_metrics=root / "metrics/featurizer.json",
        reference=root / "models/reference", reference_metrics=root / "metrics/reference.json",
        evaluate_metrics=root / "metrics/evaluate.json", evaluate_speed=root / "metrics/evaluate_speed.json",
        evaluate_grid=root / "plots/evaluate/samples.png",
        evaluate_nearest=root / "plots/evaluate/nearest.png",
        optimized=root / "models/optimized", optimize_metrics=root / "metrics/optimize.json",
        optimize_table=root / "plots/optimize.csv",
        package=root / "dist/generator", package_metrics=root / "metrics/package.json",
    )
    c = tiny_configs
    prepare(c["prepare"], run.prepared, run.prepare_grid)
    train_featurizer(c["featurizer"], run.prepared, run.featurizer, run.featurizer_metrics)
    compute_reference(c["reference"], run.prepared, run.featurizer, run.reference, run.reference_metrics)
    train(c["train"], run.prepared, run.train_dir, run.live_dir, featurizer_path=run.featurizer)
    evaluate(c["evaluate"], c["reference"], run.train_dir, run.prepared, run.featurizer, run.reference,
             run.evaluate_metrics, run.evaluate_grid, run.evaluate_nearest, run.evaluate_speed)
    optimize(c["optimize"], c["evaluate"], c["reference"], run.train_dir, run.featurizer, run.reference,
             run.optimized, run.optimize_metrics, run.optimize_table)
    protocol = make_protocol(c["evaluate"], c["reference"], run.reference, run.featurizer)
    write_package(c["package"], protocol, run.optimized, run.prepared, run.package, run.package_metrics)
    return run


@pytest.fixture(scope="session")
def tiny_protocol(tiny_run: TinyRun, tiny_configs: dict):
    """The tiny run's scoring protocol (evaluate params against its reference statistics)."""
    from ganforge.evaluation.protocol import make_protocol

    return make_protocol(tiny_configs["evaluate"], tiny_configs["reference"], tiny_run.reference, tiny_run.featurizer)


@pytest.fixture
def package_copy(tiny_run: TinyRun, tmp_path: Path) -> Path:
    """A private copy of the tiny package that a test may modify."""
    return Path(shutil.copytree(tiny_run.package, tmp_path / "generator"))

