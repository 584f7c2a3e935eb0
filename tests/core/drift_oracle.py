"""The per-feature window evaluation that :func:`stream_monitor.core.drift.evaluate_window` replaced, kept as
the oracle of ``test_drift.py``: the batched evaluation (window and evidence spans stacked into one set of numpy
calls per statistic) must give exactly the same findings on the same panes. Helpers the batching did not touch
are imported from the module under test rather than copied."""

from __future__ import annotations

from typing import Any

import numpy as np

from stream_monitor.config import DriftConfig
from stream_monitor.core import stats
# what the batching left as it was: the findings, rounding and the exact-sample statistics
from stream_monitor.core.drift import Finding, _r, _rounded, _sample_statistics, _w_norm
from stream_monitor.core.sketches import Binning, Pane

__all__ = ["evaluate_window", "holm"]


def holm(p_values: np.ndarray, alpha: float) -> np.ndarray:
    """Holm's step-down procedure: which hypotheses are rejected at family-wise error ``alpha``."""
    p = np.asarray(p_values, dtype=np.float64)
    m = p.size
    reject = np.zeros(m, dtype=bool)
    if m == 0:
        return reject
    order = np.argsort(p, kind="stable")
    limits = alpha / (m - np.arange(m))
    passed = p[order] <= limits
    stop = np.argmin(passed) if not passed.all() else m
    reject[order[:stop]] = True
    return reject


def evaluate_window(binning: Binning, ref: Pane, cur: Pane, cfg: DriftConfig,
                    prediction_features: frozenset[str] = frozenset(),
                    evidence: dict[int, tuple[np.ndarray, np.ndarray]] | None = None) -> list[Finding]:
    """All drift and quality findings of window ``cur`` against reference ``ref``.

    ``evidence`` maps a span ``s`` to the bin counts (numeric, categorical) of the last ``s`` non-overlapping
    windows, this one included: a small shift that persists is tested on them too (see :func:`_evidence`).
    """
    th = cfg.thresholds
    evidence = evidence or {}
    drift: list[dict[str, Any]] = []  # candidates for the Holm family
    quality: list[Finding] = []

    def kind_of(name: str) -> str:
        return "prediction_drift" if name in prediction_features else "data_drift"

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
            if n_cur[j] < cfg.min_window_events or n_ref[j] < cfg.min_window_events:
                continue
            figures = {
                "psi": (psi_l[j], psi_pl[j], psi_thr[j]),
                "ks": (ks_l[j], ks_pl[j], th.ks),
                "wasserstein": (wn_l[j], chi_pl[j], th.wasserstein),
                "js": (js_l[j], chi_pl[j], th.js),
                "hellinger": (hel_l[j], chi_pl[j], th.hellinger),
            }
            value, p, thr = figures[tests[j]]
            d = {"feature": name, "kind": kind_of(name), "statistic": tests[j], "value": value, "p": p,
                 "threshold": thr, "n": int(n_cur[j]), "column": j}
            drift.append(d | {
                "details": {s: {"value": v, "p_value": pv} for s, (v, pv, _) in figures.items()
                            if v == v or s not in _SAMPLE_TESTS}
                | {"reference_std": spread_l[j]} | ({"wasserstein_raw": wraw_l[j]} if wraw_l[j] == wraw_l[j]
                                                     else {}),
            })
        if evidence:
            _evidence(drift, "column", [(s, e[0]) for s, e in evidence.items()], ref.num_counts,
                      binning.bin_valid, th)
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
        w_l, psi_l, js_l, hel_l, chi_l = (_rounded(a) for a in (w, psi, js, hel, chi))
        chi_pl, psi_pl = chi_p.tolist(), psi_p.tolist()
        w_thr, psi_thr = np.maximum(th.chi2, w_floor).tolist(), np.maximum(th.psi, psi_floor).tolist()
        for j, name in enumerate(binning.categorical):
            if n_cur[j] < cfg.min_window_events or n_ref[j] < cfg.min_window_events:
                continue
            figures = {
                "chi2": (w_l[j], chi_pl[j], w_thr[j]),
                "psi": (psi_l[j], psi_pl[j], psi_thr[j]),
                "js": (js_l[j], chi_pl[j], th.js),
                "hellinger": (hel_l[j], chi_pl[j], th.hellinger),
            }
            value, p, thr = figures[cfg.categorical_test]
            drift.append({
                "feature": name, "kind": kind_of(name), "statistic": cfg.categorical_test, "value": value,
                "p": p, "threshold": thr, "n": int(n_cur[j]), "cat_column": j,
                "details": {s: {"value": v, "p_value": pv} for s, (v, pv, _) in figures.items()}
                | {"chi2_statistic": chi_l[j]},
            })
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
        quality += _quality(binning.categorical, ref, cur, cfg, {
            "missing_rate": (ref.cat_missing, cur.cat_missing, cfg.missing_rate_increase),
            "type_error_rate": (ref.cat_type_error, cur.cat_type_error, cfg.type_error_rate)})

    # ---- one Holm family per model and window ----
    rejected = holm(np.array([d["p"] for d in drift]), cfg.family_alpha)
    over = [bool(rej and d["value"] >= d["threshold"]) for d, rej in zip(drift, rejected)]
    for d, o in zip(drift, over):  # every candidate's figures when it matters: in alerts, or when asked
        cands = d.pop("candidates", None)
        if cands and (o or cfg.report_all_statistics):
            d["details"] = d["details"] | {"evidence": {
                str(s): {"value": cv, "p_value": cp, "threshold": ct, "events": cn} for s, cv, cp, ct, cn in cands}}
    late = sorted({d["column"] for d, o in zip(drift, over) if o and "column" in d and "ks" not in d["details"]})
    if late:  # an alert shows every statistic of the features it names
        ks_d, ks_p_all, w_all = _sample_statistics(ref, cur, late, k)
        w_norm = _w_norm(w_all, np.nan_to_num(ref.sample_std()))
        for d in drift:
            j = d.get("column")
            if j in late:
                d["details"] |= {"ks": {"value": _r(ks_d[j]), "p_value": float(ks_p_all[j])},
                                 "wasserstein": {"value": _r(w_norm[j]),
                                                 "p_value": d["details"]["js"]["p_value"]},
                                 "wasserstein_raw": _r(w_all[j])}
    if not cfg.report_all_statistics:  # a feature under threshold shows the figures of its decision test only
        alerted = {("column" in d, d.get("column", d.get("cat_column"))) for d, o in zip(drift, over) if o}
        for d in drift:
            if ("column" in d, d.get("column", d.get("cat_column"))) not in alerted:
                drop = {"psi", "ks", "wasserstein", "js", "hellinger", "chi2"} - {d["statistic"]}
                drop |= ({"wasserstein_raw"} if "wasserstein" in drop else set()) | (
                    {"chi2_statistic"} if "chi2" in drop else set())
                d["details"] = {key: v for key, v in d["details"].items() if key not in drop}
    out = [
        Finding(d["feature"], d["kind"], d["statistic"], d["value"], _r(d["threshold"]), o, d["p"], d["n"],
                d["details"])
        for d, o in zip(drift, over)
    ]
    return out + new_findings + quality


