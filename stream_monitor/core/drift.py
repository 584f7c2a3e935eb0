"""Data-drift and data-quality decisions for one window against its reference.

:func:`evaluate_window` computes every statistic for every feature (binned ones for all features in one
vectorised call), picks the decision statistic per feature type and sample size, controls false alarms
across the model's features with Holm's step-down correction, and returns one :class:`Finding` per
(feature, statistic) with all figures kept for the alert.

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

__all__ = ["Finding", "evaluate_window", "holm"]


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


def holm(p_values: np.ndarray, alpha: float, weights: np.ndarray | None = None) -> np.ndarray:
    """Holm's step-down procedure: which hypotheses are rejected at family-wise error ``alpha``.

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
    drift: list[dict[str, Any]] = []  # candidates for the Holm family
    quality: list[Finding] = []

    # ---- numeric: binned statistics for all features at once ----
    k = len(binning.numeric)
    if k:
        n_ref, n_cur = ref.num_present, cur.num_present
        rc, cc, valid = stats.pool_sparse(ref.num_counts, cur.num_counts, binning.bin_valid)
        bins = valid.sum(axis=1)
        psi = stats.psi(rc, cc, valid)
        psi_p = stats.psi_pvalue(psi, n_ref, n_cur, bins)
        psi_floor = stats.psi_null_threshold(n_ref, n_cur, bins)
        js = stats.js_distance(rc, cc, valid)
        hel = stats.hellinger(rc, cc, valid)
        _, chi_p, _ = stats.chi2_homogeneity(rc, cc, valid)
        # the rank-sum test needs the bins in value order: on the counts before sparse bins are pooled
        rank_on = th.rank_sum is not None
        if rank_on:
            auc, rank_p, _ = stats.rank_sum(ref.num_counts, cur.num_counts, binning.bin_valid)
            rank_thr = np.maximum(th.rank_sum, stats.rank_sum_null_threshold(
                ref.num_counts, cur.num_counts, binning.bin_valid)).tolist()
            rank_l, rank_pl, auc_l = _rounded(np.abs(auc - 0.5)), rank_p.tolist(), _rounded(auc)
        spreads = np.nan_to_num(ref.sample_std())  # cached with the reference's sorted sample
        tests = []
        for j in range(k):
            test = cfg.numeric_test
            if test == "auto":  # PSI needs ~5 events per bin to be stable; below that, KS
                test = "psi" if n_cur[j] >= 5 * bins[j] else "ks"
            tests.append(test)
        ks_d = ks_p_all = w_all = np.full(k, np.nan)
        # KS and Wasserstein need the exact samples: computed when one of them decides a feature, or when
        # every statistic is reported; otherwise only for the features over threshold (for the alert)
        sampled = [j for j, t in enumerate(tests) if t in _SAMPLE_TESTS] if not cfg.report_all_statistics \
            else list(range(k))
        if sampled:
            ks_d, ks_p_all, w_all = _sample_statistics(ref, cur, sampled, k)
        w_norm = _w_norm(w_all, spreads)
        psi_l, ks_l, wn_l, js_l, hel_l, wraw_l, spread_l = (_rounded(a) for a in (
            psi, ks_d, w_norm, js, hel, w_all, spreads))
        psi_pl, ks_pl, chi_pl = psi_p.tolist(), ks_p_all.tolist(), chi_p.tolist()
        psi_thr = np.maximum(th.psi, psi_floor).tolist()
        for j, name in enumerate(binning.numeric):
            if n_cur[j] < min_events or n_ref[j] < min_events:
                continue
            figures = {
                "psi": (psi_l[j], psi_pl[j], psi_thr[j]),
                "ks": (ks_l[j], ks_pl[j], th.ks),
                "wasserstein": (wn_l[j], chi_pl[j], th.wasserstein),
                "js": (js_l[j], chi_pl[j], th.js),
                "hellinger": (hel_l[j], chi_pl[j], th.hellinger),
            }
            if rank_on:
                figures["rank_sum"] = (rank_l[j], rank_pl[j], rank_thr[j])
            value, p, thr = figures[tests[j]]
            d = {"feature": name, "kind": kind_of(name), "statistic": tests[j], "value": value, "p": p,
                 "threshold": thr, "n": int(n_cur[j]), "column": j}
            d["details"] = {s: {"value": v, "p_value": pv} for s, (v, pv, _) in figures.items()
                            if v == v or s not in _SAMPLE_TESTS} \
                | {"reference_std": spread_l[j]} | ({"wasserstein_raw": wraw_l[j]} if wraw_l[j] == wraw_l[j]
                                                   else {})
            drift.append(d)
            if rank_on:  # a finding of its own (a location shift, on one degree of freedom); the two tests of
                # the feature share its weight in the Holm family, so adding one costs the other features nothing
                d["weight"] = 0.5
                d["details"]["rank_sum"]["auc"] = auc_l[j]
                drift.append(d | {"statistic": "rank_sum", "value": rank_l[j], "p": rank_pl[j],
                                  "threshold": rank_thr[j], "signed": auc_l[j] - 0.5, "details": dict(d["details"])})
        if evidence:
            _evidence(drift, "column", [(s, e[0]) for s, e in evidence.items()], ref.num_counts,
                      binning.bin_valid, th)
        if side:
            quality += _quality(binning.numeric, ref, cur, cfg, {
                "missing_rate": (ref.num_missing, cur.num_missing, cfg.missing_rate_increase),
                "type_error_rate": (ref.num_type_error, cur.num_type_error, cfg.type_error_rate),
                "out_of_range_rate": (ref.num_out_of_range, cur.num_out_of_range, cfg.out_of_range_rate)})

    # ---- categorical ----
    c = len(binning.categorical)
    new_findings: list[Finding] = []
    if c:
        n_ref, n_cur = ref.cat_present, cur.cat_present
        rc, cc, valid = stats.pool_sparse(ref.cat_counts, cur.cat_counts, binning.cat_valid)
        chi, chi_p, w = stats.chi2_homogeneity(rc, cc, valid)
        psi = stats.psi(rc, cc, valid)
        slots = valid.sum(axis=1)
        w_floor = stats.w_null_threshold(n_ref, n_cur, slots)
        unseen = np.array(binning.unseen_mass or (0.0,) * c, dtype=np.float64)
        # a new category is unusual when more events carry never-seen values than the reference's unseen mass
        # predicts (Good-Turing; at least one in the reference's size); Bonferroni over the model's features
        new_p = stats.binomial_sf(cur.cat_new, n_cur, np.maximum(unseen, 1.0 / np.maximum(n_ref, 1)))
        psi_p = stats.psi_pvalue(psi, n_ref, n_cur, slots)
        psi_floor = stats.psi_null_threshold(n_ref, n_cur, slots)
        js = stats.js_distance(rc, cc, valid)
        hel = stats.hellinger(rc, cc, valid)
        shift_on = th.category_shift is not None
        if shift_on:  # the one category whose share moved most significantly
            shift, shift_p, shift_floor, shift_level = stats.category_shift(rc, cc, valid)
            shift_l, shift_pl = _rounded(np.abs(shift)), shift_p.tolist()
            shift_thr = np.maximum(th.category_shift, shift_floor).tolist()
            level_l = shift_level.tolist()
            with np.errstate(divide="ignore", invalid="ignore"):  # per tracked category, for evidence's rule
                moved = cur.cat_counts / np.maximum(n_cur, 1)[:, None] - ref.cat_counts / np.maximum(n_ref, 1)[:, None]
        w_l, psi_l, js_l, hel_l, chi_l = (_rounded(a) for a in (w, psi, js, hel, chi))
        chi_pl, psi_pl = chi_p.tolist(), psi_p.tolist()
        w_thr, psi_thr = np.maximum(th.chi2, w_floor).tolist(), np.maximum(th.psi, psi_floor).tolist()
        for j, name in enumerate(binning.categorical):
            if n_cur[j] < min_events or n_ref[j] < min_events:
                continue
            figures = {
                "chi2": (w_l[j], chi_pl[j], w_thr[j]),
                "psi": (psi_l[j], psi_pl[j], psi_thr[j]),
                "js": (js_l[j], chi_pl[j], th.js),
                "hellinger": (hel_l[j], chi_pl[j], th.hellinger),
            }
            if shift_on:
                figures["category_shift"] = (shift_l[j], shift_pl[j], shift_thr[j])
            value, p, thr = figures[cfg.categorical_test]
            d = {"feature": name, "kind": kind_of(name), "statistic": cfg.categorical_test, "value": value,
                 "p": p, "threshold": thr, "n": int(n_cur[j]), "cat_column": j,
                 "details": {s: {"value": v, "p_value": pv} for s, (v, pv, _) in figures.items()}
                 | {"chi2_statistic": chi_l[j]}}
            drift.append(d)
            if shift_on:  # a finding of its own, sharing the feature's weight in the Holm family (as rank_sum)
                d["weight"] = 0.5
                d["details"]["category_shift"]["category"] = _category_name(binning, j, level_l[j])
                drift.append(d | {"statistic": "category_shift", "value": shift_l[j], "p": shift_pl[j],
                                  "threshold": shift_thr[j], "signed": moved[j], "details": dict(d["details"])})
            if not side:
                continue
            rate = cur.cat_new[j] / max(n_cur[j], 1)
            count = int(cur.cat_new[j])
            over = (rate >= cfg.new_category_rate and count >= cfg.new_category_min_count
                    and float(new_p[j]) <= cfg.family_alpha / c)
            new_findings.append(Finding(
                name, kind_of(name), "new_category_rate", _r(rate), cfg.new_category_rate,
                bool(over), float(new_p[j]), int(n_cur[j]),
                {"new_categories": sorted(cur.new_examples[j]), "new_count": count,
                 "reference_unseen_mass": _r(unseen[j])},
            ))
        if evidence:
            _evidence(drift, "cat_column", [(s, e[1]) for s, e in evidence.items()], ref.cat_counts,
                      binning.cat_valid, th)
        if side:
            quality += _quality(binning.categorical, ref, cur, cfg, {
                "missing_rate": (ref.cat_missing, cur.cat_missing, cfg.missing_rate_increase),
                "type_error_rate": (ref.cat_type_error, cur.cat_type_error, cfg.type_error_rate)})
    return drift, new_findings + quality


