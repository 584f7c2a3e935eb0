/* Binned two-sample statistics of every feature and every row of a window's stack in one pass: the compiled
 * kernel behind stats.binned_statistics.
 *
 * The numpy functions of stats.py (pool_sparse, psi, chi2_homogeneity, js_distance, hellinger, the rank-sum
 * moments, category_shift) are the reference: this kernel computes the same quantities with the same
 * formulas, in one loop per (row, feature) instead of one numpy call per formula (a window of 30 features
 * and two evidence spans took some 150 numpy calls, most of them on a few hundred numbers). Sums of counts
 * are exact either way; sums of non-integer terms (PSI, chi-square, JS, Hellinger) may differ from numpy's
 * pairwise summation in the last bits, which the tests bound. The special functions (chi-square and
 * binomial tails, normal quantiles) stay with scipy's ufuncs, called once per window on the arrays this
 * kernel returns.
 *
 * Layout: ref is (F, B) float64, the reference's counts (the same for every row); cur is (R, F, B) float64,
 * row 0 the window and rows 1... its evidence spans; valid is (F, B) uint8. Pooled counts are (R, F, B + 1):
 * the bins a test expects fewer than min_expected events in (on the smaller side) are summed into the last
 * one, valid only in rows that have such bins.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <stdint.h>

/* Rows of the statistics output, (NSTAT, R, F) float64. */
enum {
    S_NR,     /* reference events (pooled counts) */
    S_NC,     /* window events (pooled counts) */
    S_BINS,   /* bins after pooling */
    S_EVENTS, /* the row's events, all bins */
    S_PSI,    /* PSI, counts smoothed by 0.5 */
    S_CHI,    /* chi-square statistic of homogeneity */
    S_DOF,    /* its degrees of freedom (used bins - 1, at least 1) */
    S_BOTH,   /* 1 when both sides have events */
    S_W,      /* Cohen's w, sqrt(statistic * N / (n_ref n_cur)) */
    S_JS,     /* Jensen-Shannon distance, base 2 */
    S_HEL,    /* Hellinger distance */
    S_U,      /* rank-sum U (on the unpooled counts) */
    S_NM,     /* n_ref * n_cur (unpooled) */
    S_VAR,    /* tie-corrected null variance of U */
    NSTAT
};

enum { F_PSI = 1, F_CHI2 = 2, F_JS = 4, F_HEL = 8, F_RANK = 16 };

/* Releases the buffers a successful PyArg_ParseTuple filled (it releases them itself when it fails). */
static void release(Py_buffer *const *bufs, size_t n) {
    for (size_t i = 0; i < n; i++) PyBuffer_Release(bufs[i]);
}

/* The reference's and the window's events of one (row, feature): the sums of its valid pooled slots. */
static void pooled_sums(const double *a, const double *c, const uint8_t *vv, Py_ssize_t B1, double *n, double *w) {
    double sn = 0.0, sw = 0.0;
    for (Py_ssize_t b = 0; b < B1; b++)
        if (vv[b]) {
            sn += a[b];
            sw += c[b];
        }
    *n = sn;
    *w = sw;
}

static int check(Py_buffer *b, Py_ssize_t items, Py_ssize_t size, const char *what) {
    if (b->len != items * size) {
        PyErr_Format(PyExc_ValueError, "%s: %zd bytes, expected %zd", what, b->len, items * size);
        return -1;
    }
    return 0;
}

