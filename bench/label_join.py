"""Label join stores: the compact store (arrays + hash index + segmented changelog) against the dict store it
replaced, same run, same events.

For each store: bytes per pending prediction (tracemalloc of the store's allocations, numpy included, once
``--n`` predictions wait for their labels), adds/s (predictions stored, batches of 5,000), joins/s (labels
joined to them), and the restore time per million entries (the changelog records as the topic carries them:
JSON bytes, decoded and rebuilt as at start-up; Kafka's own fetch time is not included). Then the compact store
alone at ``--scale`` pending entries (arrays fed directly), for bytes per entry and restore time at that size.

    python bench/label_join.py [--n 1000000] [--scale 20000000]
"""

from __future__ import annotations

import argparse
import gc
import itertools
import math
import os
import sys
import time
import tracemalloc
from collections import OrderedDict
from typing import Any

import numpy as np
import orjson

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from stream_monitor.config import JoinConfig  # noqa: E402
from stream_monitor.core.labels import JoinCounters, JoinedPair, LabelJoin  # noqa: E402
from stream_monitor.core.pending import EntryStore  # noqa: E402

BATCH = 5000


def _fin(x: float) -> float | None:
    return x if math.isfinite(x) else None


def _unfin(x: float | None) -> float:
    return -math.inf if x is None else float(x)


