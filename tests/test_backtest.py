"""`stream-monitor backtest`: the same core as `run` over a file, its alerts and summary, and the HTML report
as headless Chromium renders it."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import numpy as np
import orjson
import pytest
import yaml

from stream_monitor.backtest import Backtest, merge_by_time
from stream_monitor.cli import main
from stream_monitor.config import parse_config
from stream_monitor.core.monitor import Monitor
from tests.binaries import chromium
from tests.streams import NUMERIC, CATEGORICAL, classifier_config, labeled_stream, make_events, model_config

DOCS = Path(__file__).resolve().parents[1] / "docs"

RAW = {"models": {"m": model_config(window={"size": 500}, reference={"size": 1000}),
                  "clf": classifier_config(performance={"task": "binary", "positive_label": "1", "window_s": 600,
                                                        "maturity_s": 1800, "min_labels": 50,
                                                        "thresholds": {"accuracy": {"min": 0.7}}})}}


def history():
    """Seeded past traffic: model m drifts on feature a and recovers; model clf's outcome flips half way and
    its feature x shifts."""
    rng = np.random.default_rng(12)
    preds = (make_events(1000, rng) + make_events(2000, rng, start=1000, a_mean=1.0)
             + make_events(2000, rng, start=3000))
    p1, l1 = labeled_stream(6000, rng)
    p2, l2 = labeled_stream(6000, rng, start=6000, flip=True)
    for p in p2[3000:]:
        p["features"]["x"] += 1.5
    return preds + p1 + p2, l1 + l2


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("backtest")
    preds, labels = history()
    (d / "preds.jsonl").write_bytes(b"\n".join(orjson.dumps(e) for e in preds))
    (d / "labels.jsonl").write_bytes(b"\n".join(orjson.dumps(e) for e in labels))
    (d / "config.yaml").write_text(yaml.safe_dump(RAW))
    return d


def test_backtest_raises_exactly_what_the_core_raises_on_the_same_batches():
    preds, labels = history()
    cfg = parse_config(RAW)
    result = Backtest(cfg).run(preds, labels)
    mon = Monitor(cfg)
    expected = [a for p, lab in merge_by_time(preds, labels) for a in mon.process_batch(p, lab).alerts]
    assert [(a.alert_id, a.status) for a in result.alerts] == [(a.alert_id, a.status) for a in expected]
    kinds = {(a.model, a.kind) for a in result.alerts if a.status == "firing"}
    assert {("m", "data_drift"), ("clf", "data_drift"), ("clf", "performance")} <= kinds
    assert result.predictions == len(preds) and result.labels == len(labels)
    assert result.models["clf"].performance and result.models["m"].worst


def test_cli_prints_alerts_and_a_summary_and_writes_the_report(files, capsys):
    out = files / "report.html"
    rc = main(["backtest", "--config", str(files / "config.yaml"), "--input", str(files / "preds.jsonl"),
               "--labels", str(files / "labels.jsonl"), "--report", str(out)])
    assert rc == 0
    text = capsys.readouterr()
    assert "[CRITICAL] m data_drift on feature 'a' over threshold" in text.out
    assert re.search(r"model m: 8 windows \(8 evaluated\), 1 alerts fired, 1 resolved", text.out)
    assert f"{len(history()[0])}/{len(history()[0])} events" in text.err  # the progress bar's last line
    page = out.read_text()
    assert "<script" not in page and "http://" not in page.split("</style>")[0] and "https://" not in page.replace(
        "https://github.com/stream-monitor", "")  # nothing to fetch at view time


def test_report_renders_in_headless_chromium_with_every_feature_and_plot(files, tmp_path):
    out = files / "report.html"
    if not out.exists():
        main(["backtest", "--config", str(files / "config.yaml"), "--input", str(files / "preds.jsonl"),
              "--labels", str(files / "labels.jsonl"), "--report", str(out)])
    shot = tmp_path / "report.png"
    dom = chromium(out, tmp_path, screenshot=shot)
    for model, features in (("m", [*NUMERIC, *CATEGORICAL, "prediction", "score"]), ("clf", ["x", "z"])):
        section = dom.split(f'data-model="{model}"')[1].split("</section>")[0]
        drawn = set(re.findall(r'<svg class="chart statistic" data-feature="([^"]*)"', section))
        assert set(features) <= drawn, (model, drawn)
        assert re.search(r'<svg class="chart histogram" data-feature="(a|x)"', section)  # the drifted feature
    m = dom.split('data-model="m"')[1].split("</section>")[0]
    a_chart = m.split('<svg class="chart statistic" data-feature="a"')[1].split("</svg>")[0]
    assert 'class="alert-mark"' in a_chart and 'class="over"' in a_chart
    assert 'class="chart performance"' in dom.split('data-model="clf"')[1]
    png = shot.read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 50_000  # a drawn page, not a blank one
    if os.environ.get("STREAM_MONITOR_UPDATE_DOCS") == "1":  # `make docs`: the README's screenshot
        DOCS.mkdir(exist_ok=True)
        shutil.copy(shot, DOCS / "backtest-report.png")
