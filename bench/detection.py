"""Detection power and false alarms of the drift decisions, per window size, on seeded synthetic streams.

For each window size (100, 1,000, 10,000) and each scenario, the pure core (``Monitor``, no Kafka) runs on a
stream whose first part is the reference (warm-up of 5,000 events, or a file reference built from a separate
sample of the same distribution) and whose rest is either unchanged (a *null* stream: every firing alert is a
false alert) or shifted from a change point (a *shift*: the first firing alert on the shifted feature is a
detection, its delay counted in events after the change).

Printed per window size: scenario | reference | detection rate over the seeds | median delay in events |
false alerts per 10^6 events (null streams: file, warm-up, rolling and calendar references; events are one
second apart, so a calendar reference is the same hour of the previous two days). With ``--peers``, the same warm-up reference and the same windows (the first
``--peer-windows`` of each stream) also go through Evidently's default data-drift preset (one Report per
window) and NannyML's univariate drift (chunk size = window); a peer's alert is a window in which it flags a
column (they have no hysteresis), its delay the end of the first window flagging the shifted feature. The peers
are bench-only, in their own environment (their pins clash with ours)::

    python3.11 -m venv .venv-bench && .venv-bench/bin/pip install -e '.[bench]'
    .venv-bench/bin/python bench/detection.py --peers

    python bench/detection.py [--seeds 10] [--null-events 200000] [--windows 100,1000,10000] [--peers]
                              [--scenarios segment,slice]

Segment scenarios: 5 regions (20/30/20/15/15 % of traffic, each with its own mean of ``f``) and 3 channels, both
configured as ``segments.keys``; a shift moves region r0 only. Its detection is the first alert naming
``region=r0`` on ``f``; alerts naming another region, or another feature, are false. The peers have no slices:
they see the whole-population windows, and their "detection" is flagging ``f`` there.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Any

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from stream_monitor.config import parse_config  # noqa: E402
from stream_monitor.core.monitor import Monitor  # noqa: E402
from stream_monitor.core.reference import build_reference  # noqa: E402

REF = 5000
LEVELS = 200
REGIONS = {"r0": (0.20, 0.5), "r1": (0.30, 0.0), "r2": (0.20, -0.5), "r3": (0.15, 1.0), "r4": (0.15, -1.0)}
CHANNELS = {"app": 0.5, "web": 0.3, "partner": 0.2}
TAIL = 1 / np.arange(1, LEVELS + 1) ** 1.1
TAIL /= TAIL.sum()


def values(kind: str, n: int, rng: np.random.Generator, shift: dict[str, Any]) -> dict[str, np.ndarray]:
    """Feature columns of one scenario: the monitored feature ``f`` plus two stable companions."""
    cols: dict[str, np.ndarray] = {"s1": rng.normal(0, 1, n), "s2": rng.choice(["a", "b", "c"], n)}
    if kind == "normal":
        f = rng.normal(shift.get("mean", 0.0), shift.get("sd", 1.0), n)
        missing = shift.get("missing", 0.0)
        cols["f"] = np.where(rng.random(n) < missing, np.nan, f)
    elif kind == "lognormal":
        cols["f"] = rng.lognormal(0, 1, n)
    elif kind == "counts":
        cols["f"] = rng.poisson(3, n).astype(float)
    elif kind == "flag":
        cols["f"] = (rng.random(n) < shift.get("p", 0.05)).astype(float)
    elif kind == "segmented":  # slices that differ from one another (per-region mean); slice r0 may shift
        region = rng.choice(len(REGIONS), n, p=[p for p, _ in REGIONS.values()])
        channel = rng.choice(len(CHANNELS), n, p=list(CHANNELS.values()))
        mean = np.array([m for _, m in REGIONS.values()])[region]
        mean = mean + np.where(region == 0, shift.get("slice_mean", 0.0), 0.0)
        cols["f"] = rng.normal(mean, 1.0)
        cols["s1"] = rng.normal(0.3 * channel, 1.0)
        cols["__region"] = np.array(list(REGIONS))[region]
        cols["__channel"] = np.array(list(CHANNELS))[channel]
    elif kind == "tail":
        p = TAIL.copy()
        tv = shift.get("tv", 0.0)
        if tv:  # move mass tv from the head to the next levels: total variation distance tv
            p[0] -= tv
            p[1:11] += tv / 10
        new = shift.get("new", 0.0)
        cat = rng.choice(LEVELS, n, p=p).astype(str)
        cat = np.where(rng.random(n) < new, "never-seen", cat)
        cols["f"] = cat
    return cols


def events(kind: str, n: int, rng: np.random.Generator, start: int, shift: dict[str, Any]) -> list[dict]:
    cols = values(kind, n, rng, shift)
    seg = {name[2:]: cols.pop(name).tolist() for name in [c for c in cols if c.startswith("__")]}
    out = []
    for i in range(n):
        feats = {}
        for name, col in cols.items():
            v = col[i]
            feats[name] = None if isinstance(v, float) and v != v else (v.item() if hasattr(v, "item") else v)
        out.append({"event_id": f"e{start + i}", "model": "m", "model_version": "v1",
                    "timestamp": 1.7e9 + start + i, "features": feats, "prediction": 0.5})
        if seg:
            out[-1]["segment"] = {k: v[i] for k, v in seg.items()}
    return out


SCENARIOS: list[tuple[str, str, dict[str, Any] | None]] = [  # name, feature kind, shift (None: a null stream)
    ("null normal", "normal", None),
    ("null lognormal", "lognormal", None),
    ("null integer counts (ties)", "counts", None),
    ("null rare binary flag", "flag", None),
    ("null 200-level long tail", "tail", None),
    ("mean +0.1 sd", "normal", {"mean": 0.1}),
    ("mean +0.2 sd", "normal", {"mean": 0.2}),
    ("mean +0.5 sd", "normal", {"mean": 0.5}),
    ("mean +1 sd", "normal", {"mean": 1.0}),
    ("variance x1.5", "normal", {"sd": 1.5 ** 0.5}),
    ("category TV 0.05", "tail", {"tv": 0.05}),
    ("category TV 0.1", "tail", {"tv": 0.1}),
    ("new category at 2 %", "tail", {"new": 0.02}),
    ("missing 0 -> 10 %", "normal", {"missing": 0.10}),
    ("binary 5 -> 30 %", "flag", {"p": 0.30}),
    # slices (segments.keys region, channel; top 5 each): 5 regions with their own means, one of them shifts
    ("null with segments", "segmented", None),
    ("slice 20 % mean +0.5 sd", "segmented", {"slice_mean": 0.5}),
]

#: The slice a segment scenario shifts: its detection is the first alert naming it on f.
TARGET = {"key": "region", "value": "r0"}


def model_cfg(kind: str, window: int, reference: str) -> dict[str, Any]:
    numeric = ["f", "s1"] if kind != "tail" else ["s1"]
    categorical = ["s2"] + (["f"] if kind == "tail" else [])
    ref: dict[str, Any] = {"type": reference if reference != "file" else "file", "size": REF}
    if reference == "rolling":
        ref["windows"] = max(1, REF // window)
    if reference == "calendar":  # events are 1 s apart: the same hour of the previous days
        ref |= {"period_s": 86400, "slot_s": 3600, "periods": 2}
    if reference == "file":
        ref["path"] = "unused"  # the reference is passed in built
    out = {"features": {"numeric": numeric, "categorical": categorical}, "prediction": "none",
           "monitor_score": False, "window": {"size": window}, "reference": ref,
           "drift": {"min_window_events": min(100, window)}}
    if kind == "segmented":
        out["segments"] = {"keys": ["region", "channel"], "top_n": 5}
    return out


def frame(evs: list[dict]) -> Any:
    import pandas as pd

    return pd.DataFrame([e["features"] for e in evs])


def evidently_flags(ref: Any, windows: list[Any]) -> list[set[str]]:
    """Columns Evidently's default data-drift preset flags, per window."""
    from evidently import Report
    from evidently.presets import DataDriftPreset

    out = []
    for cur in windows:
        snap = Report([DataDriftPreset()]).run(current_data=cur, reference_data=ref).dict()
        flagged = set()
        for m in snap["metrics"]:
            cfg = m.get("config", {})
            if "ValueDrift" not in cfg.get("type", ""):
                continue
            v, thr, method = m["value"], cfg["threshold"], cfg.get("method", "")
            if v is not None and ((v < thr) if "p_value" in method else (v >= thr)):
                flagged.add(cfg["column"])
        out.append(flagged)
    return out


