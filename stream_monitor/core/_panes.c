/* Pane updates: the compiled kernel behind sketches.PaneInput and Pane._add.
 *
 * A batch is coded once (PaneInput): each numeric value becomes one byte, each categorical value of a column
 * the decoder dictionary-encoded one int32; then every pane the batch is cut into counts its rows from those
 * codes in one pass (Pane._add), instead of a dozen numpy calls per pane (a batch of 5,000 cut into windows of
 * 100 makes 50 panes). The numpy code of sketches.py (_bin_numeric_numpy, and _count_numeric and
 * _count_categorical with compiled=False) is the reference: the codes and the counts are the same integers
 * either way, which the tests check.
 *
 * Numeric code of a value (uint8): 255 when it is missing (NaN); else its bin, the number of the feature's
 * edges <= the value (what searchsorted(side="right") gives; the +inf padding of a feature with fewer edges
 * counts only for +inf), plus 128 when it is out of the reference's range (below lo or above hi). Bins are
 * at most 100 (config), so a bin never reaches 128.
 *
 * Categorical code (int32), for a feature of W slots (tracked categories, then "other"): the slot, W when the
 * value is missing, W + 1 when the reference never saw it (counted in "other" and as new).
 *
 * Rows are a range [start, stop) or, when index is not None, the int64 positions it holds (time panes).
 *
 * The calls keep the GIL (as the statistics kernel's do): each is short, and the core runs on one thread.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <stdint.h>
#ifdef __SSE2__
#include <emmintrin.h>
#endif

#define MISSING 255
#define OUT_OF_RANGE 128

static void release(Py_buffer *const *bufs, size_t n) {
    for (size_t i = 0; i < n; i++) PyBuffer_Release(bufs[i]);
}

static int check(Py_buffer *b, Py_ssize_t items, Py_ssize_t size, const char *what) {
    if (b->len != items * size) {
        PyErr_Format(PyExc_ValueError, "%s: %zd bytes, expected %zd", what, b->len, items * size);
        return -1;
    }
    return 0;
}

/* The rows to count: a range, or the positions of an int64 index (each checked to lie in [0, n)). On failure
 * nothing is held (rows_close does nothing). */
typedef struct {
    Py_buffer index;
    int indexed;
    Py_ssize_t start, stop;
} Rows;

static int rows_open(Rows *r, PyObject *index, Py_ssize_t start, Py_ssize_t stop, Py_ssize_t n) {
    r->indexed = 0;
    if (index != Py_None) {
        if (PyObject_GetBuffer(index, &r->index, PyBUF_C_CONTIGUOUS) < 0) return -1;
        if (r->index.len % 8) {
            PyErr_SetString(PyExc_ValueError, "index: int64 positions expected");
            PyBuffer_Release(&r->index);
            return -1;
        }
        const int64_t *p = r->index.buf;
        for (Py_ssize_t i = 0; i < r->index.len / 8; i++)
            if (p[i] < 0 || p[i] >= n) {
                PyErr_Format(PyExc_IndexError, "index: row %lld outside [0, %zd)", (long long)p[i], n);
                PyBuffer_Release(&r->index);
                return -1;
            }
        r->indexed = 1;
        r->start = 0, r->stop = r->index.len / 8;
    } else {
        if (start < 0 || stop > n || start > stop) {
            PyErr_Format(PyExc_IndexError, "rows [%zd, %zd) outside [0, %zd)", start, stop, n);
            return -1;
        }
        r->start = start, r->stop = stop;
    }
    return 0;
}

static inline Py_ssize_t rows_at(const Rows *r, Py_ssize_t i) {
    return r->indexed ? (Py_ssize_t)((const int64_t *)r->index.buf)[i] : i;
}

static void rows_close(Rows *r) {
    if (r->indexed) PyBuffer_Release(&r->index);
}

/* The number of the 2 * pairs edges at e that are <= v (NaN edges never are). */
static inline __attribute__((always_inline)) int count_le(const double *e, double v, const int pairs) {
#ifdef __SSE2__
    const __m128d vv = _mm_set1_pd(v);
    __m128i acc = _mm_setzero_si128();
    for (int t = 0; t < 2 * pairs; t += 2) /* a true compare is all ones: -1 */
        acc = _mm_sub_epi64(acc, _mm_castpd_si128(_mm_cmple_pd(_mm_loadu_pd(e + t), vv)));
    return (int)(_mm_cvtsi128_si64(acc) + _mm_cvtsi128_si64(_mm_unpackhi_epi64(acc, acc)));
#else
    int b = 0;
    for (int t = 0; t < 2 * pairs; t++) b += e[t] <= v;
    return b;
#endif
}

/* bin_numeric's codes of the (n, k) values x with each feature's edges padded to 2 * pairs at pad. */
static inline __attribute__((always_inline)) void bin_rows(const double *x, const double *pad, const double *lo,
                                                           const double *hi, Py_ssize_t n, Py_ssize_t k,
                                                           uint8_t *out, const int pairs) {
    for (Py_ssize_t i = 0; i < n; i++) {
        const double *row = x + i * k;
        uint8_t *code = out + i * k;
        for (Py_ssize_t j = 0; j < k; j++) {
            const double v = row[j];
            const int c = count_le(pad + j * 2 * pairs, v, pairs) | ((v < lo[j]) | (v > hi[j])) << 7;
            code[j] = (uint8_t)(v != v ? MISSING : c);
        }
    }
}

