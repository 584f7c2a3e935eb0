"""Evaluating a model's closed windows: against which reference, with what evidence, and what they find. No Kafka.

:class:`WindowEvaluator` is the part of a model's monitor (:class:`~.monitor.ModelMonitor`) that decides what a
closed window is compared with — the model's reference (file or warm-up), a rolling reference of its recent
windows or a calendar reference of the same slot in past periods — keeps the evidence history across windows,
runs the drift tests (:func:`~.drift.evaluate_windows`, every window of one update against one reference pane in
one set of array operations) and the latency SLA. It owns the ``r``, ``c`` and ``evidence`` state records and
the ``rolling`` and ``calendar`` parts of the model's ``core`` record (:mod:`.state`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np

from ..config import ModelConfig
from .alerts import WindowInfo
from .columns import PREDICTION, SCORE
from .drift import Finding, evaluate_windows
from .reference import CalendarReference, Reference, RollingReference
from .segments import SegmentedPane
from .sketches import LatencySketch, Pane
from .state import RecordKey, parts_of
from .windows import ClosedWindow, WindowHistory

__all__ = ["CALENDAR_SLOT_CAP", "WindowEvaluator", "WindowResult"]

#: Rows kept per calendar slot and cycle (slots * periods of them are kept per model).
CALENDAR_SLOT_CAP = 250

#: The columns that are the model's output, not its input (their drift is reported as prediction drift).
PREDICTION_FEATURES = frozenset({PREDICTION, SCORE})


class _Job(NamedTuple):
    """A closed window to evaluate, its bookkeeping done (:meth:`WindowEvaluator.evaluate`)."""

    at: int  # its position among the update's results
    window: ClosedWindow
    info: WindowInfo
    ref_id: str | None
    ref_pane: Pane
    evidence: dict[int, tuple[np.ndarray, np.ndarray]] | None
    slices: list[Any]
    segments: list[dict[str, Any]] | None


@dataclass(frozen=True)
class WindowResult:
    model: str
    model_version: str
    window: WindowInfo
    reference_id: str | None
    findings: list[Finding]
    skipped: str | None = None  # why the window was not evaluated
    latency_ms: dict[str, float] | None = None  # p50/p95/p99 when the events carry latency_ms
    # (reference pane, window pane) the findings compare, for reports that draw them; not published
    panes: tuple[Pane, Pane] | None = field(default=None, repr=False, compare=False)
    # per slice (segments configured): key, value, events in the window and in its reference, why not evaluated
    segments: list[dict[str, Any]] | None = None

    def to_dict(self) -> dict[str, Any]:
        """The window report published on the metrics topic (a slice's findings name their ``segment``)."""
        findings = [f.report_line() for f in self.findings]
        out = {"type": "drift", "model": self.model, "model_version": self.model_version,
               "window": self.window.__dict__, "reference_id": self.reference_id, "skipped": self.skipped,
               "latency_ms": self.latency_ms, "findings": findings}
        if self.segments is not None:
            out["segments"] = self.segments
        return out


class WindowEvaluator:
    """One model's window evaluation, from its reference on.

    Parameters
    ----------
    cfg
        The model's validated config.
    reference
        The model's reference (a file, or built from its warm-up).
    n_panes
        Panes per window (a rolling reference and the evidence history keep windows as panes).
    """

    def __init__(self, cfg: ModelConfig, reference: Reference, n_panes: int) -> None:
        self.cfg = cfg
        self.reference = reference
        cap = cfg.drift.sample_size
        self.history: WindowHistory | None = None
        self.rolling: RollingReference | None = None
        self.calendar: CalendarReference | None = None
        if cfg.drift.evidence_windows and cfg.reference.type in ("file", "warmup"):
            # (a rolling or calendar reference is made of recent or past windows: summing windows would test
            # data against itself)
            self.history = WindowHistory(cfg.drift.evidence_windows, n_panes)
        if cfg.reference.type == "rolling":
            self.rolling = RollingReference(cfg.reference.windows, n_panes, cap)
        elif cfg.reference.type == "calendar":
            self.calendar = CalendarReference(cfg.reference.period_s, cfg.reference.slot_s,
                                              cfg.reference.periods, min(cap, CALENDAR_SLOT_CAP))

    def evaluate(self, closed: list[ClosedWindow]) -> list[WindowResult]:
        """Evaluate the windows that closed in one update, in order: each one's bookkeeping (its reference, the
        rolling or calendar store, the evidence history) window by window, then the windows compared with the
        same reference pane evaluated together (:func:`~.drift.evaluate_windows`: the same findings as one by
        one, in one set of array operations)."""
        if not closed:
            return []
        cfg = self.cfg
        out: list[WindowResult | None] = []
        jobs: list[_Job] = []
        for w in closed:
            info = WindowInfo(w.index, w.start, w.end, w.pane.n)
            ref_id: str | None = self.reference.id
            ref_pane = self.reference.pane
            if self.rolling is not None:
                got = self.rolling.reference_for(self.reference.id)
                self.rolling.add(w.start, w.end, w.pane)
                ref_id, ref_pane = got if got else (None, None)
            elif self.calendar is not None:
                got = self.calendar.reference_for(self.reference.id, w.start)
                self.calendar.add(w.start, w.pane)
                ref_id, ref_pane = got if got else (None, None)
            if ref_pane is None or ref_pane.n < cfg.reference.min_events:
                out.append(WindowResult(cfg.name, w.pane.main_version, info, ref_id, [],
                                        skipped="reference not ready"))
                continue
            if w.pane.n < cfg.drift.min_window_events:
                out.append(WindowResult(cfg.name, w.pane.main_version, info, ref_id, [], skipped="window too small"))
                continue
            evidence = None
            if self.history is not None:
                evidence = self.history.evidence(w.pane)
                self.history.add(w.pane)
            slices, segments = self._slices(w.pane)
            jobs.append(_Job(len(out), w, info, ref_id, ref_pane, evidence, slices, segments))
            out.append(None)
        at = 0
        while at < len(jobs):  # runs of windows against the same reference pane
            end = at + 1
            while end < len(jobs) and jobs[end].ref_pane is jobs[at].ref_pane:
                end += 1
            run = jobs[at:end]
            found = evaluate_windows(self.reference.binning, run[0].ref_pane,
                                     [(j.window.pane, j.evidence, j.slices) for j in run], cfg.drift,
                                     PREDICTION_FEATURES, cfg.segments.min_window_events)
            for j, findings in zip(run, found):
                out[j.at] = self._result(j, findings)
            at = end
        return out  # type: ignore[return-value]

    def _result(self, job: _Job, findings: list[Finding]) -> WindowResult:
        """The window's result: its findings, and its latency quantiles (a finding too, with an SLA)."""
        cfg = self.cfg
        w = job.window
        latency = None
        if w.pane.latency.sum():
            latency = {f"p{q}": round(v, 3) for q, v in zip((50, 95, 99), LatencySketch.quantiles(w.pane.latency,
                                                                                                (0.5, 0.95, 0.99)))}
            sla = cfg.latency.sla_p99_ms
            if sla is not None:
                findings.append(Finding(None, "latency", "p99_ms", latency["p99"], sla, latency["p99"] > sla, None,
                                        int(w.pane.latency.sum()), dict(latency), consecutive=cfg.latency.windows))
        return WindowResult(cfg.name, w.pane.main_version, job.info, job.ref_id, findings, latency_ms=latency,
                            panes=(job.ref_pane, w.pane), segments=job.segments)

    def _slices(self, pane: Pane) -> tuple[list[Any], list[dict[str, Any]] | None]:
        """The slices a window evaluates (segment, reference pane, window pane), and every slice's line of the
        window report. A slice with too small a part of the reference is not compared with the whole
        population instead: a slice that is merely different would alert for good."""
        if not isinstance(pane, SegmentedPane):
            return [], None
        seg = self.cfg.segments
        slices, report = [], []
        for s, ref, cur in zip(pane.segments.slices, pane.segments.panes, pane.slices):
            skipped = None
            if ref.n < seg.min_reference_events:
                skipped = "reference too small"
            elif cur.n < seg.min_window_events:
                skipped = "window too small"
            else:
                slices.append((s, ref, cur))
            report.append(s.to_dict() | {"events": cur.n, "reference_events": ref.n, "skipped": skipped})
        return slices, report

    # -- checkpoints ---------------------------------------------------------------------------------------
    def pieces(self) -> Iterator[tuple[RecordKey, Any, Callable[[], Any]]]:
        """Its state records: (key, stamp, plain value maker); the stamp changes with the value."""
        name = self.cfg.name
        if self.history is not None:
            yield RecordKey(name, "evidence"), self.history.stamp, self.history.snapshot
        for kind, store in (("r", self.rolling), ("c", self.calendar)):
            if store is not None:
                for pid, pane in store.pieces():
                    yield RecordKey(name, kind, str(pid)), pane.stamp, pane.snapshot

    def snapshot(self) -> dict[str, Any]:
        """Its parts of the model's core record."""
        return {"rolling": self.rolling.snapshot() if self.rolling is not None else None,
                "calendar": self.calendar.snapshot() if self.calendar is not None else None}

    def restore(self, core: dict[str, Any], records: dict[RecordKey, Any]) -> None:
        """Rebuild from the core record and this model's records (raises on bad data)."""
        binning = self.reference.binning

        def panes(kind: str) -> dict[str, Pane]:
            return {part: Pane.restore(binning, v) for part, v in parts_of(records, kind).items()}

        evidence = records.get(RecordKey(self.cfg.name, "evidence"))
        if self.history is not None and evidence is not None:
            ref_pane = self.reference.pane
            self.history.restore(evidence, ref_pane.num_counts.shape, ref_pane.cat_counts.shape)
        if self.rolling is not None:
            self.rolling.restore(core["rolling"], panes("r"))
        if self.calendar is not None:
            self.calendar.restore(core["calendar"], panes("c"))
