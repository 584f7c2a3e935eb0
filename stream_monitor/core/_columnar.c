/* Prediction events from JSON bytes straight into columns: the compiled decoder.
 *
 * One call takes a batch of message values and, for each configured model, fills the column buffers the
 * monitor works on (numeric features as float64; categorical values and the model version dictionary-encoded:
 * one shared str per distinct value and an int32 code per row; the envelope fields; the 64-bit event keys of
 * core/keys.py). No dict, float or Struct object is built per event.
 *
 * It accepts only the common, valid event and leaves everything else to the Python decoder: a message it
 * does not take is reported back by position ("declined") and decided by the general path, so the outcome
 * never depends on which path took a message. Declined are, besides broken contracts: strings with escapes
 * in the fields it reads, a value of an unexpected type (a data-quality fact the Python path counts),
 * timestamps given as ISO strings or out of the plausible range, unknown models, duplicate known keys or
 * features, ids longer than 128 characters, integers of more than 18 digits where an int is kept, \u escapes
 * anywhere, nesting deeper than 64, invalid UTF-8.
 *
 * Numbers are converted with correct rounding (the same double as Python's float(text)): by one exact
 * floating-point operation when the digits fit in 53 bits and the power of ten is exact; for up to 19
 * significant digits, by an exact 128-bit product (positive powers) or a 128-bit reciprocal of the power of
 * five (negative ones; exact 128-bit division when that product lies within a unit of a rounding boundary);
 * beyond, by Python's own conversion.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

typedef unsigned __int128 u128;

enum { TAKE = 0, DECLINE = 1, FAIL = -1 }; /* FAIL: a Python exception is set */

#define MAX_DEPTH 64
#define MAX_ID_CHARS 128
#define CACHE_SLOTS 4096
#define CACHE_MAX_LEN 64

/* ---- string cache: categorical values, versions, class predictions repeat; one str object each ---- */

typedef struct {
    PyObject *obj;
    uint64_t hash;
    Py_ssize_t len;
    const char *utf8; /* the object's own UTF-8 buffer */
} Slot;

/* Short strings compared inline (a libc call costs more than the compare). */
static inline int same(const char *a, const char *b, Py_ssize_t n) {
    if (n > 16) return memcmp(a, b, (size_t)n) == 0;
    for (Py_ssize_t i = 0; i < n; i++)
        if (a[i] != b[i]) return 0;
    return 1;
}

static uint64_t fnv1a(const char *s, Py_ssize_t n) {
    uint64_t h = 0xcbf29ce484222325ULL;
    for (Py_ssize_t i = 0; i < n; i++) h = (h ^ (unsigned char)s[i]) * 0x100000001b3ULL;
    return h;
}

/* ---- per model: feature name lookup and the output buffers ---- */

/* Dictionary encoding of one string column within a call: the distinct objects and a code per row. Equal
 * strings are one object (the cache), so the table is keyed by the object; two objects of one value (a cache
 * slot reused within a call) only make two codes of one value, which the reader adds up. */
typedef struct {
    PyObject **keys; /* borrowed: the values list holds them */
    int32_t *codes;
    uint32_t mask;
    PyObject *values; /* list, in order of first appearance */
} Dict;

typedef struct {
    Py_ssize_t n, cap;
    int64_t *pos;
    double *t, *num, *lat;
    uint64_t *key;
    int32_t *codes; /* (n, c + 1): each categorical feature's code, then the model version's; -1 = missing */
    PyObject *ids, *preds, *scores, *segments; /* lists */
} Out;

typedef struct {
    char *name;
    Py_ssize_t name_len;
    int k, c, nf; /* numeric, categorical, all configured features */
    char **fname;
    Py_ssize_t *flen;
    int32_t *table; /* open addressing: feature index + 1, 0 = empty */
    uint32_t mask;
    int32_t *guess; /* the feature seen at each key position of the previous event */
    int segments;   /* keep the segment object (the model has segment keys) */
    Out out;
    Dict *dicts;    /* c + 1: the categorical features, then the model version */
} Model;

typedef struct {
    PyObject_HEAD
    int nmodels;
    Model *models;
    Slot *cache;
    /* per-event scratch, sized for the widest model */
    int maxf;
    double *row;
    PyObject **catrow;
    uint32_t *seen;
    uint32_t stamp;
} Decoder;

/* ---- scanning ---- */

typedef struct {
    const char *p, *end;
} Cur;

static inline void ws(Cur *c) {
    while (c->p < c->end && (*c->p == ' ' || *c->p == '\n' || *c->p == '\r' || *c->p == '\t')) c->p++;
}

static inline int eat(Cur *c, char ch) {
    ws(c);
    if (c->p < c->end && *c->p == ch) {
        c->p++;
        return 1;
    }
    return 0;
}

/* A string without escapes at c->p (the opening quote): its bytes in [*s, *s + *n). */
static int plain_string(Cur *c, const char **s, Py_ssize_t *n, int *high) {
    const char *p = c->p + 1, *end = c->end;
    int hi = 0;
    for (; p < end; p++) {
        unsigned char ch = (unsigned char)*p;
        if (ch == '"') {
            *s = c->p + 1;
            *n = p - (c->p + 1);
            *high = hi;
            c->p = p + 1;
            return TAKE;
        }
        if (ch == '\\' || ch < 0x20) return DECLINE;
        hi |= ch >= 0x80;
    }
    return DECLINE;
}

/* After whitespace, a string without escapes (a key or a value). */
static int string_field(Cur *c, const char **s, Py_ssize_t *n, int *high) {
    ws(c);
    if (c->p >= c->end || *c->p != '"') return DECLINE;
    return plain_string(c, s, n, high);
}

/* Is this UTF-8 valid, as Python's strict decoder and JSON parsers see it? */
static int valid_utf8(const char *s, Py_ssize_t n) {
    PyObject *u = PyUnicode_DecodeUTF8(s, n, "strict");
    if (u == NULL) {
        PyErr_Clear();
        return 0;
    }
    Py_DECREF(u);
    return 1;
}