def _decide(binning: Binning, drift: list[dict[str, Any]], cfg: DriftConfig,
            panes: dict[Segment | None, tuple[Pane, Pane]]) -> list[Finding]:
    """One Holm family per model and window (its slices included): the drift findings."""
    k = len(binning.numeric)
    rejected = holm(np.array([d["p"] for d in drift]), cfg.family_alpha,
                    np.array([d.get("weight", 1.0) for d in drift]))
    over = [bool(rej and d["value"] >= d["threshold"]) for d, rej in zip(drift, rejected)]
    for d, o in zip(drift, over):  # every candidate's figures when it matters: in alerts, or when asked
        cands = d.pop("candidates", None)
        if cands and (o or cfg.report_all_statistics):
            d["details"] = d["details"] | {"evidence": {
                str(s): {"value": cv, "p_value": cp, "threshold": ct, "events": cn} for s, cv, cp, ct, cn in cands}}
    late: dict[Segment | None, set[int]] = {}
    for d, o in zip(drift, over):
        d.pop("signed", None)
        if o and "column" in d and "ks" not in d["details"]:
            late.setdefault(d.get("segment"), set()).add(d["column"])
    for seg, columns in late.items():  # an alert shows every statistic of the features it names
        ref, cur = panes[seg]
        ks_d, ks_p_all, w_all = _sample_statistics(ref, cur, sorted(columns), k)
        w_norm = _w_norm(w_all, np.nan_to_num(ref.sample_std()))
        for d in drift:
            j = d.get("column")
            if j in columns and d.get("segment") == seg:
                d["details"] |= {"ks": {"value": _r(ks_d[j]), "p_value": float(ks_p_all[j])},
                                 "wasserstein": {"value": _r(w_norm[j]),
                                                 "p_value": d["details"]["js"]["p_value"]},
                                 "wasserstein_raw": _r(w_all[j])}
    return [
        Finding(d["feature"], d["kind"], d["statistic"], d["value"], _r(d["threshold"]), o, d["p"], d["n"],
                d["details"], segment=d.get("segment"))
        for d, o in zip(drift, over)
    ]


