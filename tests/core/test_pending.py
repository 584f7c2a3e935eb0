"""The compact entry store against a plain dict, through compactions, segment closes and restores."""

import numpy as np
import orjson
import pytest

from stream_monitor.core.pending import EntryStore, ValueCodes


def replay(changelog: dict, changes: dict) -> None:
    for k, v in changes.items():
        if v is None:
            changelog.pop(k, None)
        else:
            changelog[k] = orjson.loads(orjson.dumps(v))  # what the topic carries


def test_store_matches_a_dict_through_removals_compactions_and_restores():
    rng = np.random.default_rng(11)
    store = EntryStore(segment=64)
    model: dict[int, tuple[float, float]] = {}  # key -> (t, val), in arrival order
    changelog: dict = {}
    next_key = 1
    restores = 0
    for step in range(300):
        m = int(rng.integers(1, 400))
        keys = np.arange(next_key, next_key + m, dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15)
        next_key += m
        t = np.full(m, float(step))
        val = rng.integers(0, 5, m).astype(np.float32)
        store.add(keys, t, val, np.full(m, np.nan, np.float32))
        model.update({int(k): (float(step), float(v)) for k, v in zip(keys, val)})
        held = np.array(list(model), dtype=np.uint64)
        gone = rng.choice(held, size=min(held.size, int(rng.integers(0, 350))), replace=False)
        store.remove(store.find(gone))
        for k in gone.tolist():
            del model[k]
        if step % 7 == 0:  # TTL: the oldest go first
            n = store.expire(step - 40.0)
            old = [k for k, (tk, _) in model.items() if tk < step - 40.0]
            assert n == len(old)
            for k in old:
                del model[k]
        if step % 11 == 0:
            k = int(rng.integers(0, 50))
            assert store.evict_oldest(k) == min(k, len(model))
            for key in list(model)[:k]:
                del model[key]
        replay(changelog, store.take_changes())
        assert store.live == len(model)
        if rng.random() < 0.15:  # a restart: rebuild from the changelog alone
            store, stray = EntryStore(segment=64).restore(orjson.loads(orjson.dumps(store.meta())), dict(changelog))
            assert stray == []
            restores += 1
        probe = np.array(list(model) + [7, 8], dtype=np.uint64)
        pos = store.find(probe)
        assert (pos[:-2] >= 0).all() and (pos[-2:] == -1).all()
        tt, vv, _ = store.values(pos[:-2])
        assert tt.tolist() == [v[0] for v in model.values()] and vv.tolist() == [v[1] for v in model.values()]
    assert restores >= 20
    assert max(int(k[2:]) for k in changelog if k.startswith("s/")) >= 100  # many segments closed
    assert any(k.startswith("m/") for k in changelog)  # closed segments with removals carry bitmaps
    assert all(v["n"] <= 64 for k, v in changelog.items() if k.startswith("s/"))


def test_restore_rejects_malformed_segments():
    store = EntryStore()
    store.add(np.array([3, 4], dtype=np.uint64), np.zeros(2), np.zeros(2, np.float32), np.zeros(2, np.float32))
    records = store.take_changes()
    meta = store.meta()
    EntryStore().restore(meta, records)
    for bad in ({"s/0": {**records["s/0"], "n": 3}}, {"s/0": {**records["s/0"], "t": "!!"}},
                {"s/0": records["s/0"], "m/0": {"v": 1, "n": 2, "live": "AA=="}},  # a bitmap on the open segment
                {"s/0": "text"}, {"s/0": {**records["s/0"], "v": 2}}, {"x/0": {}}, {"s/9": records["s/0"]}):
        with pytest.raises(ValueError, match="join"):
            EntryStore().restore(meta, bad)
    with pytest.raises(ValueError, match="twice"):  # the same entries in two segments
        EntryStore().restore({"live": 4, "open": 1}, {"s/0": records["s/0"], "s/1": records["s/0"]})


def test_value_codes_round_trip_numbers_and_strings():
    codes = ValueCodes()
    values = [0, 1, True, 2.5, "cat", "dog", "cat", 1 << 40, 3.14159]
    enc, ok = codes.encode(values)
    assert ok.all()
    assert codes.decode(enc) == [0, 1, 1, 2.5, "cat", "dog", "cat", 1 << 40, 3.14159]
    again = ValueCodes().restore(orjson.loads(orjson.dumps(codes.snapshot())))
    assert again.decode(enc) == codes.decode(enc)
    with pytest.raises(ValueError):
        ValueCodes().restore(["a", "a"])
