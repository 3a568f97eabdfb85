"""Choose the winner: the fastest variant whose FID stays within the quality budget."""

from __future__ import annotations


def fid_budget(baseline_fid: float, max_fid_increase: float) -> float:
    """The largest FID a variant may have: baseline FID * (1 + max_fid_increase)."""
    return baseline_fid * (1.0 + max_fid_increase)


def select_winner(img_per_s: dict[str, float], fid: dict[str, float], baseline: str, budget: float) -> str:
    """Name of the fastest variant with ``fid <= budget``. The baseline always qualifies."""
    assert baseline in img_per_s and img_per_s.keys() == fid.keys(), (baseline, img_per_s, fid)
    qualified = [name for name in img_per_s if fid[name] <= budget or name == baseline]
    return max(qualified, key=lambda name: img_per_s[name])
