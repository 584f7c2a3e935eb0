import numpy as np
import pytest

from stream_monitor.core import sketches
from stream_monitor.core.columns import build_columns
from stream_monitor.core.sketches import Binning, Pane, PaneInput


def events(n, rng, shift=0.0, cats=("x", "y", "z")):
    return [{"event_id": str(i), "model": "m", "model_version": "v1", "timestamp": float(i),
             "features": {"a": float(rng.normal(shift)), "k": str(rng.choice(cats))},
             "prediction": "yes", "score": float(rng.random())} for i in range(n)]


@pytest.fixture
def setup():
    rng = np.random.default_rng(0)
    cols = build_columns(events(2000, rng), ("a",), ("k",))
    return rng, cols, Binning.fit(cols, ("a",), ("k",), bins=10, max_categories=2, max_known=10)


def test_quantile_bins_are_equal_mass_on_reference(setup):
    rng, cols, binning = setup
    pane = Pane(binning, cap=500).update(cols)
    assert pane.num_counts.sum() == 2000
    assert np.all(np.abs(pane.num_counts[0] - 200) <= 2)


def test_top_k_categories_and_other(setup):
    rng, cols, binning = setup
    assert len(binning.categories[0]) == 2
    pane = Pane(binning, cap=500).update(cols)
    assert pane.cat_counts.shape == (1, 3)
    assert pane.cat_counts.sum() == 2000 and pane.cat_counts[0, -1] > 500  # the third value is "other"
    assert pane.cat_new.sum() == 0  # "other" is known, not new


def test_new_categories_are_counted_and_named(setup):
    rng, _, binning = setup
    cols = build_columns(events(100, rng, cats=("x", "brand-new")), ("a",), ("k",))
    pane = Pane(binning, cap=500).update(cols)
    assert pane.cat_new[0] == (cols.categorical[:, 0] == "brand-new").sum() > 0
    assert pane.new_examples[0] == {"brand-new"}


def test_reservoir_is_bounded_and_uniform(setup):
    rng, _, binning = setup
    pane = Pane(binning, cap=300)
    for i in range(20):  # 20 batches: the sample must stay a uniform 300 of all 20,000 rows
        pane.update(build_columns(events(1000, rng, shift=float(i)), ("a",), ("k",)))
    assert pane.sample.shape == (300, 1)
    assert pane.seen == 20000
    assert abs(np.mean(pane.sample[:, 0]) - 9.5) < 1.0  # mean of shifts 0..19


def test_rows_wait_for_the_sample_bounded_and_it_is_the_bottom_of_all_rows(setup):
    """Rows offered to the sample are sorted in only when it is read or more than ``cap`` of them wait; the
    sample is then exactly the rows of the ``cap`` smallest keys of all of them, in key order."""
    rng, _, binning = setup
    batches = [build_columns(events(n, rng), ("a",), ("k",)) for n in (70, 150, 40, 260, 90)]
    pane = Pane(binning, cap=200)
    for cols in batches:
        pane.update(cols)
        assert pane._pending_rows <= 200  # never more than cap rows wait besides the sample
    assert pane._pending  # the last rows still wait: nothing read them
    keys = np.concatenate([c.key for c in batches])
    values = np.concatenate([c.numeric[:, 0] for c in batches])
    order = np.argsort(keys, kind="stable")[:200]
    assert pane.sample_keys.tolist() == keys[order].tolist() and not pane._pending
    np.testing.assert_array_equal(pane.sample[:, 0], values[order])
    assert Pane.restore(binning, pane.snapshot()).snapshot() == pane.snapshot()


def test_missing_and_type_errors_are_counted(setup):
    rng, _, binning = setup
    evs = events(10, rng)
    evs[0]["features"]["a"] = None
    evs[1]["features"]["a"] = "12"
    del evs[2]["features"]["k"]
    evs[3]["features"]["k"] = 1.5
    pane = Pane(binning, cap=100).update(build_columns(evs, ("a",), ("k",)))
    assert pane.num_missing[0] == 1 and pane.num_type_error[0] == 1
    assert pane.cat_missing[0] == 1 and pane.cat_type_error[0] == 1
    assert pane.num_counts.sum() == 8 and pane.cat_counts.sum() == 8


def test_merge_adds_counts_and_bounds_sample(setup):
    rng, cols, binning = setup
    a = Pane(binning, cap=400).update(cols.take(slice(0, 1000)))
    b = Pane(binning, cap=400).update(cols.take(slice(1000, 2000)))
    m = Pane.merge([a, b], cap=500)
    whole = Pane(binning, cap=400).update(cols)
    assert np.array_equal(m.num_counts, whole.num_counts)
    assert np.array_equal(m.cat_counts, whole.cat_counts)
    assert m.n == 2000 and m.sample.shape[0] == 500


