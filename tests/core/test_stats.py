import numpy as np
import pytest
from scipy import stats as sps
from scipy import special
from scipy.spatial.distance import jensenshannon

from stream_monitor.core import stats


def test_psi_matches_hand_computed_example():
    # p = [.5, .3, .2], q = [.3, .3, .4]:
    # (0.3-0.5)*ln(0.3/0.5) + 0 + (0.4-0.2)*ln(0.4/0.2) = 0.2*0.5108256 + 0.2*0.6931472 = 0.2407946
    ref = np.array([[50, 30, 20]])
    cur = np.array([[30, 30, 40]])
    assert stats.psi(ref, cur, alpha=0.0)[0] == pytest.approx(0.2407946, abs=1e-6)


def test_psi_smoothing_keeps_empty_bins_finite():
    ref = np.array([[100, 0, 0]])
    cur = np.array([[0, 50, 50]])
    value = stats.psi(ref, cur)[0]
    assert np.isfinite(value) and value > 5


def test_psi_ignores_padded_bins():
    valid = np.array([[True, True, False]])
    a = stats.psi(np.array([[50, 50, 0]]), np.array([[40, 60, 0]]), valid)
    b = stats.psi(np.array([[50, 50]]), np.array([[40, 60]]))
    assert a[0] == pytest.approx(b[0])


def test_psi_null_threshold_shrinks_with_sample_size():
    small = stats.psi_null_threshold(np.array([500]), np.array([200]), np.array([10]))[0]
    large = stats.psi_null_threshold(np.array([50000]), np.array([50000]), np.array([10]))[0]
    assert small > 0.1 > large


def test_ks_matches_scipy():
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=3000), rng.normal(0.1, 1.2, size=1700)
    d, p = stats.ks_2samp(np.sort(a), b)
    ref = sps.ks_2samp(a, b, method="asymp")
    assert d == pytest.approx(ref.statistic, abs=1e-12)
    assert p == pytest.approx(ref.pvalue, abs=0.01)


def test_ks_with_ties_matches_scipy():
    rng = np.random.default_rng(2)
    a, b = rng.integers(0, 5, 800).astype(float), rng.integers(0, 6, 600).astype(float)
    d, p = stats.ks_2samp(np.sort(a), b)
    ref = sps.ks_2samp(a, b, method="asymp")
    assert d == pytest.approx(ref.statistic, abs=1e-12)
    assert p == pytest.approx(ref.pvalue, abs=0.01)


@pytest.mark.parametrize(("n1", "n2", "shift"), [(5000, 1000, 0.0), (5000, 1000, 0.1), (300, 300, 0.2),
                                                  (5000, 200, 0.05), (100, 80, 0.3), (7, 3, 1.0)])
def test_ks_matches_scipy_across_sizes(n1, n2, shift):
    rng = np.random.default_rng(n1 + n2)
    a, b = rng.normal(size=n1), rng.normal(shift, size=n2)
    d, p = stats.ks_2samp(np.sort(a), b)
    ref = sps.ks_2samp(a, b, method="asymp")
    assert d == pytest.approx(ref.statistic, abs=1e-12)
    assert p == pytest.approx(ref.pvalue, abs=0.01)
    if ref.pvalue < 0.05:
        assert p == pytest.approx(ref.pvalue, rel=0.1)


@pytest.mark.parametrize(("n1", "n2"), [(2000, 900), (5000, 1000), (7, 3), (1, 1), (1000, 1000)])
def test_wasserstein_matches_scipy(n1, n2):
    rng = np.random.default_rng(n1 * n2)
    a, b = rng.exponential(size=n1), rng.exponential(1.3, size=n2)
    assert stats.wasserstein(np.sort(a), b) == pytest.approx(sps.wasserstein_distance(a, b), rel=1e-10)