static PyObject *new_str(const char *s, Py_ssize_t n, int high) {
    PyObject *u = high ? PyUnicode_DecodeUTF8(s, n, "strict") : PyUnicode_FromStringAndSize(s, n);
    if (u == NULL && PyErr_ExceptionMatches(PyExc_UnicodeDecodeError)) PyErr_Clear();
    return u; /* NULL: declined when no exception is set */
}

static PyObject *cached_str(Decoder *d, const char *s, Py_ssize_t n, int high) {
    if (n > CACHE_MAX_LEN) return new_str(s, n, high);
    uint64_t h = fnv1a(s, n);
    Slot *slot = &d->cache[h & (CACHE_SLOTS - 1)];
    if (slot->obj != NULL && slot->hash == h && slot->len == n && same(slot->utf8, s, n)) {
        Py_INCREF(slot->obj);
        return slot->obj;
    }
    PyObject *u = new_str(s, n, high);
    if (u == NULL) return NULL;
    Py_ssize_t len;
    const char *utf8 = PyUnicode_AsUTF8AndSize(u, &len);
    if (utf8 == NULL) {
        Py_DECREF(u);
        return NULL;
    }
    Py_XDECREF(slot->obj);
    Py_INCREF(u);
    slot->obj = u;
    slot->hash = h;
    slot->len = len;
    slot->utf8 = utf8;
    return u;
}

/* ---- numbers ---- */

static const double P10[23] = {1e0,  1e1,  1e2,  1e3,  1e4,  1e5,  1e6,  1e7,  1e8,  1e9,  1e10, 1e11,
                               1e12, 1e13, 1e14, 1e15, 1e16, 1e17, 1e18, 1e19, 1e20, 1e21, 1e22};

/* Powers of five, and for division by them 128-bit reciprocals: RECIP[k] = floor(2^(128 + B[k]) / 5^k) + 1,
 * where 2^B[k] <= 5^k < 2^(B[k] + 1), so every reciprocal has its top bit set. Filled once at import. */
#define MAX_POW5 27 /* 5^27 < 2^63 */
static uint64_t P5[MAX_POW5 + 1];
static u128 RECIP[MAX_POW5 + 1];
static int B5[MAX_POW5 + 1];

static void init_powers(void) {
    uint64_t p = 1;
    for (int k = 0; k <= MAX_POW5; k++, p *= 5) {
        P5[k] = p;
        int b = 63 - __builtin_clzll(p);
        B5[k] = b;
        /* 2^(128 + b) / p by long division in 64-bit limbs: (2^b, 0, 0) / p; 2^b < p gives a 128-bit quotient */
        u128 r = (u128)1 << b, q1, q0;
        r <<= 64;
        q1 = r / p;
        r = (r % p) << 64;
        q0 = r / p;
        RECIP[k] = (q1 << 64) + q0 + 1;
    }
}

static int bits128(u128 x) {
    uint64_t hi = (uint64_t)(x >> 64);
    return hi ? 128 - __builtin_clzll(hi) : (uint64_t)x ? 64 - __builtin_clzll((uint64_t)x) : 0;
}

/* mant * 2^e for mant in [2^52, 2^53], built from its bits (ldexp is a library call). */
static inline double make_double(uint64_t mant, int e) {
    if (mant == (1ULL << 53)) {
        mant >>= 1;
        e++;
    }
    int biased = e + 52 + 1023;
    if (biased < 1 || biased > 2046) return ldexp((double)mant, e);
    uint64_t bits = ((uint64_t)biased << 52) | (mant & ((1ULL << 52) - 1));
    double d;
    memcpy(&d, &bits, sizeof d);
    return d;
}

/* (x + f) * 2^scale rounded to the nearest double, ties to even; f in [0, 1) is nonzero iff sticky.
 * x must have at least 55 bits when sticky. */
static double round_bits(u128 x, int sticky, int scale) {
    int b = bits128(x);
    if (b <= 53) return make_double((uint64_t)x << (53 - b), scale - (53 - b)); /* exact */
    int shift = b - 53;
    uint64_t mant = (uint64_t)(x >> shift);
    u128 rem = x & (((u128)1 << shift) - 1), half = (u128)1 << (shift - 1);
    if (rem > half || (rem == half && (sticky || (mant & 1)))) mant++;
    return make_double(mant, shift + scale);
}

/* m / 10^k (k <= MAX_POW5) as the nearest double, by one multiplication with the reciprocal of 5^k: the
 * product overestimates m * 2^(128 + B) / 5^k by less than m < 2^64, i.e. by less than one unit of its upper
 * 128 bits, so the rounding is decided unless those bits lie within one unit of a rounding boundary (odds
 * ~2^-70); then 0, and the exact path decides. */
static int divide(uint64_t m, int k, double *out) {
    int lz = __builtin_clzll(m);
    uint64_t w = m << lz;
    u128 r = RECIP[k];
    u128 x = (u128)w * (uint64_t)(r >> 64) + (((u128)w * (uint64_t)r) >> 64); /* 2^126 <= x < 2^128 */
    uint64_t xh = (uint64_t)(x >> 64), xl = (uint64_t)x;
    if (xl <= 1 || xl >= UINT64_MAX - 1) return 0; /* within a unit of a boundary, maybe */
    int sh = 11 - __builtin_clzll(xh); /* keep 53 bits */
    uint64_t rem = xh & ((1ULL << sh) - 1), half = 1ULL << (sh - 1);
    uint64_t mant = (xh >> sh) + (rem >= half); /* rem == half: xl > 1, so above the halfway point */
    *out = make_double(mant, sh + 64 + 64 - 128 - B5[k] - lz - k);
    return 1;
}

typedef struct {
    double value;
    int is_int;     /* no fraction, no exponent */
    int negative;
    uint64_t mant;  /* significant digits, when digits <= 19 */
    int digits;     /* significant digits (leading zeros excluded) */
} Number;

