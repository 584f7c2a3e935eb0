"""Two-sample drift statistics, vectorised over features.

Binned statistics take count matrices of shape ``(features, bins)`` for the reference and the current window,
plus an optional ``valid`` mask of the same shape (features have different numbers of bins; padded bins are
ignored). Sample statistics (KS, Wasserstein) take one feature's samples. Every function here agrees with its
scipy counterpart on the same data (see ``tests/core/test_stats.py``).

Defaults used by the drift engine (see docs/reference.md, "Statistics"):

=============  ==========================================  =========  ============================
statistic      effect size                                 threshold  p-value
=============  ==========================================  =========  ============================
psi            population stability index, smoothed        0.008      chi2 approx. (B-1 dof)
ks             Kolmogorov-Smirnov D                        0.05       Smirnov limit, Stephens corr.
wasserstein    W1 / reference standard deviation           0.1        binned chi-square homogeneity
js             Jensen-Shannon distance, base 2             0.05       binned chi-square homogeneity
hellinger      Hellinger distance                          0.05       binned chi-square homogeneity
chi2           Cohen's w (two-sample), noise floor         0.05       chi-square homogeneity
rank_sum       |AUC - 0.5| of window vs reference, floor   0.02       Mann-Whitney normal approx.
category_shift change of one category's share, floor       0.01       hypergeometric, Bonferroni
=============  ==========================================  =========  ============================
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy import special

from .compiled import load

_kernel = load("_binned")  # the compiled kernel of binned_statistics (None: the numpy path below)

__all__ = [
    "binned_statistics",
    "binomial_sf",
    "category_shift",
    "chi2_homogeneity",
    "chi2_upper_quantile",
    "compiled",
    "hypergeom_two_sided",
    "hellinger",
    "js_distance",
    "ks_2samp",
    "ks_wasserstein_columns",
    "pool_sparse",
    "proportions",
    "psi",
    "psi_null_threshold",
    "psi_pvalue",
    "rank_sum",
    "rank_sum_null_threshold",
    "rank_sum_with_floor",
    "w_null_threshold",
    "wasserstein",
]

#: Laplace smoothing added to every valid bin before taking proportions: empty bins stay finite.
SMOOTHING = 0.5


def proportions(counts: np.ndarray, valid: np.ndarray | None = None, alpha: float = SMOOTHING) -> np.ndarray:
    """Smoothed proportions per row: ``(c + alpha) / (n + alpha * B)`` over valid bins, 0 elsewhere."""
    c = np.asarray(counts, dtype=np.float64)
    v = np.ones_like(c, dtype=bool) if valid is None else valid
    c = np.where(v, c + alpha, 0.0)
    total = c.sum(axis=-1, keepdims=True)
    return np.divide(c, total, out=np.zeros_like(c), where=total > 0)


#: Bins a test expects fewer events in (on the smaller side) are pooled into one: the chi-square approximation
#: behind every binned p-value needs about 5 expected per bin, and sparse bins make it reject too often.
MIN_EXPECTED = 5.0


def pool_sparse(ref_counts: np.ndarray, cur_counts: np.ndarray, valid: np.ndarray,
                min_expected: float = MIN_EXPECTED) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Counts and valid mask with each row's sparse bins (pooled proportion x the smaller sample size below
    ``min_expected``) summed into one extra last bin; rows without sparse bins are unchanged (the extra bin is
    invalid there)."""
    ref = np.asarray(ref_counts, dtype=np.float64)
    cur = np.asarray(cur_counts, dtype=np.float64)
    n_small = np.minimum(np.where(valid, ref, 0).sum(axis=-1), np.where(valid, cur, 0).sum(axis=-1))
    pooled = np.where(valid, ref + cur, 0.0)
    total = pooled.sum(axis=-1, keepdims=True)
    share = np.divide(pooled, total, out=np.zeros_like(pooled), where=total > 0)
    sparse = valid & (share * n_small[..., None] < min_expected)
    if not sparse.any():
        return ref, cur, valid
    keep = valid & ~sparse
    extra = sparse.any(axis=-1, keepdims=True)
    return (np.concatenate([np.where(keep, ref, 0.0), np.where(sparse, ref, 0.0).sum(-1, keepdims=True)], -1),
            np.concatenate([np.where(keep, cur, 0.0), np.where(sparse, cur, 0.0).sum(-1, keepdims=True)], -1),
            np.concatenate([keep, extra], -1))


