"""Data-drift and data-quality decisions for a window against its reference.

:func:`evaluate_window` computes the decision statistics of every feature (binned ones for all features and
evidence spans in one vectorised call), picks the decision statistic per feature type and sample size, controls
false alarms across the model's features with Holm's step-down correction, and returns one :class:`Finding` per
(feature, statistic). A feature over threshold then gets every other statistic in its details (the alert shows
them); the others keep their decision figures only, unless ``report_all_statistics`` asks for everything.
:func:`evaluate_windows` does the same for the windows that closed in one batch at once: each window's findings
are exactly what it gives alone, every statistic one set of array operations for all of them.

Decision rule for a drift statistic: over threshold when the effect size reaches its threshold **and** the
test's p-value survives Holm at ``family_alpha``. Effect sizes keep huge windows (where every p-value is tiny)
from paging on negligible shifts; the p-value keeps small windows from paging on noise. For PSI the threshold
is also raised to the PSI that noise alone reaches at these sample sizes (:func:`stats.psi_null_threshold`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..config import DriftConfig
from . import stats
from .segments import Segment
from .sketches import Binning, Pane

__all__ = ["Finding", "evaluate_window", "evaluate_windows", "holm_rows"]


@dataclass(frozen=True)
class Finding:
    """One statistic of one feature in one window, and whether it is over its threshold."""

    feature: str
    kind: str  # data_drift | prediction_drift | data_quality
    statistic: str
    value: float
    threshold: float
    over: bool
    p_value: float | None = None
    n: int = 0
    details: dict[str, Any] = field(default_factory=dict)
    consecutive: int | None = None  # windows over before firing; None: the policy's default
    severity: str | None = None  # fixed severity; None: the policy's per-kind severity and escalation
    segment: Segment | None = None  # the slice this finding is about; None: the model's whole traffic

    def report_line(self) -> dict[str, Any]:
        """Its line of the window report: made with the finding by the window evaluation (:func:`_finding`),
        else from its fields."""
        line = self.__dict__.get("_line")
        if line is None:
            line = {"feature": self.feature, "kind": self.kind, "statistic": self.statistic, "value": self.value,
                    "threshold": self.threshold, "p_value": self.p_value, "over": self.over}
            if self.segment is not None:
                line["segment"] = self.segment.to_dict()
        return line

    def __getattr__(self, name: str) -> Any:
        # a finding of the window evaluation may have its details built when first read (see _lazy)
        make = self.__dict__.pop("_details_of", None) if name == "details" else None
        if make is None:
            raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")
        details = self.__dict__["details"] = make[0](*make[1:])
        return details


_new = object.__new__


def _finding(feature: str, kind: str, statistic: str, value: float, threshold: float, over: bool,
             p_value: float | None, n: int, details: Any, segment: Segment | None = None,
             details_key: str = "details") -> Finding:
    """``Finding(feature, kind, statistic, ...)`` with the policy's defaults, without running the frozen
    dataclass's ``__init__``, which sets each of the twelve fields through ``object.__setattr__``: a window
    makes some 150 findings, and that ``__init__`` was a tenth of its evaluation. Its line of the window report
    is made with it (under ``_line``, not a field), from the arguments at hand. (``details_key``: see
    :func:`_lazy`.)"""
    # its line of the window report (Finding.report_line) first: the finding's own fields are copied from it
    line = {"feature": feature, "kind": kind, "statistic": statistic, "value": value, "threshold": threshold,
            "p_value": p_value, "over": over}
    f = _new(Finding)
    d = f.__dict__
    d.update(line)
    d["n"], d[details_key], d["consecutive"], d["severity"], d["segment"] = n, details, None, None, segment
    if segment is not None:
        line["segment"] = segment.to_dict()
    d["_line"] = line
    return f


def _lazy(feature: str, kind: str, statistic: str, value: float, threshold: float, over: bool,
          p_value: float | None, n: int, details_of: tuple[Any, ...], segment: Segment | None = None) -> Finding:
    """As :func:`_finding`, the details built by ``details_of[0](*details_of[1:])`` when first read: a window's
    findings under threshold are mostly only lines of its report, never alerted on."""
    return _finding(feature, kind, statistic, value, threshold, over, p_value, n, details_of, segment,
                    "_details_of")


def _r(x: float) -> float:
    return float(round(float(x), 6))


def evaluate_window(binning: Binning, ref: Pane, cur: Pane, cfg: DriftConfig,
                    prediction_features: frozenset[str] = frozenset(),
                    evidence: dict[int, tuple[np.ndarray, np.ndarray]] | None = None,
                    slices: Sequence[tuple[Segment, Pane, Pane]] = (),
                    slice_min_events: int | None = None) -> list[Finding]:
    """All drift and quality findings of window ``cur`` against reference ``ref``.

    ``evidence`` maps a span ``s`` to the bin counts (numeric, categorical) of the last ``s`` non-overlapping
    windows, this one included: a small shift that persists is tested on them too (see :func:`_evidence`).
    The window and its spans are stacked, so each binned statistic is one set of numpy calls for all features
    and all spans.

    ``slices`` are (segment, the slice's reference pane, its window pane): each slice's features are tested
    like the model's (a feature with fewer than ``slice_min_events`` events in the slice's window is not), and
    their p-values join the model's Holm family, so the family-wise false-alarm rate per window stays
    ``family_alpha`` however many slices there are. Their findings carry the segment.
    """
    return evaluate_windows(binning, ref, [(cur, evidence, slices)], cfg, prediction_features, slice_min_events)[0]


def evaluate_windows(binning: Binning, ref: Pane,
                     windows: Sequence[tuple[Pane, dict[int, tuple[np.ndarray, np.ndarray]] | None,
                                             Sequence[tuple[Segment, Pane, Pane]]]],
                     cfg: DriftConfig, prediction_features: frozenset[str] = frozenset(),
                     slice_min_events: int | None = None) -> list[list[Finding]]:
    """:func:`evaluate_window` of several windows (pane, evidence, slices) against the same reference: each
    window's findings are exactly what it gives alone, but the windows without slices and with the same
    evidence spans are computed together, every statistic one set of array operations for all of them (a
    batch of 20,000 events closes twenty windows of 1,000), in calls of at most :data:`_TOGETHER` windows.

    The drift candidates stay columns (:class:`_Block`: windows x rows) through the evidence rule and Holm's
    procedure; a finding's details are built when first read, except for the features over threshold (their
    alert shows them, and they need the panes): most of a window's findings only become a line of its report.
    """
    def kind_of(name: str) -> str:
        return "prediction_drift" if name in prediction_features else "data_drift"

    out: list[list[Finding]] = [[] for _ in windows]
    together: dict[tuple[int, ...], list[int]] = {}
    for i, (_, evidence, slices) in enumerate(windows):
        if slices:  # its slices join its own Holm family: evaluated alone
            out[i] = _evaluate(binning, ref, [windows[i][0]], [evidence or {}], slices, cfg, kind_of,
                               slice_min_events)[0]
        else:
            together.setdefault(tuple(evidence or {}), []).append(i)
    for same in together.values():
        for start in range(0, len(same), _TOGETHER):  # at most _TOGETHER at once: bounded temporaries
            at = same[start:start + _TOGETHER]
            got = _evaluate(binning, ref, [windows[i][0] for i in at], [windows[i][1] or {} for i in at], (), cfg,
                            kind_of, slice_min_events)
            for i, findings in zip(at, got):
                out[i] = findings
    return out


#: Windows evaluated in one set of array operations at most: a call's arrays grow with its windows (a batch of
#: 20,000 events closes 200 windows of 100), while its fixed cost (~0.7 ms on the benchmark model; each window
#: adds ~0.4 ms) is already shared among 32.
_TOGETHER = 32


def _evaluate(binning: Binning, ref: Pane, curs: list[Pane], evidence: list[dict[int, tuple[np.ndarray, np.ndarray]]],
              slices: Sequence[tuple[Segment, Pane, Pane]], cfg: DriftConfig, kind_of: Callable[[str], str],
              slice_min_events: int | None) -> list[list[Finding]]:
    """Windows ``curs`` with the same evidence spans (slices: one window only), together."""
    spans = list(evidence[0])
    blocks = _blocks(binning, ref, curs, cfg, kind_of, cfg.min_window_events, evidence, spans, None)
    side = _side(binning, ref, curs, cfg, kind_of, blocks)
    for seg, slice_ref, slice_cur in slices:  # drift candidates only: quality is the model's (same events)
        blocks += _blocks(binning, slice_ref, [slice_cur], cfg, kind_of, slice_min_events or cfg.min_window_events,
                          [{}], [], seg)
    panes = [{None: (ref, cur)} | {seg: (r, c) for seg, r, c in slices} for cur in curs]
    return [drift + more for drift, more in zip(_decide(binning, blocks, cfg, panes), side)]


class _Block:
    """The drift candidates of one pane pair's numeric (``key`` "column") or categorical ("cat_column")
    features in several windows, as ``(windows, rows)`` arrays. Rows, in feature order: each feature's decision
    test and, with the signed test (rank-sum, category shift) on, that test's row; the two share the
    feature's weight in the Holm family. ``valid``: the feature has enough events in that window (the others
    are no candidates). ``details(w, i)`` builds a row's details (every statistic computed for its feature;
    the evidence rule's span) from the block's arrays, when a finding's details are first read."""

    def __init__(self, key: str, segment: Segment | None, names: tuple[str, ...], kind_of: Callable[[str], str],
                 keep: np.ndarray, signed_name: str | None, tests: np.ndarray,
                 main: tuple[np.ndarray, np.ndarray, np.ndarray], signed: tuple[np.ndarray, ...] | None,
                 n: np.ndarray, figures: Callable[[int, int], dict[str, Any]]) -> None:
        self.key, self.segment, self.keep = key, segment, keep
        k = keep.shape[1]
        self.per = per = 1 if signed is None else 2
        self.col = np.repeat(np.arange(k), per)
        self.valid = np.repeat(keep, per, axis=1)
        self.names = [names[j] for j in self.col.tolist()]
        self.kinds = [kind_of(x) for x in self.names]
        self.tests = np.repeat(tests, per, axis=1)  # the feature's decision test
        if signed is None:
            self.stats = self.tests
            self.value, self.p, self.thr, self.signed = main[0].copy(), main[1].copy(), main[2].copy(), main[0]
        else:
            self.stats = self.tests.copy()
            self.stats[:, 1::2] = signed_name
            self.value, self.p, self.thr, self.signed = (
                _interleave(a, b) for a, b in zip((*main, main[0]), (*signed[1:], signed[0])))
        self.n = np.repeat(n, per, axis=1)
        self.weight = np.full(self.valid.shape, 0.5 if per == 2 else 1.0)
        self._figures = figures
        self.span: np.ndarray | None = None  # the evidence rule's span (1: the window itself; 0: no rule)
        self.cands: Callable[[int, int], list[tuple[Any, ...]] | None] = lambda w, i: None

    def details(self, w: int, i: int) -> dict[str, Any]:
        """Row ``i``'s details in window ``w``: every statistic computed for its feature, the rule's span."""
        out = self._figures(w, int(self.col[i]))
        if self.span is not None and self.span[w, i]:
            out["windows"] = int(self.span[w, i])
        return out

    def evidence(self, w: int, i: int) -> dict[str, Any] | None:
        """Row ``i``'s evidence candidates in window ``w`` (the window's and each span's figures)."""
        cands = self.cands(w, i)
        if not cands:
            return None
        return {str(s): {"value": cv, "p_value": cp, "threshold": ct, "events": cn} for s, cv, cp, ct, cn in cands}