/* Eight ASCII digits at p, if they are eight digits: their value (one multiply per halving, no loop). */
static inline int eight_digits(const char *p, const char *end, uint64_t *out) {
#if !defined(__BYTE_ORDER__) || __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
    return 0; /* the byte arithmetic below reads the first digit as the lowest byte */
#endif
    if (end - p < 8) return 0;
    uint64_t v;
    memcpy(&v, p, 8);
    if ((((v & 0xF0F0F0F0F0F0F0F0ULL) | (((v + 0x0606060606060606ULL) & 0xF0F0F0F0F0F0F0F0ULL) >> 4))) !=
        0x3333333333333333ULL)
        return 0;
    v = (v & 0x0F0F0F0F0F0F0F0FULL) * 2561 >> 8;
    v = (v & 0x00FF00FF00FF00FFULL) * 6553601 >> 16;
    *out = (v & 0x0000FFFF0000FFFFULL) * 42949672960001ULL >> 32;
    return 1;
}

/* A JSON number at c->p (strict grammar), as the nearest double: value = m * 10^e while digits <= 19. */
static int number(Cur *c, Number *out) {
    const char *start = c->p, *p = c->p, *end = c->end;
    int neg = 0, digits = 0, is_int = 1;
    uint64_t m = 0;
    long e = 0;
    if (p < end && *p == '-') {
        neg = 1;
        p++;
    }
    if (p >= end) return DECLINE;
    if (*p == '0') {
        p++;
    } else if (*p >= '1' && *p <= '9') {
        for (; p < end && *p >= '0' && *p <= '9'; p++) {
            if (digits < 19) m = m * 10 + (uint64_t)(*p - '0');
            else e++; /* an integer digit past the 19th: the slow conversion decides anyway */
            digits++;
        }
    } else {
        return DECLINE;
    }
    if (p < end && *p == '.') {
        is_int = 0;
        p++;
        if (p >= end || *p < '0' || *p > '9') return DECLINE;
        for (; p < end && *p >= '0' && *p <= '9'; p++) {
            uint64_t eight;
            if (digits > 0 && digits <= 11 && eight_digits(p, end, &eight)) { /* the common long fraction */
                m = m * 100000000ULL + eight;
                e -= 8;
                digits += 8;
                p += 7;
                continue;
            }
            if (digits == 0 && *p == '0') { /* a leading zero of 0.000x: a position, not a digit */
                e--;
                continue;
            }
            if (digits < 19) {
                m = m * 10 + (uint64_t)(*p - '0');
                e--;
            }
            digits++;
        }
    }
    if (p < end && (*p == 'e' || *p == 'E')) {
        is_int = 0;
        p++;
        int eneg = 0;
        if (p < end && (*p == '+' || *p == '-')) eneg = *p++ == '-';
        if (p >= end || *p < '0' || *p > '9') return DECLINE;
        long x = 0;
        for (; p < end && *p >= '0' && *p <= '9'; p++)
            if (x < 100000) x = x * 10 + (*p - '0');
        e += eneg ? -x : x;
    }
    c->p = p;
    out->is_int = is_int;
    out->negative = neg;
    out->mant = m;
    out->digits = digits;
    double v;
    if (m == 0) {
        v = 0.0;
    } else if (digits <= 19 && m < (1ULL << 53) && e >= -22 && e <= 22) { /* both exact: one rounding */
        v = e >= 0 ? (double)m * P10[e] : (double)m / P10[-e];
    } else if (digits <= 19 && e >= 0 && e <= MAX_POW5) { /* m * 5^e * 2^e, the product exact in 128 bits */
        v = round_bits((u128)m * P5[e], 0, (int)e);
    } else if (digits <= 19 && e < 0 && e >= -MAX_POW5 && divide(m, (int)-e, &v)) {
    } else if (digits <= 19 && e < 0 && e >= -21) { /* m / 10^k exactly, by 128-bit division */
        u128 den = 1;
        for (long i = 0; i < -e; i++) den *= 10;
        int s = 127 - bits128(m);
        u128 num = (u128)m << s;
        v = round_bits(num / den, num % den != 0, -s);
    } else {
        char buf[80];
        Py_ssize_t len = p - start;
        if (len >= (Py_ssize_t)sizeof buf) return DECLINE;
        memcpy(buf, start, (size_t)len);
        buf[len] = 0;
        double r = PyOS_string_to_double(buf, NULL, NULL);
        if (r == -1.0 && PyErr_Occurred()) {
            PyErr_Clear();
            return DECLINE;
        }
        if (!isfinite(r)) return DECLINE;
        out->value = r;
        return TAKE;
    }
    if (!isfinite(v)) return DECLINE;
    /* "-0" is the integer 0 (0.0 as a float); "-0.0" keeps its sign, as Python's float() does */
    out->value = neg ? (is_int && m == 0 ? 0.0 : -v) : v;
    return TAKE;
}

/* ---- skipping a value we do not keep, validating it as strictly as a JSON parser would ---- */

static int skip_string(Cur *c) {
    const char *p = c->p + 1, *end = c->end;
    int high = 0;
    const char *s = p;
    for (; p < end; p++) {
        unsigned char ch = (unsigned char)*p;
        if (ch == '"') {
            if (high && !valid_utf8(s, p - s)) return DECLINE;
            c->p = p + 1;
            return TAKE;
        }
        if (ch < 0x20) return DECLINE;
        if (ch >= 0x80) high = 1;
        if (ch == '\\') {
            if (++p >= end) return DECLINE;
            switch (*p) {
            case '"': case '\\': case '/': case 'b': case 'f': case 'n': case 'r': case 't': break;
            default: return DECLINE; /* \u escapes (surrogates) and invalid escapes: the Python path */
            }
        }
    }
    return DECLINE;
}

static int skip_value(Cur *c, int depth);