def test_snapshot_restore_roundtrip(setup):
    rng, cols, binning = setup
    pane = Pane(binning, cap=100).update(cols)
    again = Pane.restore(Binning.from_dict(binning.to_dict()), pane.snapshot())
    assert np.array_equal(again.num_counts, pane.num_counts)
    assert np.array_equal(again.sample, pane.sample)
    assert again.snapshot() == pane.snapshot()


def test_discrete_feature_gets_fewer_bins():
    rng = np.random.default_rng(1)
    evs = [{"event_id": str(i), "model": "m", "model_version": "v", "timestamp": 0.0,
            "features": {"a": int(rng.integers(0, 3))}, "prediction": 1} for i in range(500)]
    cols = build_columns(evs, ("a",), ())
    b = Binning.fit(cols, ("a",), (), bins=10)
    assert b.bin_valid[0].sum() <= 3
    pane = Pane(b, 100).update(cols)
    assert pane.num_counts[0][~b.bin_valid[0]].sum() == 0


def test_binning_counts_edges_at_or_below_each_value():
    """A value's bin is the number of its feature's edges at or below it (searchsorted, side="right"), for
    features with different numbers of edges, values on an edge, infinities and missing values."""
    rng = np.random.default_rng(3)
    ref = {"a": rng.normal(size=3000), "flag": (rng.random(3000) < 0.1).astype(float),
           "count": rng.poisson(2, 3000).astype(float)}
    names = tuple(ref)
    evs = [{"event_id": str(i), "model": "m", "model_version": "v1", "timestamp": float(i),
            "features": {n: float(ref[n][i]) for n in names}, "prediction": "yes", "score": 0.5}
           for i in range(3000)]
    binning = Binning.fit(build_columns(evs, names, ()), names, (), bins=10)
    cur = np.column_stack([np.concatenate([rng.normal(size=500), binning.edges[0, :3], [np.inf, -np.inf, np.nan]]),
                           np.concatenate([rng.integers(0, 2, 500), [0, 1, 1, np.inf, 0, np.nan]]),
                           np.concatenate([rng.poisson(2, 500), [0, 3, 9, 0, np.inf, np.nan]])]).astype(float)
    evs = [{"event_id": f"c{i}", "model": "m", "model_version": "v1", "timestamp": float(i),
            "features": {n: (None if np.isnan(v) else float(v)) for n, v in zip(names, row)},
            "prediction": "yes", "score": 0.5} for i, row in enumerate(cur)]
    pane = Pane(binning, cap=100).update(build_columns(evs, names, ()))
    want = np.zeros_like(pane.num_counts)
    for j in range(len(names)):
        x = cur[:, j][~np.isnan(cur[:, j])]
        want[j] = np.bincount(np.searchsorted(binning.edges[j], x, side="right"), minlength=want.shape[1])
    assert (pane.num_counts == want).all()


@pytest.mark.compiled
@pytest.mark.parametrize("levels", [12, 30000])  # 30,000 levels: the decoder's dictionary grows many times
def test_a_pane_counts_the_decoders_codes_as_it_counts_the_values(levels):
    import orjson

    from stream_monitor.config import parse_config
    from stream_monitor.core.events import PredictionDecoder

    rng = np.random.default_rng(5)
    models = parse_config({"models": {"m": {"features": {"numeric": ["a"], "categorical": ["k", "j"]},
                                            "prediction": "categorical", "monitor_score": False}}}).models

    def batch(n, start, levels, classes=("yes", "no")):
        return [orjson.dumps({"event_id": f"e{start + i}", "model": "m", "model_version": f"v{i % 3}",
                              "timestamp": 1.7e9 + i, "prediction": str(rng.choice(classes)),
                              "features": {"a": float(rng.normal()), "k": f"level-{rng.integers(levels)}",
                                           "j": None if rng.random() < 0.1 else str(rng.choice(["p", "q"]))}})
                for i in range(n)]
    decoder = PredictionDecoder(models, compiled=True)
    ref = decoder.decode(batch(3000, 0, levels)).models["m"].cols
    binning = Binning.fit(ref, ("a",), ("k", "j", "prediction"), bins=10, max_categories=8, max_known=50)
    cols = decoder.decode(batch(5000, 3000, levels + 5, ("yes", "no", "maybe"))).models["m"].cols  # new levels too
    assert cols.codes is not None and cols.codes.features == 3  # the classes are encoded too
    assert len(cols.codes.values[0]) == len(set(cols.codes.values[0]))  # one code per value within a call
    plain = Pane(binning, cap=100)
    encoded = Pane(binning, cap=100)
    for part in (slice(0, 1700), slice(1700, 5000), np.flatnonzero(cols.key % 3 == 0)):  # take() keeps codes
        rows = cols.take(part)
        assert rows.codes is not None
        encoded.update(rows)
        rows.codes = None
        plain.update(rows)
    assert encoded.snapshot() == plain.snapshot()
    assert encoded.cat_new.sum() > 0 and encoded.cat_missing[1] > 0 and len(encoded.versions) == 3
    assert encoded.cat_new[2] > 0 and encoded.new_examples[2] == {"maybe"}  # a class the reference never had


