"""The compiled decoder: number conversion, and the same decisions as the general path on any bytes."""

import math
import random
import struct
from decimal import Decimal

import numpy as np
import pytest

from stream_monitor.config import parse_config
from stream_monitor.core import _columnar
from stream_monitor.core.events import PredictionDecoder, TimeRange, decoder_specs

from .test_events import assert_decides_as_the_general_path


def _bits(x):
    return struct.pack("<d", x)


def _number_tokens(rng):
    """JSON numbers as producers write them and as they rarely do: shortest reprs, many digits, exponents,
    leading zeros of fractions, exact halfway cases between two doubles, huge integers."""
    x = struct.unpack("<d", struct.pack("<Q", rng.getrandbits(64)))[0]
    if math.isfinite(x):
        yield repr(x)
    yield repr(rng.gauss(0, 1))
    yield repr(rng.random() * 10 ** rng.randint(-25, 25))
    digits = "".join(rng.choice("0123456789") for _ in range(rng.randint(1, 23))).lstrip("0") or "0"
    yield f"{digits}e{rng.randint(-30, 30)}"
    k = rng.randint(1, len(digits))
    yield digits[:k] + "." + (digits[k:] or "0")
    yield "-0." + "0" * rng.randint(0, 25) + digits
    yield str(rng.randint(-2**70, 2**70))
    m, shift = rng.getrandbits(53) | (1 << 52), rng.randint(-60, 60)
    half = Decimal(2 * m + 1) * Decimal(2) ** (shift - 1)  # exactly between two neighbouring doubles
    yield format(half, "f") if -30 < shift < 30 else format(half, "e")


def test_numbers_convert_to_the_double_python_gives():
    rng = random.Random(11)
    n = 0
    for _ in range(20000):
        for tok in _number_tokens(rng):
            got = _columnar.parse_number(tok.encode())
            assert got is not None and _bits(got) == _bits(float(tok)), tok
            n += 1
    assert n > 150000


def test_fractions_of_every_length_convert_exactly():
    """The fraction's digits are read 8 and 4 at a time while they last: every length from 1 to 25 digits,
    after leading zeros and integer parts of any length, with and without an exponent."""
    rng = random.Random(5)
    for _ in range(50000):
        frac = "0" * rng.randint(0, 4) + "".join(rng.choice("0123456789") for _ in range(rng.randint(1, 25)))
        whole = rng.choice(["0", "1", "12", "123456789", "9" * rng.randint(1, 20)])
        tok = ("-" if rng.random() < 0.5 else "") + whole + "." + frac + (
            f"e{rng.randint(-30, 30)}" if rng.random() < 0.2 else "")
        got = _columnar.parse_number(tok.encode())
        assert got is not None and _bits(got) == _bits(float(tok)), tok


@pytest.mark.parametrize("tok", ["01", "-", "1.", ".5", "1e", "1e+", "--1", "+1", "0x1", "NaN", "Infinity",
                                 "1e400", "-1e999", "1 ", "1.5.2", ""])
def test_what_is_not_a_json_number_or_not_finite_is_declined(tok):
    assert _columnar.parse_number(tok.encode()) is None


@pytest.mark.parametrize(("tok", "value"), [("-0", 0.0), ("-0.0", -0.0), ("1E5", 1e5), ("1e-400", 0.0),
                                            ("2.2250738585072014e-308", 2.2250738585072014e-308)])
def test_edge_numbers(tok, value):
    assert _bits(_columnar.parse_number(tok.encode())) == _bits(value)


@pytest.mark.parametrize("tok", ["4503599627370496.5", "4503599627370497.5", "9007199254740993",
                                 "9007199254740995", "2251799813685248.25", "2251799813685248.75",
                                 "0.30000000000000004", "123456789012345678.9", "1.7976931348623157e308"])
def test_exact_halfway_and_boundary_numbers_round_to_even(tok):
    """Values exactly halfway between two doubles (ties go to the even one) and at the edges of the paths."""
    assert _bits(_columnar.parse_number(tok.encode())) == _bits(float(tok))


# ---- whole messages ------------------------------------------------------------------------------------------

def _models():
    return parse_config({"models": {
        # "m" joins labels (its events' ids, predictions and scores are made as objects), "r" does not
        "m": {"features": {"numeric": ["a", "b", "größe"], "categorical": ["c", "d"]}, "prediction": "categorical",
              "monitor_score": True, "segments": {"keys": ["country"]}, "performance": {"task": "multiclass"}},
        "r": {"features": {"numeric": ["a"]}, "prediction": "numeric"},
    }}).models


