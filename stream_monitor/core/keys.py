"""Stable 64-bit keys of event ids: the randomness of every sample the monitor keeps.

Samples (a pane's rows for KS and Wasserstein, a performance window's pairs for ROC AUC) keep the events with
the smallest keys ("bottom-k" sampling), and ``sample_rate`` keeps the events whose key falls below the rate.
A key is a hash of the event's id, so it is the same in every process, run and instance: a sample does not
depend on how the stream was cut into batches, on a restart, or on which instance saw the event. Bottom-k
samples of disjoint sets merge exactly (the bottom-k of the union), and a uniform hash makes them uniform
samples.

The hash is FNV-1a over the id's code points, vectorised over a batch (one numpy pass per character
position), then mixed with the SplitMix64 finaliser so every bit is usable. Ids longer than
:data:`_VECTOR_MAX` characters are hashed one by one (BLAKE2b), so one huge id cannot blow up the batch's
character matrix.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np

__all__ = ["event_keys", "key_fraction"]

_FNV_OFFSET = np.uint64(0xCBF29CE484222325)
_FNV_PRIME = np.uint64(0x100000001B3)
_VECTOR_MAX = 128


def _mix(h: np.ndarray) -> np.ndarray:
    """SplitMix64 finaliser (wrapping uint64 arithmetic)."""
    h = h ^ (h >> np.uint64(30))
    h = h * np.uint64(0xBF58476D1CE4E5B9)
    h = h ^ (h >> np.uint64(27))
    h = h * np.uint64(0x94D049BB133111EB)
    return h ^ (h >> np.uint64(31))


def _blake(s: str) -> int:
    return int.from_bytes(hashlib.blake2b(s.encode("utf-8", "surrogatepass"), digest_size=8).digest(), "little")


def event_keys(ids: Sequence[str]) -> np.ndarray:
    """One uint64 key per id (equal ids, equal keys), independent of the batch it is computed in."""
    n = len(ids)
    out = np.empty(n, dtype=np.uint64)
    if n == 0:
        return out
    lens = np.fromiter(map(len, ids), dtype=np.int64, count=n)
    long = lens > _VECTOR_MAX
    if long.any():
        idx = np.flatnonzero(long)
        out[idx] = np.fromiter((_blake(ids[i]) for i in idx.tolist()), dtype=np.uint64, count=idx.size)
        short_idx = np.flatnonzero(~long)
        short = [ids[i] for i in short_idx.tolist()]
    else:
        short_idx = None
        short = ids
    if len(short):
        chars = np.array(short, dtype=str)  # (m,) '<U{L}', padded with NUL
        width = chars.dtype.itemsize // 4
        codes = chars.view(np.uint32).reshape(len(short), width).astype(np.uint64) if width else None
        h = np.full(len(short), _FNV_OFFSET, dtype=np.uint64)
        with np.errstate(over="ignore"):
            for j in range(width):
                c = codes[:, j]  # type: ignore[index]
                present = c != 0  # padding never changes a key: ids of any length hash alike in any batch
                h = np.where(present, (h ^ c) * _FNV_PRIME, h)
            h = _mix(h)
        if short_idx is None:
            out[:] = h
        else:
            out[short_idx] = h
    return out


def key_fraction(keys: np.ndarray) -> np.ndarray:
    """Keys as uniform floats in [0, 1): ``key_fraction(k) < rate`` keeps a share ``rate`` of the ids."""
    return (keys >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))