/* bin_numeric(x, edges, lo, hi, n, k, m, out): the (n, k) float64 values' codes into out (n, k) uint8, with
 * edges (k, m) sorted per feature, lo and hi (k). Up to 16 edges, a value's bin counts the edges <= it by
 * vector compares, a pair of edges each, unrolled for the feature's count (2.3 ns a value at 9 edges, against
 * 5.9 counting them one by one in a loop of variable length); by bisection beyond 16 edges. */
static PyObject *bin_numeric(PyObject *self, PyObject *args) {
    (void)self;
    Py_buffer x, edges, lo, hi, out;
    Py_ssize_t n, k, m;
    if (!PyArg_ParseTuple(args, "y*y*y*y*nnnw*", &x, &edges, &lo, &hi, &n, &k, &m, &out)) return NULL;
    PyObject *res = NULL;
    if (n < 0 || k < 0 || m < 0 || m >= OUT_OF_RANGE || check(&x, n * k, 8, "x") ||
        check(&edges, k * m, 8, "edges") || check(&lo, k, 8, "lo") || check(&hi, k, 8, "hi") ||
        check(&out, n * k, 1, "out"))
        goto done;
    if (m <= 16) {
        /* each feature's edges padded with NaN (never <= a value) to an even count: 2 * pairs */
        const int pairs = (int)(m + 1) / 2;
        double *pad = PyMem_Malloc((size_t)(k ? k : 1) * (size_t)(pairs ? 2 * pairs : 1) * sizeof(double));
        if (pad == NULL) {
            PyErr_NoMemory();
            goto done;
        }
        for (Py_ssize_t j = 0; j < k; j++)
            for (int t = 0; t < 2 * pairs; t++)
                pad[j * 2 * pairs + t] = t < m ? ((const double *)edges.buf)[j * m + t] : NAN;
        switch (pairs) { /* a loop each: the compares unrolled for a count known when compiling */
        case 0: bin_rows(x.buf, pad, lo.buf, hi.buf, n, k, out.buf, 0); break;
        case 1: bin_rows(x.buf, pad, lo.buf, hi.buf, n, k, out.buf, 1); break;
        case 2: bin_rows(x.buf, pad, lo.buf, hi.buf, n, k, out.buf, 2); break;
        case 3: bin_rows(x.buf, pad, lo.buf, hi.buf, n, k, out.buf, 3); break;
        case 4: bin_rows(x.buf, pad, lo.buf, hi.buf, n, k, out.buf, 4); break;
        case 5: bin_rows(x.buf, pad, lo.buf, hi.buf, n, k, out.buf, 5); break;
        case 6: bin_rows(x.buf, pad, lo.buf, hi.buf, n, k, out.buf, 6); break;
        case 7: bin_rows(x.buf, pad, lo.buf, hi.buf, n, k, out.buf, 7); break;
        default: bin_rows(x.buf, pad, lo.buf, hi.buf, n, k, out.buf, 8); break;
        }
        PyMem_Free(pad);
    } else {
        const double *px = x.buf, *pe = edges.buf, *pl = lo.buf, *ph = hi.buf;
        uint8_t *po = out.buf;
        for (Py_ssize_t i = 0; i < n; i++) {
            const double *row = px + i * k;
            uint8_t *code = po + i * k;
            for (Py_ssize_t j = 0; j < k; j++) {
                const double v = row[j], *e = pe + j * m;
                Py_ssize_t b = 0;
                if (m <= 16) {
                    for (Py_ssize_t t = 0; t < m; t++) b += e[t] <= v;
                } else { /* sorted: the first edge > v */
                    Py_ssize_t z = m;
                    while (b < z) {
                        Py_ssize_t mid = (b + z) / 2;
                        if (e[mid] <= v) b = mid + 1;
                        else z = mid;
                    }
                }
                int c = (int)b | ((v < pl[j]) | (v > ph[j])) << 7;
                code[j] = (uint8_t)(v != v ? MISSING : c);
            }
        }
    }
    res = Py_NewRef(Py_None);
done:
    release((Py_buffer *const[]){&x, &edges, &lo, &hi, &out}, 5);
    return res;
}

/* count_numeric(codes, n, k, B, start, stop, index, counts, missing, out_of_range): adds the rows' codes to
 * counts (k, B), missing (k) and out_of_range (k), int64. */
