"""The pull-request gate: which metric changes break the budget (the report itself is tested end to end in
test_pipeline_e2e.py, on two real commits)."""

from __future__ import annotations

import pytest

from ganforge.reporting.report import Budget, gate


def _diff(**changes: tuple[float, float]) -> dict:
    return {"metrics/evaluate.json": {key: {"old": old, "new": new, "diff": new - old}
                                      for key, (old, new) in changes.items()}}


@pytest.mark.parametrize(("changes", "broken"), [
    ({"fid": (4.0, 4.1)}, []),  # +2.5% FID: within +5%
    ({"fid": (4.0, 4.4)}, ["fid rose +10.0%"]),
    ({"fid": (4.0, 3.0)}, []),  # better quality never breaks the gate
    ({"img_per_s": (1000.0, 900.0)}, []),  # -10%: within -20%
    ({"img_per_s": (1000.0, 700.0)}, ["img_per_s fell -30.0%"]),
    ({"winner_img_per_s": (1000.0, 5000.0), "winner_fid": (4.0, 4.3)}, ["winner_fid rose +7.5%"]),
    ({"variants.int8.fid": (4.0, 9.0), "kid_mean": (0.1, 0.9)}, []),  # only headline FID and speed are gated
    ({"fid_inception_10k": (30.0, 33.0)}, ["fid_inception_10k rose +10.0%"]),  # Inception FID is gated too
    ({"fid_real_floor_inception_10k": (2.0, 3.0)}, []),  # the real-vs-real floor is no generator's quality
])
def test_gate_fails_when_it_should_and_passes_when_it_should(changes, broken):
    lines = gate(_diff(**changes), Budget(max_fid_increase=0.05, max_speed_drop=0.2))
    assert len(lines) == len(broken)
    assert all(expected in line for expected, line in zip(broken, lines, strict=True))


def test_gate_ignores_metrics_that_are_new_or_not_numbers():
    diff = {"metrics/optimize.json": {"winner": {"old": "fp32", "new": "int8"}, "fid": {"old": None, "new": 3.0}}}
    assert gate(diff, Budget()) == []