static int skip_container(Cur *c, int depth, char close, int object) {
    if (depth > MAX_DEPTH) return DECLINE;
    c->p++;
    if (eat(c, close)) return TAKE;
    for (;;) {
        ws(c);
        if (object) {
            if (c->p >= c->end || *c->p != '"' || skip_string(c) != TAKE || !eat(c, ':')) return DECLINE;
        }
        if (skip_value(c, depth + 1) != TAKE) return DECLINE;
        if (eat(c, ',')) continue;
        return eat(c, close) ? TAKE : DECLINE;
    }
}

static int literal(Cur *c, const char *word, Py_ssize_t n) {
    if (c->end - c->p < n || memcmp(c->p, word, (size_t)n) != 0) return DECLINE;
    c->p += n;
    return TAKE;
}

static int skip_value(Cur *c, int depth) {
    ws(c);
    if (c->p >= c->end) return DECLINE;
    switch (*c->p) {
    case '"': return skip_string(c);
    case '{': return skip_container(c, depth, '}', 1);
    case '[': return skip_container(c, depth, ']', 0);
    case 't': return literal(c, "true", 4);
    case 'f': return literal(c, "false", 5);
    case 'n': return literal(c, "null", 4);
    default: {
        Number num;
        return number(c, &num);
    }
    }
}

/* ---- one event ---- */

enum { K_ID = 1, K_MODEL = 2, K_VERSION = 4, K_TIME = 8, K_FEATURES = 16, K_PRED = 32, K_SCORE = 64,
       K_LATENCY = 128, K_SEGMENT = 256 };
#define REQUIRED (K_ID | K_MODEL | K_VERSION | K_TIME | K_FEATURES | K_PRED)

static int find_feature(Model *m, const char *s, Py_ssize_t n, int at) {
    if (at < m->nf) {
        int g = m->guess[at];
        if (g >= 0 && m->flen[g] == n && same(m->fname[g], s, n)) return g;
    }
    uint32_t i = (uint32_t)fnv1a(s, n) & m->mask;
    for (;;) {
        int32_t f = m->table[i];
        if (f == 0) return -1;
        f--;
        if (m->flen[f] == n && same(m->fname[f], s, n)) {
            if (at < m->nf) m->guess[at] = f;
            return f;
        }
        i = (i + 1) & m->mask;
    }
}

/* The features object of model m into d->row / d->catrow (already reset to NaN / NULL). */
static int features(Decoder *d, Model *m, Cur *c) {
    ws(c);
    if (c->p >= c->end || *c->p != '{') return DECLINE;
    c->p++;
    if (eat(c, '}')) return TAKE;
    uint32_t stamp = ++d->stamp;
    for (int at = 0;; at++) {
        const char *s;
        Py_ssize_t n;
        int high;
        if (string_field(c, &s, &n, &high) != TAKE || !eat(c, ':')) return DECLINE;
        int f = find_feature(m, s, n, at);
        if (f < 0) {
            if (high && !valid_utf8(s, n)) return DECLINE;
            if (skip_value(c, 2) != TAKE) return DECLINE;
        } else {
            if (d->seen[f] == stamp) return DECLINE; /* a duplicate: the Python path decides */
            d->seen[f] = stamp;
            ws(c);
            if (c->p >= c->end) return DECLINE;
            char ch = *c->p;
            if (ch == 'n') {
                if (literal(c, "null", 4) != TAKE) return DECLINE;
            } else if (f < m->k) {
                Number num; /* anything but a number (a type error, counted by Python) is declined */
                if (number(c, &num) != TAKE) return DECLINE;
                d->row[f] = num.value;
            } else {
                if (ch != '"') return DECLINE;
                const char *v;
                Py_ssize_t vn;
                int vh;
                if (plain_string(c, &v, &vn, &vh) != TAKE) return DECLINE;
                PyObject *u = cached_str(d, v, vn, vh);
                if (u == NULL) return PyErr_Occurred() ? FAIL : DECLINE;
                d->catrow[f - m->k] = u;
            }
        }
        if (eat(c, ',')) continue;
        return eat(c, '}') ? TAKE : DECLINE;
    }
}

/* The segment object (keys and values strings) as a dict in *out; null leaves *out NULL. Built even when the
 * model (maybe not read yet) keeps no segments: a rare field. */
static int segment(Decoder *d, Cur *c, PyObject **out) {
    ws(c);
    if (c->p < c->end && *c->p == 'n') return literal(c, "null", 4);
    if (c->p >= c->end || *c->p != '{') return DECLINE;
    c->p++;
    PyObject *dict = PyDict_New();
    if (dict == NULL) return FAIL;
    int rc = DECLINE;
    if (eat(c, '}')) {
        rc = TAKE;
        goto done;
    }
    for (;;) {
        const char *s, *v;
        Py_ssize_t n, vn;
        int high, vh;
        if (string_field(c, &s, &n, &high) != TAKE || !eat(c, ':') || string_field(c, &v, &vn, &vh) != TAKE)
            goto done;
        PyObject *key = cached_str(d, s, n, high), *val = key ? cached_str(d, v, vn, vh) : NULL;
        int err = key == NULL || val == NULL || PyDict_SetItem(dict, key, val) < 0;
        Py_XDECREF(key);
        Py_XDECREF(val);
        if (err) {
            rc = PyErr_Occurred() ? FAIL : DECLINE;
            goto done;
        }
        if (eat(c, ',')) continue;
        rc = eat(c, '}') ? TAKE : DECLINE;
        goto done;
    }
done:
    if (rc == TAKE) *out = dict;
    else Py_DECREF(dict);
    return rc;
}