def test_wasserstein_with_ties_matches_scipy():
    rng = np.random.default_rng(9)
    a, b = rng.integers(0, 4, 500).astype(float), rng.integers(1, 6, 300).astype(float)
    assert stats.wasserstein(np.sort(a), b) == pytest.approx(sps.wasserstein_distance(a, b), rel=1e-10)


def test_js_distance_matches_scipy():
    ref = np.array([[10, 20, 30, 40], [5, 5, 5, 85]])
    cur = np.array([[40, 30, 20, 10], [5, 5, 5, 85]])
    ours = stats.js_distance(ref, cur)
    for j in range(2):
        assert ours[j] == pytest.approx(jensenshannon(ref[j], cur[j], base=2), abs=1e-12)


@pytest.mark.parametrize(("ref", "cur"), [
    ([500, 300, 150, 50], [80, 70, 30, 20]),
    ([5000, 3, 0, 12], [4000, 0, 0, 40]),  # an empty column on both sides: not a degree of freedom
])
def test_chi2_homogeneity_matches_scipy_contingency(ref, cur):
    stat, p, w = stats.chi2_homogeneity(np.array([ref]), np.array([cur]))
    table = np.array([ref, cur])
    table = table[:, table.sum(axis=0) > 0]
    sref = sps.chi2_contingency(table, correction=False)
    assert stat[0] == pytest.approx(sref.statistic)
    assert p[0] == pytest.approx(sref.pvalue)
    n1, n2 = sum(ref), sum(cur)
    assert w[0] == pytest.approx(np.sqrt(sref.statistic * (n1 + n2) / (n1 * n2)))


def test_chi2_homogeneity_is_calibrated_where_goodness_of_fit_is_not():
    # reference 5,000 and window 10,000 from the same 200-level long tail: a homogeneity test rejects ~1 %
    rng = np.random.default_rng(12)
    probs = 1 / np.arange(1, 201) ** 1.1
    probs /= probs.sum()
    rejections = over_floor = 0

    def tracked(counts):  # as a pane counts them: the top 50 levels and "other"
        return np.concatenate([counts[:50], [counts[50:].sum()]])

    for _ in range(300):
        ref = tracked(rng.multinomial(5000, probs))
        cur = tracked(rng.multinomial(10000, probs))
        _, p, w = stats.chi2_homogeneity(ref[None], cur[None])
        rejections += p[0] < 0.01
        over_floor += w[0] >= stats.w_null_threshold(5000, 10000, 51)[()]
    assert rejections <= 9  # 1 % of 300 is 3; a goodness-of-fit test rejected 100 % here
    assert over_floor <= 1  # the noise floor is the 99.9 % quantile of w under no drift


def test_hellinger_bounds():
    same = stats.hellinger(np.array([[1, 2, 3]]), np.array([[2, 4, 6]]))[0]
    disjoint = stats.hellinger(np.array([[1, 0]]), np.array([[0, 1]]))[0]
    assert same == pytest.approx(0.0, abs=1e-7)
    assert disjoint == pytest.approx(1.0)


def test_psi_pvalue_is_calibrated_under_the_null():
    rng = np.random.default_rng(4)
    p = np.full(10, 0.1)
    ref = rng.multinomial(5000, p, size=4000)
    cur = rng.multinomial(1000, p, size=4000)
    values = stats.psi(ref, cur)
    pv = stats.psi_pvalue(values, np.full(4000, 5000), np.full(4000, 1000), np.full(4000, 10))
    assert 0.005 < np.mean(pv < 0.05) < 0.09  # close to nominal 5 %