def test_panes_filled_from_one_binned_batch_equal_panes_updated_row_slice_by_row_slice():
    """A batch cut into several panes (windows closing inside it) is binned once (PaneInput); each pane then
    holds exactly what updating it with its rows alone gives: counts, missing, type errors, out of range, new
    categories and their examples, versions, latency and the sample."""
    import orjson

    from stream_monitor.config import parse_config
    from stream_monitor.core.events import PredictionDecoder

    rng = np.random.default_rng(11)
    models = parse_config({"models": {"m": {"features": {"numeric": ["a", "n"], "categorical": ["k", "j"]},
                                            "prediction": "categorical"}}}).models

    def batch(n, start, levels, oddities):
        out = []
        for i in range(n):
            feats = {"a": float(rng.normal(0, 1 + start / 3000)) if rng.random() > 0.05 else None, "n": int(rng.poisson(2)),
                     "k": f"level-{rng.integers(levels)}", "j": None if rng.random() < 0.1 else str(rng.choice(["p", "q"]))}
            if oddities and i % 97 == 0:
                feats["a"], feats["j"] = "oops", 3.5  # type errors: the general decode path
            out.append(orjson.dumps({"event_id": f"e{start + i}", "model": "m", "model_version": f"v{i % 3}",
                                     "timestamp": 1.7e9 + i, "prediction": str(rng.choice(["yes", "no"])),
                                     "score": float(rng.random()),
                                     "latency_ms": float(rng.gamma(2, 5)) if i % 5 else None, "features": feats}))
        return out

    decoder = PredictionDecoder(models)
    ref = decoder.decode(batch(3000, 0, 20, False)).models["m"].cols
    binning = Binning.fit(ref, ("a", "n", "score"), ("k", "j", "prediction"), bins=10, max_categories=8,
                          max_known=15)
    for oddities in (False, True):
        cols = decoder.decode(batch(5000, 3000, 40, oddities)).models["m"].cols
        assert (cols.codes is None) == (oddities or not decoder.compiled)  # codes: the compiled decoder's
        cuts = [0, 700, 1700, 1701, 4000, 5000]
        prepared = PaneInput(binning, cols)
        one = Pane(binning, cap=300)
        for lo, hi in zip(cuts, cuts[1:]):
            sliced, fresh = Pane(binning, cap=300).update(cols.take(slice(lo, hi))), Pane(binning, cap=300)
            assert fresh.update_rows(prepared, slice(lo, hi)).snapshot() == sliced.snapshot()
            one.update_rows(prepared, slice(lo, hi))
        assert one.snapshot() == Pane(binning, cap=300).update(cols).snapshot()
        rows = np.flatnonzero(cols.key % 3 == 0)  # row positions (time windows' panes), not a slice
        picked = Pane(binning, cap=300).update_rows(prepared, rows)
        assert picked.snapshot() == Pane(binning, cap=300).update(cols.take(rows)).snapshot()
        assert Pane(binning, cap=300).update_rows(prepared, rows[:0]).n == 0
        assert one.cat_new.sum() > 0 and one.num_missing[0] > 0 and one.num_out_of_range.sum() > 0
        assert (one.num_type_error[0] > 0) == oddities and one.latency.sum() > 0


@pytest.mark.compiled
def test_the_pane_kernel_is_built():
    assert sketches.compiled(), "stream_monitor.core._panes was not built by the install"


