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
        codes, width = _code_points(short, lens if short_idx is None else lens[short_idx])
        h = np.full(len(short), _FNV_OFFSET, dtype=np.uint64)
        with np.errstate(over="ignore"):
            padded = codes is not None and bool((codes == 0).any())
            for j in range(width):
                c = codes[:, j]  # type: ignore[index]
                if padded:  # padding never changes a key: ids of any length hash alike in any batch
                    h = np.where(c != 0, (h ^ c) * _FNV_PRIME, h)
                else:
                    h = (h ^ c) * _FNV_PRIME
            h = _mix(h)
        if short_idx is None:
            out[:] = h
        else:
            out[short_idx] = h
    return out


def _code_points(ids: Sequence[str], lens: np.ndarray) -> tuple[np.ndarray | None, int]:
    """The ``(m, width)`` uint64 matrix of the ids' code points, NUL-padded on the right, and its width."""
    width = int(lens.max())
    if width == 0:
        return None, 0
    if int(lens.min()) == width:  # ids of one length (the common case): one encode of them all, no padding
        flat = np.frombuffer("".join(ids).encode("utf-32-le", "surrogatepass"), dtype="<u4")
        return flat.reshape(len(ids), width).astype(np.uint64), width
    chars = np.array(ids, dtype=str)  # (m,) '<U{width}', padded with NUL
    return chars.view(np.uint32).reshape(len(ids), width).astype(np.uint64), width


def key_fraction(keys: np.ndarray) -> np.ndarray:
    """Keys as uniform floats in [0, 1): ``key_fraction(k) < rate`` keeps a share ``rate`` of the ids."""
    return (keys >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))