def test_column_wise_ks_and_wasserstein_equal_the_one_column_versions():
    rng = np.random.default_rng(10)
    a = rng.normal(size=(3000, 5))
    b = rng.normal(0.2, 1.3, size=(800, 5))
    a[:, 1] = np.round(a[:, 1])  # ties
    b[:, 1] = np.round(b[:, 1])
    a[rng.random(3000) < 0.1, 2] = np.nan  # missing values, different counts per column
    b[rng.random(800) < 0.3, 2] = np.nan
    b[:, 4] = np.nan  # a column with no values in the window
    d, p, w = stats.ks_wasserstein_columns(np.sort(a, axis=0), b)
    for j in range(4):
        aj, bj = a[:, j][~np.isnan(a[:, j])], b[:, j][~np.isnan(b[:, j])]
        dj, pj = stats.ks_2samp(np.sort(aj), bj)
        assert d[j] == pytest.approx(dj, abs=1e-12)
        assert p[j] == pytest.approx(pj, abs=1e-12)
        assert w[j] == pytest.approx(sps.wasserstein_distance(aj, bj), rel=1e-9)
        assert d[j] == pytest.approx(sps.ks_2samp(aj, bj).statistic, abs=1e-12)
    assert np.isnan(d[4]) and np.isnan(w[4])


def test_pooling_sparse_bins_keeps_small_window_tests_calibrated():
    # windows of 100 events from a 200-level long tail (51 tracked slots, most expecting < 1 event): without
    # pooling the chi-square approximation rejects several times too often; pooled it stays near nominal
    rng = np.random.default_rng(5)
    probs = 1 / np.arange(1, 201) ** 1.1
    probs /= probs.sum()
    ref = rng.multinomial(5000, probs)
    ref = np.concatenate([ref[:50], [ref[50:].sum()]])
    cur = rng.multinomial(100, probs, size=3000)
    cur = np.concatenate([cur[:, :50], cur[:, 50:].sum(axis=1, keepdims=True)], axis=1)
    refs = np.repeat(ref[None], 3000, axis=0)
    valid = np.ones(refs.shape, dtype=bool)
    _, raw_p, _ = stats.chi2_homogeneity(refs, cur, valid)
    rc, cc, v = stats.pool_sparse(refs, cur, valid)
    _, pooled_p, _ = stats.chi2_homogeneity(rc, cc, v)
    assert np.mean(pooled_p < 0.01) <= 0.02
    assert np.mean(raw_p < 0.001) > 2 * np.mean(pooled_p < 0.001)
    assert (rc.sum(axis=1) == refs.sum(axis=1)).all() and (cc.sum(axis=1) == cur.sum(axis=1)).all()


def test_pooling_leaves_well_filled_bins_alone():
    ref, cur = np.array([[500, 500, 0]]), np.array([[50, 50, 0]])
    valid = np.array([[True, True, False]])
    rc, cc, v = stats.pool_sparse(ref, cur, valid)
    assert v.tolist() == valid.tolist() and rc.tolist() == ref.tolist() and cc.tolist() == cur.tolist()


def _expand(counts):
    """The data a row of bin counts stands for: bin b's events all take the value b."""
    return np.repeat(np.arange(len(counts)), counts)


@pytest.mark.parametrize("ref, cur", [
    ([480, 520, 498, 510, 490, 505, 500, 495, 502, 500], [90, 110, 95, 105, 100, 98, 102, 99, 101, 100]),  # deciles
    ([4750, 250], [700, 300]),  # a binary flag: two bins, ties everywhere
    ([250, 750, 1120, 1100, 840, 500, 250, 110, 50, 30], [40, 140, 230, 230, 170, 100, 50, 25, 10, 5]),  # counts
    ([0, 300, 0, 200, 10], [5, 0, 30, 20, 1]),  # empty bins on either side
    ([3, 0, 2], [1, 4, 0]),  # tiny
])
def test_rank_sum_equals_scipy_mannwhitneyu_on_the_expanded_data(ref, cur):
    auc, p, z = stats.rank_sum(np.array([ref]), np.array([cur]))
    x, y = _expand(cur), _expand(ref)
    want = sps.mannwhitneyu(x, y, method="asymptotic", use_continuity=False)
    assert auc[0] == pytest.approx(want.statistic / (len(x) * len(y)), rel=1e-12)
    assert p[0] == pytest.approx(want.pvalue, rel=1e-9, abs=1e-300)
    assert np.sign(z[0]) == np.sign(auc[0] - 0.5)


