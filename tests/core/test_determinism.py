"""The whole output is a function of the records and their order within each stream: not of where batches
were cut, of live vs replay vs backtest, or of restarts.

One seeded stream with everything that has made outputs depend on the cut before: labels after and before
their predictions, labels that never come, a gap in prediction time far longer than ``ttl_s +
label_stall_s`` (labels of the predictions before it arrive inside it), a data drift with a concept flip, and
recovery. It is fed live (in arrival order) in batches of 1, 7, 500 and 5,000 records, replayed (each stream
read at its own pace, as a consumer reads two partitions), through ``Backtest``, and live with crashes
(restored from the last commit, the batches since then redone).
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import numpy as np
import pytest

from stream_monitor.backtest import Backtest
from stream_monitor.config import parse_config
from stream_monitor.core.monitor import BatchOutput, Monitor
from stream_monitor.core.state import decode_value, encode_value

T0 = 1.7e9
GAP_S = 200_000.0

RAW = {"models": {"clf": {
    "features": {"numeric": ["x", "z"]},
    "window": {"size": 300},
    "reference": {"size": 1000},
    "drift": {"min_window_events": 100},
    "performance": {"task": "binary", "positive_label": "1", "window_s": 600, "maturity_s": 900, "min_labels": 30,
                    "thresholds": {"accuracy": {"min": 0.7}}},
    "concept_drift": [{"type": "adwin"}],
    "join": {"ttl_s": 3600},
    "breaker": {"enabled": True, "primary_version": "v1", "fallback_version": "v0", "hold_down_s": 600,
                "close_after": 2, "rules": [{"kinds": ["data_drift"], "severity": "warning", "windows": 2}]},
}}}
# the same model whose breaker also reads the label side's kinds: its ticks wait for the label frontier
RAW["models"]["lab"] = {**RAW["models"]["clf"], "breaker": {
    **RAW["models"]["clf"]["breaker"], "rules": [{"kinds": ["data_drift"], "severity": "warning", "windows": 2},
                                                 {"kinds": ["performance", "concept_drift"], "severity": "warning",
                                                  "windows": 1}]}}


def stream(seed: int = 5, n: int = 6000) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Predictions in event-time order and labels in label-time order (as each topic holds them)."""
    rng = np.random.default_rng(seed)
    t = T0 + np.arange(n) * 1.0
    t[n // 2:] += GAP_S
    shifted = (np.arange(n) >= 2000) & (np.arange(n) < 3000)  # drift and a concept flip, then recovery
    x = rng.normal(np.where(shifted, 1.0, 0.0), 1.0)
    z = rng.normal(0.0, 1.0, n)
    score = 1 / (1 + np.exp(-2.0 * x))
    outcome = rng.random(n) < np.where(shifted, 1 - score, score)
    lag = np.where(rng.random(n) < 0.1, -rng.uniform(0, 30, n), rng.exponential(120.0, n))  # 10 % come first
    keep = rng.random(n) >= 0.1
    preds, labels = [], []
    for i in range(n):
        eid = f"e{i}"
        preds.append({"event_id": eid, "model": "clf", "model_version": "v1", "timestamp": float(t[i]),
                      "features": {"x": float(x[i]), "z": float(z[i])},
                      "prediction": "1" if score[i] >= 0.5 else "0", "score": float(score[i])})
        if keep[i]:
            labels.append({"event_id": eid, "model": "clf", "label": int(outcome[i]),
                           "timestamp": float(t[i] + lag[i])})
    labels.sort(key=lambda e: e["timestamp"])
    # the second model: the same events (its own ids), interleaved with the first's
    preds = [q for e in preds for q in (e, {**e, "model": "lab", "event_id": "l" + e["event_id"]})]
    labels = [q for e in labels for q in (e, {**e, "model": "lab", "event_id": "l" + e["event_id"]})]
    return preds, labels


def observable(outs: list[BatchOutput]) -> dict[str, Any]:
    """Everything published, per stream of outputs in its own order (alerts per dedup key: incidents of
    different keys are independent)."""
    alerts: dict[str, list] = defaultdict(list)
    drift: dict[str, list] = defaultdict(list)
    perf: dict[str, list] = defaultdict(list)
    signals: dict[str, list] = defaultdict(list)
    for o in outs:
        for a in o.alerts:
            alerts[a.dedup_key].append((a.alert_id, a.status, a.severity, a.window["start"]))
        for r in o.reports:
            (perf if r["type"] == "performance" else drift)[r["model"]].append(r)
        for s in o.signals:
            signals[s.model].append((s.epoch, s.state, tuple(s.alert_ids)))
    return {"alerts": dict(alerts), "drift": dict(drift), "performance": dict(perf), "signals": dict(signals)}


def arrival(preds, labels) -> list[tuple[str, dict[str, Any]]]:
    """Both streams in arrival (event-time) order, as a live consumer meets them."""
    merged = [("p", e) for e in preds] + [("l", e) for e in labels]
    merged.sort(key=lambda r: r[1]["timestamp"])  # stable: within a stream, its own order
    return merged


def live(cfg, preds, labels, size: int) -> list[BatchOutput]:
    recs = arrival(preds, labels)
    mon = Monitor(cfg)
    outs = []
    for i in range(0, len(recs), size):
        part = recs[i:i + size]
        outs.append(mon.process_batch([e for k, e in part if k == "p"], [e for k, e in part if k == "l"]))
    return outs


def replay(cfg, preds, labels, size: int) -> list[BatchOutput]:
    """Each stream read at its own pace (a batch of one, then of the other), neither at its end until the
    last batch: a consumer reading both topics again from the start."""
    mon = Monitor(cfg)
    outs = []
    i = j = 0
    while i < len(preds) or j < len(labels):
        p, lab = preds[i:i + size], labels[j:j + size // 2 + 1]
        i, j = i + len(p), j + len(lab)
        last = i >= len(preds) and j >= len(labels)
        outs.append(mon.process_batch(p, lab, predictions_idle=last, labels_idle=last))
    return outs


def with_crashes(cfg, preds, labels, size: int, seed: int) -> list[BatchOutput]:
    """Live, committing every 3 batches; killed at 5 random batches: the work since the last commit is lost
    (its outputs were never visible) and redone by a monitor restored from the committed records."""
    recs = arrival(preds, labels)
    batches = [recs[i:i + size] for i in range(0, len(recs), size)]
    kills = set(np.random.default_rng(seed).choice(len(batches), 5, replace=False).tolist())
    committed: dict = {}
    visible: list[BatchOutput] = []
    pending: list[BatchOutput] = []
    mon = Monitor(cfg)
    b = last_commit = 0
    while b < len(batches):
        part = batches[b]
        out = mon.process_batch([e for k, e in part if k == "p"], [e for k, e in part if k == "l"])
        if b in kills:
            kills.discard(b)
            mon = Monitor(cfg)
            mon.restore({k: v for k, v in committed.items() if k.topic == "state"},
                        {k: v for k, v in committed.items() if k.topic == "join"})
            assert mon.counters.restore_errors == 0
            pending, b = [], last_commit
            continue
        pending.append(out)
        b += 1
        if b % 3 == 0 or b == len(batches):
            for key, value in mon.checkpoint().records.items():
                if value is None:
                    committed.pop(key, None)
                else:
                    committed[key] = decode_value(key, encode_value(key, value))
            visible += pending
            pending, last_commit = [], b
    return visible


@pytest.fixture(scope="module")
def expected():
    cfg = parse_config(RAW)
    preds, labels = stream()
    out = observable(live(cfg, preds, labels, 500))
    return cfg, preds, labels, out


def test_the_stream_exercises_what_it_is_meant_to(expected):
    _, _, _, out = expected
    firing = {key.split("|")[1] if "|" in key else key for key, seq in out["alerts"].items()
              if any(s == "firing" for _, s, _, _ in seq)}
    assert any("data_drift" in k for k in firing) and any("concept_drift" in k or "performance" in k
                                                          for k in firing), firing
    assert any(s == "resolved" for seq in out["alerts"].values() for _, s, _, _ in seq), "and recovery"
    assert set(out["signals"]) == {"clf", "lab"}, "both breakers moved"
    assert {"lab/performance", "lab/concept_drift"} <= set(out["alerts"])
    perf = out["performance"]["clf"]
    assert len(perf) >= 8 and all(r["labeled"] > 0 for r in perf)
    before_gap = [r for r in perf if r["end"] <= T0 + 3000]
    assert sum(r["labeled"] for r in before_gap) >= 0.85 * 0.9 * 3000, "labels before the gap are joined"


@pytest.mark.parametrize("size", [1, 7, 5000])
def test_live_outputs_do_not_depend_on_the_batch_size(expected, size):
    cfg, preds, labels, want = expected
    assert observable(live(cfg, preds, labels, size)) == want


@pytest.mark.parametrize("size", [7, 500, 5000])
def test_a_replay_gives_what_live_gave(expected, size):
    cfg, preds, labels, want = expected
    assert observable(replay(cfg, preds, labels, size)) == want


@pytest.mark.parametrize("size", [100, 1000])
def test_backtest_gives_what_live_gave(expected, size):
    cfg, preds, labels, want = expected
    result = Backtest(cfg, batch=size).run(preds, labels)
    got = defaultdict(list)
    for a in result.alerts:
        got[a.dedup_key].append((a.alert_id, a.status, a.severity, a.window["start"]))
    assert dict(got) == want["alerts"]
    assert {name: r.performance for name, r in result.models.items()} == want["performance"]


@pytest.mark.parametrize("seed", [1, 2])
def test_crashes_and_restores_give_what_an_uninterrupted_run_gave(expected, seed):
    cfg, preds, labels, want = expected
    assert observable(with_crashes(cfg, preds, labels, 500, seed)) == want