#: Statistic names in arrays (wide enough for every name: "category_shift" must not be cut).
_NAME = "<U16"


def _interleave(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    out = np.empty((a.shape[0], 2 * a.shape[1]))
    out[:, 0::2], out[:, 1::2] = a, b
    return out


def _blocks(binning: Binning, ref: Pane, curs: list[Pane], cfg: DriftConfig, kind_of: Callable[[str], str],
            min_events: int, evidence: list[dict[int, tuple[np.ndarray, np.ndarray]]], spans: list[int],
            seg: Segment | None) -> list[_Block]:
    """The drift candidates of windows ``curs`` against ``ref``: numeric, then categorical."""
    out = []
    if binning.numeric:
        out.append(_numeric(binning, ref, curs, cfg, kind_of, min_events, evidence, spans, seg))
    if binning.categorical:
        out.append(_categorical(binning, ref, curs, cfg, kind_of, min_events, evidence, spans, seg))
    return out


def _side(binning: Binning, ref: Pane, curs: list[Pane], cfg: DriftConfig, kind_of: Callable[[str], str],
          blocks: list[_Block]) -> list[list[Finding]]:
    """Per window, the findings decided on their own: new categories, then data quality (numeric features,
    then categorical)."""
    out: list[list[Finding]] = [[] for _ in curs]
    if binning.categorical:
        for findings, more in zip(out, _new_categories(binning, ref, curs, cfg, kind_of, blocks[-1].keep)):
            findings += more
    if binning.numeric:
        for findings, more in zip(out, _quality(binning.numeric, ref, curs, cfg, (
                ("missing_rate", "num_missing", cfg.missing_rate_increase),
                ("type_error_rate", "num_type_error", cfg.type_error_rate),
                ("out_of_range_rate", "num_out_of_range", cfg.out_of_range_rate)))):
            findings += more
    if binning.categorical:
        for findings, more in zip(out, _quality(binning.categorical, ref, curs, cfg, (
                ("missing_rate", "cat_missing", cfg.missing_rate_increase),
                ("type_error_rate", "cat_type_error", cfg.type_error_rate)))):
            findings += more
    return out


def _counted(kind: str, ref: Pane, curs: list[Pane], evidence: list[dict[int, tuple[np.ndarray, np.ndarray]]],
             spans: list[int], valid: np.ndarray, th: Any, signed: str | None, need: frozenset[str]
             ) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """The reference's and each window's present values per feature (``kind`` "num" or "cat"), and
    :func:`_binned` of each window's counts followed by its spans' counts."""
    part = 0 if kind == "num" else 1
    n_ref = getattr(ref, f"{kind}_present")
    n_cur = np.stack([getattr(c, f"{kind}_present") for c in curs])
    rows = [x for c, e in zip(curs, evidence) for x in (getattr(c, f"{kind}_counts"), *(e[s][part] for s in spans))]
    return n_ref, n_cur, _binned(getattr(ref, f"{kind}_counts"), rows, len(curs), valid, n_ref, n_cur, th, signed,
                                 need)


def _numeric(binning: Binning, ref: Pane, curs: list[Pane], cfg: DriftConfig, kind_of: Callable[[str], str],
             min_events: int, evidence: list[dict[int, tuple[np.ndarray, np.ndarray]]], spans: list[int],
             seg: Segment | None) -> _Block:
    """Numeric features: binned statistics for all features, windows and spans at once."""
    th = cfg.thresholds
    every = cfg.report_all_statistics
    k = len(binning.numeric)
    windows = len(curs)
    rank_on = th.rank_sum is not None
    test = cfg.numeric_test
    n_ref, n_cur, f = _counted("num", ref, curs, evidence, spans, binning.bin_valid, th,
                               "rank_sum" if rank_on else None, _ALL_BINNED if every else _NEEDS[test])
    spreads = np.nan_to_num(ref.sample_std())  # cached with the reference's sorted sample
    # PSI needs ~5 events per bin to be stable; below that, KS
    tests = (np.where(n_cur >= 5 * f["bins"][:, 0], "psi", "ks") if test == "auto" else
             np.full((windows, k), test)).astype(_NAME)
    # KS and Wasserstein need the exact samples: computed when one of them decides a feature, or when every
    # statistic is reported; otherwise only for the features over threshold (for the alert)
    ks_d, ks_p, w_all = (np.full((windows, k), np.nan) for _ in range(3))
    sampled = np.ones((windows, k), dtype=bool) if every else np.isin(tests, tuple(_SAMPLE_TESTS))
    for w in np.flatnonzero(sampled.any(axis=1)).tolist():
        ks_d[w], ks_p[w], w_all[w] = _sample_statistics(ref, curs[w], np.flatnonzero(sampled[w]).tolist(), k)
    ks_r, wn_r, wraw_r = np.round(np.stack([ks_d, _w_norm(w_all, spreads), w_all]), 6)
    spread_r = np.round(spreads, 6).tolist()
    table = _row0(f, windows, k, th) | {"ks": (ks_r, ks_p, np.full((windows, k), th.ks))}
    if "chi_p" in f:
        table["wasserstein"] = (wn_r, f["chi_p"][:, 0], np.full((windows, k), th.wasserstein))
    signed = None
    if rank_on:
        auc = f["signed"][0][:, 0] + 0.5
        auc_r = np.round(auc, 6)
        signed = (auc_r - 0.5, np.round(np.abs(auc - 0.5), 6), f["signed"][1][:, 0], f["signed"][2][:, 0])

    def figures(w: int, j: int) -> dict[str, Any]:
        got = _numeric_figures(f, w, j, ks_r[w, j].item(), ks_p[w, j].item(), wn_r[w, j].item(), th)
        out = {s: {"value": v, "p_value": pv} for s, (v, pv, _) in got.items()}
        if signed is not None:
            out["rank_sum"] = {"value": signed[1][w, j].item(), "p_value": signed[2][w, j].item(),
                               "auc": auc_r[w, j].item()}
        out["reference_std"] = spread_r[j]
        if "wasserstein" in got:
            out["wasserstein_raw"] = wraw_r[w, j].item()
        return out

    keep = (n_cur >= min_events) & (n_ref >= min_events)
    block = _Block("column", seg, binning.numeric, kind_of, keep, "rank_sum", tests, _main(table, tests), signed,
                   n_cur, figures)
    if spans:
        _evidence(block, spans, f, th, None)
    return block


def _categorical(binning: Binning, ref: Pane, curs: list[Pane], cfg: DriftConfig, kind_of: Callable[[str], str],
                 min_events: int, evidence: list[dict[int, tuple[np.ndarray, np.ndarray]]], spans: list[int],
                 seg: Segment | None) -> _Block:
    """Categorical features: binned statistics for all features, windows and spans at once."""
    th = cfg.thresholds
    c = len(binning.categorical)
    windows = len(curs)
    shift_on = th.category_shift is not None
    test = cfg.categorical_test
    n_ref, n_cur, f = _counted("cat", ref, curs, evidence, spans, binning.cat_valid, th,
                               "category_shift" if shift_on else None,
                               _ALL_BINNED if cfg.report_all_statistics else _NEEDS[test])
    tests = np.full((windows, c), test, dtype=_NAME)
    table = _row0(f, windows, c, th)
    signed = None
    if shift_on:  # the one category whose share moved most significantly
        shift, shift_p, shift_thr, level = (a[:, 0] for a in f["signed"])
        signed = (np.round(shift, 6), np.round(np.abs(shift), 6), shift_p, shift_thr)

    def figures(w: int, j: int) -> dict[str, Any]:
        got = _categorical_figures(f, w, j, th)
        out = {s: {"value": v, "p_value": pv} for s, (v, pv, _) in got.items()}
        if signed is not None:
            out["category_shift"] = {"value": signed[1][w, j].item(), "p_value": signed[2][w, j].item(),
                                     "category": _category_name(binning, j, int(level[w, j]))}
        if "chi2" in got:
            out["chi2_statistic"] = f["chi_r"][w, 0, j].item()
        return out

    keep = (n_cur >= min_events) & (n_ref >= min_events)
    block = _Block("cat_column", seg, binning.categorical, kind_of, keep, "category_shift", tests,
                   _main(table, tests), signed, n_cur, figures)
    if spans:
        def moved(w: int) -> np.ndarray:  # per tracked category, the change of its share (evidence's rule)
            with np.errstate(divide="ignore", invalid="ignore"):
                return (curs[w].cat_counts / np.maximum(n_cur[w], 1)[:, None]
                        - ref.cat_counts / np.maximum(n_ref, 1)[:, None])
        _evidence(block, spans, f, th, moved)
    return block


def _new_categories(binning: Binning, ref: Pane, curs: list[Pane], cfg: DriftConfig, kind_of: Callable[[str], str],
                    keep: np.ndarray) -> list[list[Finding]]:
    """A new category is unusual when more events carry never-seen values than the reference's unseen mass
    predicts (Good-Turing; at least one in the reference's size); Bonferroni over the model's features."""
    c = len(binning.categorical)
    n_ref = ref.cat_present
    n_cur = np.stack([x.cat_present for x in curs])
    new = np.stack([x.cat_new for x in curs])
    unseen = np.array(binning.unseen_mass or (0.0,) * c, dtype=np.float64)
    new_p = stats.binomial_sf(new, n_cur, np.maximum(unseen, 1.0 / np.maximum(n_ref, 1))).tolist()
    n_cur_l, new_l, unseen_l = n_cur.tolist(), new.tolist(), _rounded(unseen)
    out = []
    for w, cur in enumerate(curs):
        mine = []
        for j in np.flatnonzero(keep[w]).tolist():
            name, count = binning.categorical[j], new_l[w][j]
            rate = count / max(n_cur_l[w][j], 1)
            over = (rate >= cfg.new_category_rate and count >= cfg.new_category_min_count
                    and new_p[w][j] <= cfg.family_alpha / c)
            mine.append(_finding(name, kind_of(name), "new_category_rate", _r(rate), cfg.new_category_rate,
                                 bool(over), new_p[w][j], n_cur_l[w][j],
                                 {"new_categories": sorted(cur.new_examples[j]), "new_count": count,
                                  "reference_unseen_mass": unseen_l[j]}))
        out.append(mine)
    return out


def _row0(f: dict[str, Any], windows: int, k: int, th: Any) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """(value, p-value, threshold) ``(windows, features)`` arrays of every binned statistic computed in ``f``,
    on each window's own counts."""
    out = {}
    chi_p = f["chi_p"][:, 0] if "chi_p" in f else None
    if "psi_r" in f:
        out["psi"] = (f["psi_r"][:, 0], f["psi_p"][:, 0], f["psi_thr"][:, 0])
    if "chi2_r" in f:
        out["chi2"] = (f["chi2_r"][:, 0], chi_p, f["chi2_thr"][:, 0])
    if "js_r" in f:
        out["js"] = (f["js_r"][:, 0], chi_p, np.full((windows, k), th.js))
    if "hellinger_r" in f:
        out["hellinger"] = (f["hellinger_r"][:, 0], chi_p, np.full((windows, k), th.hellinger))
    return out


def _main(table: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]], tests: np.ndarray
          ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(value, p-value, threshold) of every feature's decision test, per window."""
    which = np.unique(tests).tolist()
    if len(which) == 1:
        return table[which[0]]
    got = np.empty((3, *tests.shape))
    for t in which:
        here = tests == t
        for a, x in zip(got, table[t]):
            a[here] = x[here]
    return got[0], got[1], got[2]


