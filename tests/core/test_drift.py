"""The window evaluation against the ones it replaced, on seeded streams: the per-feature evaluation
(``drift_oracle.py``: the statistics) and the row-by-row one (``drift_rows_oracle.py``: every finding and its
details, with the signed tests, evidence spans, slices and every statistic)."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import pytest

from stream_monitor.config import parse_config
from stream_monitor.core import drift, evaluation, stats
from stream_monitor.core.monitor import Monitor
from tests.core import drift_oracle, drift_rows_oracle
from tests.streams import make_events, make_segmented_events, model_config, segmented_config


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


#: Model configurations the evaluation is checked on: window sizes (small ones: sparse bins pooled, KS deciding
#: below 5 events per bin, several windows per batch), every decision test, evidence spans, every statistic.
CONFIGS = [
    {"window": {"size": 1000}},
    {"window": {"size": 100}},
    {"window": {"size": 250}, "drift": {"report_all_statistics": True, "evidence_windows": [2, 3, 8]}},
    {"window": {"size": 500}, "drift": {"numeric_test": "js", "categorical_test": "psi", "bins": 7}},
    {"window": {"size": 500}, "drift": {"numeric_test": "hellinger", "categorical_test": "hellinger",
                                        "max_categories": 3}},
    {"window": {"size": 400}, "drift": {"numeric_test": "wasserstein", "categorical_test": "js",
                                        "evidence_windows": []}},
    {"window": {"size": 300}, "drift": {"numeric_test": "ks", "categorical_test": "chi2", "evidence_windows": [2, 5]}},
]


@pytest.mark.parametrize("compiled", [True, False])
@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("over", CONFIGS)
def test_batched_evaluation_equals_per_feature(monkeypatch: pytest.MonkeyPatch, seed: int,
                                               over: dict[str, Any], compiled: bool) -> None:
    """Exactly with the numpy statistics; within 1e-9 (relative) with the compiled kernel."""
    checked = []
    if not compiled:
        monkeypatch.setattr(stats, "_kernel", None)
    elif stats._kernel is None:
        pytest.fail("the compiled statistics kernel is not built")

    def both(binning: Any, ref: Any, windows: Any, cfg: Any, *args: Any) -> list[list[drift.Finding]]:
        got = drift.evaluate_windows(binning, ref, windows, cfg, *args)
        for (cur, evidence, slices), findings in zip(windows, got):
            assert not slices  # no slices here: the oracle is the per-feature evaluation without them
            want = drift_oracle.evaluate_window(binning, ref, cur, cfg, args[0], evidence)
            assert_same(_plain(findings), _plain(want), 1e-9 if compiled else 0.0)
            checked.append(sum(f.over for f in findings))
        return got

    monkeypatch.setattr(evaluation, "evaluate_windows", both)
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
    # every field, and its line of the window report, made with it (the same as one made from the fields)
    assert set(vars(f)) == {x.name for x in dataclasses.fields(drift.Finding)} | {"_line"}
    assert f.report_line() is vars(f)["_line"]
    assert vars(f)["_line"] == drift.Finding(*args).report_line() == {
        "feature": "a", "kind": "data_drift", "statistic": "psi", "value": 0.1, "threshold": 0.2, "p_value": 0.01,
        "over": True}
    with pytest.raises(dataclasses.FrozenInstanceError):
        f.value = 1.0  # type: ignore[misc]


def _full(findings: list[Any]) -> list[dict[str, Any]]:
    """Every field, details included (reading them builds the ones made lazily), the segment as published."""
    return [dataclasses.asdict(f) | {"segment": None if f.segment is None else f.segment.to_dict()}
            for f in findings]


def _against_rows(checked: list[int], counted: Any) -> Any:
    """``evaluate_windows`` checking each window's findings against the row-by-row oracle's, alone."""
    def both(binning: Any, ref: Any, windows: Any, cfg: Any, *args: Any) -> list[list[drift.Finding]]:
        got = drift.evaluate_windows(binning, ref, windows, cfg, *args)
        for (cur, evidence, slices), findings in zip(windows, got):
            want = drift_rows_oracle.evaluate_window(binning, ref, cur, cfg, args[0], evidence, slices, args[1])
            assert_same(_full(findings), _full(want))
            checked.append(sum(map(counted, findings)))
        batches.append(len(windows))
        return got

    batches: list[int] = []
    both.batches = batches  # type: ignore[attr-defined]
    return both


@pytest.mark.parametrize("over", [*CONFIGS, {"window": {"size": 300}, "drift": {
    "thresholds": {"category_shift": None}, "report_all_statistics": True}}])
def test_columnar_evaluation_equals_row_by_row(monkeypatch: pytest.MonkeyPatch, over: dict[str, Any]) -> None:
    """Exactly: the same findings in the same order, the same details (built lazily or not), whether windows
    are evaluated alone or with the others that closed in the same batch."""
    checked: list[int] = []

    both = _against_rows(checked, lambda f: f.over)
    monkeypatch.setattr(evaluation, "evaluate_windows", both)
    cfg = parse_config({"models": {"m": model_config(**over)}})
    mon = Monitor(cfg)
    for batch in _stream(0, cfg.models["m"].window.size):
        mon.process(batch)
    assert len(checked) > 10
    assert sum(checked) > 0  # drifts found: the over-threshold paths (full details, evidence candidates) ran
    if cfg.models["m"].window.size <= 350:  # batches of 700 events: windows evaluated together
        assert max(both.batches) >= 2


def test_windows_of_a_batch_are_evaluated_in_calls_of_bounded_size(monkeypatch: pytest.MonkeyPatch) -> None:
    """More windows than one call takes close in a batch: they are evaluated in several calls, each window's
    findings exactly the row-by-row oracle's."""
    monkeypatch.setattr(drift, "_TOGETHER", 3)
    calls: list[int] = []
    evaluate = drift._evaluate
    monkeypatch.setattr(drift, "_evaluate", lambda *a: calls.append(len(a[2])) or evaluate(*a))
    checked: list[int] = []
    both = _against_rows(checked, lambda f: f.over)
    monkeypatch.setattr(evaluation, "evaluate_windows", both)
    cfg = parse_config({"models": {"m": model_config(window={"size": 100})}})
    mon = Monitor(cfg)
    for batch in _stream(0, 100):
        mon.process(batch)
    assert max(both.batches) == 7 and max(calls) == 3  # batches of 700 events: 7 windows, calls of 3, 3, 1
    assert sum(checked) > 0


