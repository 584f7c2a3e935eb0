"""Alert policy: hysteresis, grouping, inhibition, repeat, cooldown, restart."""

import pytest

from stream_monitor.config import AlertsConfig
from stream_monitor.core.alerts import AlertPolicy, WindowInfo
from stream_monitor.core.drift import Finding


def drift(feature, over, value=0.3, kind="data_drift", statistic="psi"):
    return Finding(feature, kind, statistic, value if over else 0.01, 0.1, over, 1e-9 if over else 0.5, 1000)


def quality(feature, over):
    return Finding(feature, "data_quality", "missing_rate", 0.3 if over else 0.0, 0.05, over, None, 1000)


def feed(policy, windows, model="m", start=0, **kw):
    out = []
    for i, findings in enumerate(windows):
        w = WindowInfo(start + i, 1000.0 * (start + i), 1000.0 * (start + i + 1), 1000)
        out.append(policy.update(model, "v1", w, findings, "warmup:abc", 1.0, **kw))
    return out


def test_burst_on_twenty_features_is_one_grouped_alert():
    policy = AlertPolicy(AlertsConfig())
    names = [f"f{i}" for i in range(20)]
    per_window = feed(policy, [[drift(n, True) for n in names]] * 3)
    alerts = [a for w in per_window for a in w]
    assert len(alerts) == 1
    a = alerts[0]
    assert a.dedup_key == "m/data_drift" and a.feature is None
    assert sorted(m["feature"] for m in a.features) == sorted(names)
    assert "20 features (20 conditions)" in a.message and "and 10 more" in a.message


def test_feature_joining_an_open_incident_resends_it_with_the_same_id():
    policy = AlertPolicy(AlertsConfig())
    w = feed(policy, [[drift("a", True), drift("b", False)]] * 2 + [[drift("a", True), drift("b", True)]] * 2)
    first, again = w[1][0], w[3][0]
    assert first.alert_id == again.alert_id and again.status == "firing"
    assert {m["feature"] for m in again.features} == {"a", "b"}


def test_ungrouped_alerts_are_one_per_condition():
    policy = AlertPolicy(AlertsConfig(group=False))
    alerts = [a for w in feed(policy, [[drift("a", True), drift("b", True)]] * 2) for a in w]
    assert sorted(a.dedup_key for a in alerts) == ["m/data_drift/a/psi", "m/data_drift/b/psi"]


def test_data_quality_inhibits_drift_on_the_same_feature_only():
    policy = AlertPolicy(AlertsConfig())
    alerts = [a for w in feed(policy, [[quality("a", True), drift("a", True, value=0.2), drift("b", True)]] * 2)
              for a in w]
    kinds = {a.kind: a for a in alerts}
    assert set(kinds) == {"data_quality", "data_drift"}
    assert [m["feature"] for m in kinds["data_drift"].features] == ["b"]
    assert kinds["data_quality"].feature == "a"
    off = AlertPolicy(AlertsConfig(inhibit=False))
    alerts = [a for w in feed(off, [[quality("a", True), drift("a", True)]] * 2) for a in w]
    assert {m["feature"] for a in alerts if a.kind == "data_drift" for m in a.features} == {"a"}


def test_data_quality_never_hides_a_large_shift_on_the_same_feature():
    # values pushed out of the reference's range (out_of_range_rate) and a PSI of 4.99: both page
    policy = AlertPolicy(AlertsConfig())
    alerts = [a for w in feed(policy, [[quality("a", True), drift("a", True, value=4.99)]] * 2) for a in w]
    assert {a.kind for a in alerts} == {"data_quality", "data_drift"}
    assert [c.kind for c in policy.active("m")].count("data_drift") == 1  # breaker rules on data_drift see it


def test_severity_per_kind_and_escalation():
    policy = AlertPolicy(AlertsConfig(severity={"data_drift": "info"}, critical_factor=2.5))
    mild = [a for w in feed(policy, [[drift("a", True, value=0.2)]] * 2) for a in w][0]
    policy = AlertPolicy(AlertsConfig(severity={"data_drift": "info"}, critical_factor=2.5))
    severe = [a for w in feed(policy, [[drift("a", True, value=0.3)]] * 2) for a in w][0]
    assert mild.severity == "info" and severe.severity == "critical"


