"""Decoded events of one model as numpy columns, built once per batch.

Numeric features become one ``(n, k)`` float matrix (NaN where missing or of the wrong type), categorical
features one ``(n, c)`` object matrix of strings (None where missing or of the wrong type), each with a
type-error mask. Every later step (binning, quality rates, samples) works on these matrices for all features
at once.
"""

from __future__ import annotations

import base64
import operator
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import chain
from typing import Any

import numpy as np

from .keys import event_keys

__all__ = ["Codes", "Columns", "build_columns", "column_names", "decode_array", "encode_array", "segment_matrix",
           "PREDICTION", "SCORE"]

#: Pseudo-feature names under which the prediction and the score are monitored.
PREDICTION = "prediction"
SCORE = "score"

_NUMERIC_TYPES = {int, float}
_NUMERIC_OR_NONE = {int, float, type(None)}


@dataclass(frozen=True, slots=True)
class Codes:
    """The categorical features and the model version dictionary-encoded, as the compiled decoder delivers them:
    what lets a pane count a column with one ``bincount`` instead of hashing every value."""

    codes: np.ndarray  # (n, c + 1) int32: each categorical feature's code, then the version's; -1 = missing
    values: tuple[list[str], ...]  # per column, the values its codes index (a value may appear twice)

    def take(self, idx: np.ndarray | slice) -> Codes:
        return Codes(self.codes[idx], self.values)

    @property
    def features(self) -> int:
        """The categorical feature columns encoded (the first ones of ``Columns.categorical``)."""
        return self.codes.shape[1] - 1

    def version_counts(self) -> tuple[list[str], np.ndarray, int]:
        """:meth:`counts` of the model version."""
        return self.counts(self.features)

    def counts(self, j: int) -> tuple[list[str], np.ndarray, int]:
        """Column ``j``'s values present in these rows, their counts, and the number of missing rows."""
        vals = self.values[j]
        cnt = np.bincount(self.codes[:, j] + 1, minlength=len(vals) + 1)
        nz = np.flatnonzero(cnt[1:])
        return [vals[i] for i in nz.tolist()], cnt[1:][nz], int(cnt[0])

    def version(self, i: int) -> str:
        """Row ``i``'s model version."""
        return self.values[self.features][int(self.codes[i, self.features])]

    def versions(self) -> np.ndarray:
        """Every row's model version, as an ``(n,)`` object array (what ``Columns.model_version`` holds)."""
        c = self.features
        return np.array(self.values[c], dtype=object)[self.codes[:, c]]

    @classmethod
    def concat(cls, parts: Sequence[Codes]) -> Codes:
        """The rows of ``parts`` in order: each column's values are the parts' values one after the other (a
        value may then appear twice), each part's codes shifted past the parts before it."""
        width = parts[0].codes.shape[1]
        values = tuple(list(chain.from_iterable(p.values[j] for p in parts)) for j in range(width))
        offset = np.zeros(width, dtype=np.int32)
        out = []
        for p in parts:
            out.append(np.where(p.codes >= 0, p.codes + offset, -1).astype(np.int32))
            offset += np.array([len(v) for v in p.values], dtype=np.int32)
        return cls(np.concatenate(out), values)

    def compact(self) -> Codes:
        """The same rows with each column's values cut to those its codes use, in code order."""
        codes = np.full_like(self.codes, -1)
        values = []
        for j, vals in enumerate(self.values):
            col = self.codes[:, j]
            used = np.unique(col[col >= 0])
            remap = np.full(len(vals) + 1, -1, dtype=np.int32)  # (the last slot: code -1 stays -1)
            remap[used] = np.arange(used.size, dtype=np.int32)
            codes[:, j] = remap[col]
            values.append([vals[i] for i in used.tolist()])
        return Codes(codes, tuple(values))

    @classmethod
    def from_objects(cls, categorical: np.ndarray, versions: np.ndarray) -> Codes:
        """Dictionary-encode an ``(n, c)`` object matrix (None: missing) and the ``(n,)`` versions."""
        n, c = categorical.shape
        codes = np.empty((n, c + 1), dtype=np.int32)
        values = []
        for j in range(c + 1):
            col = categorical[:, j] if j < c else versions
            index: dict[Any, int] = {None: -1}
            codes[:, j] = np.fromiter((index.setdefault(v, len(index) - 1) for v in col.tolist()), dtype=np.int32,
                                      count=n)
            del index[None]
            values.append(list(index))
        return cls(codes, tuple(values))

    def objects(self) -> tuple[np.ndarray, np.ndarray]:
        """The encoded categorical columns as an ``(n, features)`` object matrix (None where missing) and the
        versions (:meth:`versions`): what :class:`Columns` holds for them."""
        n, c = self.codes.shape[0], self.features
        cat = np.empty((n, c), dtype=object)
        for j in range(c):  # each column from its distinct values: code -1 takes the None at the end
            cat[:, j] = np.array([*self.values[j], None], dtype=object)[self.codes[:, j]]
        return cat, self.versions()


