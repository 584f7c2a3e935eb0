/* Prediction events from JSON bytes straight into columns: the compiled decoder.
 *
 * One call takes a batch of message values and, for each configured model, fills the column buffers the
 * monitor works on (numeric features as float64; categorical values, the model version and class predictions
 * dictionary-encoded: one shared str per distinct value and an int32 code per row; the envelope fields; the
 * 64-bit event keys of core/keys.py; a numeric prediction and the score, when the model monitors them, as
 * the last columns of its numeric matrix too). No dict, float or Struct object is built per event.
 *
 * A call has two phases. The parse reads every message into plain C buffers (numbers, codes, and the byte
 * ranges of ids, string predictions and segments within their messages) without the GIL, so other Python
 * threads run meanwhile (with batch.decode_ahead the service parses the next batch while the core works on the
 * previous one). Then, with the GIL, the few Python objects the caller needs are made from those buffers: the
 * distinct strings and, for a model that joins labels, each event's id, prediction and score (the others get
 * predictions and scores as buffers: numbers, class codes and flags). A Decoder runs one call at a time (a
 * second thread's call is refused).
 *
 * It accepts only the common, valid event and leaves everything else to the Python decoder: a message it
 * does not take is reported back by position ("declined") and decided by the general path, so the outcome
 * never depends on which path took a message. Declined are, besides broken contracts: strings with escapes
 * in the fields it reads, a value of an unexpected type (a data-quality fact the Python path counts),
 * timestamps given as ISO strings or out of the plausible range, unknown models, duplicate known keys or
 * features, ids longer than 128 characters, integers of more than 18 digits where an int is kept, \u escapes
 * anywhere, nesting deeper than 64 levels (the event object is level 1), invalid UTF-8 (as Python's strict
 * decoder sees it), messages longer than max_message_bytes, and strings it keeps (the id, the model's name and
 * version, categorical values, class predictions, segment keys and values) longer than max_string_bytes bytes.
 * Anything that is not bytes (None among them) is declined too.
 *
 * Numbers are converted with correct rounding (the same double as Python's float(text)): by one exact
 * floating-point operation when the digits fit in 53 bits and the power of ten is exact; for up to 19
 * significant digits, by an exact 128-bit product (positive powers) or a 128-bit reciprocal of the power of
 * five (negative ones; exact 128-bit division when that product lies within a unit of a rounding boundary);
 * beyond, by the C library's correctly rounded strtod in the C locale (elsewhere than glibc: declined), for
 * tokens under 80 bytes; longer ones are declined unless their digits fit the exact paths. A number whose value
 * is beyond the double range (Python's float() gives an infinity) is declined, whatever its spelling.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#ifdef __GLIBC__
#include <locale.h>
#endif

typedef unsigned __int128 u128;

enum { TAKE = 0, DECLINE = 1, FAIL = -1 }; /* FAIL: out of memory (the parse), or a Python exception is set */

#define MAX_DEPTH 64
#define MAX_ID_CHARS 128
#define CACHE_SLOTS 4096
#define CACHE_MAX_LEN 64

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

/* ---- UTF-8, checked as Python's strict decoder does (no GIL needed) ---- */

/* The code point at s[*i] (advancing *i), or -1 when the bytes there are not valid UTF-8: truncated or
 * stray continuation bytes, overlong forms, surrogates, beyond U+10FFFF. */
static inline int32_t next_code_point(const unsigned char *s, Py_ssize_t n, Py_ssize_t *i) {
    unsigned char c = s[*i];
    if (c < 0x80) {
        (*i)++;
        return c;
    }
    int len;
    uint32_t cp, min;
    if (c >= 0xC2 && c <= 0xDF) {
        len = 2, cp = c & 0x1F, min = 0x80;
    } else if ((c & 0xF0) == 0xE0) {
        len = 3, cp = c & 0x0F, min = 0x800;
    } else if (c >= 0xF0 && c <= 0xF4) {
        len = 4, cp = c & 0x07, min = 0x10000;
    } else {
        return -1;
    }
    if (*i + len > n) return -1;
    for (int k = 1; k < len; k++) {
        unsigned char cc = s[*i + k];
        if ((cc & 0xC0) != 0x80) return -1;
        cp = (cp << 6) | (cc & 0x3F);
    }
    if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return -1;
    *i += len;
    return (int32_t)cp;
}

/* Is s[0, n) valid UTF-8? Its code points counted in *chars (when not NULL). */
static int utf8_ok(const char *s, Py_ssize_t n, Py_ssize_t *chars) {
    Py_ssize_t i = 0, count = 0;
    while (i < n) {
        if (next_code_point((const unsigned char *)s, n, &i) < 0) return 0;
        count++;
    }
    if (chars) *chars = count;
    return 1;
}

/* ---- string cache: categorical values, versions, class predictions repeat; one str object each (GIL) ---- */

typedef struct {
    PyObject *obj;
    uint64_t hash;
    Py_ssize_t len;
    const char *utf8; /* the object's own UTF-8 buffer */
} Slot;

/* ---- dictionary encoding of one string column within a call (no GIL) ---- */

typedef struct {
    const char *s; /* in a message of the call; NULL: missing */
    Py_ssize_t n;
    uint64_t hash;
    int high; /* has non-ASCII bytes (already checked to be valid UTF-8) */
} Key;

/* The distinct values of a column in order of first appearance (their index is the code), found by their
 * bytes through an open-addressing table. */
typedef struct {
    int32_t *slots; /* code + 1, 0 = empty */
    uint32_t mask;
    Key *keys;
    int32_t count, cap;
} Dict;

typedef struct {
    Py_ssize_t n, cap;
    int64_t *pos;
    double *t, *num, *lat, *score;
    uint64_t *key;
    int32_t *codes; /* (n, c + 1): each categorical feature's code, then the model version's; -1 = missing */
    /* read back with the GIL into the objects the caller gets */
    const char **id, **seg; /* the id's bytes, the segment object's bytes (NULL: none) */
    int32_t *id_len, *seg_len;
    uint8_t *flags; /* ID_HIGH, HAS_SCORE, and the prediction's kind */
    union pred { int64_t i; double f; int32_t code; } *pred;
} Out;

enum { ID_HIGH = 1, HAS_SCORE = 2, PRED_STR = 4, PRED_INT = 8, PRED_FLOAT = 16 };

