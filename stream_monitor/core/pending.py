"""A compact store of keyed entries for the label join: fixed-width arrays, a hash index, a segmented changelog.

:class:`EntryStore` holds entries in arrival order in parallel numpy arrays: the 64-bit key of the event id
(:mod:`.keys`), the event time (float64), a value (float32, see :class:`ValueCodes`) and a score (float32, NaN
when there is none); 24 bytes an entry, or 8 for a store of keys only (the recently joined ids). A removed
entry's key is set to 0 (real keys are never 0: :func:`store_keys`) until the next compaction drops it. An
open-addressing hash table (linear probing, int32 positions) finds a batch of keys in a few vectorised passes.

**Changelog.** Entries are written in *segments* of at most :data:`SEGMENT_ENTRIES` consecutive entries, one
record each (``s/<id>``, the packed arrays in base64; ids grow with arrival order). The newest segment is
*open*: every checkpoint that added to it or removed from it rewrites it with its live entries, until it is
full and closes. A closed segment is never rewritten: removals from it are recorded as a bitmap of its live
entries (``m/<id>``), and when none is left both records are deleted (tombstones). TTL expiry removes entries
in arrival order, so segments empty from the oldest on and the changelog stays within the TTL. Restoring reads
the segments, applies the bitmaps and rebuilds the index: one ``np.frombuffer`` per array per segment.

Collisions: two ids with the same 64-bit key are taken for the same event. With ``n`` entries the chance
that any two collide is about ``n**2 / 2**65``: 2e-5 at 26 million entries.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from .columns import decode_array, encode_array

__all__ = ["EntryStore", "SEGMENT_ENTRIES", "ValueCodes", "shortest_floats", "store_keys"]

#: Entries per changelog segment: 8192 x 24 bytes is 262 kB of base64, well under Kafka's 1 MB record limit.
SEGMENT_ENTRIES = 8192

_EMPTY = np.int32(-1)  # a slot never used since the last rebuild
_GONE = np.int32(-2)  # a slot whose entry was removed (probing continues past it)
_MAX_LOAD = 0.85  # rebuild the table when live + removed slots exceed this share
_BUILD_LOAD = 0.7  # table load right after a rebuild
_RECORD = 1  # version of segment and bitmap records


def _prime_above(n: int) -> int:
    """The smallest prime >= n (table sizes: a few thousand trial divisions, once per rebuild)."""
    n |= 1
    while any(n % d == 0 for d in range(3, math.isqrt(n) + 1, 2)):
        n += 2
    return n


def store_keys(keys: np.ndarray) -> np.ndarray:
    """Event keys as stored: 0 marks a removed entry, so a real key 0 becomes 1."""
    return np.where(keys == 0, np.uint64(1), keys)


def shortest_floats(a: np.ndarray) -> list[float]:
    """float32 values as the shortest decimals that round-trip in float32 (0.9f reads back as 0.9, not
    0.8999999761581421): a value with at most 7 significant digits comes back exactly."""
    x = a.astype(np.float64)
    out = x.copy()
    todo = np.isfinite(x) & (x != 0)
    mag = np.floor(np.log10(np.abs(np.where(todo, x, 1.0))))
    for digits in range(1, 10):  # significant digits, fewest first
        if not todo.any():
            break
        scale = 10.0 ** (digits - 1 - mag[todo])
        r = np.round(x[todo] * scale) / scale
        ok = r.astype(np.float32) == a[todo]
        idx = np.flatnonzero(todo)[ok]
        out[idx] = r[ok]
        todo[idx] = False
    return out.tolist()


class ValueCodes:
    """Predictions and labels as float32: numbers exactly representable in float32 (every class index below
    2**24, 0/1, booleans) are stored as themselves, other numbers rounded to float32 (regression values keep
    7 significant digits), and strings (and larger integers) as a NaN whose payload indexes a vocabulary of at
    most :attr:`MAX` distinct values. Predictions are finite numbers or strings (the event contract), so a
    NaN never stands for a number."""

    MAX = 65536
    _NAN = np.uint32(0x7FC00000)

    def __init__(self) -> None:
        self.values: list[Any] = []
        self._index: dict[tuple[type, Any], int] = {}

    def encode(self, values: list[Any]) -> tuple[np.ndarray, np.ndarray]:
        """float32 codes of ``values`` and which of them could be stored (a new string beyond :attr:`MAX`
        distinct values cannot)."""
        types = set(map(type, values))
        if types <= {float, int, bool}:  # the common batches: numbers only, or strings only
            x = np.array(values, dtype=np.float64)
            if int not in types or not (np.abs(x) >= 2 ** 24).any():
                return x.astype(np.float32), np.ones(len(values), dtype=bool)
        elif types == {str}:
            get = self._index.get
            codes = [get((str, v), -1) for v in values]
            if -1 not in codes:
                out = (self._NAN | np.array(codes, dtype=np.uint32)).view(np.float32)
                return out, np.ones(len(values), dtype=bool)
        return self._encode_each(values)

    def _encode_each(self, values: list[Any]) -> tuple[np.ndarray, np.ndarray]:
        out = np.empty(len(values), dtype=np.float32)
        ok = np.ones(len(values), dtype=bool)
        bits = out.view(np.uint32)
        for i, v in enumerate(values):
            if isinstance(v, bool):
                out[i] = 1.0 if v else 0.0
            elif isinstance(v, float) or (isinstance(v, int) and abs(v) < 2 ** 24):
                out[i] = v
            else:
                k = (type(v), v)
                code = self._index.get(k)
                if code is None:
                    if len(self.values) >= self.MAX:
                        ok[i] = False
                        continue
                    code = self._index[k] = len(self.values)
                    self.values.append(v)
                bits[i] = self._NAN | np.uint32(code)
        return out, ok

    def decode(self, codes: np.ndarray) -> list[Any]:
        bits = codes.view(np.uint32).tolist()
        out: list[Any] = []
        for x, b in zip(shortest_floats(codes), bits):
            if x != x:
                out.append(self.values[b & 0x003FFFFF])
            elif x.is_integer() and abs(x) < 2 ** 53:
                out.append(int(x))
            else:
                out.append(x)
        return out

    def snapshot(self) -> list[Any]:
        return list(self.values)

    def restore(self, values: list[Any]) -> ValueCodes:
        if not isinstance(values, list) or len(values) > self.MAX or not all(
                isinstance(v, (int, str)) and not isinstance(v, bool) for v in values):
            raise ValueError("join value vocabulary: not a list of at most 65536 strings and integers")
        self.values = list(values)
        self._index = {(type(v), v): i for i, v in enumerate(values)}
        if len(self._index) != len(self.values):
            raise ValueError("join value vocabulary: repeated values")
        return self


class _Segment:
    """A closed segment: its id, the position of its first entry in memory, and which of its record's entries
    are still in memory (the ones in memory sit at ``lo, lo + 1, ...`` in order)."""

    __slots__ = ("id", "lo", "present", "count", "gone")

    def __init__(self, sid: int, lo: int, present: np.ndarray) -> None:
        self.id, self.lo, self.present = sid, lo, present
        self.count = int(present.sum())
        self.gone = False  # no live entry left: its records are deleted


class EntryStore:
    """Entries keyed by uint64 in arrival order, with a hash index and a segmented changelog.

    Parameters
    ----------
    payload
        Whether entries carry a time, a value and a score (False: keys only).
    segment
        Entries per changelog segment.

    Examples
    --------
    >>> s = EntryStore()
    >>> s.add(np.array([5, 9], dtype=np.uint64), np.array([1.0, 2.0]), np.zeros(2, np.float32),
    ...       np.full(2, np.nan, np.float32))
    >>> s.find(np.array([9, 7], dtype=np.uint64)).tolist()
    [1, -1]
    """

    def __init__(self, payload: bool = True, segment: int = SEGMENT_ENTRIES) -> None:
        if not 1 <= segment <= SEGMENT_ENTRIES:
            raise ValueError(f"segment must be in [1, {SEGMENT_ENTRIES}], got {segment}")
        self.payload = payload
        self.segment = segment
        self._reset()

    def _reset(self) -> None:
        self._n = 0  # entries in the arrays (live and removed)
        self._key = np.zeros(1024, dtype=np.uint64)
        size = 1024 if self.payload else 0
        self._t = np.zeros(size, dtype=np.float64)
        self._val = np.zeros(size, dtype=np.float32)
        self._score = np.zeros(size, dtype=np.float32)
        self.live = 0
        self._head = 0  # no live entry before this position
        self._table = np.full(_prime_above(2048), _EMPTY, dtype=np.int32)
        self._used = 0  # table slots not empty (live and removed)
        self._closed: list[_Segment] = []
        self._closed_lo = np.zeros(0, dtype=np.int64)
        self._open_id = 0  # the open segment: entries from _open_lo on
        self._open_lo = 0
        self._open_written = False
        self._open_dirty = False
        self._dirty: set[int] = set()  # closed segments with removals since the last take_changes()

    # -- reading ---------------------------------------------------------------------------------------------
    @property
    def nbytes(self) -> int:
        """Memory held by the arrays, the index and the segment bookkeeping."""
        arrays = self._key.nbytes + self._t.nbytes + self._val.nbytes + self._score.nbytes + self._table.nbytes
        return arrays + sum(s.present.nbytes + 64 for s in self._closed) + self._closed_lo.nbytes

    def find(self, keys: np.ndarray) -> np.ndarray:
        """Position of each key (int64), -1 when absent."""
        return self._probe(keys)[0]

    def values(self, pos: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return self._t[pos], self._val[pos], self._score[pos]

    def oldest_time(self) -> float:
        """Event time of the oldest live entry (arrival order), inf when empty."""
        self._advance_head()
        return float(self._t[self._head]) if self.live else math.inf

    def _start(self, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """First slot and probe step of each key (double hashing over a prime-sized table: every step
        visits every slot, and keys that collide once part ways)."""
        size = np.uint64(self._table.size)
        return (keys % size).astype(np.int64), (np.uint64(1) + (keys >> np.uint64(32)) % (size - np.uint64(1))
                                                 ).astype(np.int64)

    def _probe(self, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        m = keys.size
        pos = np.full(m, -1, dtype=np.int64)
        slots = np.full(m, -1, dtype=np.int64)
        size = self._table.size
        slot, step = self._start(keys)
        todo = np.arange(m)
        table, stored = self._table, self._key
        while todo.size:
            s = slot[todo]
            p = table[s]
            hit = p >= 0
            hit[hit] = stored[p[hit]] == keys[todo[hit]]
            pos[todo[hit]] = p[hit]
            slots[todo[hit]] = s[hit]
            more = ~hit & (p != _EMPTY)
            todo = todo[more]
            slot[todo] = (s[more] + step[todo]) % size
        return pos, slots

    def _insert(self, keys: np.ndarray, pos: np.ndarray, check: bool = False) -> None:
        """Index ``keys`` (absent and distinct; with ``check``, a key met twice raises ``ValueError``)."""
        size = self._table.size
        slot, step = self._start(keys)
        todo = np.arange(keys.size)
        table = self._table
        while todo.size:
            s = slot[todo]
            p = table[s]
            free = p == _EMPTY
            if check and (self._key[p[~free]] == keys[todo[~free]]).any():
                raise ValueError("join changelog holds a key twice")
            table[s[free]] = pos[todo[free]]  # several may claim one slot: one write lands, the others move on
            placed = np.zeros(todo.size, dtype=bool)
            placed[free] = table[s[free]] == pos[todo[free]]
            lost = free & ~placed
            if check and (self._key[table[s[lost]]] == keys[todo[lost]]).any():
                raise ValueError("join changelog holds a key twice")
            todo = todo[~placed]
            slot[todo] = (slot[todo] + step[todo]) % size
        self._used += keys.size

    # -- changing ----------------------------------------------------------------------------------------
    def add(self, keys: np.ndarray, t: np.ndarray | None = None, val: np.ndarray | None = None,
            score: np.ndarray | None = None) -> None:
        """Append entries (keys distinct, non-zero and absent from the store), in arrival order."""
        m = keys.size
        if not m:
            return
        if self._n + m > self._key.size:
            self._make_room(m)
        a, b = self._n, self._n + m
        self._key[a:b] = keys
        if self.payload:
            self._t[a:b], self._val[a:b], self._score[a:b] = t, val, score
        self._n = b
        self.live += m
        self._open_dirty = True
        if self._used + m > _MAX_LOAD * self._table.size:
            self._rebuild_table()
        else:
            self._insert(keys, np.arange(a, b, dtype=np.int64))

    def remove(self, pos: np.ndarray) -> None:
        """Remove the live entries at ``pos`` (distinct)."""
        if not pos.size:
            return
        _, slots = self._probe(self._key[pos])
        self._table[slots] = _GONE
        self._key[pos] = 0
        self.live -= pos.size
        if (pos >= self._open_lo).any():
            self._open_dirty = True
        closed = pos[pos < self._open_lo]
        if closed.size:
            idx = np.searchsorted(self._closed_lo, closed, side="right") - 1
            self._dirty.update(self._closed[i].id for i in np.unique(idx).tolist())

    def expire(self, horizon: float) -> int:
        """Remove live entries older than ``horizon`` from the oldest arrival on, up to the first that is not;
        returns how many."""
        gone = 0
        step = 4096
        while self.live:
            self._advance_head()
            a = self._head
            b = min(a + step, self._n)
            old = (self._t[a:b] < horizon) | (self._key[a:b] == 0)
            stop = np.flatnonzero(~old)
            end = a + (int(stop[0]) if stop.size else b - a)
            pos = a + np.flatnonzero(self._key[a:end] != 0)
            self.remove(pos)
            gone += pos.size
            self._head = end
            if stop.size:
                break
            step *= 2
        return gone

    def evict_oldest(self, k: int) -> int:
        """Remove the ``k`` oldest live entries (arrival order); returns how many."""
        k = min(k, self.live)
        gone = 0
        while gone < k:
            self._advance_head()
            a = self._head
            b = min(a + max(2 * (k - gone), 1024), self._n)
            live = a + np.flatnonzero(self._key[a:b] != 0)
            pos = live[: k - gone]
            self.remove(pos)
            gone += pos.size
            self._head = int(pos[-1]) + 1 if pos.size else b
        return gone

    def _advance_head(self) -> None:
        while self._head < self._n and self._key[self._head] == 0:
            nz = np.flatnonzero(self._key[self._head: self._head + 4096] != 0)
            self._head = self._head + int(nz[0]) if nz.size else min(self._head + 4096, self._n)

    def _make_room(self, m: int) -> None:
        if self._n - self.live > self.live // 4:
            self._compact()
        need = self._n + m
        if need > self._key.size:
            cap = max(need, int(self._key.size * 1.125))
            self._resize(cap)

    def _resize(self, cap: int) -> None:
        def grown(a: np.ndarray) -> np.ndarray:
            out = np.zeros(cap, dtype=a.dtype)
            out[: self._n] = a[: self._n]
            return out
        self._key = grown(self._key)
        if self.payload:
            self._t, self._val, self._score = grown(self._t), grown(self._val), grown(self._score)

    def _compact(self) -> None:
        """Drop removed entries from memory (segment bookkeeping follows), then rebuild the index."""
        n = self._n
        alive = self._key[:n] != 0
        before = np.concatenate(([0], np.cumsum(alive)))  # live entries before each position
        for seg in self._closed:
            here = alive[seg.lo: seg.lo + seg.count]
            seg.present[seg.present] = here
            seg.count = int(here.sum())
            seg.lo = int(before[seg.lo])
        self._closed = [s for s in self._closed if not s.gone]
        self._closed_lo = np.array([s.lo for s in self._closed], dtype=np.int64)
        self._open_lo = int(before[self._open_lo])
        idx = np.flatnonzero(alive)
        for name in ("_key", "_t", "_val", "_score") if self.payload else ("_key",):
            arr = getattr(self, name)
            arr[: idx.size] = arr[idx]
            arr[idx.size: n] = 0
        self._n = idx.size
        self._head = 0
        cap = max(1024, int(self._n * 1.02) + 1024)
        if cap < self._key.size:
            for name in ("_key", "_t", "_val", "_score") if self.payload else ("_key",):
                setattr(self, name, getattr(self, name)[:cap].copy())
        self._rebuild_table()

    def _rebuild_table(self, check: bool = False) -> None:
        if self._n - self.live > self.live // 4 and self._n > 1024:
            self._compact()
            return
        self._table = np.full(_prime_above(max(2048, int(self.live / _BUILD_LOAD))), _EMPTY, dtype=np.int32)
        self._used = 0
        pos = np.flatnonzero(self._key[: self._n] != 0)
        self._insert(self._key[pos], pos, check)

    # -- changelog ---------------------------------------------------------------------------------------
    def take_changes(self) -> dict[str, dict[str, Any] | None]:
        """Segment and bitmap records written or deleted since the last call (keys ``s/<id>``, ``m/<id>``)."""
        out: dict[str, dict[str, Any] | None] = {}
        for seg in self._closed:
            if seg.id not in self._dirty:
                continue
            live = seg.present.copy()
            live[live] = self._key[seg.lo: seg.lo + seg.count] != 0
            if live.any():
                out[f"m/{seg.id}"] = {"v": _RECORD, "n": int(live.size), "live": encode_array(np.packbits(live), "u1")}
            else:  # its removed entries stay in memory (and in the bookkeeping) until the next compaction
                out[f"s/{seg.id}"] = out[f"m/{seg.id}"] = None
                seg.gone = True
        self._dirty.clear()
        if self._open_dirty:
            self._squeeze_open()
            while self._n - self._open_lo >= self.segment:
                a, b = self._open_lo, self._open_lo + self.segment
                out[f"s/{self._open_id}"] = self._record(a, b)
                self._closed.append(_Segment(self._open_id, a, np.ones(b - a, dtype=bool)))
                self._closed_lo = np.append(self._closed_lo, a)
                self._open_id += 1
                self._open_lo = b
                self._open_written = False
            if self._n > self._open_lo:
                out[f"s/{self._open_id}"] = self._record(self._open_lo, self._n)
                self._open_written = True
            elif self._open_written:
                out[f"s/{self._open_id}"] = None
                self._open_written = False
            self._open_dirty = False
        return out

    def _squeeze_open(self) -> None:
        """Drop removed entries of the open segment from memory, so its record and memory agree one to one."""
        a, n = self._open_lo, self._n
        alive = self._key[a:n] != 0
        if alive.all():
            return
        moved = a + np.flatnonzero(alive)
        keys = self._key[moved]
        _, slots = self._probe(keys)
        for name in ("_key", "_t", "_val", "_score") if self.payload else ("_key",):
            arr = getattr(self, name)
            arr[a: a + moved.size] = arr[moved]
            arr[a + moved.size: n] = 0
        self._table[slots] = np.arange(a, a + moved.size, dtype=np.int32)
        self._n = a + moved.size
        self._head = min(self._head, a)

    def _record(self, a: int, b: int) -> dict[str, Any]:
        rec: dict[str, Any] = {"v": _RECORD, "n": b - a, "key": encode_array(self._key[a:b], "<u8")}
        if self.payload:
            rec.update(t=encode_array(self._t[a:b], "<f8"), val=encode_array(self._val[a:b], "<f4"),
                       score=encode_array(self._score[a:b], "<f4"))
        return rec

    def meta(self) -> dict[str, int]:
        """What a checkpoint's snapshot says about this store (checked by :meth:`restore`)."""
        return {"live": self.live, "open": self._open_id}

    def restore(self, meta: dict[str, Any], records: dict[str, Any]) -> tuple[EntryStore, list[str]]:
        """Rebuild from the latest ``s/<id>`` and ``m/<id>`` records; returns the store and the keys of stray
        records (a bitmap without its segment) to delete. Raises ``ValueError`` on a malformed record or when
        the live entries do not add up to ``meta``."""
        self._reset()
        segs: dict[int, dict[str, Any]] = {}
        masks: dict[int, dict[str, Any]] = {}
        stray = []
        for k, v in records.items():
            kind, _, sid = k.partition("/")
            if kind not in ("s", "m") or not sid.isdigit():
                raise ValueError(f"join changelog key {k!r} is not a segment or bitmap")
            (segs if kind == "s" else masks)[int(sid)] = v
        stray = [f"m/{i}" for i in masks if i not in segs]
        open_id = int(meta["open"])
        parts: list[tuple[int, dict[str, np.ndarray], np.ndarray]] = []
        for sid in sorted(segs):
            if sid > open_id:
                raise ValueError(f"join segment {sid} is newer than the checkpoint's open segment {open_id}")
            arrays, live = self._decode(sid, segs[sid], masks.get(sid))
            parts.append((sid, arrays, live))
        total = sum(int(live.sum()) for _, _, live in parts)
        if total != int(meta["live"]):
            raise ValueError(f"join changelog holds {total} live entries, the checkpoint says {meta['live']}")
        cap = max(1024, int(total * 1.02) + 1024)
        self._key = np.zeros(cap, dtype=np.uint64)
        if self.payload:
            self._t = np.zeros(cap, dtype=np.float64)
            self._val = np.zeros(cap, dtype=np.float32)
            self._score = np.zeros(cap, dtype=np.float32)
        n = 0
        for sid, arrays, live in parts:
            c = int(live.sum())
            for name, arr in arrays.items():
                getattr(self, "_" + name)[n: n + c] = arr[live]
            if sid == open_id:
                if not live.all():
                    raise ValueError(f"join segment {sid} is open but has a bitmap")
                self._open_lo = n
                self._open_written = True
            else:
                self._closed.append(_Segment(sid, n, live))
            n += c
        if not self._open_written:
            self._open_lo = n
        self._open_id = open_id
        self._closed_lo = np.array([s.lo for s in self._closed], dtype=np.int64)
        self._n = self.live = n
        self._rebuild_table(check=True)
        return self, stray

    def _decode(self, sid: int, rec: Any, mask: Any) -> tuple[dict[str, np.ndarray], np.ndarray]:
        if not isinstance(rec, dict) or rec.get("v") != _RECORD or type(rec.get("n")) is not int \
                or not 0 < rec["n"] <= self.segment:
            raise ValueError(f"join segment {sid}: not a version {_RECORD} segment record")
        n = rec["n"]
        fields = {"key": "<u8", "t": "<f8", "val": "<f4", "score": "<f4"} if self.payload else {"key": "<u8"}
        try:
            arrays = {name: decode_array(rec[name], dt, (n,)) for name, dt in fields.items()}
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"join segment {sid}: {exc}") from None
        live = arrays["key"] != 0
        if mask is not None:
            if not isinstance(mask, dict) or mask.get("v") != _RECORD or mask.get("n") != n:
                raise ValueError(f"join segment {sid}: bitmap record does not match the segment")
            try:
                bits = decode_array(mask["live"], "u1", ((n + 7) // 8,))
            except (KeyError, TypeError, ValueError) as exc:
                raise ValueError(f"join segment {sid} bitmap: {exc}") from None
            live &= np.unpackbits(bits, count=n).astype(bool)
        return arrays, live