/* One (row, feature): pool, then every requested statistic. */
static void one(const double *a, const double *c, const uint8_t *vv, Py_ssize_t B, double min_expected,
                int flags, double *rc, double *cc, uint8_t *v, double *s, Py_ssize_t stride) {
    Py_ssize_t B1 = B + 1;
    double sr = 0.0, sc = 0.0, events = 0.0, total = 0.0;
    for (Py_ssize_t b = 0; b < B; b++) {
        events += c[b];
        if (vv[b]) {
            sr += a[b];
            sc += c[b];
            total += a[b] + c[b];
        }
    }
    s[S_EVENTS * stride] = events;
    /* pool_sparse */
    double n_small = sr < sc ? sr : sc, er = 0.0, ec = 0.0;
    int extra = 0;
    for (Py_ssize_t b = 0; b < B; b++) {
        int sparse = 0;
        if (vv[b]) {
            double share = total > 0 ? (a[b] + c[b]) / total : 0.0;
            sparse = share * n_small < min_expected;
        }
        if (vv[b] && !sparse) {
            rc[b] = a[b];
            cc[b] = c[b];
            v[b] = 1;
        } else {
            rc[b] = 0.0;
            cc[b] = 0.0;
            v[b] = 0;
            if (sparse) {
                er += a[b];
                ec += c[b];
                extra = 1;
            }
        }
    }
    rc[B] = extra ? er : 0.0;
    cc[B] = extra ? ec : 0.0;
    v[B] = (uint8_t)extra;

    double n_r = 0.0, n_c = 0.0, bins = 0.0;
    for (Py_ssize_t b = 0; b < B1; b++)
        if (v[b]) {
            n_r += rc[b];
            n_c += cc[b];
            bins += 1.0;
        }
    s[S_NR * stride] = n_r;
    s[S_NC * stride] = n_c;
    s[S_BINS * stride] = bins;

    if (flags & F_PSI) { /* proportions smoothed by 0.5 over valid bins */
        double tp = n_r + 0.5 * bins, tq = n_c + 0.5 * bins, psi = 0.0;
        for (Py_ssize_t b = 0; b < B1; b++) {
            if (!v[b]) continue;
            double p = tp > 0 ? (rc[b] + 0.5) / tp : 0.0, q = tq > 0 ? (cc[b] + 0.5) / tq : 0.0;
            if (p > 0 && q > 0) psi += (q - p) * log(q / p);
        }
        s[S_PSI * stride] = psi;
    }
    if (flags & F_CHI2) {
        double tot = n_r + n_c, stat = 0.0, used = 0.0;
        for (Py_ssize_t b = 0; b < B1; b++) {
            double col = rc[b] + cc[b];
            if (!v[b] || !(col > 0)) continue;
            used += 1.0;
            double share = col / tot, e_ref = share * n_r, e_cur = share * n_c;
            if (e_ref > 0) stat += (rc[b] - e_ref) * (rc[b] - e_ref) / e_ref;
            if (e_cur > 0) stat += (cc[b] - e_cur) * (cc[b] - e_cur) / e_cur;
        }
        int both = n_r > 0 && n_c > 0;
        s[S_CHI * stride] = stat;
        s[S_DOF * stride] = used - 1.0 > 1.0 ? used - 1.0 : 1.0;
        s[S_BOTH * stride] = both;
        s[S_W * stride] = sqrt(stat * (both ? tot / (n_r * n_c) : 0.0));
    }
    if (flags & (F_JS | F_HEL)) { /* unsmoothed proportions */
        double kl_p = 0.0, kl_q = 0.0, bc = 0.0;
        for (Py_ssize_t b = 0; b < B1; b++) {
            if (!v[b]) continue;
            double p = n_r > 0 ? rc[b] / n_r : 0.0, q = n_c > 0 ? cc[b] / n_c : 0.0, m = 0.5 * (p + q);
            if (p > 0) kl_p += p * log2(p / m);
            if (q > 0) kl_q += q * log2(q / m);
            bc += sqrt(p * q);
        }
        double js = 0.5 * (kl_p + kl_q), h = 1.0 - bc;
        s[S_JS * stride] = sqrt(js > 0 ? js : 0.0);
        s[S_HEL * stride] = sqrt(h > 0 ? h : 0.0);
    }
    if (flags & F_RANK) { /* on the counts in value order, not pooled */
        double n = 0.0, m = 0.0, cum = 0.0, u = 0.0, ties = 0.0;
        for (Py_ssize_t b = 0; b < B; b++) {
            double x = vv[b] ? a[b] : 0.0, y = vv[b] ? c[b] : 0.0, t = x + y;
            n += x;
            m += y;
            cum += x;
            u += y * (cum - 0.5 * x);
            ties += t * t * t - t;
        }
        double nm = n * m, tot = n + m, denom = tot * (tot - 1.0);
        double var = nm / 12.0 * (tot + 1.0 - ties / (denom > 1.0 ? denom : 1.0));
        s[S_U * stride] = u;
        s[S_NM * stride] = nm;
        s[S_VAR * stride] = var > 0 ? var : 0.0;
    }
}

