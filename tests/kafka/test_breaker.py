"""Alerts and the circuit breaker against a real broker: the two contracts users build on."""

from __future__ import annotations

import time

import numpy as np
import orjson
import pytest

from stream_monitor.core.state import TaskId
from stream_monitor.cli import main as cli
from stream_monitor.kafka.router import BreakerClient
from tests.kafka.helpers import Running, config, create_topic, produce, read_all
from tests.streams import make_events, make_wide_events, model_config

pytestmark = pytest.mark.kafka

BREAKER = {"enabled": True, "primary_version": "v3", "fallback_version": "v2",
           "rules": [{"kinds": ["data_drift"], "severity": "critical", "windows": 2}],
           "hold_down_s": 2000, "probe_share": 0.25, "close_after": 2}


def breaker_config(run_id, **over):
    return config(run_id, {"m": model_config(window={"size": 1000}, reference={"size": 2000}, breaker=BREAKER,
                                             **over)})


def wait_for(client, model, pred, timeout=60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        client.poll()
        if pred(client.route(model)):
            return client.route(model)
        time.sleep(0.1)
    raise AssertionError(f"breaker of {model} never reached the expected state: {client.route(model)}")


def write_config(tmp_path, cfg, bootstrap):
    import yaml

    path = tmp_path / "monitor.yaml"
    raw = cfg.model_dump(mode="json")
    raw["kafka"]["bootstrap_servers"] = bootstrap
    path.write_text(yaml.safe_dump(raw))
    return str(path)


class Stream:
    """Consecutive events of model m with increasing ids and times."""

    def __init__(self, seed):
        self.rng = np.random.default_rng(seed)
        self.at = 0

    def __call__(self, n, **kw):
        evs = make_events(n, self.rng, start=self.at, **kw)
        self.at += n
        return evs


def test_degrading_model_opens_the_breaker_and_recovers_through_half_open(kafka_bootstrap, run_id):
    cfg = breaker_config(run_id)
    create_topic(kafka_bootstrap, cfg.topics.predictions)
    client = BreakerClient(kafka_bootstrap, cfg.topics.breaker)
    assert client.sync().route("m").state == "closed"  # nothing published yet: the primary serves
    assert client.route("m").primary_share == 1.0
    stream = Stream(41)
    with Running(cfg, kafka_bootstrap):
        produce(kafka_bootstrap, cfg.topics.predictions, stream(4000) + stream(3000, a_mean=1.0))
        route = wait_for(client, "m", lambda r: r.state == "open")
        assert route.serving_version == "v2" and route.primary_share == 0.0
        assert "data_drift" in route.reason
        produce(kafka_bootstrap, cfg.topics.predictions, stream(8000))
        route = wait_for(client, "m", lambda r: r.state == "closed")
    history = [orjson.loads(m.value()) for m in read_all(kafka_bootstrap, cfg.topics.breaker, lambda ms: len(ms) >= 3)]
    assert [(h["state"], h["epoch"]) for h in history] == [("open", 1), ("half_open", 2), ("closed", 3)]
    assert history[1]["primary_share"] == 0.25
    assert history[0]["alert_ids"], "the opening cites the alerts behind it"
    alerts = [orjson.loads(m.value()) for m in read_all(kafka_bootstrap, cfg.topics.alerts, lambda ms: len(ms) >= 2)]
    assert history[0]["alert_ids"] == [alerts[0]["alert_id"]]
    client.close()


def test_flapping_condition_does_not_flap_the_breaker(kafka_bootstrap, run_id):
    cfg = breaker_config(run_id)
    create_topic(kafka_bootstrap, cfg.topics.predictions)
    stream = Stream(42)
    events = stream(4000)
    for _ in range(6):  # one bad window, one good window, ...
        events += stream(1000, a_mean=1.0) + stream(1000)
    with Running(cfg, kafka_bootstrap) as run:
        produce(kafka_bootstrap, cfg.topics.predictions, events)
        run.wait_consumed(len(events))
        assert run.service.tasks[TaskId(0)].counters.windows == 14
    client = BreakerClient(kafka_bootstrap, cfg.topics.breaker).sync()
    assert client.route("m").epoch == 0 and client.route("m").state == "closed"
    client.close()


def test_manual_override_holds_until_released(kafka_bootstrap, run_id, tmp_path):
    cfg = breaker_config(run_id)
    create_topic(kafka_bootstrap, cfg.topics.predictions)
    path = write_config(tmp_path, cfg, kafka_bootstrap)
    stream = Stream(43)
    client = BreakerClient(kafka_bootstrap, cfg.topics.breaker)
    with Running(cfg, kafka_bootstrap) as run:
        produce(kafka_bootstrap, cfg.topics.predictions, stream(3000))
        run.wait_consumed(3000)
        assert cli(["breaker", "close", "--config", path, "--model", "m", "--reason", "known upstream change"]) == 0
        deadline = time.monotonic() + 30
        while not run.service.tasks[TaskId(0)].breakers["m"].override and time.monotonic() < deadline:
            time.sleep(0.1)
        assert run.service.tasks[TaskId(0)].breakers["m"].override
        produce(kafka_bootstrap, cfg.topics.predictions, stream(4000, a_mean=1.0))
        run.wait_consumed(7000)
        route = client.sync().route("m")
        assert (route.state, route.epoch) == ("closed", 1)  # the monitor would have opened: the override holds
        assert client.signal("m").source == "manual" and client.signal("m").override
        assert cli(["breaker", "release", "--config", path, "--model", "m"]) == 0
        wait_for(client, "m", lambda r: r.epoch == 2)
        produce(kafka_bootstrap, cfg.topics.predictions, stream(1000, a_mean=1.0))
        route = wait_for(client, "m", lambda r: r.state == "open")
        assert route.epoch == 3 and client.signal("m").source == "monitor"
    client.close()


def test_restart_mid_incident_keeps_alert_ids_and_breaker_state(kafka_bootstrap, run_id):
    cfg = breaker_config(run_id)
    create_topic(kafka_bootstrap, cfg.topics.predictions)
    stream = Stream(44)
    client = BreakerClient(kafka_bootstrap, cfg.topics.breaker)
    with Running(cfg, kafka_bootstrap) as run:
        produce(kafka_bootstrap, cfg.topics.predictions, stream(4000) + stream(3000, a_mean=1.0))
        run.wait_consumed(7000)
        wait_for(client, "m", lambda r: r.state == "open")
    # a new process: same group, same topics; it restores reference, open incident and breaker state
    with Running(cfg, kafka_bootstrap) as run:
        produce(kafka_bootstrap, cfg.topics.predictions, stream(2000, a_mean=1.0))
        run.wait_consumed(2000)
        assert run.service.tasks[TaskId(0)].models["m"].reference is not None
        assert run.service.tasks[TaskId(0)].breakers["m"].state in ("open", "half_open")
        produce(kafka_bootstrap, cfg.topics.predictions, stream(8000))
        run.wait_consumed(10000)
        wait_for(client, "m", lambda r: r.state == "closed")
    alerts = [orjson.loads(m.value()) for m in read_all(kafka_bootstrap, cfg.topics.alerts, lambda ms: len(ms) >= 2)]
    assert [a["status"] for a in alerts] == ["firing", "resolved"]
    assert alerts[0]["alert_id"] == alerts[1]["alert_id"]  # no re-fire under a new id after the restart
    history = [orjson.loads(m.value()) for m in read_all(kafka_bootstrap, cfg.topics.breaker, lambda ms: len(ms) >= 3)]
    assert [h["epoch"] for h in history] == [1, 2, 3]  # epochs continue across the restart
    assert [h["state"] for h in history] == ["open", "half_open", "closed"]
    client.close()


def test_drift_burst_on_twenty_features_is_one_grouped_alert(kafka_bootstrap, run_id):
    wide = {"features": {"numeric": [f"f{j}" for j in range(20)]}, "prediction": "none", "monitor_score": False,
            "window": {"size": 1000}, "reference": {"size": 2000}}
    cfg = config(run_id, {"wide": wide})
    create_topic(kafka_bootstrap, cfg.topics.predictions)
    rng = np.random.default_rng(45)
    events = make_wide_events(3000, rng) + make_wide_events(3000, rng, shift=1.0, start=3000)
    with Running(cfg, kafka_bootstrap) as run:
        produce(kafka_bootstrap, cfg.topics.predictions, events, key=b"wide")
        run.wait_consumed(len(events))
        time.sleep(1)
    alerts = [orjson.loads(m.value()) for m in read_all(kafka_bootstrap, cfg.topics.alerts, lambda ms: len(ms) >= 1)]
    assert len(alerts) == 1
    assert alerts[0]["dedup_key"] == "wide/data_drift" and alerts[0]["feature"] is None
    assert sorted({f["feature"] for f in alerts[0]["features"]}) == sorted(f"f{j}" for j in range(20))  # (psi and rank_sum each)


def test_data_quality_alert_inhibits_drift_alert_on_the_same_feature_unless_the_shift_is_large(kafka_bootstrap,
                                                                                                 run_id):
    stream = Stream(46)
    # c: 40 % missing (a broken pipeline) and what is left is shifted far; a: a real drift
    events = stream(3000) + stream(3000, missing_c=0.4, a_mean=1.0)
    for ev in events[3000:]:
        if ev["features"]["c"] is not None:
            ev["features"]["c"] += 5.0
    drifting = {}
    for factor in (1000.0, 4.0):  # 1000: every shift counts as moderate; 4 (default): c's shift is large
        rid = f"{run_id}{int(factor)}"
        cfg = config(rid, {"m": model_config(window={"size": 1000}, reference={"size": 2000})},
                     alerts={"critical_factor": factor})
        create_topic(kafka_bootstrap, cfg.topics.predictions)
        with Running(cfg, kafka_bootstrap) as run:
            produce(kafka_bootstrap, cfg.topics.predictions, events)
            run.wait_consumed(len(events))
            time.sleep(1)
        alerts = [orjson.loads(m.value()) for m in read_all(kafka_bootstrap, cfg.topics.alerts,
                                                            lambda ms: len(ms) >= 2)]
        by_kind = {a["kind"]: a for a in alerts}
        assert set(by_kind) == {"data_quality", "data_drift"}
        assert {f["feature"] for f in by_kind["data_quality"]["features"]} == {"c"}
        drifting[factor] = {f["feature"] for f in by_kind["data_drift"]["features"]}
    assert drifting[1000.0] == {"a"}  # c's moderate drift is inhibited: the broken pipeline pages once
    assert drifting[4.0] == {"a", "c"}  # a large shift is never hidden behind data quality