class DictJoin:
    """The join this store replaced (stream_monitor 0.x before issue 14): dicts of entries, one changelog
    record per entry. Kept verbatim as the baseline."""

    FORMAT = 1

    def __init__(self, cfg: JoinConfig) -> None:
        self.cfg = cfg
        self._reset()

    def _reset(self) -> None:
        # insertion order is arrival order: the first entries are the oldest, for TTL and size eviction;
        # every entry carries its arrival sequence number (the changelog keeps it, so order survives restores)
        self._predictions: OrderedDict[str, tuple[float, Any, float | None, int]] = OrderedDict()
        self._labels: OrderedDict[str, tuple[float, Any, int]] = OrderedDict()
        self._joined: OrderedDict[str, int] = OrderedDict()
        self._seq = itertools.count()
        self.counters = JoinCounters()
        self.prediction_watermark = -math.inf  # largest prediction event time seen
        self.label_watermark = -math.inf  # largest label event time seen
        # changelog since take_changes(): key ("p/<id>", "l/<id>", "j/<id>") -> entry, None when removed
        self._changes: dict[str, dict[str, Any] | None] = {}

    def forget(self, keys: list[str]) -> None:
        """Delete changelog entries this store does not hold (a checkpoint it could not use)."""
        self._changes.update({k: None for k in keys})

    def take_changes(self) -> dict[str, dict[str, Any] | None]:
        """Entries stored or removed since the last call, for the compacted join changelog."""
        out, self._changes = self._changes, {}
        return out

    def snapshot(self) -> dict[str, Any]:
        """Watermarks, counters and the sequence position (the entries themselves live in the changelog)."""
        return {"v": self.FORMAT, "prediction_watermark": _fin(self.prediction_watermark),
                "label_watermark": _fin(self.label_watermark), "counters": dict(self.counters.__dict__),
                "pending": self.pending, "joined_ids": len(self._joined)}

    def restore(self, meta: dict[str, Any] | None, entries: dict[str, dict[str, Any]]) -> DictJoin:
        """Rebuild the store from the changelog's latest entries (and the snapshot's watermarks).

        Raises ``ValueError`` when the entries do not match the snapshot (the store is left empty then).
        """
        self._reset()
        preds, labels, joined = [], [], []
        for k, v in entries.items():
            side, _, eid = k.partition("/")
            if side == "p":
                preds.append((int(v["n"]), eid, float(v["t"]), v["prediction"], v.get("score")))
            elif side == "l":
                labels.append((int(v["n"]), eid, float(v["t"]), v["label"]))
            elif side == "j":
                joined.append((int(v["n"]), eid))
        top = -1
        for n, eid, t, pred, score in sorted(preds):  # arrival order: eviction order survives the restart
            self._predictions[eid] = (t, pred, None if score is None else float(score), n)
            top = max(top, n)
        for n, eid, t, label in sorted(labels):
            self._labels[eid] = (t, label, n)
            top = max(top, n)
        for n, eid in sorted(joined):
            self._joined[eid] = n
            top = max(top, n)
        self._seq = itertools.count(top + 1)
        if meta:
            if meta.get("v") != self.FORMAT:
                raise ValueError(f"join snapshot version {meta.get('v')!r} is not supported")
            self.prediction_watermark = _unfin(meta.get("prediction_watermark"))
            self.label_watermark = _unfin(meta.get("label_watermark"))
            self.counters = JoinCounters(**{k: int(v) for k, v in meta.get("counters", {}).items()})
            if meta.get("pending") != self.pending or meta.get("joined_ids") != len(self._joined):
                found = (self.pending, len(self._joined))
                self._reset()
                raise ValueError(f"join changelog holds {found[0]} pending and {found[1]} joined ids, the "
                                 f"checkpoint says {meta.get('pending')} and {meta.get('joined_ids')}")
        return self

    @property
    def watermark(self) -> float:
        return max(self.prediction_watermark, self.label_watermark)

    @property
    def maturity_watermark(self) -> float:
        """Event time up to which both streams have been read: the slower one, at most ``label_stall_s`` behind."""
        both = min(self.prediction_watermark, self.label_watermark)
        return max(both, self.prediction_watermark - self.cfg.label_stall_s)

    @property
    def pending(self) -> int:
        return len(self._predictions) + len(self._labels)

    def add_predictions(self, events: list[dict[str, Any]]) -> list[JoinedPair]:
        out = []
        for ev in events:
            eid = ev["event_id"]
            if eid in self._predictions or eid in self._joined:
                self.counters.duplicate_predictions += 1
                continue
            t = ev["timestamp"]
            self.prediction_watermark = max(self.prediction_watermark, t)
            early = self._labels.pop(eid, None)
            if early is not None:
                self._changes["l/" + eid] = None
                out.append(self._join(eid, t, ev["prediction"], ev.get("score"), early[0], early[1]))
            else:
                n = next(self._seq)
                self._predictions[eid] = (t, ev["prediction"], ev.get("score"), n)
                self._changes["p/" + eid] = {"t": t, "prediction": ev["prediction"], "score": ev.get("score"), "n": n}
        self._expire()
        return out

    def add_labels(self, events: list[dict[str, Any]]) -> list[JoinedPair]:
        out = []
        for ev in events:
            eid = ev["event_id"]
            t = ev["timestamp"]
            self.label_watermark = max(self.label_watermark, t)
            if eid in self._joined or eid in self._labels:
                self.counters.duplicate_labels += 1
                continue
            pred = self._predictions.pop(eid, None)
            if pred is not None:
                self._changes["p/" + eid] = None
                out.append(self._join(eid, pred[0], pred[1], pred[2], t, ev["label"]))
            else:
                n = next(self._seq)
                self._labels[eid] = (t, ev["label"], n)
                self._changes["l/" + eid] = {"t": t, "label": ev["label"], "n": n}
        self._expire()
        return out

    def _join(self, eid: str, tp: float, pred: Any, score: float | None, tl: float, label: Any) -> JoinedPair:
        self.counters.joined += 1
        n = next(self._seq)
        self._joined[eid] = n
        self._changes["j/" + eid] = {"n": n}
        if len(self._joined) > self.cfg.max_joined_ids:
            old, _ = self._joined.popitem(last=False)
            self._changes["j/" + old] = None
        return JoinedPair(eid, tp, tl, pred, score, label)

    def _expire(self) -> None:
        horizon = self.watermark - self.cfg.ttl_s
        while self._predictions:
            eid, entry = next(iter(self._predictions.items()))
            if entry[0] >= horizon:
                break
            del self._predictions[eid]
            self._changes["p/" + eid] = None
            self.counters.expired_predictions += 1
        while self._labels:
            eid, lentry = next(iter(self._labels.items()))
            if lentry[0] >= horizon:
                break
            del self._labels[eid]
            self._changes["l/" + eid] = None
            self.counters.expired_labels += 1
        while self.pending > self.cfg.max_pending:
            side = "p/" if len(self._predictions) >= len(self._labels) else "l/"
            store: OrderedDict[str, Any] = self._predictions if side == "p/" else self._labels
            eid, _ = store.popitem(last=False)
            self._changes[side + eid] = None
            self.counters.evicted += 1




def events(n: int, rng: np.random.Generator) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    score = rng.random(n)
    preds = [{"event_id": f"loan-{i:012d}", "model": "m", "model_version": "v1", "timestamp": 1.7e9 + i * 0.01,
              "features": {}, "prediction": "1" if s >= 0.5 else "0", "score": float(s)}
             for i, s in enumerate(score.tolist())]
    outcome = (rng.random(n) < score).astype(int).tolist()
    labels = [{"event_id": p["event_id"], "model": "m", "label": y, "timestamp": p["timestamp"] + 86400.0}
              for p, y in zip(preds, outcome)]
    return preds, labels