static PyObject *binned(PyObject *self, PyObject *args) {
    (void)self;
    Py_buffer ref, cur, valid, out, rc, cc, v;
    Py_ssize_t R, F, B;
    double min_expected;
    int flags;
    if (!PyArg_ParseTuple(args, "y*y*y*nnndiw*w*w*w*", &ref, &cur, &valid, &R, &F, &B, &min_expected, &flags,
                          &out, &rc, &cc, &v))
        return NULL;
    PyObject *res = NULL;
    if (R < 0 || F < 0 || B < 0 || check(&ref, F * B, 8, "ref") || check(&cur, R * F * B, 8, "cur") ||
        check(&valid, F * B, 1, "valid") || check(&out, NSTAT * R * F, 8, "out") ||
        check(&rc, R * F * (B + 1), 8, "rc") || check(&cc, R * F * (B + 1), 8, "cc") ||
        check(&v, R * F * (B + 1), 1, "v"))
        goto done;
    {
        const double *a = ref.buf, *c = cur.buf;
        const uint8_t *vv = valid.buf;
        double *s = out.buf, *prc = rc.buf, *pcc = cc.buf;
        uint8_t *pv = v.buf;
        Py_ssize_t stride = R * F;
        for (Py_ssize_t r = 0; r < R; r++)
            for (Py_ssize_t f = 0; f < F; f++) {
                Py_ssize_t i = r * F + f;
                one(a + f * B, c + i * B, vv + f * B, B, min_expected, flags, prc + i * (B + 1),
                    pcc + i * (B + 1), pv + i * (B + 1), s + i, stride);
            }
    }
    res = Py_NewRef(Py_None);
done:
    release((Py_buffer *const[]){&ref, &cur, &valid, &out, &rc, &cc, &v}, 7);
    return res;
}

/* category_shift, first half: for every used slot (pooled count > 0) of the pooled counts, in (row, feature,
 * slot) order, the arguments of its hypergeometric tail as stats.hypergeom_two_sided computes them (the window's
 * count x of the t pooled events of the slot, of m window events, of N events): the binomial tail's k, n and
 * p (bdtr), the finite-population factor, whether a tail exists, and the slot's flat index. Returns how many
 * slots there are; scipy's bdtr, ndtri and ndtr finish the tails. */
static PyObject *shift_inputs(PyObject *self, PyObject *args) {
    (void)self;
    Py_buffer rc, cc, v, bk, bn, bp, fpc, ok, idx;
    Py_ssize_t RF, B1;
    if (!PyArg_ParseTuple(args, "y*y*y*nnw*w*w*w*w*w*", &rc, &cc, &v, &RF, &B1, &bk, &bn, &bp, &fpc, &ok, &idx))
        return NULL;
    PyObject *res = NULL;
    if (RF < 0 || B1 < 0 || check(&rc, RF * B1, 8, "rc") || check(&cc, RF * B1, 8, "cc") ||
        check(&v, RF * B1, 1, "v") || check(&bk, RF * B1, 8, "bk") || check(&bn, RF * B1, 8, "bn") ||
        check(&bp, RF * B1, 8, "bp") || check(&fpc, RF * B1, 8, "fpc") || check(&ok, RF * B1, 1, "ok") ||
        check(&idx, RF * B1, 8, "idx"))
        goto done;
    {
        const double *pr = rc.buf, *pc = cc.buf;
        const uint8_t *pv = v.buf;
        int64_t *pk = bk.buf, *pn = bn.buf, *pi = idx.buf;
        double *pp = bp.buf, *pf = fpc.buf;
        uint8_t *po = ok.buf;
        const double lo = 1e-12, hi = 1 - 1e-12;
        Py_ssize_t k = 0;
        for (Py_ssize_t i = 0; i < RF; i++) {
            const double *a = pr + i * B1, *c = pc + i * B1;
            const uint8_t *vv = pv + i * B1;
            double n, m;
            pooled_sums(a, c, vv, B1, &n, &m);
            double total = n + m;
            for (Py_ssize_t b = 0; b < B1; b++) {
                double x = vv[b] ? c[b] : 0.0, t = (vv[b] ? a[b] : 0.0) + x;
                if (!(t > 0)) continue;
                /* X ~ Hyp(N, t, m) ~ Hyp(N, m, t): the fewer draws, the closer the binomial */
                double d = t < m ? t : m, kk = t < m ? m : t;
                double share = total > 0 ? kk / total : 1.0;
                share = share < lo ? lo : (share > hi ? hi : share);
                int64_t d1 = (int64_t)(d > 1.0 ? d : 1.0);
                int64_t xi = (int64_t)(x < 0 ? 0 : (x > d ? d : x));
                int up = (double)xi > (double)d1 * share; /* the tail on the side of the expected count */
                double f = (total - d) / (total - 1 > 1 ? total - 1 : 1);
                pk[k] = up ? d1 - xi : xi;
                pn[k] = d1;
                pp[k] = up ? 1.0 - share : share;
                pf[k] = sqrt(f < lo ? lo : (f > 1.0 ? 1.0 : f));
                po[k] = d > 0 && total > 1;
                pi[k] = (int64_t)(i * B1 + b);
                k++;
            }
        }
        res = PyLong_FromSsize_t(k);
    }
done:
    release((Py_buffer *const[]){&rc, &cc, &v, &bk, &bn, &bp, &fpc, &ok, &idx}, 9);
    return res;
}