/* The key of core/keys.py: FNV-1a over the id's code points (NUL skipped), SplitMix64 finaliser. */
static int event_key(PyObject *id, uint64_t *key) {
    Py_ssize_t n = PyUnicode_GET_LENGTH(id);
    if (n > MAX_ID_CHARS) return DECLINE;
    int kind = PyUnicode_KIND(id);
    const void *data = PyUnicode_DATA(id);
    uint64_t h = 0xcbf29ce484222325ULL;
    for (Py_ssize_t i = 0; i < n; i++) {
        Py_UCS4 ch = PyUnicode_READ(kind, data, i);
        if (ch != 0) h = (h ^ ch) * 0x100000001b3ULL;
    }
    h ^= h >> 30;
    h *= 0xbf58476d1ce4e5b9ULL;
    h ^= h >> 27;
    h *= 0x94d049bb133111ebULL;
    *key = h ^ (h >> 31);
    return TAKE;
}

static int dict_init(Dict *t, uint32_t size) {
    t->keys = PyMem_Calloc(size, sizeof *t->keys);
    t->codes = PyMem_Malloc(size * sizeof *t->codes);
    t->mask = size - 1;
    if (t->values == NULL) t->values = PyList_New(0);
    if (!t->keys || !t->codes) {
        PyErr_NoMemory();
        return -1;
    }
    return t->values ? 0 : -1;
}

static void dict_free(Dict *t) {
    PyMem_Free(t->keys);
    PyMem_Free(t->codes);
    t->keys = NULL;
    t->codes = NULL;
    Py_CLEAR(t->values);
}

static inline uint32_t pointer_hash(PyObject *o) {
    uint64_t h = (uint64_t)(uintptr_t)o >> 4;
    h *= 0x9e3779b97f4a7c15ULL;
    return (uint32_t)(h >> 32);
}

/* The code of obj in t, added when new; -1 with an exception set on failure. */
static int32_t dict_code(Dict *t, PyObject *obj) {
    uint32_t i = pointer_hash(obj) & t->mask;
    while (t->keys[i] != NULL) {
        if (t->keys[i] == obj) return t->codes[i];
        i = (i + 1) & t->mask;
    }
    Py_ssize_t n = PyList_GET_SIZE(t->values);
    if ((uint64_t)(n + 1) * 2 > (uint64_t)t->mask + 1) { /* grow: rehash the values, in code order */
        Dict bigger = {NULL, NULL, 0, t->values};
        if (dict_init(&bigger, (t->mask + 1) * 2) < 0) return -1;
        for (Py_ssize_t c = 0; c < n; c++) {
            PyObject *v = PyList_GET_ITEM(t->values, c);
            uint32_t j = pointer_hash(v) & bigger.mask;
            while (bigger.keys[j] != NULL) j = (j + 1) & bigger.mask;
            bigger.keys[j] = v;
            bigger.codes[j] = (int32_t)c;
        }
        PyMem_Free(t->keys);
        PyMem_Free(t->codes);
        *t = bigger;
        i = pointer_hash(obj) & t->mask;
        while (t->keys[i] != NULL) i = (i + 1) & t->mask;
    }
    if (PyList_Append(t->values, obj) < 0) return -1;
    t->keys[i] = obj;
    t->codes[i] = (int32_t)n;
    return (int32_t)n;
}

/* Empty the table for the next call (a table grown by a huge batch starts small again). */
static int dict_reset(Dict *t) {
    Py_CLEAR(t->values);
    if (t->mask + 1 > 4096) {
        PyMem_Free(t->keys);
        PyMem_Free(t->codes);
        return dict_init(t, 64);
    }
    memset(t->keys, 0, ((size_t)t->mask + 1) * sizeof *t->keys);
    t->values = PyList_New(0);
    return t->values ? 0 : -1;
}

static int grow(Out *o, int k, int c) {
    if (o->n < o->cap) return 0;
    Py_ssize_t cap = o->cap ? o->cap * 2 : 256;
    int64_t *pos = PyMem_Realloc(o->pos, (size_t)cap * sizeof *pos);
    if (pos) o->pos = pos;
    double *t = PyMem_Realloc(o->t, (size_t)cap * sizeof *t);
    if (t) o->t = t;
    double *lat = PyMem_Realloc(o->lat, (size_t)cap * sizeof *lat);
    if (lat) o->lat = lat;
    uint64_t *key = PyMem_Realloc(o->key, (size_t)cap * sizeof *key);
    if (key) o->key = key;
    double *num = PyMem_Realloc(o->num, (size_t)cap * (size_t)(k ? k : 1) * sizeof *num);
    if (num) o->num = num;
    int32_t *codes = PyMem_Realloc(o->codes, (size_t)cap * (size_t)(c + 1) * sizeof *codes);
    if (codes) o->codes = codes;
    if (!pos || !t || !lat || !key || !num || !codes) {
        PyErr_NoMemory();
        return -1;
    }
    o->cap = cap;
    return 0;
}

typedef struct {
    PyObject *id, *version, *pred, *segment;
    double t, score, latency;
    int has_score;
} Envelope;

static void drop_envelope(Envelope *e) {
    Py_CLEAR(e->id);
    Py_CLEAR(e->version);
    Py_CLEAR(e->pred);
    Py_CLEAR(e->segment);
}

static Model *model_named(Decoder *d, const char *s, Py_ssize_t n) {
    for (int i = 0; i < d->nmodels; i++)
        if (d->models[i].name_len == n && same(d->models[i].name, s, n)) return &d->models[i];
    return NULL;
}

static void reset_row(Decoder *d, Model *m) {
    for (int j = 0; j < m->k; j++) d->row[j] = NAN;
    for (int j = 0; j < m->c; j++) Py_CLEAR(d->catrow[j]);
}