def psi(ref_counts: np.ndarray, cur_counts: np.ndarray, valid: np.ndarray | None = None,
        alpha: float = SMOOTHING) -> np.ndarray:
    """Population stability index ``sum((q - p) * ln(q / p))`` of the current window ``q`` against ``p``."""
    p = proportions(ref_counts, valid, alpha)
    q = proportions(cur_counts, valid, alpha)
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where((p > 0) & (q > 0), (q - p) * np.log(q / p), 0.0)
    return terms.sum(axis=-1)


def _n_bins(counts: np.ndarray, valid: np.ndarray | None) -> np.ndarray:
    return np.asarray(counts).shape[-1] if valid is None else valid.sum(axis=-1)


def psi_pvalue(value: np.ndarray, n_ref: np.ndarray, n_cur: np.ndarray, bins: np.ndarray) -> np.ndarray:
    """p-value of a PSI under "same distribution": ``PSI / (1/n_ref + 1/n_cur)`` ~ chi2(bins - 1).

    (PSI is the symmetrised KL divergence; with multinomial sampling on both sides its scaled value is
    asymptotically chi-square, Yurdakul 2018.)
    """
    scale = 1.0 / np.maximum(n_ref, 1) + 1.0 / np.maximum(n_cur, 1)
    return special.chdtrc(np.maximum(np.asarray(bins) - 1, 1), np.asarray(value) / scale)  # chi2 survival, C ufunc


def psi_null_threshold(n_ref: np.ndarray, n_cur: np.ndarray, bins: np.ndarray, q: float = 0.999) -> np.ndarray:
    """The PSI that pure sampling noise exceeds with probability ``1 - q`` at these sample sizes.

    The engine's PSI threshold is ``max(fixed threshold, this)``: on a window of 200 events a fixed 0.1 is
    routinely crossed by noise, on 50,000 it is not.
    """
    scale = 1.0 / np.maximum(n_ref, 1) + 1.0 / np.maximum(n_cur, 1)
    return chi2_upper_quantile(np.maximum(np.asarray(bins) - 1, 1), q) * scale


#: chi2 quantiles per q, for 1, 2, ... degrees of freedom: the null thresholds of every window need them for a
#: few bin counts, and an inverse incomplete gamma per feature and window is a visible share of a window's time
_QUANTILES: dict[float, np.ndarray] = {}


def chi2_upper_quantile(dof: np.ndarray, q: float) -> np.ndarray:
    """``special.chdtri(dof, 1 - q)`` (the chi2 quantile at ``q``) for whole-number ``dof >= 1``, from a table
    of the same values computed once."""
    d = np.asarray(dof).astype(np.int64)
    top = int(d.max(initial=1))
    table = _QUANTILES.get(q)
    if table is None or table.size < top:
        table = _QUANTILES[q] = special.chdtri(np.arange(1, max(top, 64) + 1, dtype=np.float64), 1.0 - q)
    return table[d - 1]


def js_distance(ref_counts: np.ndarray, cur_counts: np.ndarray, valid: np.ndarray | None = None) -> np.ndarray:
    """Jensen-Shannon distance (base 2, in [0, 1]) between the unsmoothed bin proportions."""
    p = proportions(ref_counts, valid, 0.0)
    q = proportions(cur_counts, valid, 0.0)
    m = 0.5 * (p + q)
    with np.errstate(divide="ignore", invalid="ignore"):
        kl_p = np.where(p > 0, p * np.log2(p / m), 0.0).sum(axis=-1)
        kl_q = np.where(q > 0, q * np.log2(q / m), 0.0).sum(axis=-1)
    return np.sqrt(np.clip(0.5 * (kl_p + kl_q), 0.0, None))


def hellinger(ref_counts: np.ndarray, cur_counts: np.ndarray, valid: np.ndarray | None = None) -> np.ndarray:
    """Hellinger distance ``sqrt(1 - sum(sqrt(p * q)))`` in [0, 1]."""
    p = proportions(ref_counts, valid, 0.0)
    q = proportions(cur_counts, valid, 0.0)
    bc = np.sqrt(p * q).sum(axis=-1)
    return np.sqrt(np.clip(1.0 - bc, 0.0, None))