def build(make: Any, preds: list[dict[str, Any]]) -> tuple[Any, float]:
    join = make()
    start = time.perf_counter()
    for i in range(0, len(preds), BATCH):
        join.add_predictions(preds[i:i + BATCH])
    return join, time.perf_counter() - start


def measure(name: str, make: Any, preds: list[dict[str, Any]], labels: list[dict[str, Any]]) -> dict[str, float]:
    n = len(preds)
    gc.collect()
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    join = make()
    for i in range(0, n, BATCH):
        join.add_predictions(preds[i:i + BATCH])
    per_entry = (tracemalloc.get_traced_memory()[0] - base) / join.pending
    tracemalloc.stop()
    del join
    gc.collect()
    join, add_s = build(make, preds)
    # the changelog as the topic carries it (latest value per key), and the snapshot
    records = {k: orjson.dumps(v) for k, v in join.take_changes().items() if v is not None}
    meta = orjson.loads(orjson.dumps(join.snapshot()))
    start = time.perf_counter()
    again = make().restore(meta, {k: orjson.loads(v) for k, v in records.items()})
    restore_s = time.perf_counter() - start
    assert again.pending == n
    del again
    start = time.perf_counter()
    joined = 0
    for i in range(0, n, BATCH):
        joined += len(join.add_labels(labels[i:i + BATCH]))
    join_s = time.perf_counter() - start
    assert joined == n
    out = {"bytes": per_entry, "adds": n / add_s, "joins": n / join_s, "restore": restore_s / n * 1e6,
           "records": len(records), "mb": sum(map(len, records.values())) / 1e6}
    print(f"{name:<14} {out['bytes']:>8.1f} B/entry  {out['adds']:>11,.0f} adds/s  {out['joins']:>11,.0f} joins/s  "
          f"restore {out['restore']:>6.2f} s per 1M  ({out['records']:,} changelog records, {out['mb']:,.0f} MB)")
    return out


def scale(n: int, rng: np.random.Generator) -> None:
    """The compact store alone with ``n`` pending predictions (arrays fed directly, 100,000 a batch)."""
    gc.collect()
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    store = EntryStore()
    step = 100_000
    start = time.perf_counter()
    for a in range(0, n, step):
        m = min(step, n - a)
        keys = rng.integers(1, 2 ** 63, m, dtype=np.uint64)
        store.add(keys, np.full(m, 1.7e9 + a), rng.integers(0, 2, m).astype(np.float32),
                  rng.random(m).astype(np.float32))
    add_s = time.perf_counter() - start
    per_entry = (tracemalloc.get_traced_memory()[0] - base) / store.live
    tracemalloc.stop()
    records = {k: orjson.dumps(v) for k, v in store.take_changes().items()}
    meta = store.meta()
    del store
    gc.collect()
    start = time.perf_counter()
    again, _ = EntryStore().restore(meta, {k: orjson.loads(v) for k, v in records.items()})
    restore_s = time.perf_counter() - start
    assert again.live == n
    print(f"compact store at {n:,} pending: {per_entry:.1f} B/entry (arrays and index {again.nbytes / n:.1f} B "
          f"after restore), {n / add_s:,.0f} adds/s, restore {restore_s:.2f} s ({n / restore_s:,.0f} entries/s) "
          f"from {len(records):,} records of {max(map(len, records.values())) / 1e3:,.0f} kB at most")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1_000_000, help="pending predictions for the side-by-side run")
    ap.add_argument("--scale", type=int, default=20_000_000, help="pending entries for the compact store alone")
    args = ap.parse_args()
    rng = np.random.default_rng(14)
    preds, labels = events(args.n, rng)
    cfg = JoinConfig(max_pending=10 * args.n, max_joined_ids=10 * args.n)
    print(f"{args.n:,} predictions waiting for labels, then joined (batches of {BATCH:,})")
    new = measure("compact store", lambda: LabelJoin(cfg), preds, labels)
    old = measure("dict store", lambda: DictJoin(cfg), preds, labels)
    print(f"compact vs dict: {old['bytes'] / new['bytes']:.1f}x less memory, adds {new['adds'] / old['adds']:.1f}x, "
          f"joins {new['joins'] / old['joins']:.1f}x, restore {old['restore'] / new['restore']:.1f}x faster")
    del preds, labels
    if args.scale:
        scale(args.scale, rng)


if __name__ == "__main__":
    main()