@dataclass(slots=True)
class Columns:
    """One model's events of a batch, column-wise."""

    event_time: np.ndarray  # (n,) epoch seconds
    numeric: np.ndarray  # (n, k) float64, NaN when missing or wrong type
    numeric_type_error: np.ndarray  # (n, k) bool
    categorical: np.ndarray  # (n, c) object: str or None
    categorical_type_error: np.ndarray  # (n, c) bool
    model_version: np.ndarray  # (n,) object
    latency_ms: np.ndarray  # (n,) float64, NaN when absent
    key: np.ndarray  # (n,) uint64 hash of event_id (see core.keys): the sampling order
    segment: np.ndarray  # (n, s) object: the value of each configured segment key (str or None); s = 0 without
    codes: Codes | None = None  # the categorical features and version encoded (compiled decoder), else None

    @classmethod
    def encoded(cls, event_time: np.ndarray, numeric: np.ndarray, numeric_type_error: np.ndarray,
                categorical_type_error: np.ndarray, latency_ms: np.ndarray, key: np.ndarray, segment: np.ndarray,
                codes: Codes) -> Columns:
        """Columns whose categorical values and model versions are only in ``codes`` (every categorical column
        encoded): their object matrices are made from the codes when first read. Panes count codes, so most
        batches never make them (two object matrices of 20,000 rows cost more than the rest of the columns)."""
        self = object.__new__(cls)
        self.event_time, self.numeric, self.numeric_type_error = event_time, numeric, numeric_type_error
        self.categorical_type_error, self.latency_ms, self.key, self.segment = (categorical_type_error, latency_ms,
                                                                                key, segment)
        self.codes = codes
        return self

    def __getattr__(self, name: str) -> Any:
        # only reached for an unset slot: the object columns of encoded() columns, made on first read
        if name in _FROM_CODES:
            codes = object.__getattribute__(self, "codes")
            if codes is not None:
                self.categorical, self.model_version = codes.objects()
                return object.__getattribute__(self, name)
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def __setattr__(self, name: str, value: Any) -> None:
        if name == "codes" and _is_set(_CODES, self) and self.lazy:  # the values are made before their codes go
            self.categorical, self.model_version = self.codes.objects()  # type: ignore[union-attr]
        object.__setattr__(self, name, value)

    @property
    def lazy(self) -> bool:
        """Whether the categorical values and versions are still only codes (see :meth:`encoded`)."""
        return not _is_set(_CATEGORICAL, self)

    @property
    def n(self) -> int:
        return int(self.event_time.shape[0])

    def version(self, i: int) -> str:
        """The model version of row ``i``, read from the codes while the columns are :attr:`lazy`."""
        return self.codes.version(i) if self.lazy else self.model_version[i]  # type: ignore[union-attr]

    def versions(self) -> np.ndarray:
        """:attr:`model_version`, read from the codes while the columns are :attr:`lazy` (the categorical values
        are not made for it)."""
        return self.codes.versions() if self.lazy else self.model_version  # type: ignore[union-attr]

    def take(self, idx: np.ndarray | slice) -> Columns:
        codes = None if self.codes is None else self.codes.take(idx)
        if codes is not None and self.lazy:
            return Columns.encoded(self.event_time[idx], self.numeric[idx], self.numeric_type_error[idx],
                                   self.categorical_type_error[idx], self.latency_ms[idx], self.key[idx],
                                   self.segment[idx], codes)
        return Columns(
            self.event_time[idx], self.numeric[idx], self.numeric_type_error[idx],
            self.categorical[idx], self.categorical_type_error[idx], self.model_version[idx], self.latency_ms[idx],
            self.key[idx], self.segment[idx], codes,
        )

    @property
    def fully_encoded(self) -> bool:
        """Whether :attr:`codes` covers every categorical column (and the version)."""
        return self.codes is not None and self.codes.features == self.categorical_type_error.shape[1]

    @classmethod
    def concat(cls, parts: Sequence[Columns]) -> Columns:
        """The rows of ``parts`` in order; when every part is :attr:`fully_encoded`, so is the result (its codes
        index the parts' values one after the other: no object matrix is made)."""
        if parts and all(p.fully_encoded for p in parts):
            return cls.encoded(*(np.concatenate([getattr(p, f) for p in parts]) for f in _ENCODED_ARRAYS),
                               Codes.concat([p.codes for p in parts]))  # type: ignore[misc]
        return cls(*(np.concatenate([getattr(p, f) for p in parts]) for f in _ARRAYS))

    def to_dict(self) -> dict[str, Any]:
        """Plain data for a checkpoint or a pane record: numbers as exact little-endian bytes (base64), the
        categorical columns and the version dictionary-encoded (each distinct value once, codes as int32)."""
        codes = (self.codes if self.fully_encoded else Codes.from_objects(self.categorical, self.model_version))
        codes = codes.compact()  # type: ignore[union-attr]
        return {"v": 2, "n": self.n, "event_time": encode_array(self.event_time, "<f8"),
                "numeric": encode_array(self.numeric, "<f8"),
                "numeric_type_error": encode_array(self.numeric_type_error, "u1"),
                "codes": encode_array(codes.codes, "<i4"), "values": list(codes.values),
                "categorical_type_error": encode_array(self.categorical_type_error, "u1"),
                "latency_ms": encode_array(self.latency_ms, "<f8"),
                "key": encode_array(self.key, "<u8")} | ({"segment": self.segment.tolist()} if self.segment.shape[1]
                                                        else {})

    @classmethod
    def from_dict(cls, d: dict[str, Any], k: int, c: int, s: int = 0) -> Columns:
        """The inverse of :meth:`to_dict` for ``k`` numeric, ``c`` categorical and ``s`` segment columns
        (missing segment values when the record has none); raises on bad data."""
        if d.get("v") not in (1, 2):
            raise ValueError(f"columns checkpoint version {d.get('v')!r} is not supported")
        n = int(d["n"])
        codes = None
        if d["v"] == 2:
            codes = Codes(decode_array(d["codes"], "<i4", (n, c + 1)), tuple(d["values"]))
            if len(codes.values) != c + 1 or not all(type(vals) is list and all(type(v) is str for v in vals)
                                                     for vals in codes.values):
                raise ValueError("columns checkpoint: values are not c + 1 lists of strings")
            sizes = np.array([len(v) for v in codes.values])
            if n and ((codes.codes < -1).any() or (codes.codes >= sizes).any() or (codes.codes[:, c] < 0).any()):
                raise ValueError("columns checkpoint: codes out of their values (or a row without a version)")
        else:
            cat = np.empty((n, c), dtype=object)
            rows = d["categorical"]
            if len(rows) != n or any(len(r) != c or not all(v is None or type(v) is str for v in r) for r in rows):
                raise ValueError("columns checkpoint: categorical values are not an (n, c) matrix of strings")
            if n and c:
                cat[:, :] = rows
            versions = d["model_version"]
            if len(versions) != n or not all(type(v) is str for v in versions):
                raise ValueError("columns checkpoint: model_version is not n strings")
        seg = np.full((n, s), None, dtype=object)
        if s and "segment" in d:
            rows = d["segment"]
            if len(rows) != n or any(len(r) != s or not all(v is None or type(v) is str for v in r) for r in rows):
                raise ValueError("columns checkpoint: segment values are not an (n, s) matrix of strings")
            if n:
                seg[:, :] = rows
        if codes is not None:
            return cls.encoded(decode_array(d["event_time"], "<f8", (n,)), decode_array(d["numeric"], "<f8", (n, k)),
                               decode_array(d["numeric_type_error"], "u1", (n, k)).astype(bool),
                               decode_array(d["categorical_type_error"], "u1", (n, c)).astype(bool),
                               decode_array(d["latency_ms"], "<f8", (n,)), decode_array(d["key"], "<u8", (n,)), seg,
                               codes)
        return cls(decode_array(d["event_time"], "<f8", (n,)), decode_array(d["numeric"], "<f8", (n, k)),
                   decode_array(d["numeric_type_error"], "u1", (n, k)).astype(bool), cat,
                   decode_array(d["categorical_type_error"], "u1", (n, c)).astype(bool),
                   np.array(versions, dtype=object).reshape(n), decode_array(d["latency_ms"], "<f8", (n,)),
                   decode_array(d["key"], "<u8", (n,)), seg)