_SAMPLE_TESTS = frozenset({"ks", "wasserstein"})


def _binned_test(test: str, ref_counts: np.ndarray, cur_counts: np.ndarray, valid: np.ndarray, th: Any
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(value, p-value, threshold) of a binned decision statistic for every feature (and every leading index of
    ``cur_counts``: several spans at once) in one set of numpy calls."""
    ref_counts, cur_counts, valid = stats.pool_sparse(ref_counts, cur_counts, valid)
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
        v, p, thr = _binned_test(t, np.broadcast_to(ref_counts, stack.shape), stack,
                                 np.broadcast_to(valid, stack.shape), th)
        v_l, p_l, thr_l = _rounded(v), p.tolist(), _rounded(thr)
        for i, (s, _) in enumerate(spans):
            per_span[(s, t)] = (v_l[i], p_l[i], thr_l[i], events[i])
    for d in mine:
        j = d[key]
        cands = [(1, d["value"], d["p"], d["threshold"], d["n"])]
        for s, _ in spans:
            v, p, t, events = per_span[(s, d["statistic"])]
            cands.append((s, v[j], p[j], t[j], events[j]))
        # and a candidate counts only while this window alone still shows at least half its effect (on the
        # squared scale for distances): after a large shift ends, the windows it spans do not keep the
        # incident open. Its alpha is also spent per 1,000 events rather than per window, so that small
        # windows (many per million events) do not multiply false alarms.
        power = 1 if d["statistic"] == "psi" else 2  # w, JS and Hellinger distances are square roots
        ok = [c for c in cands if c[1] >= c[3] and (c[0] == 1 or d["value"] ** power >= 0.5 * c[1] ** power)] \
            or cands[:1]
        per_events = max(1.0, 1000.0 / max(d["n"], 1))
        weight = {c[0]: len(cands) * (1.0 if c[0] == 1 else c[0] * per_events) for c in cands}
        span, v, p, t, n = min(ok, key=lambda c: (c[2] * weight[c[0]], c[0]))
        d.update(value=v, p=min(1.0, p * weight[span]), threshold=t, n=n, candidates=cands)
        d["details"] = d["details"] | {"windows": span}


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