def test_rank_sum_is_vectorised_over_leading_axes_and_ignores_padded_bins():
    rng = np.random.default_rng(30)
    ref = rng.integers(0, 200, size=(3, 4, 6))
    cur = rng.integers(0, 50, size=(3, 4, 6))
    valid = np.ones((3, 4, 6), dtype=bool)
    valid[:, 1, 4:] = False  # a feature with 4 bins, padded to 6
    auc, p, _ = stats.rank_sum(ref, cur, valid)
    for i in range(3):
        for j in range(4):
            b = valid[i, j]
            want = sps.mannwhitneyu(_expand(cur[i, j][b]), _expand(ref[i, j][b]), method="asymptotic",
                                    use_continuity=False)
            assert p[i, j] == pytest.approx(want.pvalue, rel=1e-9)
            assert auc[i, j] == pytest.approx(want.statistic / (cur[i, j][b].sum() * ref[i, j][b].sum()))
    one, _, _ = stats.rank_sum(np.array([[5, 0]]), np.array([[0, 0]]))  # an empty window: no test
    assert one[0] == 0.5 and stats.rank_sum(np.array([[5, 0]]), np.array([[0, 0]]))[1][0] == 1.0


def _decile_counts(rng, n, size, shift=0.0):
    """Bin counts over the standard normal's deciles of ``size`` samples of ``n`` values, shifted by ``shift``."""
    edges = sps.norm.ppf(np.linspace(0, 1, 11)[1:-1])
    idx = np.searchsorted(edges, rng.normal(shift, 1.0, (size, n)))
    return np.stack([np.bincount(row, minlength=10) for row in idx])


def test_rank_sum_is_calibrated_under_the_null():
    rng = np.random.default_rng(31)
    ref = _decile_counts(rng, 5000, 4000)
    cur = _decile_counts(rng, 1000, 4000)
    _, p, _ = stats.rank_sum(ref, cur)
    assert 0.04 < np.mean(p < 0.05) < 0.06
    assert np.mean(p < 0.01) < 0.015
    # and with heavy ties: a rare binary flag (two bins)
    flag_ref = rng.binomial(5000, 0.05, 4000)
    flag_cur = rng.binomial(100, 0.05, 4000)
    _, p, _ = stats.rank_sum(np.stack([5000 - flag_ref, flag_ref], 1), np.stack([100 - flag_cur, flag_cur], 1))
    assert np.mean(p < 0.05) < 0.065
    # the noise floor of |AUC - 0.5| is exceeded 1 in 1,000 times
    auc, p, _ = stats.rank_sum(ref, cur)
    floor = stats.rank_sum_null_threshold(ref, cur)
    assert np.mean(np.abs(auc - 0.5) >= floor) < 0.004
    # what the window evaluation uses: the same three figures from one pass over the counts
    both = stats.rank_sum_with_floor(ref, cur)
    assert all(np.array_equal(a, b) for a, b in zip(both, (auc, p, floor)))


def test_rank_sum_has_power_against_a_tenth_of_a_sd_where_the_binned_chi_square_has_little():
    # one window of 1,000 and four windows together against 5,000, 0.1 sd shift: z ~ 2.6 and ~4.2 (binned)
    rng = np.random.default_rng(32)
    ref = _decile_counts(rng, 5000, 500)
    for n, rank_power, chi_power in ((1000, 0.3, 0.15), (4000, 0.8, 0.7)):
        cur = _decile_counts(rng, n, 500, shift=0.1)
        auc, p_rank, _ = stats.rank_sum(ref, cur)
        _, p_chi, _ = stats.chi2_homogeneity(ref, cur)
        alpha = 1e-3
        assert np.mean(p_rank < alpha) > rank_power and np.mean(p_chi < alpha) < chi_power
        assert np.mean(p_rank < alpha) > np.mean(p_chi < alpha) + 0.2
        assert 0.02 < np.median(auc - 0.5) < 0.03  # Phi(0.1 / sqrt 2) - 0.5 = 0.028, a little less binned