_ARRAYS = tuple(f for f in Columns.__slots__ if f != "codes")
_FROM_CODES = ("categorical", "model_version")
_ENCODED_ARRAYS = tuple(f for f in _ARRAYS if f not in _FROM_CODES)  # Columns.encoded's arguments, in order
# the slots' descriptors: reading one never falls back to __getattr__
_CATEGORICAL, _CODES = Columns.__dict__["categorical"], Columns.__dict__["codes"]


def _is_set(slot: Any, obj: Any) -> bool:
    try:
        slot.__get__(obj)
    except AttributeError:
        return False
    return True


def encode_array(a: np.ndarray, dtype: str) -> str:
    """An array as exact bytes of ``dtype`` (e.g. ``"<f8"``), base64: how checkpoints carry numbers."""
    return base64.b64encode(np.ascontiguousarray(a, dtype=dtype).tobytes()).decode()


def decode_array(s: str, dtype: str, shape: tuple[int, ...] | None = None) -> np.ndarray:
    """Decode :func:`encode_array` into a writable native array; with ``shape`` the byte count must match it
    (a wrong record raises, it never reshapes), without it the array is 1-D."""
    a = np.frombuffer(base64.b64decode(s, validate=True), dtype=dtype)
    if shape is not None and a.size != int(np.prod(shape)):
        raise ValueError(f"checkpoint array has {a.size} values, expected shape {shape}")
    return a.reshape(shape if shape is not None else -1).astype(np.dtype(dtype).newbyteorder("="))