/* category_shift, second half: given the tails' p-values of the used slots, per (row, feature) the slot with
 * the smallest (the first one; unused slots count as 1), and out (4, R*F): the signed change of its share
 * (0 unless both sides have events), the Bonferroni p-value over the used slots, the noise of its share
 * change (the floor is a normal quantile times it) and its index. */
static PyObject *shift_pick(PyObject *self, PyObject *args) {
    (void)self;
    Py_buffer p, idx, rc, cc, v, out;
    Py_ssize_t k, RF, B1;
    if (!PyArg_ParseTuple(args, "y*y*ny*y*y*nnw*", &p, &idx, &k, &rc, &cc, &v, &RF, &B1, &out)) return NULL;
    PyObject *res = NULL;
    if (k < 0 || RF < 0 || B1 < 1 || check(&p, k, 8, "p") || p.len > idx.len || check(&rc, RF * B1, 8, "rc") ||
        check(&cc, RF * B1, 8, "cc") || check(&v, RF * B1, 1, "v") || check(&out, 4 * RF, 8, "out"))
        goto done;
    {
        const double *pp = p.buf, *pr = rc.buf, *pc = cc.buf;
        const int64_t *pi = idx.buf;
        const uint8_t *pv = v.buf;
        double *o = out.buf;
        Py_ssize_t j = 0;
        for (Py_ssize_t i = 0; i < RF; i++) {
            const double *a = pr + i * B1, *c = pc + i * B1;
            const uint8_t *vv = pv + i * B1;
            double n, w, best = INFINITY, used = 0.0;
            Py_ssize_t level = 0;
            pooled_sums(a, c, vv, B1, &n, &w);
            /* numpy's argmin over the slots, unused ones holding 1: the first smallest */
            for (Py_ssize_t b = 0; b < B1; b++) {
                double pb = 1.0;
                if (j < k && pi[j] == i * B1 + b) {
                    pb = pp[j++];
                    used += 1.0;
                }
                if (pb < best) {
                    best = pb;
                    level = b;
                }
            }
            double tot = n + w, ab = vv[level] ? a[level] : 0.0, cb = vv[level] ? c[level] : 0.0, t = ab + cb;
            int both = n > 0 && w > 0;
            double delta = t > 0 ? cb / (w > 1.0 ? w : 1.0) - ab / (n > 1.0 ? n : 1.0) : 0.0;
            double share = tot > 0 ? t / (tot > 1.0 ? tot : 1.0) : 0.0;
            double noise = sqrt(share * (1 - share) * (1 / (n > 1.0 ? n : 1.0) + 1 / (w > 1.0 ? w : 1.0)));
            double bonferroni = (used > 1.0 ? used : 1.0) * best;
            o[i] = both ? delta : 0.0;
            o[RF + i] = both ? (bonferroni < 1.0 ? bonferroni : 1.0) : 1.0;
            o[2 * RF + i] = noise;
            o[3 * RF + i] = (double)level;
        }
    }
    res = Py_NewRef(Py_None);
done:
    release((Py_buffer *const[]){&p, &idx, &rc, &cc, &v, &out}, 6);
    return res;
}

static PyMethodDef methods[] = {
    {"binned", binned, METH_VARARGS,
     "binned(ref, cur, valid, R, F, B, min_expected, flags, out, rc, cc, v): pool sparse bins and compute the "
     "requested statistics of every (row, feature) into out (NSTAT, R, F); pooled counts into rc, cc, v."},
    {"shift_inputs", shift_inputs, METH_VARARGS,
     "shift_inputs(rc, cc, v, RF, B1, k, n, p, fpc, ok, idx) -> count: the used slots' tail arguments."},
    {"shift_pick", shift_pick, METH_VARARGS,
     "shift_pick(p, idx, k, rc, cc, v, RF, B1, out): per (row, feature) the most significant slot."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, .m_name = "_binned", .m_doc = "Compiled binned drift statistics.", .m_size = -1,
    .m_methods = methods,
};

PyMODINIT_FUNC PyInit__binned(void) {
    PyObject *m = PyModule_Create(&module);
    if (m != NULL && PyModule_AddIntConstant(m, "NSTAT", NSTAT) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
