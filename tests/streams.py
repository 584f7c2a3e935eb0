"""Seeded synthetic prediction streams shared by the unit and integration tests."""

from __future__ import annotations

from typing import Any

import numpy as np

NUMERIC = ("a", "b", "c", "d")
CATEGORICAL = ("k", "region")
CATS = ("x", "y", "z", "w")
REGIONS = ("north", "south", "east", "west")


def make_events(n: int, rng: np.random.Generator, *, t0: float = 1.7e9, dt: float = 1.0, start: int = 0,
                model: str = "m", a_mean: float | np.ndarray = 0.0, b_sd: float = 1.0,
                k_p: tuple[float, ...] = (0.4, 0.3, 0.2, 0.1), k_cats: tuple[str, ...] = CATS,
                missing_c: float = 0.0) -> list[dict[str, Any]]:
    a = rng.normal(a_mean, 1.0, n)
    b = rng.normal(0.0, b_sd, n)
    c = rng.exponential(2.0, n)
    d = rng.integers(0, 20, n)
    k = rng.choice(k_cats, n, p=k_p)
    region = rng.choice(REGIONS, n)
    miss = rng.random(n) < missing_c
    score = rng.random(n)
    return [
        {
            "event_id": f"{model}-{start + i}", "model": model, "model_version": "v1",
            "timestamp": t0 + (start + i) * dt,
            "features": {"a": float(a[i]), "b": float(b[i]), "c": None if miss[i] else float(c[i]),
                         "d": int(d[i]), "k": str(k[i]), "region": str(region[i])},
            "prediction": "yes" if score[i] > 0.5 else "no", "score": float(score[i]),
        }
        for i in range(n)
    ]


def model_config(**over: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"features": {"numeric": list(NUMERIC), "categorical": list(CATEGORICAL)},
                            "window": {"size": 1000}, "reference": {"size": 5000}}
    base.update(over)
    return base


def make_wide_events(n: int, rng: np.random.Generator, *, features: int = 20, shift: float = 0.0,
                     start: int = 0, t0: float = 1.7e9, model: str = "wide") -> list[dict[str, Any]]:
    x = rng.normal(shift, 1.0, (n, features))
    return [{"event_id": f"{model}-{start + i}", "model": model, "model_version": "v1", "timestamp": t0 + start + i,
             "features": {f"f{j}": float(x[i, j]) for j in range(features)}, "prediction": 1.0, "score": 0.5}
            for i in range(n)]


def labeled_stream(n: int, rng: np.random.Generator, *, start: int = 0, t0: float = 1.7e9, dt: float = 0.5,
                   flip: bool = False, lag_mean_s: float = 120.0, missing: float = 0.1, model: str = "clf",
                   latency_ms: float = 20.0) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """A calibrated binary classifier: label ~ Bernoulli(score). With ``flip`` the outcome relation is
    reversed (label ~ Bernoulli(1 - score)) while the inputs keep their distribution. Labels arrive
    ``Exp(lag_mean_s)`` seconds after their prediction (event time); a share ``missing`` never arrives."""
    x = rng.normal(0.0, 1.0, n)
    z = rng.normal(0.0, 1.0, n)
    score = 1 / (1 + np.exp(-2.0 * x))
    outcome = rng.random(n) < (1 - score if flip else score)
    lag = rng.exponential(lag_mean_s, n)
    keep = rng.random(n) >= missing
    lat = rng.gamma(4.0, latency_ms / 4.0, n)
    preds, labels = [], []
    for i in range(n):
        t = t0 + (start + i) * dt
        eid = f"{model}-{start + i}"
        preds.append({"event_id": eid, "model": model, "model_version": "v1", "timestamp": t,
                      "features": {"x": float(x[i]), "z": float(z[i])},
                      "prediction": "1" if score[i] >= 0.5 else "0", "score": float(score[i]),
                      "latency_ms": float(lat[i])})
        if keep[i]:
            labels.append({"event_id": eid, "model": model, "label": int(outcome[i]), "timestamp": t + float(lag[i])})
    return preds, labels