@pytest.mark.parametrize("population, successes, draws", [
    (5100, 500, 100), (5100, 2000, 100), (6000, 1400, 1000), (9000, 2000, 4000), (15000, 30, 10000),
    (6000, 3, 1000)])
def test_hypergeometric_tail_is_close_to_scipys(population, successes, draws):
    x = np.arange(0, min(successes, draws) + 1)
    exact = np.minimum(1.0, 2 * np.minimum(sps.hypergeom.cdf(x, population, successes, draws),
                                           sps.hypergeom.sf(x - 1, population, successes, draws)))
    got = stats.hypergeom_two_sided(x, successes, draws, population)
    tail = (exact > 1e-9) & (exact < 0.05)
    assert np.all((got[tail] / exact[tail] > 0.7) & (got[tail] / exact[tail] < 1.5))
    assert np.all(got <= 1.0)


def test_category_shift_finds_the_category_that_moved_and_is_calibrated():
    rng = np.random.default_rng(33)
    probs = 1 / np.arange(1, 201) ** 1.1
    probs /= probs.sum()

    def tracked(counts):  # the top 50 levels and "other", as a pane counts them
        return np.concatenate([counts[..., :50], counts[..., 50:].sum(axis=-1, keepdims=True)], axis=-1)

    ref = tracked(rng.multinomial(5000, probs, size=3000))
    valid = np.ones(ref.shape, dtype=bool)
    for n in (100, 1000, 10000):
        cur = tracked(rng.multinomial(n, probs, size=3000))
        _, p, floor, _ = stats.category_shift(*stats.pool_sparse(ref, cur, valid))
        assert np.mean(p < 0.01) < 0.015  # Bonferroni over the categories: at most nominal
    moved = probs.copy()
    moved[0] -= 0.05
    moved[1:11] += 0.005
    cur = tracked(rng.multinomial(4000, moved, size=300))
    delta, p, floor, level = stats.category_shift(*stats.pool_sparse(ref[:300], cur, valid[:300]))
    assert np.mean(level == 0) > 0.9 and np.median(delta) == pytest.approx(-0.05, abs=0.01)
    assert np.mean(p < 1e-3) > 0.9
    _, p_chi, _ = stats.chi2_homogeneity(*stats.pool_sparse(ref[:300], cur, valid[:300]))
    assert np.mean(p < 1e-4) > np.mean(p_chi < 1e-4) + 0.2


def test_weighted_holm_splits_a_features_share_between_its_two_tests():
    from stream_monitor.core.drift import holm_rows
    from tests.core.drift_oracle import holm as plain_holm

    def holm(p: np.ndarray, alpha: float, w: np.ndarray) -> np.ndarray:  # one family
        return holm_rows(p[None], alpha, w[None], np.ones((1, p.size), dtype=bool))[0]

    rng = np.random.default_rng(34)
    for _ in range(100):  # unit weights: the plain procedure
        p = rng.random(7) ** 3
        assert (plain_holm(p, 0.05) == holm(p, 0.05, np.ones(7))).all()
    # two tests of one feature (weight 1/2 each) and one of another: p / w against alpha / remaining weight
    p, w = np.array([0.001, 0.004, 0.02]), np.array([0.5, 0.5, 1.0])
    assert holm(p, 0.01, w).tolist() == [True, False, False]  # 0.002 <= 0.005; 0.008 > 0.01 / 1.5
    assert holm(np.array([0.001, 0.003, 0.009]), 0.01, w).tolist() == [True, True, True]