def chi2_homogeneity(ref_counts: np.ndarray, cur_counts: np.ndarray, valid: np.ndarray | None = None
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Chi-square test of homogeneity of the reference's and the window's counts: both are samples.

    (A goodness-of-fit test against the reference's proportions treats the reference as exact and inflates the
    statistic by about ``1 + n_cur / n_ref``: at windows as large as the reference it rejects most of the
    time under no drift.) Returns ``(statistic, p_value, w)``. The statistic and p-value equal
    ``scipy.stats.chi2_contingency([ref, cur], correction=False)`` on the bins either side has events in;
    ``w = sqrt(statistic * N / (n_ref * n_cur))`` estimates Cohen's w between the two distributions on the same
    scale as a goodness-of-fit w (it is ``sqrt(sum((q - p)^2 / m))`` with ``m`` the pooled proportions).
    """
    ref = np.asarray(ref_counts, dtype=np.float64)
    cur = np.asarray(cur_counts, dtype=np.float64)
    v = np.ones_like(cur, dtype=bool) if valid is None else valid
    ref, cur = np.where(v, ref, 0.0), np.where(v, cur, 0.0)
    n_ref, n_cur = ref.sum(axis=-1), cur.sum(axis=-1)
    total = n_ref + n_cur
    col = ref + cur
    used = v & (col > 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        share = np.where(used, col / total[..., None], 0.0)
        e_ref, e_cur = share * n_ref[..., None], share * n_cur[..., None]
        terms = np.where(used & (e_ref > 0), (ref - e_ref) ** 2 / e_ref, 0.0) + \
            np.where(used & (e_cur > 0), (cur - e_cur) ** 2 / e_cur, 0.0)
    stat = terms.sum(axis=-1)
    dof = np.maximum(used.sum(axis=-1) - 1, 1)
    both = (n_ref > 0) & (n_cur > 0)
    p = np.where(both, special.chdtrc(dof, stat), 1.0)
    scale = np.divide(total, n_ref * n_cur, out=np.zeros_like(total), where=both)
    return stat, p, np.sqrt(stat * scale)


def w_null_threshold(n_ref: np.ndarray, n_cur: np.ndarray, bins: np.ndarray, q: float = 0.999) -> np.ndarray:
    """The Cohen's w that sampling noise alone exceeds with probability ``1 - q``: ``sqrt(chi2_q(B-1) *
    (1/n_ref + 1/n_cur))``. Under no drift ``w^2 ~ (B - 1)(1/n_ref + 1/n_cur)``, so a fixed w of 0.1 is met by
    noise for features with many levels; the engine uses ``max(threshold, this)``."""
    scale = 1.0 / np.maximum(n_ref, 1) + 1.0 / np.maximum(n_cur, 1)
    return np.sqrt(chi2_upper_quantile(np.maximum(np.asarray(bins) - 1, 1), q) * scale)


def rank_sum(ref_counts: np.ndarray, cur_counts: np.ndarray, valid: np.ndarray | None = None
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mann-Whitney (Wilcoxon rank-sum) test of the window against the reference, from ordered bin counts.

    Bins must be in value order (numeric bins are; sparse ones must *not* be pooled into an extra bin). Every
    value of a bin gets the bin's mid-rank, so the test is the rank-sum test of the data expanded from the bins
    with all values of a bin tied: ``U = sum_b cur_b * (ref below b + ref_b / 2)`` counts the (window, reference)
    pairs where the window's value is larger, ties as one half; its variance under "same distribution" is
    ``n m / 12 * (N + 1 - sum(t^3 - t) / (N (N - 1)))`` with ``t`` the pooled count per bin (the exact tie
    correction). Returns ``(auc, p_value, z)`` over the last axis: ``auc = U / (n m)`` is the common-language
    effect size (0.5: no shift; above: the window's values are larger), the p-value is two-sided, normal
    approximation without continuity correction: equal to ``scipy.stats.mannwhitneyu(cur, ref,
    method="asymptotic", use_continuity=False)`` on the expanded data.

    A 1-degree-of-freedom test: against a location shift it has far more power than a chi-square over all
    bins (which spends its power on every kind of change): at 0.1 sd, one window of 1,000 against 5,000 gives
    z of about 2.9 where the 9-bin chi-square's noncentrality is about 9.
    """
    return _rank_sum_test(*_rank_sum_moments(ref_counts, cur_counts, valid))