/* Parse one message; on TAKE its row is appended to its model's output. */
static int event(Decoder *d, const char *buf, Py_ssize_t len, Py_ssize_t position, double lo, double hi) {
    Cur cur = {buf, buf + len}, *c = &cur;
    Envelope e = {NULL, NULL, NULL, NULL, 0.0, NAN, NAN, 0};
    Model *m = NULL;
    const char *feats = NULL; /* the features object, when it came before the model */
    unsigned seen = 0;
    int rc = DECLINE;
    if (!eat(c, '{')) goto out;
    if (eat(c, '}')) goto out;
    for (;;) {
        const char *k;
        Py_ssize_t kn;
        int kh;
        if (string_field(c, &k, &kn, &kh) != TAKE || !eat(c, ':')) goto out;
        unsigned which = 0;
        switch (kn) {
        case 8:
            which = !memcmp(k, "event_id", 8) ? K_ID : !memcmp(k, "features", 8) ? K_FEATURES : 0;
            break;
        case 5: which = !memcmp(k, "model", 5) ? K_MODEL : !memcmp(k, "score", 5) ? K_SCORE : 0; break;
        case 13: which = !memcmp(k, "model_version", 13) ? K_VERSION : 0; break;
        case 9: which = !memcmp(k, "timestamp", 9) ? K_TIME : 0; break;
        case 10: which = !memcmp(k, "prediction", 10) ? K_PRED : !memcmp(k, "latency_ms", 10) ? K_LATENCY : 0; break;
        case 7: which = !memcmp(k, "segment", 7) ? K_SEGMENT : 0; break;
        }
        if (which & seen) goto out; /* a duplicate known key */
        seen |= which;
        const char *s;
        Py_ssize_t n;
        int high;
        Number num;
        switch (which) {
        case 0:
            if ((kh && !valid_utf8(k, kn)) || skip_value(c, 1) != TAKE) goto out;
            break;
        case K_ID:
            if (string_field(c, &s, &n, &high) != TAKE || n == 0) goto out;
            if ((e.id = new_str(s, n, high)) == NULL) goto fail_or_decline;
            break;
        case K_MODEL:
            if (string_field(c, &s, &n, &high) != TAKE) goto out;
            if ((m = model_named(d, s, n)) == NULL) goto out;
            reset_row(d, m);
            if (feats != NULL) {
                Cur fc = {feats, buf + len};
                if ((rc = features(d, m, &fc)) != TAKE) goto reject;
                rc = DECLINE;
            }
            break;
        case K_VERSION:
            if (string_field(c, &s, &n, &high) != TAKE || n == 0) goto out;
            if ((e.version = cached_str(d, s, n, high)) == NULL) goto fail_or_decline;
            break;
        case K_TIME:
            ws(c);
            if (number(c, &num) != TAKE) goto out;
            e.t = num.value;
            break;
        case K_FEATURES:
            if (m != NULL) {
                if ((rc = features(d, m, c)) != TAKE) goto reject;
                rc = DECLINE;
            } else {
                ws(c);
                feats = c->p;
                if (skip_value(c, 1) != TAKE) goto out;
            }
            break;
        case K_PRED:
            ws(c);
            if (c->p >= c->end) goto out;
            if (*c->p == '"') {
                if (plain_string(c, &s, &n, &high) != TAKE) goto out;
                if ((e.pred = cached_str(d, s, n, high)) == NULL) goto fail_or_decline;
            } else if (*c->p == '-' || (*c->p >= '0' && *c->p <= '9')) {
                if (number(c, &num) != TAKE) goto out;
                if (num.is_int) {
                    if (num.digits > 18) goto out;
                    long long v = (long long)num.mant;
                    e.pred = PyLong_FromLongLong(num.negative ? -v : v);
                } else {
                    e.pred = PyFloat_FromDouble(num.value);
                }
                if (e.pred == NULL) goto fail;
            } else {
                goto out;
            }
            break;
        case K_SCORE:
        case K_LATENCY:
            ws(c);
            if (c->p < c->end && *c->p == 'n') {
                if (literal(c, "null", 4) != TAKE) goto out;
                break;
            }
            if (number(c, &num) != TAKE) goto out;
            if (which == K_SCORE) {
                e.score = num.value;
                e.has_score = 1;
            } else {
                if (num.value < 0) goto out;
                e.latency = num.value;
            }
            break;
        case K_SEGMENT:
            /* kept when the model wants it; the model may come later: kept until then */
            if ((rc = segment(d, c, &e.segment)) != TAKE) goto reject;
            rc = DECLINE;
            break;
        }
        if (eat(c, ',')) continue;
        if (!eat(c, '}')) goto out;
        break;
    }
    ws(c);
    if (c->p != c->end || (seen & REQUIRED) != REQUIRED) goto out;
    if (!(e.t >= lo && e.t <= hi)) goto out;
    uint64_t key;
    if (event_key(e.id, &key) != TAKE) goto out;
    Out *o = &m->out;
    if (grow(o, m->k, m->c) < 0) goto fail;
    int32_t *codes = o->codes + o->n * (m->c + 1);
    for (int j = 0; j < m->c; j++)
        if ((codes[j] = d->catrow[j] ? dict_code(&m->dicts[j], d->catrow[j]) : -1) < -1) goto fail;
    if ((codes[m->c] = dict_code(&m->dicts[m->c], e.version)) < 0) goto fail;
    PyObject *score = e.has_score ? PyFloat_FromDouble(e.score) : Py_NewRef(Py_None);
    if (score == NULL) goto fail;
    if (PyList_Append(o->ids, e.id) < 0 || PyList_Append(o->preds, e.pred) < 0 ||
        PyList_Append(o->scores, score) < 0 ||
        (m->segments && PyList_Append(o->segments, e.segment ? e.segment : Py_None) < 0)) {
        Py_DECREF(score);
        goto fail;
    }
    Py_DECREF(score);
    o->pos[o->n] = position;
    o->t[o->n] = e.t;
    o->lat[o->n] = e.latency;
    o->key[o->n] = key;
    memcpy(o->num + o->n * m->k, d->row, (size_t)m->k * sizeof(double));
    o->n++;
    rc = TAKE;
    goto out;
fail_or_decline:
    if (!PyErr_Occurred()) goto out;
fail:
    rc = FAIL;
    goto out;
reject:
    if (rc != FAIL) rc = DECLINE;
out:
    drop_envelope(&e);
    if (m != NULL)
        for (int j = 0; j < m->c; j++) Py_CLEAR(d->catrow[j]);
    return rc;
}