_STRINGS = ['"p"', '"q"', '"Zürich"', '"日本"', '"emoji 😀"', '""', '"a\\"b"', '"tab\\t"', '"\\u00e9"',
            '"\\ud83d\\ude00"', '"\\ud800"', '"bad \\x"', '"nul\\u0000"']
_VALUES = ["1", "-2.5", "0", "-0", "1e3", "3.0000000000000004", "123456789012345678901234", "null", "true",
           "false", '"12"', "[]", "{}", "[1, {\"z\": [null]}]"]


def _ws(rng):
    return rng.choice(["", "", "", " ", "\n", " \t\r\n "])


def _obj(rng, pairs):
    return "{" + ",".join(f"{_ws(rng)}{k}{_ws(rng)}:{_ws(rng)}{v}{_ws(rng)}" for k, v in pairs) + "}"


def _message(rng, i):
    """A prediction event written by hand, in any key order (the model after the features too), with
    whitespace, non-ASCII, unknown nested fields and nulls; half of them with a twist or two: escapes, values
    of any type in any field, duplicates, long ids, ISO or implausible times, damaged bytes."""
    twists = set(rng.sample(range(16), rng.choice([0, 0, 0, 0, 1, 1, 2]))) if rng.random() < 0.5 else set()
    feats = [('"a"', repr(rng.gauss(0, 1))), ('"b"', rng.choice(_VALUES[:7])),
             ('"größe"', rng.choice([str(rng.randint(0, 9)), "null"])), ('"c"', rng.choice(_STRINGS[:6])),
             ('"d"', rng.choice(_STRINGS[:6] + ["null"]))]
    if rng.random() < 0.2:
        feats.append(('"extra"', rng.choice(_VALUES + _STRINGS[:9])))
    if 0 in twists:
        feats.append((rng.choice(['"a"', '"c"']), "null"))  # a duplicate feature
    if 1 in twists:
        k = rng.randrange(len(feats))
        feats[k] = (feats[k][0], rng.choice(_VALUES + _STRINGS))  # any value in any feature
    if 2 in twists:
        feats[3] = ('"c"', rng.choice(_STRINGS[6:]))  # escapes in a category
    rng.shuffle(feats)
    pairs = [('"event_id"', f'"e{i}"'), ('"model"', rng.choice(['"m"'] * 8 + ['"r"'])),
             ('"model_version"', rng.choice(['"v1"', '"v2"'])), ('"timestamp"', "1700000000.5"),
             ('"features"', _obj(rng, feats)), ('"prediction"', rng.choice(['"yes"', '"no"', "1", "2.5"]))]
    if rng.random() < 0.8:
        pairs.append(('"score"', rng.choice([repr(rng.random()), "1", "null"])))
    if rng.random() < 0.5:
        pairs.append(('"latency_ms"', rng.choice(["12.5", "0", "-0.0", "null"])))
    if rng.random() < 0.3:
        pairs.append(('"segment"', rng.choice(['{"country": "nl"}', '{"country": "nl", "tier": "gold"}', "null",
                                               "{}"])))
    if rng.random() < 0.2:
        pairs.append(('"trace"', rng.choice(_VALUES + _STRINGS[:9])))
    twisted = {3: ('"event_id"', rng.choice([f'"é{i}"', f'"e\\"{i}"', '""', f'"{"x" * 130}{i}"', "7"])),
               4: ('"model"', rng.choice(['"nobody"', '"m\\u0000"', "null"])),
               5: ('"model_version"', rng.choice(['""', "1", '"v\\n"'])),
               6: ('"timestamp"', rng.choice(["1700000000", '"2023-11-14T22:13:20Z"', "5", "1700000000000",
                                              "null", "-1"])),
               7: ('"prediction"', rng.choice(["true", "null", "12345678901234567890", "[]", '"a\\tb"'])),
               8: ('"score"', rng.choice(["true", '"0.5"', "{}"])),
               9: ('"latency_ms"', rng.choice(["-3", '"7"', "false"])),
               10: ('"segment"', rng.choice(['{"country": 3}', '{"country": "n\\"l"}', "[]", '"nl"'])),
               11: ('"features"', rng.choice(["null", "[]", '{"a": 1,}', '{"a" 1}']))}
    for t in twists & twisted.keys():
        pairs = [p for p in pairs if p[0] != twisted[t][0]] + [twisted[t]]
    if 12 in twists:
        pairs.append(rng.choice(pairs))  # a duplicate key
    if 13 in twists:
        pairs.remove(rng.choice(pairs))  # a field missing
    rng.shuffle(pairs)
    raw = (_ws(rng) + _obj(rng, pairs) + _ws(rng)).encode()
    if 14 in twists:  # damaged: a byte flipped, cut short, or trailing data
        j = rng.randrange(len(raw))
        raw = rng.choice([raw[:j] + bytes([rng.randrange(256)]) + raw[j + 1:], raw[:j], raw + b"x", raw + b"{}"])
    if 15 in twists:
        raw = raw.replace(b"\xc3\xb6", b"\xc3\x28")  # invalid UTF-8
    return raw