def test_holm_per_row_equals_holm_on_each_rows_valid_hypotheses():
    """Families (windows) in one call: each row rejects what the single-family procedure of the evaluation it
    replaced rejects on its valid entries alone, with weights, ties, p-values of 1 and NaN among them; the
    invalid entries are never rejected."""
    from stream_monitor.core.drift import holm_rows
    from tests.core.drift_rows_oracle import holm

    rng = np.random.default_rng(35)
    for _ in range(300):
        families, m = int(rng.integers(1, 6)), int(rng.integers(1, 40))
        p = rng.random((families, m)) ** rng.choice([1, 4, 12])
        p[rng.random(p.shape) < 0.1] = 1.0
        p[rng.random(p.shape) < 0.1] = 1e-6  # ties
        p[rng.random(p.shape) < 0.03] = np.nan
        w = rng.choice([0.5, 1.0], size=p.shape)
        valid = rng.random(p.shape) < 0.85
        got = holm_rows(p, 0.05, w, valid)
        assert not (got & ~valid).any()
        for row in range(families):
            v = valid[row]
            assert got[row][v].tolist() == holm(p[row][v], 0.05, w[row][v]).tolist()


def _count_stacks(seed: int) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """(reference, stacked rows, valid) count matrices as windows produce them, and their corner cases: empty
    rows and references, padded (invalid) bins, sparse bins that get pooled, a single bin, huge counts."""
    rng = np.random.default_rng(seed)
    out = []
    for rows, feats, width in [(1, 1, 1), (3, 7, 51), (3, 23, 10), (2, 4, 3), (5, 9, 20)]:
        valid = rng.random((feats, width)) < 0.8
        valid[:, 0] = True
        scale = rng.choice([0.3, 5, 200, 1e6])
        ref = np.where(valid, rng.poisson(scale * rng.random((feats, width)) ** 3), 0).astype(np.float64)
        cur = np.where(valid, rng.poisson(scale * rng.random((rows, feats, width)) ** 3), 0).astype(np.float64)
        if feats > 2:
            ref[1] = 0  # a feature the reference never saw
            cur[0, 2] = 0  # and one this window has no value of
        out.append((ref, cur, valid))
    return out


@pytest.mark.compiled
@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("signed", [None, "rank_sum", "category_shift"])
def test_compiled_binned_statistics_equal_the_numpy_functions(seed, signed):
    if stats._kernel is None:
        pytest.fail("the compiled statistics kernel is not built")
    need = {"psi", "chi2", "js", "hellinger"}
    for ref, cur, valid in _count_stacks(seed):
        got = stats.binned_statistics(ref, cur, valid, need, signed, compiled=True)
        want = stats.binned_statistics(ref, cur, valid, need, signed, compiled=False)
        assert set(got) == set(want)
        for key in ("bins", "events"):
            np.testing.assert_array_equal(got[key], want[key])
            assert got[key].dtype == want[key].dtype
        for key in ("n_ref", "n_cur"):  # sums of counts: exact either way
            np.testing.assert_array_equal(got[key], want[key])
        for key in ("psi", "chi2", "chi2_p", "w", "js", "hellinger"):
            np.testing.assert_allclose(got[key], want[key], rtol=1e-12, atol=1e-15, err_msg=key)
        if signed is None:
            assert got["signed"] is None and want["signed"] is None
            continue
        for g, w in zip(got["signed"][:3], want["signed"][:3]):
            np.testing.assert_allclose(g, w, rtol=1e-12, atol=1e-15, err_msg=signed)
        if signed == "category_shift":  # the same category picked, ties included
            np.testing.assert_array_equal(got["signed"][3], want["signed"][3])


def test_chi2_quantile_table_equals_the_ufunc():
    dof = np.array([[1, 2, 9], [50, 3, 130]])
    for q in (0.999, 0.95):
        np.testing.assert_array_equal(stats.chi2_upper_quantile(dof, q), special.chdtri(dof, 1.0 - q))


@pytest.mark.compiled
def test_the_statistics_kernel_is_built():
    assert stats.compiled(), "stream_monitor.core._binned was not built by the install"