def holm_rows(p_values: np.ndarray, alpha: float, weights: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Holm's step-down procedure on each row of ``(families, hypotheses)`` arrays at once (a family per
    window): which hypotheses are rejected at family-wise error ``alpha``, among the ones ``valid`` in their row
    (the others are never rejected).

    Weighted (Holm 1979; ``weights`` positive): a row's hypotheses are taken in order of ``p / w`` and the one at
    each step is rejected when ``p / w <= alpha / (sum of the weights not yet rejected)``. Unit weights give the
    plain procedure; two tests of one feature with weight 1/2 each spend that feature's share of alpha between
    them, as a Bonferroni split inside the feature would.
    """
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(valid, p_values / np.where(valid, weights, 1.0), np.inf)
        order = np.argsort(ratio, axis=1, kind="stable")  # invalid ones last (a NaN p-value after them)
        w_sorted = np.take_along_axis(np.where(valid, weights, 0.0), order, axis=1)
        remaining = np.cumsum(w_sorted[:, ::-1], axis=1)[:, ::-1]  # weight of the hypotheses from this step on
        passed = (np.take_along_axis(ratio, order, axis=1) <= alpha / remaining) & np.take_along_axis(
            valid, order, axis=1)
    m = passed.shape[1]
    stop = np.where(passed.all(axis=1), m, np.argmin(passed, axis=1))
    reject = np.zeros(passed.shape, dtype=bool)
    np.put_along_axis(reject, order, np.arange(m)[None, :] < stop[:, None], axis=1)
    return reject


def _decide(binning: Binning, blocks: list[_Block], cfg: DriftConfig,
            panes: list[dict[Segment | None, tuple[Pane, Pane]]]) -> list[list[Finding]]:
    """One Holm family per model and window (its slices included): each window's drift findings.

    Details: a feature over threshold shows every statistic (the alert names it: the missing binned ones on
    the window's counts, KS and Wasserstein on the samples) and, on its rows over threshold, the evidence
    candidates; the other features only their decision tests, unless every statistic is asked for."""
    out: list[list[Finding]] = [[] for _ in panes]
    if not blocks:
        return out
    rejected = holm_rows(np.concatenate([b.p for b in blocks], axis=1), cfg.family_alpha,
                         np.concatenate([b.weight for b in blocks], axis=1),
                         np.concatenate([b.valid for b in blocks], axis=1))
    every = cfg.report_all_statistics
    at = 0
    for b in blocks:
        rows = b.col.size
        over_a = rejected[:, at:at + rows] & (b.value >= b.thr) & b.valid
        at += rows
        cols = b.col.tolist()
        for w, (valid, over, values, thrs, ps, ns, stats_w, tests_w) in enumerate(zip(
                b.valid.tolist(), over_a.tolist(), b.value.tolist(), b.thr.tolist(), b.p.tolist(), b.n.tolist(),
                b.stats.tolist(), b.tests.tolist())):
            alerted = set(b.col[over_a[w]].tolist()) if not every else set()
            more: dict[int, dict[str, Any]] = {}
            if alerted:
                picked = sorted(alerted)
                sampled = [j for j in picked if b.key == "column" and "ks" not in b.details(w, j * b.per)]
                more = _all_figures(binning, *panes[w][b.segment], b.key, picked, sampled, cfg)
            mine = out[w]
            for i, ok in enumerate(valid):
                if not ok:
                    continue
                j, o = cols[i], over[i]
                if j in alerted or every:
                    details = b.details(w, i)
                    if o or every:
                        ev = b.evidence(w, i)
                        if ev is not None:
                            details["evidence"] = ev
                    if j in alerted:
                        details = more[j] | details  # what was computed already stays as it is
                    mine.append(_finding(b.names[i], b.kinds[i], stats_w[i], values[i], round(thrs[i], 6), o,
                                         ps[i], ns[i], details, b.segment))
                else:
                    mine.append(_lazy(b.names[i], b.kinds[i], stats_w[i], values[i], round(thrs[i], 6), o, ps[i],
                                      ns[i], (_decision_of, b, w, i, tests_w[i]), b.segment))
    return out


def _decision_of(b: _Block, w: int, i: int, test: str) -> dict[str, Any]:
    return _decision_details(b.details(w, i), test)


def _evidence(b: _Block, spans: list[int], f: dict[str, Any], th: Any, moved: Callable[[int], np.ndarray] | None
              ) -> None:
    """Evidence across windows: a feature's binned decision statistic is also computed on the counts of its
    last ``s`` windows for each span ``s`` (rows 1... of :func:`_binned`), and the feature is decided on the
    most significant candidate that reaches its effect threshold, its p-value multiplied by the number of
    candidates and, for a span, by the span and by 1,000 / the window's events when smaller (weighted
    Bonferroni within the feature; Holm across features follows). A shift too small for one window (0.1 sd is
    a PSI of ~0.01) is caught once enough windows show it; a one-window blip is unchanged: it is only one of
    the candidates.

    Rows whose spans all stay under their thresholds (most of them) keep the window's own figures, with the
    p-value multiplied by the number of candidates, in one set of array operations; the others go through
    the rule (:func:`_best`) one by one."""
    ruled = b.valid & ~np.isin(b.stats, tuple(_SAMPLE_TESTS))
    if not ruled.any():
        return
    windows, rows = ruled.shape
    m = len(spans) + 1  # candidates per feature
    # per test, its spans' (values (signed for the signed tests), p-values, thresholds): (windows, spans, k)
    span_figures: dict[str, tuple[np.ndarray, ...]] = {}
    js_thr, hel_thr = np.round(np.array([th.js, th.hellinger]), 6)
    if "psi_r" in f:
        span_figures["psi"] = (f["psi_r"][:, 1:], f["psi_p"][:, 1:], f["psi_thr_r"][:, 1:])
    if "chi2_r" in f:
        span_figures["chi2"] = (f["chi2_r"][:, 1:], f["chi_p"][:, 1:], f["chi2_thr_r"][:, 1:])
    if "js_r" in f:
        span_figures["js"] = (f["js_r"][:, 1:], f["chi_p"][:, 1:], np.full(f["js_r"][:, 1:].shape, js_thr))
    if "hellinger_r" in f:
        span_figures["hellinger"] = (f["hellinger_r"][:, 1:], f["chi_p"][:, 1:],
                                     np.full(f["hellinger_r"][:, 1:].shape, hel_thr))
    level = None
    if f["signed"] is not None:
        sv, sp, sthr, level = f["signed"]
        span_figures["rank_sum" if level is None else "category_shift"] = (
            np.round(sv[:, 1:], 6), sp[:, 1:], np.round(sthr[:, 1:], 6))
    shape = (windows, rows, m - 1)
    vals, ps, thrs = np.zeros(shape), np.ones(shape), np.full(shape, np.inf)
    for s in np.unique(b.stats[ruled]).tolist():
        here = ruled & (b.stats == s)
        for a, x in zip((vals, ps, thrs), span_figures[s]):
            a[here] = x.transpose(0, 2, 1)[:, b.col, :][here]
    events = f["events"][:, 1:].transpose(0, 2, 1)[:, b.col, :]
    v0, p0, t0, n0 = b.value.copy(), b.p.copy(), b.thr.copy(), b.n.copy()
    first = p0 * (m * 1.0)
    b.p = np.where(ruled, np.where(first < 1.0, first, 1.0), b.p)
    b.span = ruled.astype(np.int64)
    shares: dict[int, np.ndarray] = {}
    for w, i in np.argwhere((np.abs(vals) >= thrs).any(axis=2) & ruled).tolist():
        here = b.signed[w, i].item()
        j = int(b.col[i])
        stat = str(b.stats[w, i])
        if stat == "category_shift":
            assert moved is not None
            if w not in shares:
                shares[w] = moved(w)
            here = shares[w][j]
        (b.value[w, i], b.p[w, i], b.thr[w, i], b.n[w, i]), b.span[w, i] = _best(
            v0[w, i].item(), p0[w, i].item(), t0[w, i].item(), int(n0[w, i]), here, stat, m, spans,
            vals[w, i].tolist(), ps[w, i].tolist(), thrs[w, i].tolist(), events[w, i].tolist(),
            None if level is None else level[w, 1:, j].tolist())

    def cands(w: int, i: int) -> list[tuple[Any, ...]] | None:
        if not ruled[w, i]:
            return None
        return [(1, v0[w, i].item(), p0[w, i].item(), t0[w, i].item(), int(n0[w, i])),
                *zip(spans, np.abs(vals[w, i]).tolist(), ps[w, i].tolist(), thrs[w, i].tolist(),
                     events[w, i].tolist())]

    b.cands = cands


def _best(value: float, p0: float, thr0: float, n0: int, mine_signed: Any, test: str, m: int, spans: list[int],
          vals: list[float], ps: list[float], thrs: list[float], events: list[int], levels: list[int] | None
          ) -> tuple[tuple[float, float, float, int], int]:
    """The evidence rule for one row with a span that reaches its threshold: (value, p-value, threshold,
    events) of the most significant candidate that counts (ties: the shorter span; the window's own when none
    does), and its span."""
    # rank-sum and category-shift effects have a direction; for a category shift, this window's is that of
    # the category the span picked (its magnitude alone when the span picked the pooled sparse ones)
    per_category = isinstance(mine_signed, np.ndarray)
    # a span's candidate counts only while this window alone still shows at least half its effect, in the
    # same direction (on the squared scale for distances): after a large shift ends, the windows it spans do
    # not keep the incident open. Its alpha is also spent per 1,000 events rather than per window, so that
    # small windows (many per million events) do not multiply false alarms.
    power = 2 if test in _SQUARED else 1
    per_events = max(1.0, 1000.0 / max(n0, 1))
    first = (value, p0, thr0, n0)
    best = (p0 * (m * 1.0), 1, first) if value >= thr0 else None
    for i, s in enumerate(spans):
        v, t = vals[i], thrs[i]
        size = abs(v)
        if size < t:
            continue
        here, signed = mine_signed, v
        if per_category:
            assert levels is not None
            picked = levels[i] < len(mine_signed)
            here = float(mine_signed[levels[i]]) if picked else value
            signed = v if picked else size
        if here * signed >= 0 and abs(here) ** power >= 0.5 * size ** power:
            score = ps[i] * (m * (s * per_events))
            if best is None or (score, s) < best[:2]:
                best = (score, s, (size, ps[i], t, events[i]))
    score, span, (v, p, t, n) = best if best is not None else (p0 * (m * 1.0), 1, first)
    return (v, min(1.0, score), t, n), span


_SAMPLE_TESTS = frozenset({"ks", "wasserstein"})
#: The binned statistics; "chi2" also gives the p-value of JS, Hellinger and Wasserstein.
_ALL_BINNED = frozenset({"psi", "chi2", "js", "hellinger"})
#: The binned statistics a decision test needs on the window and its evidence spans (the others are computed
#: for the features over threshold, or for all with ``report_all_statistics``). Numeric features always get
#: chi2: KS may decide some of them (auto), and Wasserstein, computed with KS, takes chi2's p-value.
_NEEDS = {"auto": frozenset({"psi", "chi2"}), "psi": frozenset({"psi", "chi2"}), "ks": frozenset({"chi2"}),
          "wasserstein": frozenset({"chi2"}), "js": frozenset({"js", "chi2"}),
          "hellinger": frozenset({"hellinger", "chi2"}), "chi2": frozenset({"chi2"})}
#: Statistics named in a finding's details, and the figures that go with one of them.
_FIGURES = frozenset({"psi", "ks", "wasserstein", "js", "hellinger", "chi2"})
_WITH = {"wasserstein": "wasserstein_raw", "chi2": "chi2_statistic"}
#: Per decision test, the details entries of the statistics that did not decide (and what goes with them).
_DROP = {test: frozenset(s for s in _FIGURES if s != test) | frozenset(v for k, v in _WITH.items() if k != test)
         for test in _FIGURES}


def _decision_details(details: dict[str, Any], test: str) -> dict[str, Any]:
    """A feature's details without the statistics that did not decide it (its test and the signed tests do)."""
    drop = _DROP[test]
    return details if drop.isdisjoint(details) else {k: v for k, v in details.items() if k not in drop}


