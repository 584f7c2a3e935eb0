"""One model's delayed ground truth: the label join, performance windows, concept-drift detectors, and the
joined pairs waiting for the label frontier. No Kafka here.

:class:`LabelTracker` is the part of a model's monitor (:class:`~.monitor.ModelMonitor`) that works on labels.
It owns the state record kinds of that side (``perf``, ``held`` and the ``join`` changelog, see
:mod:`.state`) and its part of the model's ``core`` record (``join``, ``performance``, ``concept``,
``label_clock``).

**Determinism.** Its outputs advance record by record, in event time (:meth:`LabelTracker.outputs`): a pair is
released once the label frontier passes the time it completes, in the order pairs complete, and a window
matures before the first pair that completes after its deadline; the join pairs a label and a prediction when
they are at most ``ttl_s`` apart in event time. So what a window holds, the order the detectors see the pairs
in, and the estimate's calibration are functions of the records, not of how they were batched, replayed or
interrupted.

In scale-out mode the pane builders join and send pairs with their partitions' label watermarks; the tracker of
the deciding task merges them (:meth:`LabelTracker.add_piece`) and its frontier is the slowest active partition.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from ..config import ModelConfig
from .concept import ConceptDriftDetectors
from .drift import Finding
from .keys import event_keys
from .labels import JoinedPair, LabelJoin, PerformanceTracker, PredictionCounts, pairs_from_rows, pairs_plain
from .state import RecordKey, parts_of
from .windows import SourceWatermarks

__all__ = ["LabelTracker"]

#: A label-side decision, in event-time order: ("detection", pair, [finding]) or ("report", report, findings).
LabelOutput = tuple[str, Any, list[Finding]]


class LabelTracker:
    """The label side of one model.

    Parameters
    ----------
    cfg
        The model's validated config (its ``performance``, ``join`` and ``concept_drift``).
    merged_idle_s
        Scale-out mode: pairs come from the pane builders (:meth:`add_piece`), not from a join of our own; a
        partition silent this long holds the frontier back no more.
    sources
        Scale-out mode: how many prediction partitions may carry the model.
    """

    def __init__(self, cfg: ModelConfig, merged_idle_s: float | None = None, sources: int = 1) -> None:
        self.cfg = cfg
        self.merged_idle_s = merged_idle_s
        self.sources = sources
        self._reset()

    def _reset(self) -> None:
        cfg = self.cfg
        self.join = LabelJoin(cfg.join) if self.merged_idle_s is None else None
        self.clock = SourceWatermarks(self.sources, self.merged_idle_s or 0.0)  # scale-out: the frontier
        self.performance = PerformanceTracker(cfg.name, cfg.performance, cfg.join.sample_rate)
        self.concept = ConceptDriftDetectors(cfg.concept_drift, cfg.performance.task) if cfg.concept_drift else None
        self._held: list[JoinedPair] = []  # joined, waiting for the frontier (see outputs)
        self._held_stamp = 0

    def observe_predictions(self, events: list[dict[str, Any]], keys: np.ndarray) -> None:
        """Every prediction (before drift sampling) inside ``join.sample_rate`` enters the label join and the
        performance windows."""
        if self.join is not None:
            events, keys = self.join.sample(events, keys, "p")
            self.performance.add_predictions(events)
            self._add_pairs(self.join.add_predictions(events, keys, expire=False))  # labels that arrived first

    def update_labels(self, events: list[dict[str, Any]]) -> None:
        """Add decoded label events of this model: outside ``join.sample_rate`` they are counted and dropped
        without a lookup; a label that carries its prediction is a pair at once (and its prediction counts in
        its performance window)."""
        if self.join is None:
            return
        events, keys = self.join.sample(events, event_keys([e["event_id"] for e in events]), "l")
        pairs = self.join.add_labels(events, keys, expire=False)
        carried = [p for p in pairs if p.carried]
        if carried:
            self.performance.add_predictions([{"timestamp": p.prediction_time, "prediction": p.prediction,
                                               "score": p.score} for p in carried])
        self._add_pairs(pairs)

    def add_piece(self, counts: dict[int, PredictionCounts], pairs: list[JoinedPair], source: int, at: float,
                  label_wm: float | None) -> None:
        """Scale-out: a pane record's prediction counts and joined pairs, and its partition's label watermark."""
        self.performance.add_prediction_counts(counts)
        self._add_pairs(pairs)
        self.clock.advance(source, at, label_wm)

    def _add_pairs(self, pairs: list[JoinedPair]) -> None:
        """Joined pairs wait until the label frontier passes the time they complete (:meth:`outputs`)."""
        if pairs:
            self._held.extend(pairs)
            self._held_stamp += 1

    def _detection(self, i: int, pair: JoinedPair) -> Finding:
        """A concept-drift detector fired on ``pair``: a finding to alert on now (not at maturity)."""
        return Finding(None, "concept_drift", self.cfg.concept_drift[i].type, 2.0, 1.0, True, None, 1,
                       {"detected_at_prediction_time": pair.prediction_time, "event_id": pair.event_id,
                        "label_time": pair.label_time}, consecutive=1, severity="critical")

    @property
    def frontier(self) -> float:
        """Event time up to which both label-side streams have been read (see :mod:`.labels`)."""
        return self.clock.low() if self.join is None else self.join.maturity_watermark

    def outputs(self) -> list[tuple[str, Any, list[Finding]]]:
        """What the label side decided since the last call, in event-time order: ``("detection", pair,
        [finding])`` for a concept-drift detector that fired, ``("report", report, findings)`` for a performance
        window that matured.

        Record by record, not batch by batch: the joined pairs that complete at or before the label frontier
        are released in the order of the time they complete (then of their event key), and a window matures
        before the first pair that completes after its end + ``maturity_s``. So a window holds exactly the
        pairs that completed by its deadline, and the detectors and the estimate's calibration see the pairs in
        one order, however the streams were cut into batches, replayed or restarted."""
        if self.join is not None:  # once the batch's predictions and labels are both in: a label read with
            self.join.expire()     # the prediction stream's next step still joins (see LabelJoin._within_ttl)
        frontier = self.frontier
        ready = [p for p in self._held if p.completed <= frontier]
        if not ready:
            return self._matured(frontier)
        self._held = [p for p in self._held if p.completed > frontier]
        self._held_stamp += 1
        keys = event_keys([p.event_id for p in ready]).tolist()
        order = sorted(range(len(ready)), key=lambda i: (ready[i].completed, keys[i], ready[i].event_id))
        ready = [ready[i] for i in order]
        keys = [keys[i] for i in order]
        done = np.array([p.completed for p in ready])
        out: list[tuple[str, Any, list[Finding]]] = []
        i = 0
        while i < len(ready):
            out += self._matured(float(np.nextafter(done[i], -np.inf)))  # deadlines before this pair
            j = max(i + 1, int(np.searchsorted(done, self.performance.next_deadline(), side="right")))
            chunk = ready[i:j]
            self.performance.add_pairs(chunk, keys[i:j])
            if self.concept is not None:
                for k, pair in self.concept.update(chunk):
                    out.append(("detection", pair, [self._detection(k, pair)]))
            i = j
        return out + self._matured(frontier)

    def _matured(self, watermark: float) -> list[tuple[str, Any, list[Finding]]]:
        """Performance windows whose deadline is at or before ``watermark``, each with its findings."""
        perf = self.cfg.performance
        out: list[tuple[str, Any, list[Finding]]] = []
        for rep in self.performance.mature(watermark):
            findings = []
            for metric, bound in perf.thresholds.items():
                v = rep.metrics.get(metric)
                if v is None or v != v:  # not computed (too few labels) or undefined
                    continue
                lo, hi = rep.interval.get(metric, [v, v])  # sampling error: the whole interval must be beyond
                low = bound.min is not None and hi < bound.min
                high = bound.max is not None and lo > bound.max
                thr = bound.min if bound.min is not None and (v < bound.min or bound.max is None) else bound.max
                findings.append(Finding(None, "performance", metric, v, float(thr), bool(low or high), None,
                                        rep.labeled, {"estimated": rep.estimated, "coverage": rep.coverage,
                                                      "interval": [lo, hi], "confidence": perf.confidence}))
            if perf.min_coverage is not None and rep.predictions:
                findings.append(Finding(None, "label_coverage", "coverage", rep.coverage, perf.min_coverage,
                                        rep.coverage < perf.min_coverage, None, rep.predictions,
                                        {"lag_p50_s": rep.lag_p50_s, "lag_p95_s": rep.lag_p95_s},
                                        severity=None))
            if self.concept is not None:
                for dcfg, (name, drifts, warnings) in zip(self.cfg.concept_drift, self.concept.take()):
                    level = 2.0 if drifts else (1.0 if warnings else 0.0)
                    pages = drifts > 0 or (warnings > 0 and dcfg.page_warnings)  # warnings are reported
                    findings.append(Finding(None, "concept_drift", name, level, 1.0, pages, None, rep.labeled,
                                            {"drifts": drifts, "warnings": warnings}, consecutive=1,
                                            severity="critical" if drifts else "warning"))
            out.append(("report", rep, findings))
        return out

    # -- checkpoints ---------------------------------------------------------------------------------------
    def pieces(self) -> Iterator[tuple[RecordKey, Any, Callable[[], Any]]]:
        """Its state records (see :meth:`.monitor.ModelMonitor._pieces`): the pair samples, the held pairs."""
        model = self.cfg.name
        for w, stamp, make in self.performance.pieces():
            yield RecordKey(model, "perf", w), stamp, make
        if self._held:
            yield RecordKey(model, "held"), self._held_stamp, lambda: pairs_plain(self._held)

    def take_changes(self) -> dict[RecordKey, Any]:
        """The join changelog's records written or deleted since the last call."""
        if self.join is None:
            return {}
        return {RecordKey(self.cfg.name, "join", part): entry for part, entry in self.join.take_changes().items()}

    def forget(self, join_parts: list[str]) -> None:
        """Delete join changelog records this tracker does not hold (a checkpoint it could not use)."""
        if self.join is not None:
            self.join.forget(join_parts)

    def snapshot(self) -> dict[str, Any]:
        """Its part of the model's core record."""
        return {
            "join": self.join.snapshot() if self.join is not None else None,
            "performance": self.performance.snapshot(),
            "concept": self.concept.snapshot() if self.concept is not None else None,
            "label_clock": self.clock.snapshot() if self.merged_idle_s is not None else None,
        }

    def restore(self, core: dict[str, Any], records: dict[RecordKey, Any]) -> None:
        """Rebuild from the core record and this model's records (raises ``ValueError`` ... when malformed)."""
        if self.join is not None and core.get("join") is not None:
            self.join.restore(core["join"], parts_of(records, "join", live=False))
        if core.get("performance") is not None:
            self.performance.restore(core["performance"], parts_of(records, "perf"))
            self._held = pairs_from_rows(records.get(RecordKey(self.cfg.name, "held")) or [])
        if self.concept is not None and core.get("concept") is not None:
            self.concept.restore(core["concept"])
        if self.merged_idle_s is not None and core.get("label_clock") is not None:
            self.clock.restore(core["label_clock"])
