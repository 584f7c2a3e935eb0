"""The benchmark model and its events, shared by the throughput benchmarks.

A 30-feature model as production models look: 22 numeric features (20 continuous, a binary flag that is 1 for
about 5 % of events, an integer count with ties), 6 categorical features (5 with 12 levels, one long-tailed
with 200 levels), plus the prediction (a class) and its score, a latency and a model version; about 800 bytes
of JSON per event.
"""

from __future__ import annotations

import numpy as np

__all__ = ["CAT", "NUM", "make", "model_config"]

NUM = [f"x{i}" for i in range(20)] + ["flag", "count"]
CAT = [f"c{i}" for i in range(5)] + ["merchant"]
LEVELS = np.array([f"level-{i}" for i in range(12)])
MERCHANTS = np.array([f"merchant-{i:03d}" for i in range(200)])
_ZIPF = 1.0 / np.arange(1, 201) ** 1.1
_ZIPF /= _ZIPF.sum()


def make(n: int, rng: np.random.Generator, start: int) -> list[dict]:
    """``n`` prediction events of model ``bench`` with ids ``start`` .. ``start + n - 1``."""
    x = rng.normal(size=(n, 20))
    flag = (rng.random(n) < 0.05).astype(int)
    count = rng.poisson(3, n)
    c = LEVELS[rng.integers(0, len(LEVELS), size=(n, 5))]
    merchant = MERCHANTS[rng.choice(200, size=n, p=_ZIPF)]
    s = np.round(rng.random(n), 6)
    lat = np.round(rng.gamma(4, 5, n), 3)
    names = [f"x{i}" for i in range(20)]
    return [{"event_id": f"evt-{start + i:012d}", "model": "bench", "model_version": "v1",
             "timestamp": 1.7e9 + (start + i) * 0.01,
             "features": {**dict(zip(names, x[i].tolist())), "flag": int(flag[i]), "count": int(count[i]),
                          **dict(zip(CAT, c[i].tolist())), "merchant": str(merchant[i])},
             "prediction": "yes" if s[i] > 0.5 else "no", "score": float(s[i]), "latency_ms": float(lat[i])}
            for i in range(n)]


def model_config(window: int, reference: int = 5000) -> dict:
    return {"features": {"numeric": NUM, "categorical": CAT}, "window": {"size": window},
            "reference": {"size": reference}}