def _numeric_figures(f: dict[str, Any], w: int, j: int, ks: float, ks_p: float, wn: float, th: Any
                     ) -> dict[str, tuple[Any, Any, Any]]:
    """(value, p-value, threshold) of every statistic of numeric column ``j`` in window ``w`` computed in ``f``
    (:func:`_binned`) and of KS / Wasserstein when computed (not NaN)."""
    out: dict[str, tuple[Any, Any, Any]] = {}
    if "psi_r" in f:
        out["psi"] = (f["psi_r"][w, 0, j].item(), f["psi_p"][w, 0, j].item(), f["psi_thr"][w, 0, j].item())
    if ks == ks:
        out["ks"] = (ks, ks_p, th.ks)
    chi_p = f["chi_p"][w, 0, j].item() if "chi_p" in f else None
    if wn == wn and chi_p is not None:
        out["wasserstein"] = (wn, chi_p, th.wasserstein)
    if "js_r" in f:
        out["js"] = (f["js_r"][w, 0, j].item(), chi_p, th.js)
    if "hellinger_r" in f:
        out["hellinger"] = (f["hellinger_r"][w, 0, j].item(), chi_p, th.hellinger)
    return out


def _categorical_figures(f: dict[str, Any], w: int, j: int, th: Any) -> dict[str, tuple[Any, Any, Any]]:
    """As :func:`_numeric_figures`, for categorical column ``j``."""
    out: dict[str, tuple[Any, Any, Any]] = {}
    chi_p = f["chi_p"][w, 0, j].item() if "chi_p" in f else None
    if "chi2_r" in f:
        out["chi2"] = (f["chi2_r"][w, 0, j].item(), chi_p, f["chi2_thr"][w, 0, j].item())
    if "psi_r" in f:
        out["psi"] = (f["psi_r"][w, 0, j].item(), f["psi_p"][w, 0, j].item(), f["psi_thr"][w, 0, j].item())
    if "js_r" in f:
        out["js"] = (f["js_r"][w, 0, j].item(), chi_p, th.js)
    if "hellinger_r" in f:
        out["hellinger"] = (f["hellinger_r"][w, 0, j].item(), chi_p, th.hellinger)
    return out


