"""Event keys: the same key for an id in any batch, in any process (checkpointed samples depend on it)."""

from __future__ import annotations

import numpy as np

from stream_monitor.core.keys import event_keys

M64 = (1 << 64) - 1


def reference_key(s: str) -> int:
    """FNV-1a over the id's code points (NUL code points skipped), then the SplitMix64 finaliser."""
    h = 0xCBF29CE484222325
    for ch in s:
        c = ord(ch)
        if c:
            h = ((h ^ c) * 0x100000001B3) & M64
    h ^= h >> 30
    h = (h * 0xBF58476D1CE4E5B9) & M64
    h ^= h >> 27
    h = (h * 0x94D049BB133111EB) & M64
    return h ^ (h >> 31)


def test_keys_are_the_documented_hash_whatever_the_batch():
    same_length = [f"evt-{i:012d}" for i in range(300)]
    odd = ["a", "", "abc\x00d", "x" * 128, "\ud800z", "é中😀", "evt-000000000007"]
    for batch in (same_length, odd, same_length[:5] + odd, ["abc\x00", "abd\x00"]):
        got = event_keys(batch)
        assert got.dtype == np.uint64
        assert got.tolist() == [reference_key(s) for s in batch]
    assert event_keys(["evt-000000000007"])[0] == event_keys(same_length)[7]  # batch-independent
    long = "y" * 129  # beyond the vectorised width: hashed on its own, still one key per id in any batch
    assert event_keys([long, "a"])[0] == event_keys([long])[0] != event_keys(["y" * 130])[0]