def _shift_cases(seed):
    """Count stacks for the category shift: up to 250 categories, a category that moved, tied categories,
    categories a window lost, sample sizes from 5 to 100,000."""
    rng = np.random.default_rng(seed)
    feats, rows = int(rng.integers(1, 4)), int(rng.integers(1, 4))
    width = int(rng.choice([1, 2, 5, 30, 250]))
    base = rng.dirichlet(np.full(width, rng.choice([0.1, 1.0, 10.0])), size=feats)
    n_ref, n_cur = int(rng.choice([10, 300, 5000, 100_000])), int(rng.choice([5, 100, 1000, 5000]))
    ref = np.stack([rng.multinomial(n_ref, b) for b in base]).astype(np.float64)
    cur = np.stack([[rng.multinomial(n_cur, b) for b in base] for _ in range(rows)]).astype(np.float64)
    mode = seed % 4
    if mode == 1:  # one category moved, by up to the window's size
        cur[..., 0] += rng.integers(0, n_cur)
    elif mode == 2 and width > 2:  # two categories with the same counts: the first is picked
        cur[..., 1], ref[:, 1] = cur[..., 2], ref[:, 2]
    elif mode == 3:  # half the categories gone from the window
        cur[..., : width // 2] = 0
    valid = rng.random((feats, width)) < 0.9
    valid[:, 0] = True
    return ref, cur, valid


@pytest.mark.compiled
def test_category_shift_computes_the_tails_only_where_they_can_decide(monkeypatch):
    """The compiled path computes the binomial tail only for cells whose bounds let them be their row's
    smallest p-value: the category picked, its p-value and the others' figures are what every tail gives."""
    if stats._kernel is None:
        pytest.fail("the compiled statistics kernel is not built")
    exact = stats._hypergeom_tails
    computed = []
    monkeypatch.setattr(stats, "_hypergeom_tails", lambda k, *a: computed.append(k.size) or exact(k, *a))
    pruned = every = 0
    for seed in range(400):
        ref, cur, valid = _shift_cases(seed)
        got = stats.binned_statistics(ref, cur, valid, {"psi"}, "category_shift", compiled=True)["signed"]
        pruned += sum(computed)
        computed.clear()
        want = stats.binned_statistics(ref, cur, valid, {"psi"}, "category_shift", compiled=False)["signed"]
        every += sum(computed)  # the numpy path computes every used cell's tail
        computed.clear()
        np.testing.assert_array_equal(got[3], want[3], err_msg=f"seed {seed}")
        for g, w in zip(got[:3], want[:3]):
            np.testing.assert_allclose(g, w, rtol=1e-12, atol=0, err_msg=f"seed {seed}")
    assert 0 < pruned < every / 4  # most cells' tails are never computed (16 % in these cases)


def test_shift_tails_bounds_keep_every_cell_that_can_be_smallest():
    """Cells whose exact p-values tie, are 1, or underflow the clip at 1e-300 stay candidates."""
    k = np.array([0, 0, 3, 0, 0, 40], dtype=np.int64)
    n = np.array([50, 50, 10, 2000, 2000, 100], dtype=np.int64)
    p = np.array([0.3, 0.3, 0.2, 0.9, 0.9, 0.5])
    fpc = np.array([0.95, 0.95, 1.0, 0.99, 0.98, 1.0])
    ok = np.array([True, True, True, True, True, False])
    group = np.array([0, 0, 1, 2, 2, 3])
    got = stats._shift_tails(k, n, p, fpc, ok, group)
    want = stats._hypergeom_tails(k, n, p, fpc, ok)
    assert got[0] == got[1] == want[0]  # a tie: both computed, the first is picked
    assert got[2] == want[2] == 1.0  # a tail past 1/2: p-value 1
    assert got[3] == want[3] and got[4] == want[4]  # both clipped at 1e-300, told apart by fpc only
    assert got[5] == want[5] == 1.0  # no tail: p-value 1
