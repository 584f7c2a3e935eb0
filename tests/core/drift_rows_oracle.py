"""The window evaluation that the columnar one of :func:`stream_monitor.core.drift.evaluate_window` replaced,
kept as the oracle of ``test_drift.py``: drift candidates as one dict per (feature, statistic), details built for
every finding, the evidence rule and Holm's procedure row by row. The columnar evaluation must give exactly the
same findings, details included, with the signed tests, evidence spans, slices and every statistic. Helpers the
change did not touch are imported from the module under test rather than copied."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from stream_monitor.config import DriftConfig
from stream_monitor.core import stats
from stream_monitor.core.drift import (_ALL_BINNED, _NEEDS, _SAMPLE_TESTS, _SQUARED, Finding, _category_name,
                                       _decision_details, _finding, _r, _rounded, _sample_statistics,
                                       _w_norm)
from stream_monitor.core.segments import Segment
from stream_monitor.core.sketches import Binning, Pane

__all__ = ["evaluate_window", "holm"]


def holm(p_values: np.ndarray, alpha: float, weights: np.ndarray | None = None) -> np.ndarray:
    """Holm's step-down procedure on one family (the row-by-row evaluation's; ``drift.holm_rows`` does it per
    window): which hypotheses are rejected at family-wise error ``alpha``.

    With ``weights`` (positive), the weighted version (Holm 1979): hypotheses are taken in order of ``p / w``
    and the one at each step is rejected when ``p / w <= alpha / (sum of the weights not yet rejected)``.
    Unit weights give the plain procedure; two tests of one feature with weight 1/2 each spend that feature's
    share of alpha between them, as a Bonferroni split inside the feature would.
    """
    p = np.asarray(p_values, dtype=np.float64)
    m = p.size
    reject = np.zeros(m, dtype=bool)
    if m == 0:
        return reject
    w = np.ones(m) if weights is None else np.asarray(weights, dtype=np.float64)
    order = np.argsort(p / w, kind="stable")
    remaining = np.cumsum(w[order][::-1])[::-1]  # weight of the hypotheses from this step on
    passed = p[order] / w[order] <= alpha / remaining
    stop = np.argmin(passed) if not passed.all() else m
    reject[order[:stop]] = True
    return reject


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
    def kind_of(name: str) -> str:
        return "prediction_drift" if name in prediction_features else "data_drift"

    drift, side = _candidates(binning, ref, cur, cfg, kind_of, cfg.min_window_events, evidence or {}, True)
    for seg, slice_ref, slice_cur in slices:  # drift candidates only: quality is the model's (same events)
        mine, _ = _candidates(binning, slice_ref, slice_cur, cfg, kind_of,
                              slice_min_events or cfg.min_window_events, {}, False)
        for d in mine:
            d["segment"] = seg
        drift += mine
    return _decide(binning, drift, cfg, {None: (ref, cur)} | {seg: (r, c) for seg, r, c in slices}) + side


def _candidates(binning: Binning, ref: Pane, cur: Pane, cfg: DriftConfig, kind_of: Callable[[str], str],
                min_events: int, evidence: dict[int, tuple[np.ndarray, np.ndarray]], side: bool
                ) -> tuple[list[dict[str, Any]], list[Finding]]:
    """Drift candidates for the Holm family (dicts: decision statistic, p-value, threshold, figures) and, with
    ``side``, the findings decided on their own (new categories, data quality)."""
    th = cfg.thresholds
    spans = list(evidence)
    every = cfg.report_all_statistics
    drift: list[dict[str, Any]] = []  # candidates for the Holm family
    quality: list[Finding] = []

    # ---- numeric: binned statistics for all features (and all spans) at once ----
    k = len(binning.numeric)
    if k:
        n_ref, n_cur = ref.num_present, cur.num_present
        past = [e[0] for e in evidence.values()]
        rank_on = th.rank_sum is not None
        test = cfg.numeric_test
        f = _binned(ref.num_counts, cur.num_counts, past, binning.bin_valid, n_ref, n_cur, th,
                    "rank_sum" if rank_on else None, _ALL_BINNED if every else _NEEDS[test])
        if rank_on:
            auc = f["signed"][0][0] + 0.5
            rank_l, rank_pl, auc_l = _rounded(np.abs(auc - 0.5)), f["signed"][1][0].tolist(), _rounded(auc)
            rank_thr = f["signed"][2][0].tolist()
        spreads = np.nan_to_num(ref.sample_std())  # cached with the reference's sorted sample
        # PSI needs ~5 events per bin to be stable; below that, KS
        tests = np.where(n_cur >= 5 * f["bins"][0], "psi", "ks").tolist() if test == "auto" else [test] * k
        # KS and Wasserstein need the exact samples: computed when one of them decides a feature, or when
        # every statistic is reported; otherwise only for the features over threshold (for the alert)
        sampled = [j for j, t in enumerate(tests) if t in _SAMPLE_TESTS] if not every else list(range(k))
        if sampled:
            ks_d, ks_p_all, w_all = _sample_statistics(ref, cur, sampled, k)
            ks_l, wn_l, wraw_l, spread_l = _rounded(np.stack([ks_d, _w_norm(w_all, spreads), w_all, spreads]))
            ks_pl = ks_p_all.tolist()
        else:  # (NaN: not computed)
            ks_l = wn_l = wraw_l = ks_pl = [float("nan")] * k
            spread_l = _rounded(spreads)
        n_ref_l, n_cur_l = n_ref.tolist(), n_cur.tolist()
        for j, name in enumerate(binning.numeric):
            if n_cur_l[j] < min_events or n_ref_l[j] < min_events:
                continue
            figures = _numeric_figures(f, j, ks_l[j], ks_pl[j], wn_l[j], th)
            if rank_on:
                figures["rank_sum"] = (rank_l[j], rank_pl[j], rank_thr[j])
            value, p, thr = figures[tests[j]]
            details = {s: {"value": v, "p_value": pv} for s, (v, pv, _) in figures.items()}
            details["reference_std"] = spread_l[j]
            if "wasserstein" in figures:
                details["wasserstein_raw"] = wraw_l[j]
            d = {"feature": name, "kind": kind_of(name), "statistic": tests[j], "value": value, "p": p,
                 "threshold": thr, "n": n_cur_l[j], "column": j, "test": tests[j], "details": details}
            drift.append(d)
            if rank_on:  # a finding of its own (a location shift, on one degree of freedom); the two tests of
                # the feature share its weight in the Holm family, so adding one costs the other features nothing
                d["weight"] = 0.5
                d["details"]["rank_sum"]["auc"] = auc_l[j]
                drift.append(d | {"statistic": "rank_sum", "value": rank_l[j], "p": rank_pl[j],
                                  "threshold": rank_thr[j], "signed": auc_l[j] - 0.5, "details": dict(d["details"])})
        if spans:
            _evidence(drift, "column", spans, f, th)
        if side:
            quality += _quality(binning.numeric, ref, cur, cfg, (
                ("missing_rate", ref.num_missing, cur.num_missing, cfg.missing_rate_increase),
                ("type_error_rate", ref.num_type_error, cur.num_type_error, cfg.type_error_rate),
                ("out_of_range_rate", ref.num_out_of_range, cur.num_out_of_range, cfg.out_of_range_rate)))

    # ---- categorical ----
    c = len(binning.categorical)
    new_findings: list[Finding] = []
    if c:
        n_ref, n_cur = ref.cat_present, cur.cat_present
        past = [e[1] for e in evidence.values()]
        shift_on = th.category_shift is not None
        test = cfg.categorical_test
        f = _binned(ref.cat_counts, cur.cat_counts, past, binning.cat_valid, n_ref, n_cur, th,
                    "category_shift" if shift_on else None, _ALL_BINNED if every else _NEEDS[test])
        unseen = np.array(binning.unseen_mass or (0.0,) * c, dtype=np.float64)
        # a new category is unusual when more events carry never-seen values than the reference's unseen mass
        # predicts (Good-Turing; at least one in the reference's size); Bonferroni over the model's features
        new_p = stats.binomial_sf(cur.cat_new, n_cur, np.maximum(unseen, 1.0 / np.maximum(n_ref, 1))).tolist()
        n_ref_l, n_cur_l = n_ref.tolist(), n_cur.tolist()
        new_l, unseen_l = cur.cat_new.tolist(), _rounded(unseen)
        if shift_on:  # the one category whose share moved most significantly
            shift, shift_p, shift_thr_a, shift_level = (a[0] for a in f["signed"])
            shift_l, shift_pl = _rounded(np.abs(shift)), shift_p.tolist()
            shift_thr = shift_thr_a.tolist()
            level_l = shift_level.tolist()
            with np.errstate(divide="ignore", invalid="ignore"):  # per tracked category, for evidence's rule
                moved = cur.cat_counts / np.maximum(n_cur, 1)[:, None] - ref.cat_counts / np.maximum(n_ref, 1)[:, None]
        for j, name in enumerate(binning.categorical):
            if n_cur_l[j] < min_events or n_ref_l[j] < min_events:
                continue
            figures = _categorical_figures(f, j, th)
            if shift_on:
                figures["category_shift"] = (shift_l[j], shift_pl[j], shift_thr[j])
            value, p, thr = figures[test]
            d = {"feature": name, "kind": kind_of(name), "statistic": test, "value": value, "p": p,
                 "threshold": thr, "n": n_cur_l[j], "cat_column": j, "test": test,
                 "details": {s: {"value": v, "p_value": pv} for s, (v, pv, _) in figures.items()}
                 | ({"chi2_statistic": f["chi_r"][0][j]} if "chi2" in figures else {})}
            drift.append(d)
            if shift_on:  # a finding of its own, sharing the feature's weight in the Holm family (as rank_sum)
                d["weight"] = 0.5
                d["details"]["category_shift"]["category"] = _category_name(binning, j, level_l[j])
                drift.append(d | {"statistic": "category_shift", "value": shift_l[j], "p": shift_pl[j],
                                  "threshold": shift_thr[j], "signed": moved[j], "details": dict(d["details"])})
            if not side:
                continue
            count = new_l[j]
            rate = count / max(n_cur_l[j], 1)
            over = (rate >= cfg.new_category_rate and count >= cfg.new_category_min_count
                    and new_p[j] <= cfg.family_alpha / c)
            new_findings.append(_finding(
                name, kind_of(name), "new_category_rate", _r(rate), cfg.new_category_rate,
                bool(over), new_p[j], n_cur_l[j],
                {"new_categories": sorted(cur.new_examples[j]), "new_count": count,
                 "reference_unseen_mass": unseen_l[j]},
            ))
        if spans:
            _evidence(drift, "cat_column", spans, f, th)
        if side:
            quality += _quality(binning.categorical, ref, cur, cfg, (
                ("missing_rate", ref.cat_missing, cur.cat_missing, cfg.missing_rate_increase),
                ("type_error_rate", ref.cat_type_error, cur.cat_type_error, cfg.type_error_rate)))
    return drift, new_findings + quality


def _decide(binning: Binning, drift: list[dict[str, Any]], cfg: DriftConfig,
            panes: dict[Segment | None, tuple[Pane, Pane]]) -> list[Finding]:
    """One Holm family per model and window (its slices included): the drift findings."""
    rejected = holm(np.array([d["p"] for d in drift]), cfg.family_alpha,
                    np.array([d.get("weight", 1.0) for d in drift]))
    over = [bool(rej and d["value"] >= d["threshold"]) for d, rej in zip(drift, rejected)]
    for d, o in zip(drift, over):  # every candidate's figures when it matters: in alerts, or when asked
        cands = d.pop("candidates", None)
        if cands and (o or cfg.report_all_statistics):
            d["details"] = d["details"] | {"evidence": {
                str(s): {"value": cv, "p_value": cp, "threshold": ct, "events": cn} for s, cv, cp, ct, cn in cands}}
    # details: a feature over threshold shows every statistic (the alert names it: the missing binned ones on
    # the window's counts, KS and Wasserstein on the samples); the others only their decision tests, unless
    # every statistic is asked for
    at = [_column_of(d) for d in drift]  # (segment, "column" or "cat_column", index) of each candidate
    alerted = {c for c, o in zip(at, over) if o}
    late: dict[tuple[Segment | None, str], tuple[set[int], set[int]]] = {}
    for d, (seg, key, j) in zip(drift, at):
        d.pop("signed", None)
        test = d.pop("test")
        if cfg.report_all_statistics:  # every statistic is there already
            continue
        if (seg, key, j) in alerted:
            columns, sampled = late.setdefault((seg, key), (set(), set()))
            columns.add(j)
            if key == "column" and "ks" not in d["details"]:
                sampled.add(j)
        else:
            d["details"] = _decision_details(d["details"], test)
    more = {(seg, key): _all_figures(binning, *panes[seg], key, sorted(columns), sorted(sampled), cfg)
            for (seg, key), (columns, sampled) in late.items()}
    for d, (seg, key, j) in zip(drift, at):
        if (seg, key, j) in alerted and not cfg.report_all_statistics:
            d["details"] = more[seg, key][j] | d["details"]  # what was computed already stays as it is
    return [
        _finding(d["feature"], d["kind"], d["statistic"], d["value"], _r(d["threshold"]), o, d["p"], d["n"],
                 d["details"], d.get("segment"))
        for d, o in zip(drift, over)
    ]


def _column_of(d: dict[str, Any]) -> tuple[Segment | None, str, int]:
    key = "column" if "column" in d else "cat_column"
    return d.get("segment"), key, d[key]


def _numeric_figures(f: dict[str, Any], j: int, ks: float, ks_p: float, w: float, th: Any
                     ) -> dict[str, tuple[Any, Any, Any]]:
    """(value, p-value, threshold) of every statistic of numeric column ``j`` computed in ``f`` (row 0 of
    :func:`_binned`) and of KS / Wasserstein when computed (not NaN)."""
    out: dict[str, tuple[Any, Any, Any]] = {}
    if "psi_r" in f:
        out["psi"] = (f["psi_r"][0][j], f["psi_p_l"][0][j], f["psi_thr"][0][j])
    if ks == ks:
        out["ks"] = (ks, ks_p, th.ks)
    chi_p = f["chi_p_l"][0][j] if "chi_p_l" in f else None
    if w == w and chi_p is not None:
        out["wasserstein"] = (w, chi_p, th.wasserstein)
    if "js_r" in f:
        out["js"] = (f["js_r"][0][j], chi_p, th.js)
    if "hellinger_r" in f:
        out["hellinger"] = (f["hellinger_r"][0][j], chi_p, th.hellinger)
    return out


def _categorical_figures(f: dict[str, Any], j: int, th: Any) -> dict[str, tuple[Any, Any, Any]]:
    """As :func:`_numeric_figures`, for categorical column ``j``."""
    out: dict[str, tuple[Any, Any, Any]] = {}
    chi_p = f["chi_p_l"][0][j] if "chi_p_l" in f else None
    if "chi2_r" in f:
        out["chi2"] = (f["chi2_r"][0][j], chi_p, f["chi2_thr"][0][j])
    if "psi_r" in f:
        out["psi"] = (f["psi_r"][0][j], f["psi_p_l"][0][j], f["psi_thr"][0][j])
    if "js_r" in f:
        out["js"] = (f["js_r"][0][j], chi_p, th.js)
    if "hellinger_r" in f:
        out["hellinger"] = (f["hellinger_r"][0][j], chi_p, th.hellinger)
    return out


def _all_figures(binning: Binning, ref: Pane, cur: Pane, key: str, columns: list[int], sampled: list[int],
                 cfg: DriftConfig) -> dict[int, dict[str, Any]]:
    """Every statistic of the given numeric (``key`` "column") or categorical columns of the window, as
    details entries: the binned ones on the window's counts (what row 0 of the stacked evaluation gives),
    KS and Wasserstein on the samples for the ``sampled`` columns (the others have them already)."""
    th = cfg.thresholds
    if key == "column":
        f = _binned(ref.num_counts, cur.num_counts, [], binning.bin_valid, ref.num_present, cur.num_present, th,
                    None, _ALL_BINNED)
        k = len(binning.numeric)
        ks_d, ks_p, w_all = _sample_statistics(ref, cur, sampled, k) if sampled else (np.full(k, np.nan),) * 3
        w_norm = _w_norm(w_all, np.nan_to_num(ref.sample_std()))
        out = {}
        for j in columns:
            figures = _numeric_figures(f, j, _r(ks_d[j]), float(ks_p[j]), _r(w_norm[j]), th)
            out[j] = {s: {"value": v, "p_value": pv} for s, (v, pv, _) in figures.items()}
            if "wasserstein" in figures:
                out[j]["wasserstein_raw"] = _r(w_all[j])
        return out
    f = _binned(ref.cat_counts, cur.cat_counts, [], binning.cat_valid, ref.cat_present, cur.cat_present, th,
                None, _ALL_BINNED)
    return {j: {s: {"value": v, "p_value": pv} for s, (v, pv, _) in _categorical_figures(f, j, th).items()}
            | {"chi2_statistic": f["chi_r"][0][j]} for j in columns}


def _binned(ref_counts: np.ndarray, cur_counts: np.ndarray, past: list[np.ndarray], valid: np.ndarray,
            n_ref: np.ndarray, n_cur: np.ndarray, th: Any, signed: str | None, need: frozenset[str]
            ) -> dict[str, Any]:
    """The binned statistics in ``need`` (of :data:`_ALL_BINNED`) of every feature, for the window (row 0)
    and for each evidence span (rows 1...).

    ``signed`` adds the rank-sum (numeric: on the counts in value order, never pooled) or the category-shift
    test (categorical, on the pooled counts) as ``signed``: (signed effect, p-value, threshold, picked
    category or None) arrays of rows.

    The counts are stacked ``(1 + spans, features, bins)`` and go through :func:`stats.binned_statistics` at
    once (one compiled pass, or one set of numpy calls per statistic without the kernel); every row is computed
    on its own counts, so row 0 is what the window alone gives. The
    window's sample sizes are its counts of present values, a span's the sums of its pooled counts. Values and
    thresholds come rounded (``*_r``) for findings and evidence, p-values and the window's thresholds as
    they are (lists of rows).
    """
    got = stats.binned_statistics(ref_counts, np.stack([cur_counts, *past]), valid, need, signed)
    bins, n_r, n_c = got["bins"], got["n_ref"], got["n_cur"]
    n_r[0], n_c[0] = n_ref, n_cur
    out: dict[str, Any] = {"bins": bins, "events": got["events"].tolist(), "signed": None}
    if "psi" in need:
        psi = got["psi"]
        psi_thr = np.maximum(th.psi, stats.psi_null_threshold(n_r, n_c, bins))
        out["psi_r"], out["psi_thr_r"] = _rounded(np.stack([psi, psi_thr]))
        out["psi_p_l"], out["psi_thr"] = stats.psi_pvalue(psi, n_r, n_c, bins).tolist(), psi_thr.tolist()
    if "chi2" in need:
        chi, chi_p, w = got["chi2"], got["chi2_p"], got["w"]
        w_thr = np.maximum(th.chi2, stats.w_null_threshold(n_r, n_c, bins))
        out["chi2_r"], out["chi_r"], out["chi2_thr_r"] = _rounded(np.stack([w, chi, w_thr]))
        out["chi_p_l"], out["chi2_thr"] = chi_p.tolist(), w_thr.tolist()
    if "js" in need:
        out["js_r"] = _rounded(got["js"])
    if "hellinger" in need:
        out["hellinger_r"] = _rounded(got["hellinger"])
    if signed == "rank_sum":  # signed (AUC - 0.5)
        auc, p, floor = got["signed"]
        out["signed"] = (auc - 0.5, p, np.maximum(th.rank_sum, floor), None)
    elif signed == "category_shift":  # signed change of one category's share, that category's index
        delta, p, floor, level = got["signed"]
        out["signed"] = (delta, p, np.maximum(th.category_shift, floor), level)
    return out


def _evidence(drift: list[dict[str, Any]], key: str, spans: list[int], f: dict[str, Any], th: Any) -> None:
    """Evidence across windows: a feature's binned decision statistic is also computed on the counts of its
    last ``s`` windows for each span ``s`` (rows 1... of :func:`_binned`), and the feature is decided on the
    most significant candidate that reaches its effect threshold, its p-value multiplied by the number of
    candidates and, for a span, by the span and by 1,000 / the window's events when smaller (weighted
    Bonferroni within the feature; Holm across features follows). A shift too small for one window (0.1 sd is
    a PSI of ~0.01) is caught once enough windows show it; a one-window blip is unchanged: it is only one of
    the candidates."""
    mine = [d for d in drift if key in d and d["statistic"] not in _SAMPLE_TESTS]
    events = f["events"]
    width = len(events[0])
    js_thr, hel_thr = _rounded(np.array([th.js, th.hellinger]))
    # per test: (values, p-values, thresholds, picked category) of every row (row 0 is the window)
    nothing = [[None] * width] * len(events)
    figures: dict[str, tuple[Any, ...]] = {}
    if "psi_r" in f:
        figures["psi"] = (f["psi_r"], f["psi_p_l"], f["psi_thr_r"], nothing)
    if "chi2_r" in f:
        figures["chi2"] = (f["chi2_r"], f["chi_p_l"], f["chi2_thr_r"], nothing)
    if "js_r" in f:
        figures["js"] = (f["js_r"], f["chi_p_l"], [[js_thr] * width] * len(events), nothing)
    if "hellinger_r" in f:
        figures["hellinger"] = (f["hellinger_r"], f["chi_p_l"], [[hel_thr] * width] * len(events), nothing)
    if f["signed"] is not None:  # the rank-sum or category-shift test (row 0 is in the findings already)
        sv, sp, sthr, level = f["signed"]
        test = "rank_sum" if level is None else "category_shift"
        figures[test] = ([None, *_rounded(sv[1:])], [None, *sp[1:].tolist()], [None, *_rounded(sthr[1:])],
                         nothing if level is None else [None, *level[1:].tolist()])
    m = len(spans) + 1  # candidates per feature
    rows = list(enumerate(spans, 1))
    for d in mine:
        j = d[key]
        test = d["statistic"]
        vals, ps, thrs, levels = figures[test]
        value, p0, thr0, n0 = d["value"], d["p"], d["threshold"], d["n"]
        # rank-sum and category-shift effects have a direction; for a category shift, this window's is that
        # of the category the span picked (its magnitude alone when the span picked the pooled sparse ones)
        mine_signed = d.get("signed", value)
        per_category = isinstance(mine_signed, np.ndarray)
        # a span's candidate counts only while this window alone still shows at least half its effect, in the
        # same direction (on the squared scale for distances): after a large shift ends, the windows it spans
        # do not keep the incident open. Its alpha is also spent per 1,000 events rather than per window, so
        # that small windows (many per million events) do not multiply false alarms.
        power = 2 if test in _SQUARED else 1
        per_events = max(1.0, 1000.0 / max(n0, 1))
        first = (1, value, p0, thr0, n0)
        cands = [first]
        # the most significant candidate that counts (ties: the shorter span); the window's own when none does
        best = (p0 * (m * 1.0), 1, first) if value >= thr0 else None
        for i, s in rows:
            v = vals[i][j]
            size, t = abs(v), thrs[i][j]
            c = (s, size, ps[i][j], t, events[i][j])
            cands.append(c)
            if size < t:
                continue
            here, signed = mine_signed, v
            if per_category:
                level = levels[i][j]
                picked = level < len(mine_signed)
                here = float(mine_signed[level]) if picked else value
                signed = v if picked else size
            if here * signed >= 0 and abs(here) ** power >= 0.5 * size ** power:
                score = c[2] * (m * (s * per_events))
                if best is None or (score, s) < best[:2]:
                    best = (score, s, c)
        score, span, (_, v, p, t, n) = best if best is not None else (p0 * (m * 1.0), 1, first)
        d["value"], d["p"], d["threshold"], d["n"], d["candidates"] = v, min(1.0, score), t, n, cands
        d["details"]["windows"] = span


def _quality(names: tuple[str, ...], ref: Pane, cur: Pane, cfg: DriftConfig,
             rates: tuple[tuple[str, np.ndarray, np.ndarray, float], ...]) -> list[Finding]:
    """Data-quality findings: a rate over the reference's own rate plus the allowed increase (every rate of
    every feature in one set of numpy calls)."""
    if cur.n < cfg.min_window_events:
        return []
    ref_rate = np.stack([r[1] for r in rates]) / (ref.n or 1)
    rate = np.stack([r[2] for r in rates]) / (cur.n or 1)
    threshold = ref_rate + np.array([r[3] for r in rates])[:, None]
    over = (rate >= threshold).tolist()
    rate_l, thr_l, ref_l = _rounded(np.stack([rate, threshold, ref_rate]))
    n = cur.n
    return [_finding(name, "data_quality", statistic, r, t, o, None, n, {"reference_rate": rr})
            for (statistic, *_), rs, ts, os_, rrs in zip(rates, rate_l, thr_l, over, ref_l)
            for name, r, t, o, rr in zip(names, rs, ts, os_, rrs)]