typedef struct {
    char *name;
    Py_ssize_t name_len;
    int k, c, nf; /* numeric, categorical, all configured features */
    int width;      /* doubles per row of num: the k features, then the prediction's and the score's columns */
    int pred_col, score_col; /* where in a row of num a numeric prediction and the score go; -1: nowhere */
    char **fname;
    Py_ssize_t *flen;
    int32_t *table; /* open addressing: feature index + 1, 0 = empty */
    uint32_t mask;
    int32_t *guess; /* the feature seen at each key position of the previous event */
    uint8_t *fplain; /* the name holds no quote, backslash or control byte: its bytes are its JSON string */
    int segments;   /* keep the segment object (the model has segment keys) */
    int rows;       /* make each row's id, prediction and score objects (the model joins labels) */
    Out out;
    Dict *dicts;    /* c + 2: the categorical features, the model version, class predictions */
} Model;

typedef struct {
    PyObject_HEAD
    int nmodels;
    Model *models;
    int32_t *mtable; /* open addressing by name (fnv1a): model index + 1, 0 = empty; NULL for a few models */
    uint32_t mmask;
    Slot *cache;
    int ready;    /* __init__ completed: only then are the buffers below and every model complete */
    int building; /* __init__ is running (a spec's truth test may run Python code that calls back) */
    int busy;     /* a call is running (its parse without the GIL) */
    Py_ssize_t max_string;  /* longest string kept (ids, versions, categories, classes, segments, model) */
    Py_ssize_t max_message; /* longest message taken */
    /* per-event scratch, sized for the widest model */
    int maxf;
    double *row;
    Key *catrow;
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

/* A plain string value whose bytes are valid UTF-8. */
static int text_field(Cur *c, const char **s, Py_ssize_t *n, int *high) {
    if (string_field(c, s, n, high) != TAKE) return DECLINE;
    return *high && !utf8_ok(*s, *n, NULL) ? DECLINE : TAKE;
}

#ifdef __GLIBC__
static locale_t c_locale; /* made at import */
#endif

/* A number token too long for the exact paths: strtod of glibc rounds correctly; in the C locale the decimal
 * point is '.' whatever the process's locale. 0: not finite, or no such conversion here. */
static int long_number(const char *buf, Py_ssize_t len, double *out) {
#ifdef __GLIBC__
    if (c_locale == (locale_t)0) return 0;
    char *end;
    double r = strtod_l(buf, &end, c_locale);
    if (end != buf + len || !isfinite(r)) return 0;
    *out = r;
    return 1;
#else
    (void)buf, (void)len, (void)out;
    return 0;
#endif
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
    int64_t digits; /* significant digits (leading zeros excluded) */
} Number;

/* The written exponent is read exactly up to this bound and saturates beyond it. The decimal exponent of a
 * number is the written one plus at most its token's length in either direction (a digit of the integer part
 * past the 19th adds one, a fraction digit or a leading zero of the fraction takes one away), and no token
 * comes near 10^17 bytes, so a saturated exponent still has the sign and far more than the size of the true
 * one: no fast path takes it (they want |exponent| <= 27) and the value is infinite or zero. */
#define EXP_SATURATE 100000000000000000LL /* 10^17: times 10 plus a digit stays below 2^63 */

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

/* Four ASCII digits at p, if they are four digits: their value (as eight_digits, on 32 bits). */
static inline int four_digits(const char *p, const char *end, uint64_t *out) {
#if !defined(__BYTE_ORDER__) || __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
    return 0;
#endif
    if (end - p < 4) return 0;
    uint32_t v;
    memcpy(&v, p, 4);
    if ((((v & 0xF0F0F0F0u) | (((v + 0x06060606u) & 0xF0F0F0F0u) >> 4))) != 0x33333333u) return 0;
    v = (v & 0x0F0F0F0Fu) * 2561u >> 8;
    *out = ((v & 0x00FF00FFu) * 6553601u >> 16) & 0xFFFFu;
    return 1;
}

/* The n (8 or 4) digits at *p appended to *m, *p left on the last of them; 0, changing nothing, when they are
 * not n digits. */
static inline int take_digits(const char **p, const char *end, int n, uint64_t *m) {
    uint64_t chunk;
    if (!(n == 8 ? eight_digits(*p, end, &chunk) : four_digits(*p, end, &chunk))) return 0;
    *m = *m * (n == 8 ? 100000000ULL : 10000ULL) + chunk;
    *p += n - 1;
    return 1;
}

/* A JSON number at c->p (strict grammar), as the nearest double: value = m * 10^e while digits <= 19. */
static int number(Cur *c, Number *out) {
    const char *start = c->p, *p = c->p, *end = c->end;
    int neg = 0, is_int = 1;
    int64_t digits = 0;
    uint64_t m = 0;
    int64_t e = 0; /* value = m * 10^e while digits <= 19; exact whatever the token's length (see EXP_SATURATE) */
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
        int eights = 1, fours = 1; /* chunks of digits may still follow (a failed one ends the run) */
        for (; p < end && *p >= '0' && *p <= '9'; p++) {
            if (digits == 0 && *p == '0') { /* a leading zero of 0.000x: a position, not a digit */
                e--;
                continue;
            }
            /* the common long fraction: 8, else 4 digits at once, while m stays under 10^19 */
            int n = 0;
            if (eights && digits <= 11) {
                if (take_digits(&p, end, 8, &m)) n = 8;
                else eights = 0; /* fewer than 8 digits are left */
            }
            if (!n && fours && digits <= 15) {
                if (take_digits(&p, end, 4, &m)) n = 4;
                else fours = 0;
            }
            if (n) {
                e -= n;
                digits += n;
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
        int64_t x = 0;
        for (; p < end && *p >= '0' && *p <= '9'; p++)
            if (x < EXP_SATURATE) x = x * 10 + (*p - '0');
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
        for (int64_t i = 0; i < -e; i++) den *= 10;
        int s = 127 - bits128(m);
        u128 num = (u128)m << s;
        v = round_bits(num / den, num % den != 0, -s);
    } else {
        char buf[80];
        Py_ssize_t len = p - start;
        if (len >= (Py_ssize_t)sizeof buf) return DECLINE;
        memcpy(buf, start, (size_t)len);
        buf[len] = 0;
        double r;
        if (!long_number(buf, len, &r)) return DECLINE;
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
            if (high && !utf8_ok(s, p - s, NULL)) return DECLINE;
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

/* A container at depth (a field of the event: 1) is at level depth + 1 counting the event object as level 1,
 * as the general path counts: deeper than MAX_DEPTH levels is declined. */
static int skip_container(Cur *c, int depth, char close, int object) {
    if (depth + 1 > MAX_DEPTH) return DECLINE;
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

/* ---- one event (no GIL) ---- */

enum { K_ID = 1, K_MODEL = 2, K_VERSION = 4, K_TIME = 8, K_FEATURES = 16, K_PRED = 32, K_SCORE = 64,
       K_LATENCY = 128, K_SEGMENT = 256 };
#define REQUIRED (K_ID | K_MODEL | K_VERSION | K_TIME | K_FEATURES | K_PRED)

/* The feature named by the scanned key s (-1: not configured), remembered as the guess for key position at.
 * The guess itself was tried before the scan, in place (features()): a key that reaches this lookup is not it
 * (a configured name is either compared in place, or holds a byte only an escape can write, which the scan
 * declines). */
static int find_feature(Model *m, const char *s, Py_ssize_t n, Py_ssize_t at) {
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

/* The features object of model m into d->row / d->catrow (already reset to NaN / missing). */
static int features(Decoder *d, Model *m, Cur *c) {
    ws(c);
    if (c->p >= c->end || *c->p != '{') return DECLINE;
    c->p++;
    if (eat(c, '}')) return TAKE;
    if (++d->stamp == 0) { /* wrapped: no feature may look seen in this event */
        memset(d->seen, 0, (size_t)d->maxf * sizeof *d->seen);
        d->stamp = 1;
    }
    uint32_t stamp = d->stamp;
    for (Py_ssize_t at = 0;; at++) { /* a key position (any number of keys: no int to overflow) */
        const char *s = NULL;
        Py_ssize_t n = 0;
        int high = 0, f = -1;
        ws(c);
        if (at < m->nf) { /* the key the previous event had here, compared in place (no scan, no lookup) */
            int g = m->guess[at];
            Py_ssize_t gl = g >= 0 ? m->flen[g] : 0;
            if (g >= 0 && m->fplain[g] && c->end - c->p > gl + 1 && c->p[0] == '"' && c->p[gl + 1] == '"' &&
                same(m->fname[g], c->p + 1, gl)) {
                f = g;
                c->p += gl + 2;
            }
        }
        if (f < 0) {
            if (string_field(c, &s, &n, &high) != TAKE) return DECLINE;
            f = find_feature(m, s, n, at);
        }
        if (!eat(c, ':')) return DECLINE;
        if (f < 0) {
            if (high && !utf8_ok(s, n, NULL)) return DECLINE;
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
            } else { /* anything but a string is declined (text_field wants the quote) */
                Key *v = &d->catrow[f - m->k];
                if (text_field(c, &v->s, &v->n, &v->high) != TAKE || v->n > d->max_string) return DECLINE;
            }
        }
        if (eat(c, ',')) continue;
        return eat(c, '}') ? TAKE : DECLINE;
    }
}

/* The segment object: keys and values plain strings (the dict is built with the GIL, from its bytes in
 * *s, *n); null leaves *s NULL. Checked even when the model (maybe not read yet) keeps no segments. */
static int segment_bytes(Cur *c, const char **s, Py_ssize_t *n, Py_ssize_t max_string) {
    ws(c);
    if (c->p < c->end && *c->p == 'n') return literal(c, "null", 4);
    if (c->p >= c->end || *c->p != '{') return DECLINE;
    const char *start = c->p++;
    if (!eat(c, '}'))
        for (;;) {
            const char *k, *v;
            Py_ssize_t kn, vn;
            int kh, vh;
            if (text_field(c, &k, &kn, &kh) != TAKE || kn > max_string || !eat(c, ':') ||
                text_field(c, &v, &vn, &vh) != TAKE || vn > max_string)
                return DECLINE;
            if (eat(c, ',')) continue;
            if (!eat(c, '}')) return DECLINE;
            break;
        }
    if (c->p - start > INT32_MAX) return DECLINE; /* its length is kept in 32 bits */
    *s = start;
    *n = c->p - start;
    return TAKE;
}

/* The key of core/keys.py from the id's UTF-8 bytes: FNV-1a over its code points (NUL skipped), SplitMix64
 * finaliser. Declined: invalid UTF-8, more than MAX_ID_CHARS code points. */
static int event_key(const char *s, Py_ssize_t n, uint64_t *key) {
    uint64_t h = 0xcbf29ce484222325ULL;
    Py_ssize_t i = 0, chars = 0;
    while (i < n) {
        int32_t ch = next_code_point((const unsigned char *)s, n, &i);
        if (ch < 0 || ++chars > MAX_ID_CHARS) return DECLINE;
        if (ch != 0) h = (h ^ (uint32_t)ch) * 0x100000001b3ULL;
    }
    h ^= h >> 30;
    h *= 0xbf58476d1ce4e5b9ULL;
    h ^= h >> 27;
    h *= 0x94d049bb133111ebULL;
    *key = h ^ (h >> 31);
    return TAKE;
}

/* An empty table of size slots (a power of two); -1 when out of memory (the table is then left without slots,
 * which dict_code sees and retries). */
static int dict_init(Dict *t, uint32_t size) {
    t->slots = PyMem_RawCalloc(size, sizeof *t->slots);
    t->mask = t->slots ? size - 1 : 0;
    t->count = 0;
    return t->slots ? 0 : -1;
}

static void dict_free(Dict *t) {
    PyMem_RawFree(t->slots);
    PyMem_RawFree(t->keys);
    memset(t, 0, sizeof *t);
}

/* The code of the string s[0, n) in t, added when new; -1 when out of memory. */
static int32_t dict_code(Dict *t, const char *s, Py_ssize_t n, int high) {
    if (t->slots == NULL && dict_init(t, 64) < 0) return -1; /* a reset that ran out of memory */
    uint64_t h = fnv1a(s, n);
    uint32_t i = (uint32_t)h & t->mask;
    for (int32_t at; (at = t->slots[i]) != 0; i = (i + 1) & t->mask) {
        Key *k = &t->keys[at - 1];
        if (k->hash == h && k->n == n && same(k->s, s, n)) return at - 1;
    }
    if ((uint64_t)(t->count + 1) * 2 > (uint64_t)t->mask + 1) { /* grow: rehash the values, in code order */
        if (t->mask >= (1u << 30) - 1) return -1; /* 2^31 slots would not fit the 32-bit size (nor codes) */
        uint32_t size = (t->mask + 1) * 2;
        int32_t *slots = PyMem_RawCalloc(size, sizeof *slots);
        if (slots == NULL) return -1;
        for (int32_t code = 0; code < t->count; code++) {
            uint32_t j = (uint32_t)t->keys[code].hash & (size - 1);
            while (slots[j] != 0) j = (j + 1) & (size - 1);
            slots[j] = code + 1;
        }
        PyMem_RawFree(t->slots);
        t->slots = slots;
        t->mask = size - 1;
        i = (uint32_t)h & t->mask;
        while (t->slots[i] != 0) i = (i + 1) & t->mask;
    }
    if (t->count == t->cap) {
        if (t->cap > INT32_MAX / 2 || (size_t)t->cap * 2 > PY_SSIZE_T_MAX / sizeof(Key)) return -1;
        int32_t cap = t->cap ? t->cap * 2 : 16;
        Key *keys = PyMem_RawRealloc(t->keys, (size_t)cap * sizeof *keys);
        if (keys == NULL) return -1;
        t->keys = keys;
        t->cap = cap;
    }
    t->keys[t->count] = (Key){s, n, h, high};
    t->slots[i] = ++t->count;
    return t->count - 1;
}

/* Empty the table for the next call (a table grown by a huge batch starts small again). */
static int dict_reset(Dict *t) {
    t->count = 0;
    if (t->slots == NULL || t->mask + 1 > 4096) {
        dict_free(t);
        return dict_init(t, 64);
    }
    memset(t->slots, 0, ((size_t)t->mask + 1) * sizeof *t->slots);
    return 0;
}

/* The row buffers of Out and the values each row holds in them (width numeric, c categorical): one list for
 * growing and for freeing them. */
#define OUT_BUFFERS(X)                                                                                       \
    X(pos, 1) X(t, 1) X(lat, 1) X(score, 1) X(key, 1) X(num, width ? width : 1) X(codes, c + 1) X(id, 1)      \
    X(seg, 1) X(id_len, 1) X(seg_len, 1) X(flags, 1) X(pred, 1)

/* a * b * size in *out when it fits a Py_ssize_t (the sizes a bytearray of the buffer may have); else 0 */
static inline int buffer_bytes(size_t a, size_t b, size_t size, size_t *out) {
    size_t ab;
    return !__builtin_mul_overflow(a, b, &ab) && !__builtin_mul_overflow(ab, size, out) &&
           *out <= (size_t)PY_SSIZE_T_MAX;
}

#define GROW(field, per_row)                                                                                 \
    {                                                                                                        \
        size_t bytes_;                                                                                       \
        if (!buffer_bytes((size_t)cap, (size_t)(per_row), sizeof *o->field, &bytes_)) return -1;             \
        void *p_ = PyMem_RawRealloc(o->field, bytes_);                                                       \
        if (p_ == NULL) return -1;                                                                           \
        o->field = p_;                                                                                       \
    }

/* Room for one more row; -1 when out of memory or when the buffers would outgrow the address space (the
 * buffers grown so far stay valid). */
static int grow(Out *o, int width, int c) {
    if (o->n < o->cap) return 0;
    if (o->cap > PY_SSIZE_T_MAX / 2) return -1;
    Py_ssize_t cap = o->cap ? o->cap * 2 : 256;
    OUT_BUFFERS(GROW)
    o->cap = cap;
    return 0;
}

#define FREE(field, per_row) PyMem_RawFree(o->field);

static void free_out(Out *o) {
    OUT_BUFFERS(FREE)
    memset(o, 0, sizeof *o);
}

typedef struct {
    Key id, version, pred;
    const char *seg;
    Py_ssize_t seg_n;
    int pred_kind;
    union pred value;
    double t, score, latency;
    int has_score;
} Envelope;

static Model *model_named(Decoder *d, const char *s, Py_ssize_t n) {
    if (d->mtable == NULL) { /* a few models: compared in turn */
        for (int i = 0; i < d->nmodels; i++)
            if (d->models[i].name_len == n && same(d->models[i].name, s, n)) return &d->models[i];
        return NULL;
    }
    for (uint32_t h = (uint32_t)fnv1a(s, n) & d->mmask;; h = (h + 1) & d->mmask) { /* a fleet: hashed */
        int32_t slot = d->mtable[h];
        if (slot == 0) return NULL;
        Model *m = &d->models[slot - 1];
        if (m->name_len == n && same(m->name, s, n)) return m;
    }
}

static void reset_row(Decoder *d, Model *m) {
    for (int j = 0; j < m->k; j++) d->row[j] = NAN;
    for (int j = 0; j < m->c; j++) d->catrow[j].s = NULL;
}

/* Parse one message; on TAKE its row is appended to its model's output. Runs without the GIL: touches no
 * Python object. */
static int event(Decoder *d, const char *buf, Py_ssize_t len, Py_ssize_t position, double lo, double hi) {
    Cur cur = {buf, buf + len}, *c = &cur;
    Envelope e = {.t = NAN, .latency = NAN, .score = NAN};
    Model *m = NULL;
    const char *feats = NULL; /* the features object, when it came before the model */
    unsigned seen = 0;
    int rc;
    if (!eat(c, '{')) return DECLINE;
    if (eat(c, '}')) return DECLINE;
    for (;;) {
        const char *k;
        Py_ssize_t kn;
        int kh;
        if (string_field(c, &k, &kn, &kh) != TAKE || !eat(c, ':')) return DECLINE;
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
        if (which & seen) return DECLINE; /* a duplicate known key */
        seen |= which;
        const char *s;
        Py_ssize_t n;
        int high;
        Number num;
        switch (which) {
        case 0:
            if ((kh && !utf8_ok(k, kn, NULL)) || skip_value(c, 1) != TAKE) return DECLINE;
            break;
        case K_ID:
            if (string_field(c, &e.id.s, &e.id.n, &e.id.high) != TAKE || e.id.n == 0 || e.id.n > d->max_string)
                return DECLINE;
            break;
        case K_MODEL:
            if (string_field(c, &s, &n, &high) != TAKE || n > d->max_string) return DECLINE;
            if ((m = model_named(d, s, n)) == NULL) return DECLINE;
            reset_row(d, m);
            if (feats != NULL) {
                Cur fc = {feats, buf + len};
                if (features(d, m, &fc) != TAKE) return DECLINE;
            }
            break;
        case K_VERSION:
            if (text_field(c, &e.version.s, &e.version.n, &e.version.high) != TAKE || e.version.n == 0 ||
                e.version.n > d->max_string)
                return DECLINE;
            break;
        case K_TIME:
            ws(c);
            if (number(c, &num) != TAKE) return DECLINE;
            e.t = num.value;
            break;
        case K_FEATURES:
            if (m != NULL) {
                if (features(d, m, c) != TAKE) return DECLINE;
            } else {
                ws(c);
                feats = c->p;
                if (skip_value(c, 1) != TAKE) return DECLINE;
            }
            break;
        case K_PRED:
            ws(c);
            if (c->p >= c->end) return DECLINE;
            if (*c->p == '"') {
                if (text_field(c, &e.pred.s, &e.pred.n, &e.pred.high) != TAKE || e.pred.n > d->max_string)
                    return DECLINE;
                e.pred_kind = PRED_STR;
            } else if (*c->p == '-' || (*c->p >= '0' && *c->p <= '9')) {
                if (number(c, &num) != TAKE) return DECLINE;
                if (num.is_int) {
                    if (num.digits > 18) return DECLINE;
                    long long v = (long long)num.mant;
                    e.value.i = num.negative ? -v : v;
                    e.pred_kind = PRED_INT;
                } else {
                    e.value.f = num.value;
                    e.pred_kind = PRED_FLOAT;
                }
            } else {
                return DECLINE;
            }
            break;
        case K_SCORE:
        case K_LATENCY:
            ws(c);
            if (c->p < c->end && *c->p == 'n') {
                if (literal(c, "null", 4) != TAKE) return DECLINE;
                break;
            }
            if (number(c, &num) != TAKE) return DECLINE;
            if (which == K_SCORE) {
                e.score = num.value;
                e.has_score = 1;
            } else {
                if (num.value < 0) return DECLINE;
                e.latency = num.value;
            }
            break;
        case K_SEGMENT:
            if (segment_bytes(c, &e.seg, &e.seg_n, d->max_string) != TAKE) return DECLINE;
            break;
        }
        if (eat(c, ',')) continue;
        if (!eat(c, '}')) return DECLINE;
        break;
    }
    ws(c);
    if (c->p != c->end || (seen & REQUIRED) != REQUIRED) return DECLINE;
    if (!(e.t >= lo && e.t <= hi)) return DECLINE;
    uint64_t key;
    if (event_key(e.id.s, e.id.n, &key) != TAKE) return DECLINE;
    Out *o = &m->out;
    if (grow(o, m->width, m->c) < 0) return FAIL;
    int32_t *codes = o->codes + o->n * (m->c + 1);
    for (int j = 0; j < m->c; j++) {
        Key *v = &d->catrow[j];
        codes[j] = -1;
        if (v->s != NULL && (codes[j] = dict_code(&m->dicts[j], v->s, v->n, v->high)) < 0) return FAIL;
    }
    if ((codes[m->c] = dict_code(&m->dicts[m->c], e.version.s, e.version.n, e.version.high)) < 0) return FAIL;
    if (e.pred_kind == PRED_STR && (e.value.code = dict_code(&m->dicts[m->c + 1], e.pred.s, e.pred.n,
                                                             e.pred.high)) < 0)
        return FAIL;
    rc = TAKE;
    Py_ssize_t r = o->n++;
    o->pos[r] = position;
    o->t[r] = e.t;
    o->lat[r] = e.latency;
    o->score[r] = e.score;
    o->key[r] = key;
    o->id[r] = e.id.s;
    o->id_len[r] = (int32_t)e.id.n;
    o->seg[r] = e.seg;
    o->seg_len[r] = (int32_t)e.seg_n;
    o->flags[r] = (uint8_t)((e.id.high ? ID_HIGH : 0) | (e.has_score ? HAS_SCORE : 0) | e.pred_kind);
    o->pred[r] = e.value;
    double *row = o->num + r * m->width;
    memcpy(row, d->row, (size_t)m->k * sizeof(double));
    if (m->pred_col >= 0) /* a number, as a float (NaN else: a class string is the column's type error) */
        row[m->pred_col] = e.pred_kind == PRED_INT     ? (double)e.value.i
                           : e.pred_kind == PRED_FLOAT ? e.value.f
                                                       : NAN;
    if (m->score_col >= 0) row[m->score_col] = e.score;
    return rc;
}

/* ---- the Python objects of a call's rows (with the GIL) ---- */

/* A str of bytes already checked to be valid UTF-8. */
static PyObject *new_str(const char *s, Py_ssize_t n, int high) {
    return high ? PyUnicode_DecodeUTF8(s, n, "strict") : PyUnicode_FromStringAndSize(s, n);
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

/* The segment object checked by segment_bytes, as a dict of str. */
static PyObject *segment_dict(Decoder *d, const char *s, Py_ssize_t n) {
    Cur cur = {s + 1, s + n}, *c = &cur; /* after the '{' */
    PyObject *dict = PyDict_New();
    if (dict == NULL || eat(c, '}')) return dict;
    for (;;) {
        const char *k, *v;
        Py_ssize_t kn, vn;
        int kh, vh;
        string_field(c, &k, &kn, &kh);
        eat(c, ':');
        string_field(c, &v, &vn, &vh);
        PyObject *key = cached_str(d, k, kn, kh), *val = key ? cached_str(d, v, vn, vh) : NULL;
        int err = key == NULL || val == NULL || PyDict_SetItem(dict, key, val) < 0;
        Py_XDECREF(key);
        Py_XDECREF(val);
        if (err) {
            Py_DECREF(dict);
            return NULL;
        }
        if (!eat(c, ',')) return dict;
    }
}

/* The distinct values of a dictionary, as str, in code order. */
static PyObject *dict_values(Decoder *d, Dict *t) {
    PyObject *list = PyList_New(t->count);
    if (list == NULL) return NULL;
    for (int32_t i = 0; i < t->count; i++) {
        PyObject *u = cached_str(d, t->keys[i].s, t->keys[i].n, t->keys[i].high);
        if (u == NULL) {
            Py_DECREF(list);
            return NULL;
        }
        PyList_SET_ITEM(list, i, u);
    }
    return list;
}

/* The rows' segments, and their ids, predictions and scores when the model joins labels (each a list of n
 * objects, else None: the columns carry predictions and scores as numbers and codes). */
static int row_objects(Decoder *d, Model *m, PyObject *classes, PyObject **ids, PyObject **preds,
                       PyObject **scores, PyObject **segments) {
    Out *o = &m->out;
    Py_ssize_t n = o->n;
    *ids = m->rows ? PyList_New(n) : Py_NewRef(Py_None);
    *preds = m->rows ? PyList_New(n) : Py_NewRef(Py_None);
    *scores = m->rows ? PyList_New(n) : Py_NewRef(Py_None);
    *segments = m->segments ? PyList_New(n) : Py_NewRef(Py_None);
    if (!*ids || !*preds || !*scores || !*segments) return -1;
    for (Py_ssize_t r = 0; r < n && (m->rows || m->segments); r++) {
        uint8_t f = o->flags[r];
        if (m->segments) {
            PyObject *seg = o->seg[r] ? segment_dict(d, o->seg[r], o->seg_len[r]) : Py_NewRef(Py_None);
            if (seg == NULL) return -1;
            PyList_SET_ITEM(*segments, r, seg);
        }
        if (!m->rows) continue;
        PyObject *id = new_str(o->id[r], o->id_len[r], f & ID_HIGH);
        if (id == NULL) return -1;
        PyList_SET_ITEM(*ids, r, id);
        PyObject *pred = f & PRED_STR ? Py_NewRef(PyList_GET_ITEM(classes, o->pred[r].code))
                         : f & PRED_INT ? PyLong_FromLongLong(o->pred[r].i)
                                        : PyFloat_FromDouble(o->pred[r].f);
        if (pred == NULL) return -1;
        PyList_SET_ITEM(*preds, r, pred);
        PyObject *score = f & HAS_SCORE ? PyFloat_FromDouble(o->score[r]) : Py_NewRef(Py_None);
        if (score == NULL) return -1;
        PyList_SET_ITEM(*scores, r, score);
    }
    return 0;
}

static PyObject *bytes_of(const void *p, Py_ssize_t n) {
    return PyByteArray_FromStringAndSize(n ? (const char *)p : "", n);
}

/* The columns of model m as a tuple. */
static PyObject *take_out(Decoder *d, Model *m) {
    Out *o = &m->out;
    Py_ssize_t n = o->n;
    PyObject *values = PyTuple_New(m->c + 1), *classes = NULL, *res = NULL;
    PyObject *ids = NULL, *preds = NULL, *scores = NULL, *segments = NULL;
    if (values == NULL) return NULL;
    for (int j = 0; j <= m->c; j++) {
        PyObject *v = dict_values(d, &m->dicts[j]);
        if (v == NULL) goto done;
        PyTuple_SET_ITEM(values, j, v);
    }
    if ((classes = dict_values(d, &m->dicts[m->c + 1])) == NULL ||
        row_objects(d, m, classes, &ids, &preds, &scores, &segments) < 0)
        goto done;
    res = Py_BuildValue("(NNNNNOONNNNOOOO)", bytes_of(o->pos, n * 8), bytes_of(o->t, n * 8),
                        bytes_of(o->num, n * m->width * 8), bytes_of(o->key, n * 8),
                        bytes_of(o->codes, n * (m->c + 1) * 4), values, classes, bytes_of(o->pred, n * 8),
                        bytes_of(o->flags, n), bytes_of(o->score, n * 8), bytes_of(o->lat, n * 8), ids, preds,
                        scores, segments);
done:
    Py_XDECREF(values);
    Py_XDECREF(classes);
    Py_XDECREF(ids);
    Py_XDECREF(preds);
    Py_XDECREF(scores);
    Py_XDECREF(segments);
    return res;
}

/* Every model's rows and dictionaries emptied for the next call (after it succeeded or failed). */
static int reset_outputs(Decoder *d) {
    int rc = 0;
    for (int i = 0; i < d->nmodels; i++) {
        Model *m = &d->models[i];
        if (m->out.cap > 65536) free_out(&m->out); /* a huge batch does not pin its buffers */
        m->out.n = 0;
        for (int j = 0; j <= m->c + 1; j++)
            if (dict_reset(&m->dicts[j]) < 0) rc = -1;
    }
    if (rc < 0) PyErr_NoMemory();
    return rc;
}

/* ---- the Python type ---- */

/* Bounds on what a spec may configure, far below the sizes that would overflow: tables of 2 * features slots
 * in 32 bits, feature indices and codes in int32, models counted in an int. */
#define MAX_FEATURES (1 << 24)
#define MAX_MODELS (1 << 20)
/* Up to this many models a message's model name is compared with each in turn; more are hashed. */
#define MODELS_COMPARED 4

/* What init_model built of m, however far it got (a field it did not reach is NULL or 0). */
static void free_model(Model *m) {
    PyMem_Free(m->name);
    if (m->fname != NULL)
        for (int j = 0; j < m->nf; j++) PyMem_Free(m->fname[j]);
    PyMem_Free(m->fname);
    PyMem_Free(m->flen);
    PyMem_Free(m->table);
    PyMem_Free(m->guess);
    PyMem_Free(m->fplain);
    free_out(&m->out);
    if (m->dicts != NULL)
        for (int j = 0; j <= m->c + 1; j++) dict_free(&m->dicts[j]);
    PyMem_Free(m->dicts);
    memset(m, 0, sizeof *m);
}

/* Everything __init__ built (all of it, or what a failed one got to): the decoder is left as tp_new made it,
 * not ready, safe to deallocate or to initialise again. */
static void clear_decoder(Decoder *d) {
    d->ready = 0;
    if (d->models != NULL)
        for (int i = 0; i < d->nmodels; i++) free_model(&d->models[i]);
    PyMem_Free(d->models);
    d->models = NULL;
    d->nmodels = 0;
    PyMem_Free(d->mtable);
    d->mtable = NULL;
    d->mmask = 0;
    if (d->cache != NULL)
        for (int i = 0; i < CACHE_SLOTS; i++) Py_CLEAR(d->cache[i].obj);
    PyMem_Free(d->cache);
    d->cache = NULL;
    PyMem_Free(d->row);
    PyMem_Free(d->catrow);
    PyMem_Free(d->seen);
    d->row = NULL;
    d->catrow = NULL;
    d->seen = NULL;
    d->maxf = 0;
    d->stamp = 0;
}

static void Decoder_dealloc(Decoder *d) {
    clear_decoder(d);
    Py_TYPE(d)->tp_free((PyObject *)d);
}

static char *copy_utf8(PyObject *s, Py_ssize_t *n) {
    const char *u = PyUnicode_AsUTF8AndSize(s, n); /* a lone surrogate: UnicodeEncodeError */
    if (u == NULL) return NULL;
    char *out = PyMem_Malloc((size_t)*n + 1);
    if (out == NULL) {
        PyErr_NoMemory();
        return NULL;
    }
    memcpy(out, u, (size_t)*n + 1);
    return out;
}

static int init_model(Decoder *d, int index, PyObject *spec) {
    Model *m = &d->models[index];
    PyObject *name, *numeric, *categorical;
    int segments, rows = 0, pred_col = -1, score_col = -1;
    if (!PyTuple_Check(spec)) {
        PyErr_Format(PyExc_TypeError, "a model spec is a tuple (name, numeric names, categorical names, keep "
                                      "segments[, row objects[, numeric prediction's column, score's column]]), "
                                      "not %.100s", Py_TYPE(spec)->tp_name);
        return -1;
    }
    if (!PyArg_ParseTuple(spec, "UO!O!p|pii:Decoder", &name, &PyTuple_Type, &numeric, &PyTuple_Type, &categorical,
                          &segments, &rows, &pred_col, &score_col))
        return -1;
    Py_ssize_t k = PyTuple_GET_SIZE(numeric), c = PyTuple_GET_SIZE(categorical);
    if (k > MAX_FEATURES || c > MAX_FEATURES - k) {
        PyErr_Format(PyExc_OverflowError, "model %R: more than %d features", name, MAX_FEATURES);
        return -1;
    }
    int width = (int)k + (pred_col >= 0) + (score_col >= 0);
    if ((pred_col >= 0 && pred_col != k) || (score_col >= 0 && score_col != width - 1)) {
        PyErr_SetString(PyExc_ValueError, "a numeric prediction's column comes right after the features, the "
                                          "score's last");
        return -1;
    }
    m->k = (int)k;
    m->c = (int)c;
    m->nf = m->k + m->c;
    m->width = width;
    m->pred_col = pred_col;
    m->score_col = score_col;
    m->segments = segments;
    m->rows = rows;
    if ((m->name = copy_utf8(name, &m->name_len)) == NULL) return -1;
    for (int i = 0; i < index; i++)
        if (d->models[i].name_len == m->name_len && !memcmp(d->models[i].name, m->name, (size_t)m->name_len)) {
            PyErr_Format(PyExc_ValueError, "model %R is configured twice", name);
            return -1;
        }
    uint32_t size = 8;
    while (size < 2u * (uint32_t)m->nf + 1) size <<= 1;
    m->mask = size - 1;
    m->fname = PyMem_Calloc((size_t)m->nf + 1, sizeof *m->fname);
    m->flen = PyMem_Calloc((size_t)m->nf + 1, sizeof *m->flen);
    m->table = PyMem_Calloc(size, sizeof *m->table);
    m->guess = PyMem_Calloc((size_t)m->nf + 1, sizeof *m->guess);
    m->fplain = PyMem_Calloc((size_t)m->nf + 1, sizeof *m->fplain);
    if (!m->fname || !m->flen || !m->table || !m->guess || !m->fplain) {
        PyErr_NoMemory();
        return -1;
    }
    for (int j = 0; j < m->nf; j++) {
        PyObject *f = j < m->k ? PyTuple_GET_ITEM(numeric, j) : PyTuple_GET_ITEM(categorical, j - m->k);
        if (!PyUnicode_Check(f)) {
            PyErr_Format(PyExc_TypeError, "model %R: feature names must be str, not %.100s", name,
                         Py_TYPE(f)->tp_name);
            return -1;
        }
        if ((m->fname[j] = copy_utf8(f, &m->flen[j])) == NULL) return -1;
        m->guess[j] = j;
        m->fplain[j] = 1;
        for (Py_ssize_t b = 0; b < m->flen[j]; b++) {
            unsigned char ch = (unsigned char)m->fname[j][b];
            if (ch == '"' || ch == '\\' || ch < 0x20) m->fplain[j] = 0;
        }
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
    if ((m->dicts = PyMem_Calloc((size_t)m->c + 2, sizeof *m->dicts)) == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    for (int j = 0; j <= m->c + 1; j++)
        if (dict_init(&m->dicts[j], 64) < 0) {
            PyErr_NoMemory();
            return -1;
        }
    return 0;
}

/* A size limit given as a keyword: a positive int (bool is not one); a value beyond Py_ssize_t is no limit. */
static int positive_size(PyObject *v, const char *what, Py_ssize_t *out) {
    if (v == NULL) return 0; /* not given: the default stays */
    if (!PyLong_Check(v) || PyBool_Check(v)) {
        PyErr_Format(PyExc_ValueError, "%s must be a positive int, not %.100s", what, Py_TYPE(v)->tp_name);
        return -1;
    }
    int overflow;
    long long x = PyLong_AsLongLongAndOverflow(v, &overflow);
    if (x == -1 && PyErr_Occurred()) return -1;
    if (overflow < 0 || (overflow == 0 && x <= 0)) {
        PyErr_Format(PyExc_ValueError, "%s must be a positive int, not %R", what, v);
        return -1;
    }
    *out = overflow > 0 || x > PY_SSIZE_T_MAX ? PY_SSIZE_T_MAX : (Py_ssize_t)x;
    return 0;
}

/* The models and the per-event scratch; -1 with an exception set (what was built is left for the caller). */
static int build(Decoder *d, PyObject *specs) {
    Py_ssize_t n = PyTuple_GET_SIZE(specs);
    if (n > MAX_MODELS) {
        PyErr_Format(PyExc_OverflowError, "more than %d models", MAX_MODELS);
        return -1;
    }
    d->models = PyMem_Calloc((size_t)n + 1, sizeof *d->models);
    d->cache = PyMem_Calloc(CACHE_SLOTS, sizeof *d->cache);
    if (!d->models || !d->cache) {
        PyErr_NoMemory();
        return -1;
    }
    for (int i = 0; i < (int)n; i++) {
        d->nmodels = i + 1; /* freed by clear_decoder even when half built */
        if (init_model(d, i, PyTuple_GET_ITEM(specs, i)) < 0) return -1;
    }
    if (n > MODELS_COMPARED) { /* the names hashed: finding a message's model costs the same for 3 or 3,000 */
        uint32_t size = 8;
        while (size < 2u * (uint32_t)n + 1) size <<= 1;
        if ((d->mtable = PyMem_Calloc(size, sizeof *d->mtable)) == NULL) {
            PyErr_NoMemory();
            return -1;
        }
        d->mmask = size - 1;
        for (int i = 0; i < (int)n; i++) {
            uint32_t h = (uint32_t)fnv1a(d->models[i].name, d->models[i].name_len) & d->mmask;
            while (d->mtable[h] != 0) h = (h + 1) & d->mmask;
            d->mtable[h] = i + 1;
        }
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

static int Decoder_init(Decoder *d, PyObject *args, PyObject *kwargs) {
    PyObject *list, *max_string = NULL, *max_message = NULL;
    static char *kw[] = {"models", "max_string_bytes", "max_message_bytes", NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "O!|$OO:Decoder", kw, &PyList_Type, &list, &max_string,
                                     &max_message))
        return -1;
    if (d->ready || d->building) {
        PyErr_SetString(PyExc_RuntimeError, "Decoder is initialised once");
        return -1;
    }
    Py_ssize_t ms = 1024, mm = 1048576;
    if (positive_size(max_string, "max_string_bytes", &ms) < 0 ||
        positive_size(max_message, "max_message_bytes", &mm) < 0)
        return -1;
    PyObject *specs = PySequence_Tuple(list); /* a copy: Python code a spec runs cannot change what is built */
    if (specs == NULL) return -1;
    clear_decoder(d); /* what an earlier, failed __init__ left */
    d->building = 1;
    int rc = build(d, specs);
    d->building = 0;
    Py_DECREF(specs);
    if (rc < 0) {
        clear_decoder(d);
        return -1;
    }
    d->max_string = ms;
    d->max_message = mm;
    d->ready = 1;
    return 0;
}

typedef struct {
    const char *p;
    Py_ssize_t n;
    PyObject *obj; /* a reference held for the call; NULL: not bytes (None, an empty message, among them) */
} Value;

static PyObject *Decoder_decode(Decoder *d, PyObject *args) {
    PyObject *list;
    double lo, hi;
    if (!PyArg_ParseTuple(args, "O!dd:decode", &PyList_Type, &list, &lo, &hi)) return NULL;
    if (!d->ready) {
        PyErr_SetString(PyExc_RuntimeError, "Decoder is not initialised (or its initialisation failed)");
        return NULL;
    }
    if (d->busy) {
        PyErr_SetString(PyExc_RuntimeError, "this Decoder is decoding in another thread: one call at a time");
        return NULL;
    }
    Py_ssize_t n = PyList_GET_SIZE(list), nd = 0;
    Value *values = PyMem_RawCalloc((size_t)n + 1, sizeof *values);
    Py_ssize_t *declined = PyMem_RawCalloc((size_t)n + 1, sizeof *declined);
    PyObject *out = NULL, *dl = NULL, *models = NULL;
    if (values == NULL || declined == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    for (Py_ssize_t i = 0; i < n; i++) { /* the bytes stay alive however the list changes meanwhile */
        PyObject *v = PyList_GET_ITEM(list, i);
        if (PyBytes_Check(v)) values[i] = (Value){PyBytes_AS_STRING(v), PyBytes_GET_SIZE(v), Py_NewRef(v)};
    }
    d->busy = 1;
    int rc = TAKE;
    Py_ssize_t max_message = d->max_message;
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t i = 0; i < n; i++) {
        /* not bytes, or longer than allowed: the general path decides (and says why) */
        int r = values[i].obj && values[i].n <= max_message ? event(d, values[i].p, values[i].n, i, lo, hi) : DECLINE;
        if (r == FAIL) {
            rc = FAIL;
            break;
        }
        if (r == DECLINE) declined[nd++] = i;
    }
    Py_END_ALLOW_THREADS
    if (rc == FAIL) { /* out of memory, or buffers that would outgrow the address space */
        PyErr_NoMemory();
        goto done;
    }
    if ((dl = PyList_New(nd)) == NULL || (models = PyList_New(d->nmodels)) == NULL) goto done;
    for (Py_ssize_t i = 0; i < nd; i++) {
        PyObject *idx = PyLong_FromSsize_t(declined[i]);
        if (idx == NULL) goto done;
        PyList_SET_ITEM(dl, i, idx);
    }
    for (int i = 0; i < d->nmodels; i++) {
        PyObject *cols = d->models[i].out.n ? take_out(d, &d->models[i]) : Py_NewRef(Py_None);
        if (cols == NULL) goto done;
        PyList_SET_ITEM(models, i, cols);
    }
    out = PyTuple_Pack(2, dl, models);
done:
    Py_XDECREF(dl);
    Py_XDECREF(models);
    if (reset_outputs(d) < 0) Py_CLEAR(out);
    if (values != NULL)
        for (Py_ssize_t i = 0; i < n; i++) Py_XDECREF(values[i].obj);
    PyMem_RawFree(values);
    PyMem_RawFree(declined);
    d->busy = 0;
    if (out == NULL && !PyErr_Occurred()) /* no path above should get here: never a NULL without a reason */
        PyErr_SetString(PyExc_RuntimeError, "the compiled decoder failed without a reason");
    return out;
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
     "decode(values, lo, hi) -> (declined positions, per model: columns tuple or None); parses without the GIL"},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject DecoderType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "stream_monitor.core._columnar.Decoder",
    .tp_basicsize = sizeof(Decoder),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Decoder(models: list of (name, numeric names, categorical names, keep segments[, row objects[, "
              "numeric prediction's column, score's column]]), *, max_string_bytes=1024, "
              "max_message_bytes=1048576)",
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
#ifdef __GLIBC__
    if (c_locale == (locale_t)0) c_locale = newlocale(LC_NUMERIC_MASK, "C", (locale_t)0);
#endif
    if (PyType_Ready(&DecoderType) < 0) return NULL;
    PyObject *mod = PyModule_Create(&module);
    if (mod == NULL) return NULL;
    if (PyModule_AddObjectRef(mod, "Decoder", (PyObject *)&DecoderType) < 0 ||
        PyModule_AddIntConstant(mod, "PRED_STR", PRED_STR) < 0 ||
        PyModule_AddIntConstant(mod, "PRED_INT", PRED_INT) < 0 ||
        PyModule_AddIntConstant(mod, "PRED_FLOAT", PRED_FLOAT) < 0) {
        Py_DECREF(mod);
        return NULL;
    }
    return mod;
}