/* ---- the Python type ---- */

/* Fresh (empty) lists for the next call's rows. */
static int new_lists(Out *o) {
    Py_XSETREF(o->ids, PyList_New(0));
    Py_XSETREF(o->preds, PyList_New(0));
    Py_XSETREF(o->scores, PyList_New(0));
    Py_XSETREF(o->segments, PyList_New(0));
    return o->ids && o->preds && o->scores && o->segments ? 0 : -1;
}

static void free_out(Out *o) {
    PyMem_Free(o->pos);
    PyMem_Free(o->t);
    PyMem_Free(o->num);
    PyMem_Free(o->lat);
    PyMem_Free(o->key);
    PyMem_Free(o->codes);
    Py_CLEAR(o->ids);
    Py_CLEAR(o->preds);
    Py_CLEAR(o->scores);
    Py_CLEAR(o->segments);
    memset(o, 0, sizeof *o);
}

static void Decoder_dealloc(Decoder *d) {
    for (int i = 0; i < d->nmodels; i++) {
        Model *m = &d->models[i];
        PyMem_Free(m->name);
        for (int j = 0; j < m->nf; j++) PyMem_Free(m->fname[j]);
        PyMem_Free(m->fname);
        PyMem_Free(m->flen);
        PyMem_Free(m->table);
        PyMem_Free(m->guess);
        free_out(&m->out);
        if (m->dicts)
            for (int j = 0; j <= m->c; j++) dict_free(&m->dicts[j]);
        PyMem_Free(m->dicts);
    }
    PyMem_Free(d->models);
    if (d->cache)
        for (int i = 0; i < CACHE_SLOTS; i++) Py_XDECREF(d->cache[i].obj);
    PyMem_Free(d->cache);
    PyMem_Free(d->row);
    PyMem_Free(d->catrow);
    PyMem_Free(d->seen);
    Py_TYPE(d)->tp_free((PyObject *)d);
}

static char *copy_utf8(PyObject *s, Py_ssize_t *n) {
    const char *u = PyUnicode_AsUTF8AndSize(s, n);
    if (u == NULL) return NULL;
    char *out = PyMem_Malloc((size_t)*n + 1);
    if (out == NULL) {
        PyErr_NoMemory();
        return NULL;
    }
    memcpy(out, u, (size_t)*n + 1);
    return out;
}

static int init_model(Decoder *d, Model *m, PyObject *spec) {
    PyObject *name, *numeric, *categorical;
    int segments;
    if (!PyArg_ParseTuple(spec, "UO!O!p", &name, &PyTuple_Type, &numeric, &PyTuple_Type, &categorical, &segments))
        return -1;
    m->k = (int)PyTuple_GET_SIZE(numeric);
    m->c = (int)PyTuple_GET_SIZE(categorical);
    m->nf = m->k + m->c;
    m->segments = segments;
    if ((m->name = copy_utf8(name, &m->name_len)) == NULL) return -1;
    uint32_t size = 8;
    while (size < 2u * (uint32_t)m->nf + 1) size <<= 1;
    m->mask = size - 1;
    m->fname = PyMem_Calloc((size_t)m->nf + 1, sizeof *m->fname);
    m->flen = PyMem_Calloc((size_t)m->nf + 1, sizeof *m->flen);
    m->table = PyMem_Calloc(size, sizeof *m->table);
    m->guess = PyMem_Malloc(((size_t)m->nf + 1) * sizeof *m->guess);
    if (!m->fname || !m->flen || !m->table || !m->guess) {
        PyErr_NoMemory();
        return -1;
    }
    for (int j = 0; j < m->nf; j++) {
        PyObject *f = j < m->k ? PyTuple_GET_ITEM(numeric, j) : PyTuple_GET_ITEM(categorical, j - m->k);
        if (!PyUnicode_Check(f)) {
            PyErr_SetString(PyExc_TypeError, "feature names must be str");
            return -1;
        }
        if ((m->fname[j] = copy_utf8(f, &m->flen[j])) == NULL) return -1;
        m->guess[j] = j;
        uint32_t i = (uint32_t)fnv1a(m->fname[j], m->flen[j]) & m->mask;
        while (m->table[i]) {
            int32_t other = m->table[i] - 1;
            if (m->flen[other] == m->flen[j] && !memcmp(m->fname[other], m->fname[j], (size_t)m->flen[j])) {
                PyErr_Format(PyExc_ValueError, "feature %R is configured twice", f);
                return -1;
            }
            i = (i + 1) & m->mask;
        }
        m->table[i] = j + 1;
    }
    if (m->nf > d->maxf) d->maxf = m->nf;
    if ((m->dicts = PyMem_Calloc((size_t)m->c + 1, sizeof *m->dicts)) == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    for (int j = 0; j <= m->c; j++)
        if (dict_init(&m->dicts[j], 64) < 0) return -1;
    return new_lists(&m->out);
}

static int Decoder_init(Decoder *d, PyObject *args, PyObject *kwargs) {
    PyObject *specs;
    static char *kw[] = {"models", NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "O!", kw, &PyList_Type, &specs)) return -1;
    if (d->models != NULL) {
        PyErr_SetString(PyExc_RuntimeError, "Decoder is initialised once");
        return -1;
    }
    Py_ssize_t n = PyList_GET_SIZE(specs);
    d->models = PyMem_Calloc((size_t)n + 1, sizeof *d->models);
    d->cache = PyMem_Calloc(CACHE_SLOTS, sizeof *d->cache);
    if (!d->models || !d->cache) {
        PyErr_NoMemory();
        return -1;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        d->nmodels = (int)i + 1; /* freed by dealloc even when half built */
        if (init_model(d, &d->models[i], PyList_GET_ITEM(specs, i)) < 0) return -1;
    }
    d->row = PyMem_Calloc((size_t)d->maxf + 1, sizeof *d->row);
    d->catrow = PyMem_Calloc((size_t)d->maxf + 1, sizeof *d->catrow);
    d->seen = PyMem_Calloc((size_t)d->maxf + 1, sizeof *d->seen);
    if (!d->row || !d->catrow || !d->seen) {
        PyErr_NoMemory();
        return -1;
    }
    return 0;
}

