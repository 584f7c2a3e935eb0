"""Columns as plain data: the dictionary-encoded form (v2) round-trips both kinds of columns, stays encoded
through a concatenation, refuses codes outside their values, and the earlier form (v1) is still read."""

from __future__ import annotations

import numpy as np
import orjson
import pytest

from stream_monitor.config import parse_config
from stream_monitor.core.columns import Columns, build_columns, encode_array
from stream_monitor.core.events import PredictionDecoder
from tests.streams import make_events, model_config

NUM, CAT = ("a", "b", "c", "d"), ("k",)
FIELDS = ("event_time", "numeric", "numeric_type_error", "categorical", "categorical_type_error", "model_version",
          "latency_ms", "key", "segment")


def _same(a: Columns, b: Columns) -> None:
    assert a.n == b.n
    for f in ("event_time", "numeric", "numeric_type_error", "categorical_type_error", "latency_ms", "key"):
        np.testing.assert_array_equal(getattr(a, f), getattr(b, f), err_msg=f)
    assert a.categorical.tolist() == b.categorical.tolist()
    assert a.model_version.tolist() == b.model_version.tolist()


def _object_columns(n: int, seed: int) -> Columns:
    events = make_events(n, np.random.default_rng(seed), missing_c=0.1)
    for i, e in enumerate(events):
        if i % 7 == 0:
            e["features"]["k"] = None  # missing categorical values
        e["model_version"] = f"v{i % 3}"
    return build_columns(events, NUM, CAT)


def _encoded_columns(n: int, seed: int) -> Columns:
    """Decoded columns, dictionary-encoded: as the compiled decoder gives them, or (without it) read back."""
    cfg = parse_config({"models": {"m": model_config()}})
    raw = [orjson.dumps(e) for e in make_events(n, np.random.default_rng(seed))]
    cols = PredictionDecoder(cfg.models).decode(raw).models["m"].cols
    return cols if cols.fully_encoded else _round_trip(cols)


def _round_trip(cols: Columns) -> Columns:
    k, c = cols.numeric.shape[1], cols.categorical_type_error.shape[1]
    return Columns.from_dict(orjson.loads(orjson.dumps(cols.to_dict())), k, c)


def test_object_columns_round_trip_with_each_distinct_value_written_once():
    cols = _object_columns(500, 1)
    d = cols.to_dict()
    assert d["v"] == 2 and "categorical" not in d
    assert sorted(d["values"][0]) == sorted({v for v in cols.categorical[:, 0].tolist() if v is not None})
    back = _round_trip(cols)
    assert back.fully_encoded
    _same(back, cols)


def test_decoded_columns_round_trip_and_keep_only_the_values_they_use():
    cols = _encoded_columns(400, 2)
    assert cols.fully_encoded
    part = cols.take(slice(0, 3))  # three rows: their values only, whatever the batch's dictionary held
    d = part.to_dict()
    assert all(len(vals) <= 3 for vals in d["values"])
    _same(_round_trip(part), part)
    _same(_round_trip(cols), cols)


def test_a_concatenation_of_encoded_parts_stays_encoded_and_equals_the_objects():
    parts = [_encoded_columns(200, s) for s in (3, 4)] + [_round_trip(_encoded_columns(100, 5))]
    both = Columns.concat(parts)
    assert both.fully_encoded and both.lazy  # no object matrix made
    _same(both, Columns(*(np.concatenate([getattr(p, f) for p in parts]) for f in FIELDS)))
    plain = Columns(*(getattr(parts[1], f) for f in FIELDS))  # the same rows as objects, no codes
    mixed = Columns.concat([parts[0], plain])  # an object part: objects, as before
    assert not mixed.fully_encoded and mixed.n == 400


def test_codes_outside_their_values_are_refused():
    d = _object_columns(20, 7).to_dict()
    bad = {**d, "codes": encode_array(np.zeros((20, 2), dtype=np.int32), "<i4"), "values": [[], ["v0"]]}
    with pytest.raises(ValueError, match="codes out of their values"):
        Columns.from_dict(bad, 4, 1)
    with pytest.raises(ValueError, match="lists of strings"):
        Columns.from_dict({**d, "values": [[1], ["v0"]]}, 4, 1)


def test_the_earlier_form_is_still_read():
    cols = _object_columns(50, 8)
    d = cols.to_dict()
    v1 = {k: v for k, v in d.items() if k not in ("codes", "values")} | {
        "v": 1, "categorical": cols.categorical.tolist(), "model_version": cols.model_version.tolist()}
    _same(Columns.from_dict(v1, 4, 1), cols)
