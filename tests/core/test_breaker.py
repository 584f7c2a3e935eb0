"""Circuit-breaker state machine."""

import orjson

from stream_monitor.config import BreakerConfig, BreakerRule
from stream_monitor.core.alerts import ActiveCondition
from stream_monitor.core.breaker import BreakerSignal, BreakerTicks, CircuitBreaker

CFG = BreakerConfig(enabled=True, primary_version="v3", fallback_version="v2",
                    rules=(BreakerRule(kinds=("data_drift",), severity="critical", windows=2),),
                    hold_down_s=300, probe_share=0.2, close_after=2)
BAD = [ActiveCondition("data_drift", "income", "psi", "critical", "alert-1")]
MILD = [ActiveCondition("data_drift", "income", "psi", "warning", "alert-1")]


def run(breaker, pattern, t0=0.0, step=100.0):
    out = []
    for i, active in enumerate(pattern):
        sig = breaker.update(t0 + (i + 1) * step, active)
        if sig is not None:
            out.append((i, sig.state, sig.primary_share, sig.epoch))
    return out


def test_full_cycle_closed_open_half_open_closed():
    b = CircuitBreaker("m", CFG, clock=lambda: 42.0)
    changes = run(b, [BAD, BAD, BAD, [], [], [], [], []])
    assert changes == [(1, "open", 0.0, 1), (4, "half_open", 0.2, 2), (6, "closed", 1.0, 3)]


def test_opening_cites_the_alerts_and_the_rule():
    b = CircuitBreaker("m", CFG)
    run(b, [BAD, BAD])
    sig = b.signal
    assert sig.state == "open" and sig.serving_version == "v2"
    assert sig.alert_ids == ["alert-1"] and "income" in sig.reason


def test_probe_failure_reopens_and_restarts_hold_down():
    b = CircuitBreaker("m", CFG)
    changes = run(b, [BAD, BAD, [], [], [], BAD, [], [], []])
    states = [s for _, s, _, _ in changes]
    assert states == ["open", "half_open", "open", "half_open"]  # probing again only after a new hold-down
    assert b.opened_at == 600.0


def test_below_severity_or_single_window_does_not_open():
    b = CircuitBreaker("m", CFG)
    assert run(b, [MILD] * 5) == []
    assert run(b, [BAD, [], BAD, [], BAD, []]) == []  # flapping: never two windows in a row


def test_flapping_while_open_cannot_cycle_faster_than_the_hold_down():
    b = CircuitBreaker("m", CFG)
    changes = run(b, [BAD, BAD] + [BAD, []] * 10)
    opens = [i for i, s, _, _ in changes if s == "open"]
    assert all(b2 - b1 >= 3 for b1, b2 in zip(opens, opens[1:]))  # hold-down: 300 s = 3 windows
    assert "closed" not in [s for _, s, _, _ in changes]


def test_important_features_and_min_features():
    cfg = CFG.model_copy(update={"rules": (BreakerRule(kinds=("data_drift",), severity="warning",
                                                       features=("income", "age"), min_features=2, windows=1),)})
    b = CircuitBreaker("m", cfg)
    other = [ActiveCondition("data_drift", "zip", "psi", "critical", "x")]
    one = [ActiveCondition("data_drift", "income", "psi", "warning", "y")]
    two = one + [ActiveCondition("data_drift", "age", "ks", "warning", "z")]
    assert run(b, [other, one]) == []
    assert run(b, [two])[0][1] == "open"


def test_manual_override_holds_until_released():
    b = CircuitBreaker("m", CFG)
    b.observe(BreakerSignal("m", "closed", "v3", "v2", 1.0, 1, "manual: investigating", source="manual",
                            override=True))
    assert run(b, [BAD] * 4) == []  # the monitor would open, the override holds
    assert b.state == "closed" and b.epoch == 1
    b.observe(BreakerSignal("m", "closed", "v3", "v2", 1.0, 2, "released", source="manual", override=False))
    changes = run(b, [BAD], t0=1000)
    assert changes == [(0, "open", 0.0, 3)]  # streaks were tracked during the override


def test_older_epochs_and_own_echoes_are_ignored():
    b = CircuitBreaker("m", CFG)
    run(b, [BAD, BAD])
    assert b.epoch == 1
    b.observe(BreakerSignal("m", "closed", "v3", "v2", 1.0, 0, "stale", source="manual", override=True))
    b.observe(b.signal)
    assert b.state == "open" and not b.override


def test_snapshot_restore_roundtrip():
    b = CircuitBreaker("m", CFG)
    run(b, [BAD, BAD, BAD])
    again = CircuitBreaker("m", CFG).restore(b.snapshot())
    assert again.snapshot() == b.snapshot()
    assert again.signal.state == "open"


def test_signal_roundtrip_and_unknown_fields_ignored():
    sig = BreakerSignal("m", "half_open", "v3", "v2", 0.2, 7, "r", ["a"], 1.0, 2.0, "monitor", False)
    assert BreakerSignal.from_dict({**sig.to_dict(), "future_field": 1}) == sig


def test_ticks_of_a_breaker_reading_labels_wait_for_the_label_frontier_and_see_both_sides_as_of_their_end():
    drift = ActiveCondition("data_drift", "a", "psi", "critical", "d1")
    perf = ActiveCondition("performance", None, "accuracy", "critical", "p1")
    ticks = BreakerTicks()
    ticks.window(100.0, [drift, perf])  # the label side's state is not taken from the window's moment
    ticks.label(150.0, [drift, perf])  # the label side pages at 150
    ticks.window(200.0, [drift])
    ticks.window(300.0, [])
    assert ticks.release(99.0) == []  # the labels have not reached the first window's end
    assert ticks.release(250.0) == [(100.0, [drift]), (200.0, [drift, perf])]
    ticks.label(280.0, [])  # resolved at 280
    again = BreakerTicks().restore(orjson.loads(orjson.dumps(ticks.snapshot())))
    assert again.release(1e9) == ticks.release(1e9) == [(300.0, [])]
    assert ticks.waiting == 0
