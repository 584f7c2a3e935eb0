"""The window evaluation against the per-feature one it replaced (``drift_oracle.py``), on seeded streams."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import pytest

from stream_monitor.config import parse_config
from stream_monitor.core import drift, monitor
from stream_monitor.core.monitor import Monitor
from tests.core import drift_oracle
from tests.streams import make_events, model_config


def _plain(findings: list[Any]) -> list[dict[str, Any]]:
    return [{k: v for k, v in dataclasses.asdict(f).items() if k != "segment"} for f in findings]


def _stream(seed: int, window: int) -> list[list[dict[str, Any]]]:
    """Batches of a stream that drifts in steps: a small mean shift, a wider spread, a category mix change,
    missing values, then never-seen categories and wrong types."""
    rng = np.random.default_rng(seed)
    batches, start = [], 0
    steps: list[dict[str, Any]] = [{}, {}, {"a_mean": 0.1}, {"a_mean": 0.15}, {"b_sd": 1.5},
                                   {"k_p": (0.25, 0.25, 0.25, 0.25)}, {"missing_c": 0.2},
                                   {"k_p": (0.4, 0.3, 0.2, 0.1), "k_cats": ("x", "y", "z", "new")}]
    for over in steps:
        for _ in range(3):
            evs = make_events(max(int(window), 700), rng, start=start, **over)
            if over.get("missing_c"):
                for e in evs[::37]:
                    e["features"]["a"] = "oops"  # a type error, counted per feature
                    e["features"]["region"] = 7.5
            batches.append(evs)
            start += len(evs)
    return batches


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("over", [
    {"window": {"size": 1000}},
    {"window": {"size": 100}},  # sparse bins: pooled, and KS deciding below 5 events per bin
    {"window": {"size": 250}, "drift": {"report_all_statistics": True, "evidence_windows": [2, 3, 8]}},
    {"window": {"size": 500}, "drift": {"numeric_test": "js", "categorical_test": "psi", "bins": 7}},
    {"window": {"size": 500}, "drift": {"numeric_test": "hellinger", "categorical_test": "hellinger",
                                        "max_categories": 3}},
    {"window": {"size": 400}, "drift": {"numeric_test": "wasserstein", "categorical_test": "js",
                                        "evidence_windows": []}},
])
def test_batched_evaluation_equals_per_feature(monkeypatch: pytest.MonkeyPatch, seed: int,
                                               over: dict[str, Any]) -> None:
    checked = []

    def both(*args: Any, **kwargs: Any) -> list[drift.Finding]:
        got = drift.evaluate_window(*args, **kwargs)
        assert not args[6]  # no slices here: the oracle is the per-feature evaluation without them
        want = drift_oracle.evaluate_window(*args[:6])
        assert _plain(got) == _plain(want)
        checked.append(sum(f.over for f in got))
        return got

    monkeypatch.setattr(monitor, "evaluate_window", both)
    # the oracle predates the signed tests (rank_sum, category_shift): compare the statistics it knows
    over = {**over, "drift": {**over.get("drift", {}), "thresholds": {"rank_sum": None, "category_shift": None}}}
    cfg = parse_config({"models": {"m": model_config(**over)}})
    mon = Monitor(cfg)
    for batch in _stream(seed, cfg.models["m"].window.size):
        mon.process(batch)
    assert len(checked) > 10
    assert sum(checked) > 0  # the drifts were found: over-threshold paths (late KS, evidence details) ran