def _all_figures(binning: Binning, ref: Pane, cur: Pane, key: str, columns: list[int], sampled: list[int],
                 cfg: DriftConfig) -> dict[int, dict[str, Any]]:
    """Every statistic of the given numeric (``key`` "column") or categorical columns of the window, as
    details entries: the binned ones on the window's counts (what its row of the stacked evaluation gives),
    KS and Wasserstein on the samples for the ``sampled`` columns (the others have them already)."""
    th = cfg.thresholds
    if key == "column":
        f = _binned(ref.num_counts, [cur.num_counts], 1, binning.bin_valid, ref.num_present,
                    cur.num_present[None, :], th, None, _ALL_BINNED)
        k = len(binning.numeric)
        ks_d, ks_p, w_all = _sample_statistics(ref, cur, sampled, k) if sampled else (np.full(k, np.nan),) * 3
        w_norm = _w_norm(w_all, np.nan_to_num(ref.sample_std()))
        out = {}
        for j in columns:
            figures = _numeric_figures(f, 0, j, _r(ks_d[j]), float(ks_p[j]), _r(w_norm[j]), th)
            out[j] = {s: {"value": v, "p_value": pv} for s, (v, pv, _) in figures.items()}
            if "wasserstein" in figures:
                out[j]["wasserstein_raw"] = _r(w_all[j])
        return out
    f = _binned(ref.cat_counts, [cur.cat_counts], 1, binning.cat_valid, ref.cat_present, cur.cat_present[None, :],
                th, None, _ALL_BINNED)
    return {j: {s: {"value": v, "p_value": pv} for s, (v, pv, _) in _categorical_figures(f, 0, j, th).items()}
            | {"chi2_statistic": f["chi_r"][0, 0, j].item()} for j in columns}