@pytest.mark.compiled
@pytest.mark.parametrize("bins", [2, 9, 10, 17, 18, 40, 100])  # up to 16 edges: vector compares; beyond: bisection
def test_the_pane_kernel_counts_what_its_numpy_counterpart_counts(bins):
    """The compiled pane updates (_panes.c) and the numpy functions they replace give the same codes and the
    same panes: values on edges, out of range, infinities, missing, wrong types, new and missing categories,
    rows as ranges, as positions and as a stepped slice."""
    import orjson

    from stream_monitor.config import parse_config
    from stream_monitor.core.events import PredictionDecoder

    rng = np.random.default_rng(bins)
    models = parse_config({"models": {"m": {"features": {"numeric": ["a", "flag", "n"], "categorical": ["k", "j"]},
                                            "prediction": "categorical"}}}).models

    def batch(n, start, levels, oddities, edges=()):
        out = []
        for i in range(n):
            a = float(rng.normal(0, 1 + start / 3000))
            if edges and i % 13 == 0:
                a = float(edges[i % len(edges)])  # exactly on an edge
            feats = {"a": a if rng.random() > 0.05 else None, "flag": int(rng.random() < 0.2),
                     "n": int(rng.poisson(3)), "k": f"level-{rng.integers(levels)}",
                     "j": None if rng.random() < 0.1 else str(rng.choice(["p", "q"]))}
            if oddities and i % 97 == 0:
                feats["a"], feats["j"] = "oops", 3.5  # type errors: the general decode path
            out.append(orjson.dumps({"event_id": f"e{start + i}", "model": "m", "model_version": "v1",
                                     "timestamp": 1.7e9 + i, "prediction": str(rng.choice(["yes", "no"])),
                                     "score": float(rng.random()), "features": feats}))
        return out

    decoder = PredictionDecoder(models)
    ref = decoder.decode(batch(4000, 0, 30, False)).models["m"].cols
    binning = Binning.fit(ref, ("a", "flag", "n", "score"), ("k", "j", "prediction"), bins=bins,
                          max_categories=12, max_known=25)
    assert binning.edges.shape[1] == bins - 1
    for oddities in (False, True):
        cols = decoder.decode(batch(3000, 4000, 60, oddities, binning.edges[0, :5].tolist())).models["m"].cols
        cols.numeric[:4, 0] = [np.inf, -np.inf, binning.hi[0], binning.lo[0]]
        fast, slow = PaneInput(binning, cols, compiled=True), PaneInput(binning, cols, compiled=False)
        assert (fast.num_code == slow.num_code).all() and (fast.cat_code == slow.cat_code).all()
        assert (fast.num_code == 255).any() and (fast.num_code[fast.num_code != 255] >= 128).any()
        for rows in (slice(0, 3000), slice(17, 1999), np.flatnonzero(cols.key % 3 == 0), slice(5, 2900, 7),
                     slice(40, 40)):
            a = Pane(binning, cap=200).update_rows(fast, rows)
            b = Pane(binning, cap=200).update_rows(slow, rows)
            assert a.snapshot() == b.snapshot()
        whole = Pane(binning, cap=200).update_rows(fast, slice(0, 3000))
        assert whole.num_out_of_range.sum() > 0 and whole.num_missing[0] > 0
        assert (whole.cat_new.sum() > 0) and (whole.num_type_error[0] > 0) == oddities
    # codes of another binning are refused before anything is counted
    counts = np.zeros((1, 3), dtype=np.int64)
    missing, out = np.zeros(1, dtype=np.int64), np.zeros(1, dtype=np.int64)
    with pytest.raises(ValueError, match="past"):
        sketches._count_numeric(np.array([[1], [3]], dtype=np.uint8), slice(0, 2), counts, missing, out, True)
    with pytest.raises(IndexError):
        sketches._count_numeric(np.array([[1], [2]], dtype=np.uint8), np.array([0, 2]), counts, missing, out, True)
    assert counts.sum() == missing.sum() == out.sum() == 0
    with pytest.raises(ValueError, match="outside"):
        sketches._count_categorical(np.array([[0], [5]], dtype=np.int32), slice(0, 2), counts, missing, out, True)
    codes = np.array([[1], [2]], dtype=np.uint8)
    with pytest.raises(TypeError):  # rows that are not a buffer: refused, nothing held
        sketches._kernel.count_numeric(codes, 2, 1, 3, 0, 0, "rows", counts, missing, out)
    with pytest.raises(ValueError, match="int64"):
        sketches._kernel.count_numeric(codes, 2, 1, 3, 0, 0, b"\x00" * 9, counts, missing, out)
    assert counts.sum() == 0


@pytest.mark.parametrize("seed", range(8))
def test_sample_is_the_bottom_of_the_keys_ties_in_the_order_of_the_parts(seed):
    """The rows with the smallest keys, by key; equal keys (an event id seen twice) keep the parts' order, as
    a stable sort of the parts laid end to end gives."""
    rng = np.random.default_rng(seed)
    parts = []
    for _ in range(int(rng.integers(1, 4))):
        n = int(rng.integers(0, 300))
        keys = rng.integers(0, 2**64, n, dtype=np.uint64) if seed % 2 else rng.integers(0, 50, n).astype(np.uint64)
        parts.append((rng.normal(size=(n, 3)), keys))
    cap = int(rng.integers(1, 400))
    x, keys = sketches._bottom(cap, parts)
    order = np.argsort(np.concatenate([k for _, k in parts]), kind="stable")[:cap]
    np.testing.assert_array_equal(keys, np.concatenate([k for _, k in parts])[order])
    np.testing.assert_array_equal(x, np.concatenate([p for p, _ in parts])[order])
    assert x.shape == (min(cap, sum(k.size for _, k in parts)), 3)