def nannyml_flags(ref: Any, windows: list[Any], window: int) -> list[set[str]]:
    """Columns NannyML's univariate drift (defaults; chunk size = window) alerts on, per window."""
    import nannyml as nml
    import pandas as pd

    cols = list(ref.columns)
    calc = nml.UnivariateDriftCalculator(column_names=cols, chunk_size=window)
    calc.fit(ref)
    res = calc.calculate(pd.concat(windows, ignore_index=True)).filter(period="analysis").to_df()
    out = []
    for _, row in res.iterrows():
        out.append({c for c in cols for method in ("jensen_shannon", "chi2", "kolmogorov_smirnov")
                    if (c, method, "alert") in row.index and bool(row[(c, method, "alert")])})
    return out[: len(windows)]


def run_stream(kind: str, window: int, reference: str, shift: dict[str, Any] | None, n_after: int,
               seed: int, peer_windows: int = 0) -> tuple[int | None, int, dict[str, tuple[int | None, int]]]:
    """(delay in events of the first firing alert on f after the change, false alerts) of one stream, and the
    same for each peer on its first ``peer_windows`` windows."""
    rng = np.random.default_rng(seed)
    cfg = parse_config({"models": {"m": model_cfg(kind, window, reference)}})
    refs = {}
    if reference == "file":
        past = events(kind, REF, np.random.default_rng(seed + 10_000), -REF, {})
        m = cfg.models["m"]
        refs["m"] = build_reference(past, "m", m.features.numeric, m.features.categorical, "none", False,
                                    m.drift.bins, m.drift.max_categories, m.drift.max_known_categories,
                                    m.drift.sample_size, segment_keys=m.segments.keys, top_n=m.segments.top_n)
    mon = Monitor(cfg, refs)
    warm = 0 if reference == "file" else REF
    peer_events: list[dict] = []
    ref_events: list[dict] = []
    if warm:
        ref_events = events(kind, warm, rng, 0, {})
        mon.process(ref_events)
    false_alerts, delay = 0, None
    batch = max(window, 1000)
    for at in range(0, n_after, batch):
        evs = events(kind, min(batch, n_after - at), rng, warm + at, shift or {})
        if len(peer_events) < peer_windows * window:
            peer_events += evs[: peer_windows * window - len(peer_events)]
        out = mon.process(evs)
        for a in out.alerts:
            if a.status != "firing":
                continue
            on_f = any(f["feature"] == "f" for f in a.features)
            if kind == "segmented" and shift is not None and on_f and a.segment != TARGET:
                # the model's whole traffic and the channel slices hold the shifted region's events too: their
                # alerts on f are true, but only an alert naming the slice counts as its detection
                if a.segment is None or a.segment["key"] != TARGET["key"]:
                    continue
            if shift is None or not on_f or (kind == "segmented" and a.segment != TARGET):
                false_alerts += 1
            elif delay is None:
                delay = int(a.window["end"] - (1.7e9 + warm)) + 1
    peers: dict[str, tuple[int | None, int]] = {}
    if peer_windows and ref_events:
        ref = frame(ref_events)
        wins = [frame(peer_events[i:i + window]) for i in range(0, len(peer_events), window)]
        for name, flags in (("evidently", evidently_flags(ref, wins)), ("nannyml", nannyml_flags(ref, wins, window))):
            first = next((i for i, f in enumerate(flags) if "f" in f), None)
            if shift is None:
                peers[name] = (None, sum(len(f) for f in flags))
            else:
                peers[name] = (None if first is None else (first + 1) * window,
                               sum(len(f - {"f"}) for f in flags))
    return delay, false_alerts, peers


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument("--null-events", type=int, default=200_000)
    ap.add_argument("--shift-windows", type=int, default=10, help="windows after the change, per shift run")
    ap.add_argument("--windows", default="100,1000,10000")
    ap.add_argument("--peers", action="store_true", help="also run Evidently and NannyML on the same windows")
    ap.add_argument("--peer-windows", type=int, default=20, help="windows per stream the peers evaluate")
    ap.add_argument("--peer-seeds", type=int, default=5)
    ap.add_argument("--scenarios", default="", help="only scenarios whose name contains one of these "
                    "comma-separated words (e.g. 'segment,slice')")
    args = ap.parse_args()
    wanted = [w.strip() for w in args.scenarios.split(",") if w.strip()]
    if args.peers:
        import warnings

        # the peers phone home (usage analytics); this machine has no route out, and a bench should not anyway
        for var in ("DO_NOT_TRACK", "EVIDENTLY_DISABLE_TELEMETRY", "NML_DISABLE_USAGE_LOGGING"):
            os.environ[var] = "1"

        warnings.filterwarnings("ignore")
        import logging

        logging.disable(logging.WARNING)
    started = time.perf_counter()
    cols = ["stream-monitor"] + (["evidently", "nannyml"] if args.peers else [])
    for window in (int(w) for w in args.windows.split(",")):
        print(f"\nwindow {window:,}   (each: detected/seeds, median delay in events, false alerts per 10^6 events)")
        print(f"{'scenario':28s} {'ref':7s} " + " ".join(f"{c:>32s}" for c in cols))
        for name, kind, shift in SCENARIOS:
            if wanted and not any(w in name for w in wanted):
                continue
            refs: tuple[str, ...] = ("file", "warmup", "rolling", "calendar") if shift is None else ("warmup",)
            if kind == "segmented" and shift is None:  # slices need their own part of a file or warm-up reference
                refs = ("file", "warmup")
            for reference in refs:
                seeds = 1 if shift is None else args.seeds
                res: dict[str, list] = {c: [[], 0, 0] for c in cols}  # delays, false alerts, events
                for s in range(seeds):
                    n_after = args.null_events if shift is None else max(args.shift_windows * window, 10_000)
                    peer_w = args.peer_windows if args.peers and reference == "warmup" and s < args.peer_seeds else 0
                    delay, false_alerts, peers = run_stream(kind, window, reference, shift, n_after,
                                                            1000 * window + s, peer_w)
                    for c, (d, fa, n) in [("stream-monitor", (delay, false_alerts, n_after))] + [
                            (p, (d2, fa2, peer_w * window)) for p, (d2, fa2) in peers.items()]:
                        res[c][0].append(d)
                        res[c][1] += fa
                        res[c][2] += n
                cells = []
                for c in cols:
                    delays, fa, n = res[c]
                    if not n:
                        cells.append(f"{'n/a':>32s}")
                        continue
                    hits = [d for d in delays if d is not None]
                    det = "-" if shift is None else f"{len(hits)}/{len(delays)}"
                    med = "-" if not hits else f"{int(np.median(hits)):,}"
                    cells.append(f"{det:>7s} {med:>10s} {fa / n * 1e6:12.1f}")
                print(f"{name:28s} {reference:7s} " + " ".join(f"{c:>32s}" for c in cells), flush=True)
    print(f"\n{time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