def _binned(ref_counts: np.ndarray, rows: list[np.ndarray], windows: int, valid: np.ndarray, n_ref: np.ndarray,
            n_cur: np.ndarray, th: Any, signed: str | None, need: frozenset[str]) -> dict[str, Any]:
    """The binned statistics in ``need`` (of :data:`_ALL_BINNED`) of every feature, for each of ``windows``
    windows (``rows``: each window's counts followed by its evidence spans' counts).

    ``signed`` adds the rank-sum (numeric: on the counts in value order, never pooled) or the category-shift
    test (categorical, on the pooled counts) as ``signed``: (signed effect, p-value, threshold, picked
    category or None).

    The rows go through :func:`stats.binned_statistics` at once (one compiled pass, or one set of numpy calls
    per statistic without the kernel); every row is computed on its own counts, so a window's row is what the
    window alone gives. A window's sample sizes are its counts of present values ``n_cur`` ``(windows,
    features)``, a span's the sums of its pooled counts. Values and thresholds come rounded (``*_r``) for
    findings and evidence, p-values and the windows' thresholds as they are; every entry is an array
    ``(windows, 1 + spans, features)``: ``[w, 0]`` is window ``w``, ``[w, s]`` its span ``s``.
    """
    got = stats.binned_statistics(ref_counts, np.stack(rows), valid, need, signed)
    bins, n_r, n_c = got["bins"], got["n_ref"], got["n_cur"]
    per = len(rows) // windows
    n_r[::per], n_c[::per] = n_ref, n_cur
    shape = (windows, per, bins.shape[-1])
    out: dict[str, Any] = {"bins": bins.reshape(shape), "events": got["events"].reshape(shape), "signed": None}
    if "psi" in need:
        psi = got["psi"]
        psi_thr = np.maximum(th.psi, stats.psi_null_threshold(n_r, n_c, bins))
        out["psi_r"], out["psi_thr_r"] = np.round(np.stack([psi, psi_thr]), 6).reshape(2, *shape)
        out["psi_p"] = stats.psi_pvalue(psi, n_r, n_c, bins).reshape(shape)
        out["psi_thr"] = psi_thr.reshape(shape)
    if "chi2" in need:
        chi, chi_p, w = got["chi2"], got["chi2_p"], got["w"]
        w_thr = np.maximum(th.chi2, stats.w_null_threshold(n_r, n_c, bins))
        out["chi2_r"], out["chi_r"], out["chi2_thr_r"] = np.round(np.stack([w, chi, w_thr]), 6).reshape(3, *shape)
        out["chi_p"], out["chi2_thr"] = chi_p.reshape(shape), w_thr.reshape(shape)
    if "js" in need:
        out["js_r"] = np.round(got["js"], 6).reshape(shape)
    if "hellinger" in need:
        out["hellinger_r"] = np.round(got["hellinger"], 6).reshape(shape)
    if signed == "rank_sum":  # signed (AUC - 0.5)
        auc, p, floor = got["signed"]
        out["signed"] = ((auc - 0.5).reshape(shape), p.reshape(shape), np.maximum(th.rank_sum, floor).reshape(shape),
                         None)
    elif signed == "category_shift":  # signed change of one category's share, that category's index
        delta, p, floor, level = got["signed"]
        out["signed"] = (delta.reshape(shape), p.reshape(shape), np.maximum(th.category_shift, floor).reshape(shape),
                         level.reshape(shape))
    return out