def _object_matrix(rows: list[tuple[Any, ...]], n: int, k: int) -> np.ndarray:
    # fromiter never descends into list or dict values the way np.array would
    return np.fromiter(chain.from_iterable(rows), dtype=object, count=n * k).reshape(n, k)


def _numeric_matrix(rows: list[tuple[Any, ...]], n: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    no_error = np.zeros((n, k), dtype=bool)
    if k == 0:
        return np.empty((n, 0)), no_error
    types = set(map(type, chain.from_iterable(rows)))
    if types <= _NUMERIC_TYPES:  # fast path: all present and numeric
        return np.array(rows, dtype=np.float64).reshape(n, k), no_error
    obj = _object_matrix(rows, n, k)
    if types <= _NUMERIC_OR_NONE:  # missing values only: numpy casts None to NaN
        return obj.astype(np.float64), no_error
    # Slow path, only for batches with wrong types: a bool or a string is a type error, not a number.
    ok = np.frompyfunc(lambda v: type(v) in _NUMERIC_OR_NONE, 1, 1)(obj).astype(bool)
    bad = ~ok
    obj[bad] = None
    return obj.astype(np.float64), bad


def _categorical_matrix(rows: list[tuple[Any, ...]], n: int, c: int) -> tuple[np.ndarray, np.ndarray]:
    no_error = np.zeros((n, c), dtype=bool)
    if c == 0:
        return np.empty((n, 0), dtype=object), no_error
    obj = _object_matrix(rows, n, c)
    types = set(map(type, chain.from_iterable(rows)))
    if types <= {str, type(None)}:
        return obj, no_error

    def norm(v: Any) -> Any:
        t = type(v)
        if t is str or v is None:
            return v
        if t is bool:
            return "true" if v else "false"
        if t is int:  # integer codes (zip codes, ids) are categories
            return str(v)
        return _WRONG

    out = np.frompyfunc(norm, 1, 1)(obj)
    bad = out == _WRONG
    out[bad] = None
    return out, bad.astype(bool)


def _categorical_column(values: Sequence[Any], n: int) -> tuple[np.ndarray, np.ndarray]:
    """:func:`_categorical_matrix` of one column given as its ``n`` values (no row tuples when they are all
    strings or missing, the common case)."""
    if set(map(type, values)) <= {str, type(None)}:
        return np.fromiter(values, dtype=object, count=n).reshape(n, 1), np.zeros((n, 1), dtype=bool)
    return _categorical_matrix([(v,) for v in values], n, 1)


class _Wrong:
    def __eq__(self, other: object) -> bool:
        return other is self

    __hash__ = object.__hash__


_WRONG = _Wrong()


def column_names(numeric: tuple[str, ...], categorical: tuple[str, ...], prediction: str = "none",
                 score: bool = False) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Names of the numeric and categorical columns :func:`build_columns` makes, pseudo-features included."""
    num = numeric + ((PREDICTION,) if prediction == "numeric" else ()) + ((SCORE,) if score else ())
    cat = categorical + ((PREDICTION,) if prediction == "categorical" else ())
    return num, cat


def _rows(feats: list[dict[str, Any]], names: tuple[str, ...]) -> list[tuple[Any, ...]]:
    """Per event, the values of ``names`` (None when absent), with C-speed lookups when all are present."""
    if not names:
        return [()] * len(feats)
    if len(names) == 1:
        (name,) = names
        return [(f.get(name),) for f in feats]
    get = operator.itemgetter(*names)
    try:
        return [get(f) for f in feats]
    except KeyError:  # some event lacks a feature: the slower lookup that yields None
        return [tuple(map(f.get, names)) for f in feats]


def segment_matrix(segments: list[dict[str, str] | None], names: tuple[str, ...]) -> np.ndarray:
    """The ``(n, s)`` object matrix of each event's value for each segment key in ``names`` (None when the event
    has no ``segment`` or not that key); ``(n, 0)`` without names, at no cost."""
    n = len(segments)
    if not names:
        return np.empty((n, 0), dtype=object)
    empty: dict[str, str] = {}
    rows = chain.from_iterable(map((seg or empty).get, names) for seg in segments)
    return np.fromiter(rows, dtype=object, count=n * len(names)).reshape(n, len(names))


def build_columns(
    events: list[dict[str, Any]],
    numeric: tuple[str, ...],
    categorical: tuple[str, ...],
    prediction: str = "none",
    score: bool = False,
    keys: np.ndarray | None = None,
    segments: tuple[str, ...] = (),
) -> Columns:
    """Build the column matrices for ``events`` (all of one model).

    ``prediction`` ("numeric", "categorical" or "none") and ``score`` append the prediction and the score as
    the last numeric or categorical columns, named :data:`PREDICTION` and :data:`SCORE`. ``keys`` are the
    events' :func:`~.keys.event_keys` when the caller has them already; ``segments`` the segment keys whose
    values become the ``segment`` columns.
    """
    n = len(events)
    feats = [ev["features"] for ev in events]
    num, num_err = _numeric_matrix(_rows(feats, numeric), n, len(numeric))
    cat, cat_err = _categorical_matrix(_rows(feats, categorical), n, len(categorical))
    extra_num: list[tuple[np.ndarray, np.ndarray]] = []
    if prediction != "none":
        if prediction == "numeric":
            extra_num.append(_numeric_matrix([(ev["prediction"],) for ev in events], n, 1))
        else:
            pc, pe = _categorical_column([ev["prediction"] for ev in events], n)
            cat, cat_err = np.hstack([cat, pc]), np.hstack([cat_err, pe])
    if score:  # the decoder guarantees a number or null: no type check needed
        scores = np.fromiter((ev.get("score") for ev in events), dtype=object, count=n).astype(np.float64)
        extra_num.append((scores.reshape(n, 1), np.zeros((n, 1), dtype=bool)))
    if extra_num:
        num = np.hstack([num, *(m for m, _ in extra_num)])
        num_err = np.hstack([num_err, *(e for _, e in extra_num)])
    t = np.fromiter((ev["timestamp"] for ev in events), dtype=np.float64, count=n)
    versions = np.fromiter((ev["model_version"] for ev in events), dtype=object, count=n)
    latency = np.fromiter((ev.get("latency_ms") for ev in events), dtype=object, count=n).astype(np.float64)
    if keys is None:
        keys = event_keys([ev["event_id"] for ev in events])
    seg = segment_matrix([ev.get("segment") for ev in events], segments)
    return Columns(t, num, num_err, cat, cat_err, versions, latency, keys, seg)