_SAMPLE_TESTS = frozenset({"ks", "wasserstein"})


def _binned_test(test: str, ref_counts: np.ndarray, cur_counts: np.ndarray, valid: np.ndarray, th: Any
                 ) -> tuple[np.ndarray, ...]:
    """(value, p-value, threshold) of a binned decision statistic for every feature (and every leading index of
    ``cur_counts``: several spans at once) in one set of numpy calls. The rank-sum and category-shift values
    are signed; the category shift also returns the category it picked (a fourth array)."""
    if test == "rank_sum":  # signed (AUC - 0.5): bins in value order, so never pooled
        auc, p, _ = stats.rank_sum(ref_counts, cur_counts, valid)
        return auc - 0.5, p, np.maximum(th.rank_sum, stats.rank_sum_null_threshold(ref_counts, cur_counts, valid))
    ref_counts, cur_counts, valid = stats.pool_sparse(ref_counts, cur_counts, valid)
    if test == "category_shift":  # signed change of one category's share, that category's index in level
        delta, p, floor, level = stats.category_shift(ref_counts, cur_counts, valid)
        return delta, p, np.maximum(th.category_shift, floor), level
    n_ref, n_cur, bins = ref_counts.sum(axis=-1), cur_counts.sum(axis=-1), valid.sum(axis=-1)
    if test == "psi":
        v = stats.psi(ref_counts, cur_counts, valid)
        return v, stats.psi_pvalue(v, n_ref, n_cur, bins), np.maximum(th.psi, stats.psi_null_threshold(
            n_ref, n_cur, bins))
    _, chi_p, w = stats.chi2_homogeneity(ref_counts, cur_counts, valid)
    if test == "chi2":
        return w, chi_p, np.maximum(th.chi2, stats.w_null_threshold(n_ref, n_cur, bins))
    if test == "js":
        return stats.js_distance(ref_counts, cur_counts, valid), chi_p, np.full(w.shape, th.js)
    return stats.hellinger(ref_counts, cur_counts, valid), chi_p, np.full(w.shape, th.hellinger)