#: Distances compared on the squared scale by the evidence rule (w, JS and Hellinger are square roots).
_SQUARED = frozenset({"chi2", "js", "hellinger"})


def _category_name(binning: Binning, j: int, level: int) -> str:
    """The category at index ``level`` of categorical feature ``j``'s counts (pooled: the sparse ones)."""
    cats = binning.categories[j]
    if level < len(cats):
        return cats[level]
    return "(other)" if level == binning.n_cat_slots - 1 else "(sparse categories, pooled)"


def _w_norm(w: np.ndarray, spread: np.ndarray) -> np.ndarray:
    """Wasserstein distances in units of the reference's standard deviation (NaN stays NaN; a constant
    reference gives 0 for no change, inf otherwise)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(spread > 0, w / np.where(spread > 0, spread, 1.0),
                        np.where(w == 0, 0.0, np.where(np.isnan(w), np.nan, np.inf)))


def _sample_statistics(ref: Pane, cur: Pane, columns: list[int], k: int
                       ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """KS D, KS p-value and W1 of the given numeric columns (NaN elsewhere), on the panes' exact samples."""
    d, p, w = (np.full(k, np.nan) for _ in range(3))
    idx = np.asarray(columns)
    got = stats.ks_wasserstein_columns(ref.sorted_matrix()[:, idx], cur.sample[:, idx])
    for out, vals in zip((d, p, w), got):
        out[idx] = vals
    return d, p, w