@pytest.mark.parametrize("seed", range(6))
def test_any_message_is_decided_as_the_general_path_decides(seed):
    rng = random.Random(seed)
    values = [_message(rng, i) for i in range(1500)] + [None, b"", b"[]", b"null", b"{}"]
    dec = PredictionDecoder(_models(), TimeRange(946684800.0, 86400.0), compiled=True)
    assert_decides_as_the_general_path(dec, values, ("country",))
    declined, _ = dec._c.decode(values, 0.0, 1e11)
    assert 0.1 * len(values) < len(declined) < 0.4 * len(values)  # both paths have work in this test


def test_the_common_event_is_never_declined():
    """Any key order (the model after the features too), non-ASCII, nulls, unknown nested fields with escapes:
    all taken by the compiled decoder, none left to the slower path."""
    rng = random.Random(3)
    clean = []
    for i in range(500):
        feats = {"a": rng.gauss(0, 1), "b": rng.randint(0, 9), "größe": None, "c": rng.choice(["p", "Zürich"]),
                 "d": "日本", "unused": {"nested": [1, 2.5e-3, "x\n", True]}}
        pairs = [f'"event_id": "e{i}"', '"model_version": "v1"', f'"timestamp": {1.7e9 + i}', '"prediction": "yes"',
                 f'"score": {rng.random()}', '"latency_ms": null', '"segment": {"country": "nl"}',
                 f'"features": {_json(feats)}', '"model": "m"']
        rng.shuffle(pairs)
        clean.append(("{" + ", ".join(pairs) + "}").encode())
    dec = _columnar.Decoder([("m", ("a", "b", "größe"), ("c", "d"), True, True)])
    declined, outs = dec.decode(clean, 0.0, 1e11)
    assert declined == [] and outs[0] is not None
    assert np.frombuffer(outs[0][0], dtype=np.int64).tolist() == list(range(500))


def test_only_a_model_that_joins_labels_gets_its_events_as_objects():
    """Ids, predictions and scores are made as Python objects only for a model whose labels are joined (the
    label join reads them); another model's predictions and scores reach its columns from the decoder's
    buffers, and a categorical model's classes arrive dictionary-encoded like its features."""
    import json

    def msg(i, model, pred, score):
        return json.dumps({"event_id": f"e{i}", "model": model, "model_version": "v1", "timestamp": 1.7e9 + i,
                           "features": {"a": i / 7, "c": "p"}, "prediction": pred, "score": score}).encode()

    models = parse_config({"models": {
        "joined": {"features": {"numeric": ["a"], "categorical": ["c"]}, "prediction": "categorical",
                   "monitor_score": True, "performance": {"task": "multiclass"}},
        "classes": {"features": {"numeric": ["a"], "categorical": ["c"]}, "prediction": "categorical",
                    "monitor_score": True},
        "mixed": {"features": {"numeric": ["a"], "categorical": ["c"]}, "prediction": "categorical"},
        "numbers": {"features": {"numeric": ["a"]}, "prediction": "numeric", "monitor_score": True},
    }}).models
    values = []
    for i in range(40):
        values += [msg(i, "joined", ["yes", "no"][i % 2], 0.25), msg(i, "classes", ["yes", "no", "maybe"][i % 3],
                                                                     None if i % 4 else 0.5),
                   msg(i, "mixed", ["yes", 7, 2.5][i % 3], 0.1), msg(i, "numbers", [3, 2.5, "x"][i % 3], 0.75)]
    dec = PredictionDecoder(models, compiled=True)
    batch = dec.decode(values)
    _, outs = dec._c.decode(values, 0.0, 1e11)
    assert [out[11] is None for out in outs] == [False, True, True, True]  # ids only for the model with labels
    assert [e["prediction"] for e in batch.models["joined"].events()] == ["yes", "no"] * 20
    assert batch.models["joined"].cols.lazy  # its events' versions were read from the codes
    for name in ("classes", "mixed", "numbers"):
        with pytest.raises(RuntimeError, match="joins no labels"):
            batch.models[name].events()
    classes = batch.models["classes"].cols
    assert classes.codes is not None and classes.codes.features == 2  # the feature "c", then the classes
    # the object columns are made from the codes only when read; a version is read from the codes
    assert classes.lazy and classes.version(-1) == "v1" and classes.take(slice(0, 5)).lazy
    assert batch.models["mixed"].cols.lazy is False  # its float class needed the values
    assert classes.categorical[:, 1].tolist() == [["yes", "no", "maybe"][i % 3] for i in range(40)]
    coded = classes.codes.codes[:, 1].tolist()
    assert [classes.codes.values[1][k] for k in coded] == classes.categorical[:, 1].tolist()
    assert classes.model_version.tolist() == ["v1"] * 40
    np.testing.assert_array_equal(classes.numeric[:, 1], [np.nan if i % 4 else 0.5 for i in range(40)])
    assert batch.models["mixed"].cols.codes.features == 1  # a class that is a float: not encoded
    assert_decides_as_the_general_path(dec, values)