def rank_sum_with_floor(ref_counts: np.ndarray, cur_counts: np.ndarray, valid: np.ndarray | None = None,
                        q: float = 0.999) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`rank_sum`'s AUC and p-value, and :func:`rank_sum_null_threshold`, from one pass over the counts."""
    u, nm, var = _rank_sum_moments(ref_counts, cur_counts, valid)
    auc, p, _ = _rank_sum_test(u, nm, var)
    return auc, p, _rank_sum_floor(nm, var, q)


def _rank_sum_test(u: np.ndarray, nm: np.ndarray, var: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    with np.errstate(divide="ignore", invalid="ignore"):
        z = np.where(var > 0, (u - 0.5 * nm) / np.sqrt(np.where(var > 0, var, 1.0)), 0.0)
        auc = np.where(nm > 0, u / np.where(nm > 0, nm, 1.0), 0.5)
    p = np.where(var > 0, 2.0 * special.ndtr(-np.abs(z)), 1.0)
    return auc, np.minimum(p, 1.0), z


def _rank_sum_moments(ref_counts: np.ndarray, cur_counts: np.ndarray, valid: np.ndarray | None
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``U``, ``n m`` and the tie-corrected null variance of ``U`` (see :func:`rank_sum`)."""
    ref = np.asarray(ref_counts, dtype=np.float64)
    cur = np.asarray(cur_counts, dtype=np.float64)
    if valid is not None:
        ref, cur = np.where(valid, ref, 0.0), np.where(valid, cur, 0.0)
    n, m = ref.sum(axis=-1), cur.sum(axis=-1)
    t = ref + cur
    total = n + m
    u = (cur * (np.cumsum(ref, axis=-1) - 0.5 * ref)).sum(axis=-1)
    nm = n * m
    with np.errstate(divide="ignore", invalid="ignore"):
        var = nm / 12.0 * (total + 1.0 - (t * t * t - t).sum(axis=-1) / np.maximum(total * (total - 1.0), 1.0))
    return u, nm, np.maximum(var, 0.0)


def rank_sum_null_threshold(ref_counts: np.ndarray, cur_counts: np.ndarray, valid: np.ndarray | None = None,
                            q: float = 0.999) -> np.ndarray:
    """The ``|AUC - 0.5|`` that sampling noise alone exceeds with probability ``1 - q`` (two-sided) at these
    sample sizes and ties: ``z_{(1+q)/2} * sd(U) / (n m)``. The engine's rank-sum threshold is
    ``max(fixed threshold, this)``, like PSI's and Cohen's w's."""
    _, nm, var = _rank_sum_moments(ref_counts, cur_counts, valid)
    return _rank_sum_floor(nm, var, q)


def _rank_sum_floor(nm: np.ndarray, var: np.ndarray, q: float) -> np.ndarray:
    sd = np.sqrt(var) / np.where(nm > 0, nm, 1.0)
    return special.ndtri(0.5 + 0.5 * q) * sd


def category_shift(ref_counts: np.ndarray, cur_counts: np.ndarray, valid: np.ndarray | None = None,
                   q: float = 0.999) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The category whose share moved most significantly, tested one category at a time.

    For each category ``b`` with pooled count ``t_b``, the window's count is, under "same distribution" and given
    ``t_b``, hypergeometric (``t_b`` of the ``N`` pooled events are this category, the window holds ``m``): its
    tails are computed as those of the binomial with the smaller of ``t_b`` and ``m`` as draws (exact for small
    counts, a C ufunc), moved to the hypergeometric's variance on the normal scale (the z of the binomial tail
    divided by ``sqrt((N - draws) / (N - 1))``): within a factor 0.75-1.4 of the exact hypergeometric tail
    (Fisher's exact test of that category against the rest) from 1e-2 down to 1e-9, where the plain binomial is
    up to 10^4 times too large. Two-sided p-values, Bonferroni over the used categories. Against a shift that
    moves one category (a head level losing 5 % of the mass), this has far more power than a chi-square over 50
    categories, which spreads its power over every direction of change.

    Returns ``(delta, p_value, floor, level)`` over the last axis: ``delta`` is the signed change of the chosen
    category's share (window minus reference), ``floor`` the ``|delta|`` that noise alone exceeds with
    probability ``1 - q`` for that category (two-sided, normal), ``level`` its index. Use on pooled counts
    (:func:`pool_sparse`).
    """
    ref = np.asarray(ref_counts, dtype=np.float64)
    cur = np.asarray(cur_counts, dtype=np.float64)
    if valid is not None:
        ref, cur = np.where(valid, ref, 0.0), np.where(valid, cur, 0.0)
    n, m = ref.sum(axis=-1, keepdims=True), cur.sum(axis=-1, keepdims=True)
    total = n + m
    t = ref + cur
    used = t > 0
    p_level = np.ones_like(t)  # the tails only where a category has events (most slots of a short list are empty)
    p_level[used] = hypergeom_two_sided(cur[used], t[used], np.broadcast_to(m, t.shape)[used],
                                        np.broadcast_to(total, t.shape)[used])
    level = np.argmin(p_level, axis=-1)
    p_min = np.take_along_axis(p_level, level[..., None], axis=-1)[..., 0]
    k = np.maximum(used.sum(axis=-1), 1)
    both = (n[..., 0] > 0) & (m[..., 0] > 0)
    p = np.where(both, np.minimum(1.0, k * p_min), 1.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        delta_all = np.where(used, cur / np.maximum(m, 1) - ref / np.maximum(n, 1), 0.0)
        pooled = np.where(total > 0, t / np.maximum(total, 1), 0.0)
        noise = np.sqrt(pooled * (1 - pooled) * (1 / np.maximum(n, 1) + 1 / np.maximum(m, 1)))
    pick = level[..., None]
    delta = np.take_along_axis(delta_all, pick, axis=-1)[..., 0]
    floor = special.ndtri(0.5 + 0.5 * q) * np.take_along_axis(noise, pick, axis=-1)[..., 0]
    return np.where(both, delta, 0.0), p, floor, level


def hypergeom_two_sided(x: np.ndarray, successes: np.ndarray, draws: np.ndarray, population: np.ndarray
                        ) -> np.ndarray:
    """Two-sided p-value ``2 min(P(X <= x), P(X >= x))`` (at most 1) of ``X`` hypergeometric: ``draws`` from
    ``population`` items of which ``successes`` are marked; the approximation of :func:`category_shift`."""
    x = np.asarray(x, dtype=np.float64)
    a, b = np.broadcast_arrays(np.asarray(successes, dtype=np.float64), np.asarray(draws, dtype=np.float64))
    total = np.broadcast_to(np.asarray(population, dtype=np.float64), a.shape)
    d, k = np.minimum(a, b), np.maximum(a, b)  # X ~ Hyp(N, t, m) ~ Hyp(N, m, t): the fewer draws, the closer
    ok = (d > 0) & (total > 1)
    d1 = np.maximum(d, 1).astype(np.int64)
    share = np.clip(np.divide(k, total, out=np.ones_like(k), where=total > 0), 1e-12, 1 - 1e-12)
    xi = np.clip(x, 0, d).astype(np.int64)
    # the tail on the side of the expected count, in one C call: P(X <= x) below it, and above it
    # P(X >= x) = P(d - X <= d - x) with d - X ~ Bin(d, 1 - share)
    up = xi > d1 * share
    fpc = np.sqrt(np.clip((total - d) / np.maximum(total - 1, 1), 1e-12, 1.0))
    return _hypergeom_tails(np.where(up, d1 - xi, xi), d1, np.where(up, 1.0 - share, share), fpc, ok)


def _hypergeom_tails(k: np.ndarray, n: np.ndarray, p: np.ndarray, fpc: np.ndarray, ok: np.ndarray) -> np.ndarray:
    """:func:`hypergeom_two_sided` from its binomial tail's arguments (``bdtr(k, n, p)``), finite-population
    factor and which tails exist (the compiled kernel computes these for :func:`binned_statistics`)."""
    tail = np.minimum(special.bdtr(k, n, p), 0.5)
    two_sided = 2.0 * special.ndtr(special.ndtri(np.clip(tail, 1e-300, 0.5)) / fpc)
    return np.where(ok, np.minimum(two_sided, 1.0), 1.0)


_LOG_TINY, _LOG_HALF = np.log(1e-300), np.log(0.5)


def _shift_tails(k: np.ndarray, n: np.ndarray, p: np.ndarray, fpc: np.ndarray, ok: np.ndarray, group: np.ndarray
                 ) -> np.ndarray:
    """:func:`_hypergeom_tails` where a cell can be its group's smallest (``group``: each cell's (row, feature),
    nondecreasing); +inf elsewhere: what :func:`category_shift` keeps of a group (the first smallest p-value,
    its slot) is unchanged, and the binomial tail (``bdtr``, the costly part: ~0.15 us a cell) is computed for a
    few cells of the ~260 a 200-level feature has per row.

    Bounds, per cell, of the lower tail ``T = P(X <= k)``, ``X ~ Bin(n, p)``, ``k <= n p`` (the side
    ``hypergeom_two_sided`` takes), from the probability of ``k`` itself (``log P(X = k)`` by ``gammaln``): ``T
    >= P(X = k)``, and ``T <= P(X = k) / (1 - r)`` with ``r = k (1 - p) / ((n - k + 1) p) < 1``, the largest
    ratio of consecutive terms below ``k`` (a geometric series), or Chernoff's ``exp(-n D(k/n || p))`` when
    smaller (near the mean). The p-value is ``g(T) = 2 Phi(Phi^-1(min(T, 1/2) clipped at 1e-300) / fpc)``,
    increasing in ``T`` and at most ``2 min(T, 1/2)``: a group's smallest p-value is at most ``m = min 2
    max(min(U, 1/2), 1e-300)`` over its cells, and a cell is computed exactly when its lower bound could reach
    that, ``min(max(L, 1e-300), 1/2) <= Phi(fpc Phi^-1(m / 2))``. Both bounds are widened by far more than the
    rounding of their terms (1e-12 of their magnitudes, and 1e-6 overall): a cell left out is larger than the
    smallest by more than any rounding."""
    out = np.full(k.shape, np.inf)
    if not k.size:
        return out
    nf, kf = n.astype(np.float64), k.astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        big = special.gammaln(nf + 1.0)
        log_k = special.xlogy(kf, p) + special.xlog1py(nf - kf, -p)
        log_pmf = big - special.gammaln(kf + 1.0) - special.gammaln(nf - kf + 1.0) + log_k
        chernoff = -nf * (special.rel_entr(kf / nf, p) + special.rel_entr(1.0 - kf / nf, 1.0 - p))
        geometric = log_pmf - np.log1p(-np.minimum(kf * (1.0 - p) / ((nf - kf + 1.0) * p), 1.0))
        slack = 1e-12 * (big + np.abs(log_k)) + 1e-6
    log_u = np.where(ok, np.minimum(np.fmin(geometric, chernoff) + slack, 0.0), 0.0)  # no tail: the p-value 1
    log_l = np.where(ok, log_pmf - slack, 0.0)
    starts = np.flatnonzero(np.r_[True, group[1:] != group[:-1]])
    best = np.minimum.reduceat(2.0 * np.clip(np.exp(log_u), 1e-300, 0.5), starts)
    reach = special.ndtr(fpc * np.repeat(special.ndtri(np.minimum(best, 1.0) / 2), np.diff(np.r_[starts, k.size])))
    cand = np.flatnonzero(np.log(np.maximum(reach, 1e-300)) + 1e-6 >= np.clip(log_l, _LOG_TINY, _LOG_HALF))
    out[cand] = _hypergeom_tails(k[cand], n[cand], p[cand], fpc[cand], ok[cand])
    return out


def binomial_sf(k: np.ndarray, n: np.ndarray, p: np.ndarray) -> np.ndarray:
    """P(X >= k) for X ~ Binomial(n, p) (a C ufunc): the test of a new-category count against the reference's
    unseen mass."""
    k = np.asarray(k, dtype=np.int64)
    n = np.maximum(np.asarray(n, dtype=np.int64), 1)
    return np.where(k <= 0, 1.0, special.bdtrc(np.maximum(k - 1, 0), n, np.clip(p, 1e-12, 1.0)))


def ks_2samp(ref_sorted: np.ndarray, cur: np.ndarray) -> tuple[float, float]:
    """Two-sided two-sample KS statistic and p-value of one feature (see :func:`ks_wasserstein_columns`).

    The statistic equals ``scipy.stats.ks_2samp``'s exactly (ties included); the p-value is Smirnov's limit
    with Stephens' finite-sample correction, within 0.01 of scipy's ``method="asymp"``.
    """
    d, p, _ = ks_wasserstein_columns(np.asarray(ref_sorted, dtype=np.float64)[:, None],
                                     np.asarray(cur, dtype=np.float64)[:, None])
    return float(d[0]), float(p[0])


def wasserstein(ref_sorted: np.ndarray, cur: np.ndarray) -> float:
    """First Wasserstein distance of one feature's samples (equals ``scipy.stats.wasserstein_distance``)."""
    _, _, w = ks_wasserstein_columns(np.asarray(ref_sorted, dtype=np.float64)[:, None],
                                     np.asarray(cur, dtype=np.float64)[:, None])
    return float(w[0])


def ks_wasserstein_columns(ref_sorted: np.ndarray, cur: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """KS statistic, KS p-value and W1 for every column at once (NaN = missing, ignored per column).

    ``ref_sorted`` is ``(n1, k)`` sorted per column with NaNs last (``np.sort(axis=0)``), ``cur`` is ``(n2, k)``.
    Each column's two sorted runs are merged by one stable argsort (timsort merges runs in linear time);
    the ECDFs follow from cumulative counts, so every column costs O(n1 + n2) in a handful of numpy calls.
    KS D is the largest ECDF gap at the last of each run of tied values (as scipy); W1 is the integral of the
    ECDF gap; the p-value is ``kolmogorov((sqrt(en) + 0.12 + 0.11 / sqrt(en)) * D)`` (Stephens' correction
    of Smirnov's limit, a C ufunc), within 0.01 of ``scipy.stats.ks_2samp(method="asymp")``.
    """
    n1 = np.sum(~np.isnan(ref_sorted), axis=0)
    n2 = np.sum(~np.isnan(cur), axis=0)
    b = np.sort(cur, axis=0)
    allv = np.concatenate([ref_sorted, b])
    order = np.argsort(allv, axis=0, kind="stable")
    vals = np.take_along_axis(allv, order, axis=0)
    from_ref = order < ref_sorted.shape[0]
    with np.errstate(invalid="ignore", divide="ignore"):
        cdf_a = np.cumsum(from_ref, axis=0) / n1
        cdf_b = np.cumsum(~from_ref, axis=0) / n2
        diff = np.abs(cdf_a - cdf_b)
        gaps = np.diff(vals, axis=0)  # NaN rows (missing values sort last) give NaN gaps
    last_of_tie = np.concatenate([gaps != 0, np.ones((1, vals.shape[1]), dtype=bool)])
    valid = ~np.isnan(vals) & last_of_tie
    d = np.where(valid, diff, 0.0).max(axis=0)
    w = np.nansum(np.where(np.isnan(gaps), 0.0, diff[:-1] * gaps), axis=0)
    ok = (n1 > 0) & (n2 > 0)
    en = np.sqrt(np.where(ok, n1 * n2 / np.maximum(n1 + n2, 1), 1.0))
    p = np.clip(special.kolmogorov((en + 0.12 + 0.11 / en) * d), 0.0, 1.0)
    nan = np.full(d.shape, np.nan)
    return np.where(ok, d, nan), np.where(ok, p, nan), np.where(ok, w, nan)


def compiled() -> bool:
    """Whether the compiled kernel of :func:`binned_statistics` is built (the numpy path stands in without)."""
    return _kernel is not None


#: Rows of the compiled kernel's output (see ``_binned.c``).
_S_NR, _S_NC, _S_BINS, _S_EVENTS, _S_PSI, _S_CHI, _S_DOF, _S_BOTH, _S_W, _S_JS, _S_HEL, _S_U, _S_NM, _S_VAR = range(14)
_FLAGS = {"psi": 1, "chi2": 2, "js": 4, "hellinger": 8}


def binned_statistics(ref_counts: np.ndarray, cur_counts: np.ndarray, valid: np.ndarray,
                      need: frozenset[str] | set[str], signed: str | None = None, q: float = 0.999,
                      compiled: bool | None = None) -> dict[str, Any]:
    """The binned statistics in ``need`` (``psi``, ``chi2``, ``js``, ``hellinger``) of every row of
    ``cur_counts`` ``(rows, features, bins)`` against ``ref_counts`` ``(features, bins)``, sparse bins pooled
    (:func:`pool_sparse`; ``valid`` is ``(features, bins)``), and the ``signed`` test: ``"rank_sum"`` (on the
    counts in value order, unpooled) or ``"category_shift"`` (on the pooled counts).

    Returns ``(rows, features)`` arrays: ``bins`` (after pooling), ``n_ref`` and ``n_cur`` (pooled sums),
    ``events`` (each row's events, all bins), the statistics asked for (``chi2`` as statistic, ``chi2_p`` and
    ``w``), and ``signed``: ``(auc, p, floor)`` for the rank-sum, ``(delta, p, floor, level)`` for the
    category shift (see :func:`rank_sum_with_floor`, :func:`category_shift`).

    One pass of the compiled kernel (``_binned.c``) when it is built (``compiled``: True requires it, None
    uses it when built, False never), else the numpy functions of this module: the same formulas; the
    results agree to the last bits of sums of non-integer terms (``tests/core/test_stats.py``).
    """
    stack = np.asarray(cur_counts, dtype=np.float64)
    if compiled and _kernel is None:
        raise RuntimeError("the compiled statistics kernel (stream_monitor.core._binned) is not built")
    if _kernel is None or compiled is False:
        return _binned_numpy(np.asarray(ref_counts, dtype=np.float64), stack, valid, need, signed, q)
    rows, feats, width = stack.shape
    out = np.empty((14, rows, feats))
    rc = np.empty((rows, feats, width + 1))
    cc = np.empty((rows, feats, width + 1))
    v = np.empty((rows, feats, width + 1), dtype=np.uint8)
    flags = sum(_FLAGS[s] for s in need) | (16 if signed == "rank_sum" else 0)
    _kernel.binned(np.ascontiguousarray(ref_counts, dtype=np.float64), np.ascontiguousarray(stack),
                   np.ascontiguousarray(valid, dtype=np.uint8), rows, feats, width, MIN_EXPECTED, flags, out, rc,
                   cc, v)
    res: dict[str, Any] = {"bins": out[_S_BINS].astype(np.int64), "n_ref": out[_S_NR], "n_cur": out[_S_NC],
                           "events": out[_S_EVENTS].astype(np.int64), "signed": None}
    if "psi" in need:
        res["psi"] = out[_S_PSI]
    if "chi2" in need:
        res["chi2"], res["w"] = out[_S_CHI], out[_S_W]
        res["chi2_p"] = np.where(out[_S_BOTH] > 0, special.chdtrc(out[_S_DOF], out[_S_CHI]), 1.0)
    if "js" in need:
        res["js"] = out[_S_JS]
    if "hellinger" in need:
        res["hellinger"] = out[_S_HEL]
    if signed == "rank_sum":
        u, nm, var = out[_S_U], out[_S_NM], out[_S_VAR]
        auc, p, _ = _rank_sum_test(u, nm, var)
        res["signed"] = (auc, p, _rank_sum_floor(nm, var, q))
    elif signed == "category_shift":
        cells = rows * feats * (width + 1)
        bk, bn, where = (np.empty(cells, dtype=np.int64) for _ in range(3))
        bp, fpc = np.empty(cells), np.empty(cells)
        ok = np.empty(cells, dtype=bool)
        k = _kernel.shift_inputs(rc, cc, v, rows * feats, width + 1, bk, bn, bp, fpc, ok.view(np.uint8), where)
        p_used = _shift_tails(bk[:k], bn[:k], bp[:k], fpc[:k], ok[:k], where[:k] // (width + 1))
        picked = np.empty((4, rows * feats))
        _kernel.shift_pick(p_used, where, k, rc, cc, v, rows * feats, width + 1, picked)
        delta, p, noise, level = picked.reshape(4, rows, feats)
        res["signed"] = (delta, p, special.ndtri(0.5 + 0.5 * q) * noise, level.astype(np.int64))
    return res


def _binned_numpy(ref: np.ndarray, stack: np.ndarray, valid: np.ndarray, need: frozenset[str] | set[str],
                  signed: str | None, q: float) -> dict[str, Any]:
    """:func:`binned_statistics` with this module's numpy functions."""
    shape = stack.shape
    ref_b, valid_b = np.broadcast_to(ref, shape), np.broadcast_to(valid, shape)
    rc, cc, v = pool_sparse(ref_b, stack, valid_b)
    res: dict[str, Any] = {"bins": v.sum(axis=-1), "n_ref": rc.sum(axis=-1), "n_cur": cc.sum(axis=-1),
                           "events": stack.sum(axis=-1).astype(np.int64), "signed": None}
    if "psi" in need:
        res["psi"] = psi(rc, cc, v)
    if "chi2" in need:
        res["chi2"], res["chi2_p"], res["w"] = chi2_homogeneity(rc, cc, v)
    if "js" in need:
        res["js"] = js_distance(rc, cc, v)
    if "hellinger" in need:
        res["hellinger"] = hellinger(rc, cc, v)
    if signed == "rank_sum":
        res["signed"] = rank_sum_with_floor(ref_b, stack, valid_b, q)
    elif signed == "category_shift":
        res["signed"] = category_shift(rc, cc, v, q)
    return res