def classifier_config(**over: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "features": {"numeric": ["x", "z"]},
        "window": {"by": "time", "size": 600},
        "reference": {"size": 1000},
        "performance": {"task": "binary", "positive_label": "1", "window_s": 600, "maturity_s": 1800,
                        "min_labels": 50},
    }
    base.update(over)
    return base


#: Slices of the segmented stream: each region has its own baseline (slices that merely differ from one another
#: must not alert), and a share of the traffic.
SEGMENT_REGIONS = {"eu": (0.20, 1.0), "us": (0.40, 0.0), "apac": (0.25, -0.5), "latam": (0.15, 0.5)}
SEGMENT_CHANNELS = {"app": 0.5, "web": 0.3, "partner": 0.2}


def make_segmented_events(n: int, rng: np.random.Generator, *, start: int = 0, t0: float = 1.7e9,
                          dt: float = 1.0, model: str = "seg", shifted: str | None = None,
                          shift: float = 0.0) -> list[dict[str, Any]]:
    """Events carrying ``segment: {"region", "channel"}``; feature ``a`` has a per-region mean, ``k`` a
    per-channel mix. With ``shifted``, region ``shifted``'s ``a`` moves by ``shift`` sd (the rest stays)."""
    regions = list(SEGMENT_REGIONS)
    region = rng.choice(len(regions), n, p=[p for p, _ in SEGMENT_REGIONS.values()])
    channels = list(SEGMENT_CHANNELS)
    channel = rng.choice(len(channels), n, p=list(SEGMENT_CHANNELS.values()))
    base = np.array([m for _, m in SEGMENT_REGIONS.values()])[region]
    if shifted is not None:
        base = base + np.where(region == regions.index(shifted), shift, 0.0)
    a = rng.normal(base, 1.0)
    b = rng.exponential(1.0 + 0.5 * channel)
    k = np.where(channel == 0, rng.choice(["x", "y", "z"], n, p=[0.6, 0.3, 0.1]),
                 rng.choice(["x", "y", "z"], n, p=[0.3, 0.4, 0.3]))
    return [
        {"event_id": f"{model}-{start + i}", "model": model, "model_version": "v1",
         "timestamp": t0 + (start + i) * dt,
         "features": {"a": float(a[i]), "b": float(b[i]), "k": str(k[i])},
         "prediction": float(a[i] > 0), "segment": {"region": regions[region[i]], "channel": channels[channel[i]]}}
        for i in range(n)
    ]


def segmented_config(**over: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"features": {"numeric": ["a", "b"], "categorical": ["k"]}, "prediction": "none",
                            "monitor_score": False, "window": {"size": 1000}, "reference": {"size": 5000},
                            "segments": {"keys": ["region", "channel"], "top_n": 5}}
    base.update(over)
    return base


def every_kind_config() -> dict[str, Any]:
    """Models that between them write every kind of state record (see ``stream_monitor.core.state.KINDS``):
    labels, performance and concept drift; warm-up with evidence; rolling and calendar references; segments;
    one model still warming up."""
    return {
        "clf": classifier_config(concept_drift=[{"type": "adwin"}]),
        "roll": model_config(window={"size": 500}, reference={"type": "rolling", "windows": 2, "size": 1000}),
        "cal": model_config(window={"by": "time", "size": 600},
                            reference={"type": "calendar", "period_s": 3600, "slot_s": 600, "periods": 2,
                                       "size": 1000, "min_events": 100}),
        "seg": segmented_config(reference={"size": 1000}),
        "warm": model_config(reference={"size": 100_000}),
    }


def every_kind_stream(rng: np.random.Generator, n: int = 3000) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Predictions and labels for :func:`every_kind_config`'s models, interleaved by event time."""
    preds, labels = labeled_stream(n, rng)
    for name in ("roll", "cal", "warm"):
        preds += make_events(n, rng, model=name)
    preds += make_segmented_events(n, rng)
    preds.sort(key=lambda e: (e["timestamp"], e["event_id"]))
    labels.sort(key=lambda e: (e["timestamp"], e["event_id"]))
    return preds, labels