def test_a_numeric_prediction_and_the_score_are_written_after_the_features():
    """The decoder writes a numeric model's prediction (NaN for a class string) and the score (NaN when
    absent) as the last columns of its numeric rows; a spec that puts them elsewhere is refused."""
    values = [b'{"event_id": "e1", "model": "m", "model_version": "v", "timestamp": 1.7e9, "features": {"a": 1.5},'
              b' "prediction": 3, "score": 0.25}',
              b'{"event_id": "e2", "model": "m", "model_version": "v", "timestamp": 1.7e9, "features": {"a": 2},'
              b' "prediction": "x"}']
    _, (out,) = _columnar.Decoder([("m", ("a",), (), False, False, 1, 2)]).decode(values, 0.0, 1e11)
    np.testing.assert_array_equal(np.frombuffer(out[2], dtype=np.float64).reshape(2, 3),
                                  [[1.5, 3.0, 0.25], [2.0, np.nan, np.nan]])
    _, (out,) = _columnar.Decoder([("m", ("a",), (), False, False, -1, 1)]).decode(values, 0.0, 1e11)
    np.testing.assert_array_equal(np.frombuffer(out[2], dtype=np.float64).reshape(2, 2), [[1.5, 0.25], [2.0, np.nan]])
    for bad in ((2, -1), (1, 1), (-1, 2)):
        with pytest.raises(ValueError, match="right after the features"):
            _columnar.Decoder([("m", ("a",), (), False, False, *bad)])


def test_feature_keys_compared_in_place_decide_as_the_general_path():
    """A feature key is first compared, in place, with the key the previous event had at its position: keys
    that extend or cut the expected one, keys in another order than the previous event's, escaped keys, and a
    configured name with a quote or a backslash (never compared in place) decide as the general path does."""
    rng = random.Random(7)
    models = parse_config({"models": {"m": {"features": {"numeric": ["a", "ab", 'q"t', "b\\s"],
                                                         "categorical": ["c", "cc"]}}}}).models
    keys = {'"a"': "a", '"ab"': "ab", '"q\\"t"': 'q"t', '"b\\\\s"': "b\\s", '"c"': "c", '"cc"': "cc",
            '"a\\u0062"': "ab", '"abc"': "abc", '"zz"': "zz"}  # JSON key text: the name it reads as
    values = []
    for i in range(3000):
        order = list(keys) if i % 4 else rng.sample(list(keys), len(keys))  # mostly the same order, not always
        if i % 7 == 0:
            order = order[: rng.randint(1, len(order))]
        if i % 5:  # escaped keys (and a second "ab") in a fifth of the events: those go to the general path
            order = [k for k in order if "\\" not in k]
        feats = ", ".join(f"{k}: " + (_json(rng.choice(["p", "q"])) if keys[k] in ("c", "cc") else repr(rng.random()))
                          for k in order)
        values.append((f'{{"event_id": "e{i}", "model": "m", "model_version": "v1", "timestamp": {1.7e9 + i}, '
                       f'"prediction": 1.0, "features": {{{feats}}}}}').encode())
    dec = PredictionDecoder(models, TimeRange(946684800.0, 86400.0), compiled=True)
    assert_decides_as_the_general_path(dec, values)
    declined, _ = dec._c.decode(values, 0.0, 1e11)
    assert 0.1 * len(values) < len(declined) < 0.3 * len(values)  # the events with escaped keys, no other