def _evidence(drift: list[dict[str, Any]], key: str, spans: list[tuple[int, np.ndarray]], ref_counts: np.ndarray,
              valid: np.ndarray, th: Any) -> None:
    """Evidence across windows: a feature's binned decision statistic is also computed on the counts of its
    last ``s`` windows for each span ``s``, and the feature is decided on the most significant candidate that
    reaches its effect threshold, its p-value multiplied by the number of candidates and, for a span, by the
    span and by 1,000 / the window's events when smaller (weighted Bonferroni within the feature; Holm across
    features follows). A shift too small for one window (0.1 sd is a PSI of ~0.01) is
    caught once enough windows show it; a one-window blip is unchanged: it is only one of the candidates."""
    mine = [d for d in drift if key in d and d["statistic"] not in _SAMPLE_TESTS]
    tests = {d["statistic"] for d in mine}
    per_span = {}
    stack = np.stack([counts for _, counts in spans])  # (spans, features, bins): one call per test for all spans
    events = stack.sum(axis=-1).tolist()
    for t in tests:
        v, p, thr, *level = _binned_test(t, np.broadcast_to(ref_counts, stack.shape), stack,
                                         np.broadcast_to(valid, stack.shape), th)
        v_l, p_l, thr_l = _rounded(v), p.tolist(), _rounded(thr)
        level_l = level[0].tolist() if level else [None] * len(spans)
        for i, (s, _) in enumerate(spans):
            per_span[(s, t)] = (v_l[i], p_l[i], thr_l[i], events[i], level_l[i])
    for d in mine:
        j = d[key]
        # rank-sum and category-shift effects have a direction; for a category shift, this window's is that
        # of the category the span picked (its magnitude alone when the span picked the pooled sparse ones)
        mine_signed = d.get("signed", d["value"])
        per_category = isinstance(mine_signed, np.ndarray)
        here, signed = {}, {}
        cands = [(1, d["value"], d["p"], d["threshold"], d["n"])]
        for s, _ in spans:
            v, p, t, events, level = per_span[(s, d["statistic"])]
            here[s], signed[s] = mine_signed, v[j]
            if per_category:
                picked = level[j] < len(mine_signed)
                here[s] = float(mine_signed[level[j]]) if picked else d["value"]
                signed[s] = v[j] if picked else abs(v[j])
            cands.append((s, abs(v[j]), p[j], t[j], events[j]))
        # and a candidate counts only while this window alone still shows at least half its effect, in the
        # same direction (on the squared scale for distances): after a large shift ends, the windows it spans
        # do not keep the incident open. Its alpha is also spent per 1,000 events rather than per window, so
        # that small windows (many per million events) do not multiply false alarms.
        power = 2 if d["statistic"] in ("chi2", "js", "hellinger") else 1  # w, JS, Hellinger: square roots
        ok = [c for c in cands if c[1] >= c[3] and (c[0] == 1 or (
            here[c[0]] * signed[c[0]] >= 0 and abs(here[c[0]]) ** power >= 0.5 * c[1] ** power))] or cands[:1]
        per_events = max(1.0, 1000.0 / max(d["n"], 1))
        weight = {c[0]: len(cands) * (1.0 if c[0] == 1 else c[0] * per_events) for c in cands}
        span, v, p, t, n = min(ok, key=lambda c: (c[2] * weight[c[0]], c[0]))
        d.update(value=v, p=min(1.0, p * weight[span]), threshold=t, n=n, candidates=cands)
        d["details"] = d["details"] | {"windows": span}


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


def _quality(names: tuple[str, ...], ref: Pane, cur: Pane, cfg: DriftConfig,
             rates: dict[str, tuple[np.ndarray, np.ndarray, float]]) -> list[Finding]:
    """Data-quality findings: a rate over the reference's own rate plus the allowed increase."""
    if cur.n < cfg.min_window_events:
        return []
    out = []
    for statistic, (ref_counts, cur_counts, increase) in rates.items():
        ref_rate = ref_counts / (ref.n or 1)
        rate = cur_counts / (cur.n or 1)
        threshold = ref_rate + increase
        over = (rate >= threshold).tolist()
        out += [Finding(name, "data_quality", statistic, r, t, o, None, cur.n, {"reference_rate": rr})
                for name, r, t, o, rr in zip(names, _rounded(rate), _rounded(threshold), over, _rounded(ref_rate))]
    return out


def _rounded(x: Any) -> list[float]:
    """Values rounded to 6 decimals (as :func:`_r`, for a whole array at once)."""
    return np.round(np.asarray(x, dtype=np.float64), 6).tolist()