def test_columnar_evaluation_equals_row_by_row_with_slices(monkeypatch: pytest.MonkeyPatch) -> None:
    checked: list[int] = []

    monkeypatch.setattr(evaluation, "evaluate_windows",
                        _against_rows(checked, lambda f: f.over and f.segment is not None))
    rng = np.random.default_rng(11)
    events = make_segmented_events(5000, rng) + make_segmented_events(6000, rng, start=5000, shifted="eu", shift=0.8)
    mon = Monitor(parse_config({"models": {"seg": segmented_config(segments={"keys": ["region", "channel"],
                                                                             "top_n": 5})}}))
    for i in range(0, len(events), 1000):
        mon.process(events[i:i + 1000])
    assert len(checked) >= 5 and sum(checked) > 0  # a slice went over threshold


def test_lazy_details_are_built_once_when_read_and_equal_eager_ones() -> None:
    calls = []

    def make() -> dict[str, Any]:
        calls.append(1)
        return {"psi": {"value": 0.1}}

    f = drift._lazy("a", "data_drift", "psi", 0.1, 0.2, False, 0.3, 100, (make,))
    assert not calls
    eager = drift.Finding("a", "data_drift", "psi", 0.1, 0.2, False, 0.3, 100, {"psi": {"value": 0.1}})
    assert f == eager and repr(f) == repr(eager) and dataclasses.asdict(f) == dataclasses.asdict(eager)
    assert f.details is f.details and len(calls) == 1
    assert set(vars(f)) == {x.name for x in dataclasses.fields(drift.Finding)} | {"_line"}  # its report line
    with pytest.raises(AttributeError):
        f.no_such_field  # noqa: B018