def _json(feats):
    import orjson

    return orjson.dumps(feats).decode()


def test_the_decoder_is_built_and_used():
    """The package is installed with its compiled decoder here; the monitor picks it when built."""
    assert PredictionDecoder(_models()).compiled, "stream_monitor.core._columnar was not built by the install"


def test_without_the_compiled_decoder_the_python_one_decides_and_asking_for_it_fails(monkeypatch):
    from stream_monitor.core import events

    monkeypatch.setattr(events, "_columnar", None)
    dec = PredictionDecoder(_models())
    assert not dec.compiled
    assert dec.decode([b'{"event_id": "e1", "model": "r", "model_version": "v1", "timestamp": 1700000000, '
                       b'"features": {"a": 2.5}, "prediction": 1.5}']).models["r"].cols.numeric[0, 0] == 2.5
    with pytest.raises(RuntimeError, match="not built"):
        PredictionDecoder(_models(), compiled=True)


@pytest.mark.parametrize("module, attr, says", [
    ("events", "_columnar", "the compiled decoder is not built"),
    ("stats", "_kernel", "the compiled statistics kernel is not built"),
    ("sketches", "_kernel", "the compiled pane kernel is not built"),
])
def test_the_service_says_when_it_runs_without_a_compiled_part(monkeypatch, caplog, module, attr, says):
    import importlib

    from stream_monitor.kafka.runner import MonitorService

    cfg = parse_config({"models": {"m": {"features": {"numeric": ["a"]}}}})
    MonitorService(cfg, "127.0.0.1:9")  # no broker needed to build it
    assert "is not built" not in caplog.text
    monkeypatch.setattr(importlib.import_module(f"stream_monitor.core.{module}"), attr, None)
    MonitorService(cfg, "127.0.0.1:9")
    assert says in caplog.text


def test_a_huge_batch_then_small_ones_decode_alike():
    """A batch past the buffers' keep limit (65,536 rows) frees them; the next calls start afresh."""
    def batch(n, start):
        return [b'{"event_id": "e%d", "model": "m", "model_version": "v%d", "timestamp": 1700000000, '
                b'"features": {"a": %d.5, "c": "k%d"}, "prediction": "yes"}' % (i, i % 2, i, i % 7)
                for i in range(start, start + n)]
    dec = _columnar.Decoder([("m", ("a",), ("c",), False, False)])
    for n, start in ((70000, 0), (10, 70000), (70000, 1)):
        declined, (out,) = dec.decode(batch(n, start), 0.0, 1e11)
        assert declined == []
        num = np.frombuffer(out[2], dtype=np.float64)
        codes = np.frombuffer(out[4], dtype=np.int32).reshape(n, 2)
        values = out[5]
        assert num.tolist() == [i + 0.5 for i in range(start, start + n)]
        assert [values[0][c] for c in codes[:, 0].tolist()] == [f"k{i % 7}" for i in range(start, start + n)]
        assert [values[1][c] for c in codes[:, 1].tolist()] == [f"v{i % 2}" for i in range(start, start + n)]


def test_threads_decoding_at_once_get_what_one_thread_gets():
    """The parse runs without the GIL: decoders used by several threads at once (each its own) give exactly
    the columns of sequential calls, and a thread's call on a decoder busy in another thread is refused, never
    interleaved."""
    import threading

    rng = random.Random(11)
    batches = [[_message(rng, i) for i in range(b * 800, (b + 1) * 800)] for b in range(6)]
    alone = PredictionDecoder(_models(), TimeRange(946684800.0, 86400.0), compiled=True)
    want = [alone._c.decode(b, 0.0, 1e11) for b in batches]
    got: dict[int, list] = {}
    refused: list[str] = []
    specs = decoder_specs(_models())
    shared = _columnar.Decoder(specs)

    def work(t):
        mine = _columnar.Decoder(specs)
        got[t] = [mine.decode(b, 0.0, 1e11) for b in batches for _ in range(3)][::3]
        for b in batches:
            try:
                shared.decode(b, 0.0, 1e11)
            except RuntimeError as exc:
                refused.append(str(exc))

    threads = [threading.Thread(target=work, args=(t,)) for t in range(3)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert all(got[t] == want for t in range(3))
    assert all("one call at a time" in r for r in refused)
    assert shared.decode(batches[0], 0.0, 1e11) == want[0]  # usable after refusals
