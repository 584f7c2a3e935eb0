"""The window evaluation against the per-feature one it replaced (``drift_oracle.py``), on seeded streams."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import pytest

from stream_monitor.config import parse_config
from stream_monitor.core import drift, monitor, stats
from stream_monitor.core.monitor import Monitor
from tests.core import drift_oracle
from tests.streams import make_events, model_config


def _plain(findings: list[Any]) -> list[dict[str, Any]]:
    return [{k: v for k, v in dataclasses.asdict(f).items() if k != "segment"} for f in findings]


def assert_same(got: Any, want: Any, rel: float = 0.0, path: str = "findings") -> None:
    """``got == want``, floats within ``rel`` (relative): the compiled kernel sums non-integer terms in
    another order than numpy's pairwise sums, so its statistics may differ in the last bits."""
    if isinstance(want, float) and isinstance(got, float):
        assert got == want or abs(got - want) <= rel * max(abs(got), abs(want)) or (got != got and want != want), \
            f"{path}: {got!r} != {want!r}"
    elif isinstance(want, dict):
        assert isinstance(got, dict) and set(got) == set(want), f"{path}: keys {sorted(got)} != {sorted(want)}"
        for k in want:
            assert_same(got[k], want[k], rel, f"{path}.{k}")
    elif isinstance(want, (list, tuple)):
        assert type(got) is type(want) and len(got) == len(want), f"{path}: {got!r} != {want!r}"
        for i, (g, w) in enumerate(zip(got, want)):
            assert_same(g, w, rel, f"{path}[{i}]")
    else:
        assert got == want and type(got) is type(want), f"{path}: {got!r} != {want!r}"


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


@pytest.mark.parametrize("compiled", [True, False])
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
                                               over: dict[str, Any], compiled: bool) -> None:
    """Exactly with the numpy statistics; within 1e-9 (relative) with the compiled kernel."""
    checked = []
    if not compiled:
        monkeypatch.setattr(stats, "_kernel", None)
    elif stats._kernel is None:
        pytest.fail("the compiled statistics kernel is not built")

    def both(*args: Any, **kwargs: Any) -> list[drift.Finding]:
        got = drift.evaluate_window(*args, **kwargs)
        assert not args[6]  # no slices here: the oracle is the per-feature evaluation without them
        want = drift_oracle.evaluate_window(*args[:6])
        assert_same(_plain(got), _plain(want), 1e-9 if compiled else 0.0)
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


def test_findings_made_without_init_equal_the_dataclass_and_stay_frozen() -> None:
    args = ("a", "data_drift", "psi", 0.1, 0.2, True, 0.01, 100, {"psi": {"value": 0.1}})
    f = drift._finding(*args)
    assert f == drift.Finding(*args) and repr(f) == repr(drift.Finding(*args))
    assert set(vars(f)) == {x.name for x in dataclasses.fields(drift.Finding)}  # every field, no other
    with pytest.raises(dataclasses.FrozenInstanceError):
        f.value = 1.0  # type: ignore[misc]