static PyObject *bytes_of(const void *p, Py_ssize_t n) {
    return PyByteArray_FromStringAndSize(n ? (const char *)p : "", n);
}

/* The columns of model m as a tuple, and its buffers emptied for the next call. */
static PyObject *take_out(Model *m) {
    Out *o = &m->out;
    Py_ssize_t n = o->n;
    PyObject *values = PyTuple_New(m->c + 1);
    if (values == NULL) return NULL;
    for (int j = 0; j <= m->c; j++) PyTuple_SET_ITEM(values, j, Py_NewRef(m->dicts[j].values));
    PyObject *res = Py_BuildValue(
        "(NNNNNNOOONO)", bytes_of(o->pos, n * 8), bytes_of(o->t, n * 8), bytes_of(o->num, n * m->k * 8),
        bytes_of(o->key, n * 8), bytes_of(o->codes, n * (m->c + 1) * 4), values, o->ids, o->preds, o->scores,
        bytes_of(o->lat, n * 8), m->segments ? o->segments : Py_None);
    if (res == NULL) return NULL;
    o->n = 0;
    if (o->cap > 65536) { /* a huge batch does not pin its buffers */
        free_out(o);
    }
    for (int j = 0; j <= m->c; j++)
        if (dict_reset(&m->dicts[j]) < 0) goto fail;
    if (new_lists(o) < 0) goto fail;
    return res;
fail:
    Py_DECREF(res);
    return NULL;
}

/* After a failed call: every model's rows of it dropped. */
static void discard_outputs(Decoder *d) {
    PyObject *type, *value, *tb;
    PyErr_Fetch(&type, &value, &tb); /* the error the call raises */
    for (int i = 0; i < d->nmodels; i++) {
        Model *m = &d->models[i];
        m->out.n = 0;
        for (int j = 0; j <= m->c; j++) dict_reset(&m->dicts[j]);
        new_lists(&m->out);
    }
    PyErr_Clear();
    PyErr_Restore(type, value, tb);
}

static PyObject *Decoder_decode(Decoder *d, PyObject *args) {
    PyObject *values;
    double lo, hi;
    if (!PyArg_ParseTuple(args, "O!dd", &PyList_Type, &values, &lo, &hi)) return NULL;
    if (d->models == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "Decoder is not initialised");
        return NULL;
    }
    PyObject *declined = PyList_New(0);
    if (declined == NULL) return NULL;
    Py_ssize_t n = PyList_GET_SIZE(values);
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *v = PyList_GET_ITEM(values, i);
        int rc = DECLINE;
        if (PyBytes_Check(v)) rc = event(d, PyBytes_AS_STRING(v), PyBytes_GET_SIZE(v), i, lo, hi);
        if (rc == FAIL) goto fail;
        if (rc == DECLINE) {
            PyObject *idx = PyLong_FromSsize_t(i);
            if (idx == NULL || PyList_Append(declined, idx) < 0) {
                Py_XDECREF(idx);
                goto fail;
            }
            Py_DECREF(idx);
        }
    }
    PyObject *models = PyList_New(d->nmodels);
    if (models == NULL) goto fail;
    for (int i = 0; i < d->nmodels; i++) {
        PyObject *cols = d->models[i].out.n ? take_out(&d->models[i]) : Py_NewRef(Py_None);
        if (cols == NULL) {
            Py_DECREF(models);
            goto fail;
        }
        PyList_SET_ITEM(models, i, cols);
    }
    return Py_BuildValue("(NN)", declined, models);
fail:
    Py_DECREF(declined);
    discard_outputs(d);
    return NULL;
}

static PyObject *parse_number(PyObject *self, PyObject *arg) {
    /* the number conversion alone, for tests: None when declined */
    (void)self;
    if (!PyBytes_Check(arg)) {
        PyErr_SetString(PyExc_TypeError, "bytes expected");
        return NULL;
    }
    Cur c = {PyBytes_AS_STRING(arg), PyBytes_AS_STRING(arg) + PyBytes_GET_SIZE(arg)};
    Number num;
    if (number(&c, &num) != TAKE || c.p != c.end) Py_RETURN_NONE;
    return PyFloat_FromDouble(num.value);
}

static PyMethodDef Decoder_methods[] = {
    {"decode", (PyCFunction)Decoder_decode, METH_VARARGS,
     "decode(values, lo, hi) -> (declined positions, per model: columns tuple or None)"},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject DecoderType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "stream_monitor.core._columnar.Decoder",
    .tp_basicsize = sizeof(Decoder),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Decoder(models: list of (name, numeric names, categorical names, keep segments))",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Decoder_init,
    .tp_dealloc = (destructor)Decoder_dealloc,
    .tp_methods = Decoder_methods,
};

static PyMethodDef module_methods[] = {
    {"parse_number", parse_number, METH_O, "The decoder's number conversion of one JSON number (tests)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, .m_name = "_columnar", .m_doc = "Compiled prediction decoder.", .m_size = -1,
    .m_methods = module_methods,
};

PyMODINIT_FUNC PyInit__columnar(void) {
    init_powers();
    if (PyType_Ready(&DecoderType) < 0) return NULL;
    PyObject *mod = PyModule_Create(&module);
    if (mod == NULL) return NULL;
    if (PyModule_AddObjectRef(mod, "Decoder", (PyObject *)&DecoderType) < 0) {
        Py_DECREF(mod);
        return NULL;
    }
    return mod;
}