static PyObject *count_numeric(PyObject *self, PyObject *args) {
    (void)self;
    Py_buffer codes, counts, missing, oor;
    Py_ssize_t n, k, B, start, stop;
    PyObject *index;
    if (!PyArg_ParseTuple(args, "y*nnnnnOw*w*w*", &codes, &n, &k, &B, &start, &stop, &index, &counts, &missing,
                          &oor))
        return NULL;
    PyObject *res = NULL;
    Rows r;
    r.indexed = 0;
    if (n < 0 || k < 0 || B < 1 || B > OUT_OF_RANGE || check(&codes, n * k, 1, "codes") ||
        check(&counts, k * B, 8, "counts") || check(&missing, k, 8, "missing") ||
        check(&oor, k, 8, "out_of_range") || rows_open(&r, index, start, stop, n))
        goto done;
    {
        const uint8_t *pc = codes.buf;
        int64_t *cnt = counts.buf, *mis = missing.buf, *out = oor.buf;
        uint8_t top = 0; /* a bin past B (the codes of another binning): refused before anything is added */
        for (Py_ssize_t i = r.start; i < r.stop; i++) {
            const uint8_t *row = pc + rows_at(&r, i) * k;
            for (Py_ssize_t j = 0; j < k; j++) {
                uint8_t bin = row[j] == MISSING ? 0 : row[j] & 127;
                top = top > bin ? top : bin;
            }
        }
        if (top >= B) {
            PyErr_Format(PyExc_ValueError, "codes: a bin past %zd bins", B);
            goto done;
        }
        for (Py_ssize_t i = r.start; i < r.stop; i++) {
            const uint8_t *row = pc + rows_at(&r, i) * k;
            for (Py_ssize_t j = 0; j < k; j++) {
                unsigned c = row[j];
                if (c == MISSING) {
                    mis[j]++;
                    continue;
                }
                cnt[j * B + (c & ~OUT_OF_RANGE)]++;
                out[j] += c >> 7;
            }
        }
    }
    res = Py_NewRef(Py_None);
done:
    rows_close(&r);
    release((Py_buffer *const[]){&codes, &counts, &missing, &oor}, 4);
    return res;
}

/* count_categorical(codes, n, e, W, start, stop, index, counts, missing, new) -> new values counted: adds the
 * rows' codes (n, e) int32 to the first e features of counts (c, W), missing (c) and new (c), int64. */
static PyObject *count_categorical(PyObject *self, PyObject *args) {
    (void)self;
    Py_buffer codes, counts, missing, fresh;
    Py_ssize_t n, e, W, start, stop;
    PyObject *index;
    if (!PyArg_ParseTuple(args, "y*nnnnnOw*w*w*", &codes, &n, &e, &W, &start, &stop, &index, &counts, &missing,
                          &fresh))
        return NULL;
    PyObject *res = NULL;
    Rows r;
    r.indexed = 0;
    if (n < 0 || e < 0 || W < 1 || check(&codes, n * e, 4, "codes") || counts.len < e * W * 8 ||
        counts.len % (W * 8) || missing.len < e * 8 || fresh.len < e * 8 || missing.len % 8 || fresh.len % 8 ||
        rows_open(&r, index, start, stop, n)) {
        if (!PyErr_Occurred()) PyErr_SetString(PyExc_ValueError, "counts, missing, new: (c >= e, W) int64 expected");
        goto done;
    }
    {
        const int32_t *pc = codes.buf;
        for (Py_ssize_t i = r.start; i < r.stop; i++) {
            const int32_t *row = pc + rows_at(&r, i) * e;
            for (Py_ssize_t j = 0; j < e; j++)
                if (row[j] < 0 || row[j] > W + 1) {
                    PyErr_Format(PyExc_ValueError, "codes: %d outside [0, %zd] for feature %zd", row[j], W + 1, j);
                    goto done;
                }
        }
        int64_t *cnt = counts.buf, *mis = missing.buf, *nw = fresh.buf, total = 0;
        for (Py_ssize_t i = r.start; i < r.stop; i++) {
            const int32_t *row = pc + rows_at(&r, i) * e;
            for (Py_ssize_t j = 0; j < e; j++) {
                Py_ssize_t s = row[j];
                if (s < W) {
                    cnt[j * W + s]++;
                } else if (s == W) {
                    mis[j]++;
                } else { /* new: "other" */
                    cnt[j * W + W - 1]++;
                    nw[j]++;
                    total++;
                }
            }
        }
        res = PyLong_FromLongLong(total);
    }
done:
    rows_close(&r);
    release((Py_buffer *const[]){&codes, &counts, &missing, &fresh}, 4);
    return res;
}

static PyMethodDef methods[] = {
    {"bin_numeric", bin_numeric, METH_VARARGS,
     "bin_numeric(x, edges, lo, hi, n, k, m, out): each value's bin, out-of-range and missing code (uint8)."},
    {"count_numeric", count_numeric, METH_VARARGS,
     "count_numeric(codes, n, k, B, start, stop, index, counts, missing, out_of_range): add the rows' codes."},
    {"count_categorical", count_categorical, METH_VARARGS,
     "count_categorical(codes, n, e, W, start, stop, index, counts, missing, new) -> new values counted."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, .m_name = "_panes", .m_doc = "Compiled pane updates.", .m_size = -1,
    .m_methods = methods,
};

PyMODINIT_FUNC PyInit__panes(void) { return PyModule_Create(&module); }