def test_repeat_every_and_breaker_mutes_repeats():
    policy = AlertPolicy(AlertsConfig(repeat_every=2))
    alerts = [a for w in feed(policy, [[drift("a", True)]] * 6) for a in w]
    assert len(alerts) == 3 and len({a.alert_id for a in alerts}) == 1  # windows 2, 4, 6
    policy = AlertPolicy(AlertsConfig(repeat_every=2))
    alerts = [a for w in feed(policy, [[drift("a", True)]] * 6, breaker_open=True) for a in w]
    assert len(alerts) == 1


def test_cooldown_blocks_refiring_soon_after_resolution():
    policy = AlertPolicy(AlertsConfig(cooldown_s=5000))
    pattern = [[drift("a", True)]] * 2 + [[drift("a", False)]] * 2 + [[drift("a", True)]] * 2
    statuses = [a.status for w in feed(policy, pattern) for a in w]
    assert statuses == ["firing", "resolved"]  # the re-fire at window 5 is inside the cooldown
    policy = AlertPolicy(AlertsConfig(cooldown_s=0))
    statuses = [a.status for w in feed(policy, pattern) for a in w]
    assert statuses == ["firing", "resolved", "firing"]


def test_same_condition_in_same_window_gets_same_id_and_restart_keeps_it():
    a1 = feed(AlertPolicy(AlertsConfig()), [[drift("a", True)]] * 2)[1][0]
    a2 = feed(AlertPolicy(AlertsConfig()), [[drift("a", True)]] * 2)[1][0]
    assert a1.alert_id == a2.alert_id
    policy = AlertPolicy(AlertsConfig())
    feed(policy, [[drift("a", True)]] * 3)
    restored = AlertPolicy(AlertsConfig()).restore(policy.snapshot("m"))
    after = [a for w in feed(restored, [[drift("a", True)]] * 2 + [[drift("a", False)]] * 2, start=3) for a in w]
    assert [a.status for a in after] == ["resolved"]  # no re-fire under a new id; the resolution has the old id
    assert after[0].alert_id == a1.alert_id


def test_snapshot_is_per_model():
    policy = AlertPolicy(AlertsConfig())
    feed(policy, [[drift("a", True)]] * 2, model="m1")
    feed(policy, [[drift("a", True)]] * 2, model="m2")
    snap = policy.snapshot("m1")
    assert [k for k, _ in snap["incidents"]] == [["m1", "data_drift"]]
    assert all(k[0] == "m1" for k, _ in snap["conditions"])


def test_a_model_named_like_a_prefix_of_another_keeps_its_own_incidents():
    # keys are tuples: "a" and "a/b" (or "a" and "a-b") never share a condition, an incident or a resolution
    policy = AlertPolicy(AlertsConfig())
    fired_a = [a for w in feed(policy, [[drift("x", True)]] * 2, model="a") for a in w]
    fired_ab = [a for w in feed(policy, [[drift("x", True)]] * 2, model="a/b") for a in w]
    assert len(fired_a) == len(fired_ab) == 1 and fired_a[0].alert_id != fired_ab[0].alert_id
    resolved = [a for w in feed(policy, [[drift("x", False)]] * 2, start=2, model="a/b") for a in w]
    assert [(a.model, a.status) for a in resolved] == [("a/b", "resolved")]
    assert [c.alert_id for c in policy.active("a")] == [fired_a[0].alert_id]  # a is still firing, untouched
    assert policy.active("a/b") == []


def test_malformed_snapshot_is_refused_and_changes_nothing():
    policy = AlertPolicy(AlertsConfig())
    feed(policy, [[drift("a", True)]] * 2, model="m")
    before = policy.snapshot()
    for bad in ({"v": 99}, {"v": 1, "conditions": [["m", {}]], "incidents": [], "cooldown": []},
                {"v": 1, "conditions": [[["m", "data_drift", "a", "psi"], {"kind": "x", "evil": 1}]],
                 "incidents": [], "cooldown": []}):
        with pytest.raises((ValueError, TypeError, KeyError)):
            policy.restore(bad)
    assert policy.snapshot() == before


def test_other_kinds_windows_do_not_count_towards_an_incidents_repeats():
    policy = AlertPolicy(AlertsConfig(repeat_every=2))
    perf = Finding(None, "performance", "accuracy", 0.9, 0.8, False, None, 500)
    pattern = [[drift("a", True)], [drift("a", True)], [perf], [perf], [perf], [drift("a", True)]]
    alerts = [a for w in feed(policy, pattern) for a in w]
    assert [a.kind for a in alerts] == ["data_drift"]  # fired once; 3 performance windows are not 2 drift windows