def _quality(names: tuple[str, ...], ref: Pane, curs: list[Pane], cfg: DriftConfig,
             rates: tuple[tuple[str, str, float], ...]) -> list[list[Finding]]:
    """Per window, the data-quality findings: a rate (statistic, the panes' count attribute, allowed increase)
    over the reference's own rate plus the allowed increase (every rate of every feature and window in one set
    of numpy calls)."""
    n = np.array([c.n for c in curs])
    ref_rate = np.stack([getattr(ref, attr) for _, attr, _ in rates]) / (ref.n or 1)
    rate = np.stack([np.stack([getattr(c, attr) for _, attr, _ in rates]) for c in curs]) / np.where(
        n == 0, 1, n)[:, None, None]
    threshold = ref_rate + np.array([allowed for _, _, allowed in rates])[:, None]
    over = (rate >= threshold).tolist()
    rate_l = _rounded(rate)
    thr_l, ref_l = _rounded(np.stack([threshold, ref_rate]))
    out = []
    for cur, rates_w, over_w in zip(curs, rate_l, over):
        if cur.n < cfg.min_window_events:
            out.append([])
            continue
        out.append([_finding(name, "data_quality", statistic, r, t, o, None, cur.n, {"reference_rate": rr})
                    for (statistic, *_), rs, ts, os_, rrs in zip(rates, rates_w, thr_l, over_w, ref_l)
                    for name, r, t, o, rr in zip(names, rs, ts, os_, rrs)])
    return out


def _rounded(x: Any) -> list[float]:
    """Values rounded to 6 decimals (as :func:`_r`, for a whole array at once)."""
    return np.round(np.asarray(x, dtype=np.float64), 6).tolist()
