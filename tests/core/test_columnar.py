"""The compiled decoder: number conversion, and the same decisions as the general path on any bytes."""

import json
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

pytestmark = pytest.mark.compiled  # the compiled decoder itself (skipped when switched off)


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


# ---- numbers at the edges of the double range, however they are spelled ---------------------------------------

def _same_as_float(tok):
    """The decoder's conversion of ``tok`` is Python's float(tok) bit for bit, or declined; never taken when
    float(tok) is infinite. Returns whether it was taken."""
    want = float(tok)
    got = _columnar.parse_number(tok.encode())
    if math.isinf(want):
        assert got is None, f"{tok[:60]}... ({len(tok)} bytes) is {want} yet taken as {got}"
        return False
    if got is None:
        return False
    if tok == "-0":  # the JSON integer -0 is the int 0, so 0.0 (float("-0") is -0.0)
        want = 0.0
    assert _bits(got) == _bits(want), f"{tok[:60]}... ({len(tok)} bytes): {got} != {want}"
    return True


def test_leading_zeros_of_the_fraction_count_against_a_huge_exponent():
    """0.(100,000 zeros)1e1000000 is 1e899999: beyond the double range, declined (it once decoded as 0.1: the
    written exponent was capped at 100,000 while every leading zero was counted)."""
    for sign in ("", "-"):
        for exp in ("e1000000", "E+1000000", "e100310", "e0001000000", "e99999999999999999999999"):
            tok = sign + "0." + "0" * 100_000 + "1" + exp
            assert math.isinf(float(tok)) and _columnar.parse_number(tok.encode()) is None, tok[-30:]
    tok = "0." + "0" * 100_000 + "17e100010"  # 1.7e9: fine either way, and exact when taken
    _same_as_float(tok)
    assert _bits(_columnar.parse_number(tok.encode())) == _bits(1.7e9)


@pytest.mark.parametrize(("tok", "taken"), [
    ("0." + "0" * 400 + "1e400", True),  # 0.1
    ("-0." + "0" * 400 + "1e400", True),
    ("0." + "0" * 400 + "1e-400", None),  # 1e-801: 0.0
    ("1e-400", True), ("-1e-400", True), ("1e400", False), ("-1e400", False),
    ("1" * 100_000 + "e-100000", None), ("1" * 100_000 + "e-99700", None), ("1" * 100_000 + "e-99600", False),
    ("9" * 309, False), ("9" * 308, None), ("-" + "9" * 400, False),
    ("1" + "0" * 100_000 + "e-100000", None), ("1" + "0" * 100_000 + ".5e-99999", None),
    ("0." + "0" * 100_000 + "1e100001", True), ("0e1000000", True), ("-0.0e-1000000", True),
    ("0." + "0" * 100_000, True), ("-0." + "0" * 100_000 + "e99999999999999999999", True),
    ("1e99999999999999999", False), ("1e-99999999999999999", True), ("1e123456789012345678901234567890", False),
    ("1e-123456789012345678901234567890", True), ("0." + "0" * 100_000 + "1e-123456789012345678901234567890", None),
    ("1.7976931348623157e308", True), ("1.7976931348623158e308", True), ("1.7976931348623159e308", False),
    ("179769313486231580793728971405301e276", None), ("4.9e-324", True), ("2.4703282292062327e-324", True),
    ("2.4703282292062328e-324", True),
])
def test_huge_and_tiny_numbers_convert_as_float_or_are_declined(tok, taken):
    """Leading zeros, long mantissas and huge exponents of either sign: the decoder's value is float(text)'s, and
    an infinite one is declined. ``taken``: True when the decoder must take it, None when either is fine."""
    got = _same_as_float(tok)
    if taken is not None:
        assert got is taken, tok[:60]


def test_every_combination_of_digit_counts_zeros_and_exponents():
    """The integer part (short, 19 or 20 digits, hundreds or 100,000 digits), the fraction's leading zeros (none to
    100,000), its significant digits (none to 5,000) and the exponent (none, small, at the double range's edges,
    100,000s, beyond 64 bits), both signs: float(text)'s double, or declined; infinities always declined."""
    ints = ["0", "1", "9", "12345", "1234567890123456789", "12345678901234567890", "9" * 400, "1" + "0" * 100_000]
    zeros = [0, 1, 5, 21, 22, 27, 28, 300, 400, 100_000]
    sig = ["", "1", "17", "4503599627370497", "1234567890123456789", "12345678901234567891", "3" * 5000]
    exps = ["", "e0", "E+0", "e-0", "e1", "e-1", "e22", "e-22", "e23", "e-27", "e-28", "e308", "e309", "e-324",
            "e-400", "e400", "e100000", "e-100000", "e100001", "e1000000", "e-1000000", "e0000000000000000000001",
            "e99999999999999999", "e100000000000000000", "e123456789012345678901234567890",
            "e-123456789012345678901234567890"]
    n = taken = 0
    for sign in ("", "-"):
        for whole in ints:
            for z in zeros:
                if whole != "0" and z > 400:
                    continue
                for digits in sig:
                    if z and not digits:
                        continue
                    frac = "0" * z + digits
                    for exp in exps:
                        taken += _same_as_float(sign + whole + ("." + frac if frac else "") + exp)
                        n += 1
    assert n > 15000 and taken > 5000  # the short ones are taken


def test_random_spellings_near_the_range_edges():
    rng = random.Random(17)
    for _ in range(20000):
        z = rng.choice([0, 0, 1, 20, 300, 330, 1000, rng.randint(0, 5000)])
        whole = rng.choice(["0", "0", str(rng.randint(1, 10**rng.randint(1, 25)))])
        frac = "0" * z + str(rng.randint(1, 10**rng.randint(1, 25))) if whole == "0" or rng.random() < 0.5 else ""
        exp = rng.choice([z, z + 1, z + 300, z + 308, z + 309, z + 330, z - 300, -z - 330, rng.randint(-10**6, 10**6)])
        tok = rng.choice(["", "-"]) + whole + ("." + frac if frac else "") + rng.choice(["e", "E"]) + (
            rng.choice(["", "+"]) if exp >= 0 else "") + str(exp)
        _same_as_float(tok)


@pytest.mark.parametrize("tok", ["00", "01", "-01", "00.5", "-00.0e1", "0" * 100_000 + "1", "1.e5", "1e", "1e+",
                                 "0." + "0" * 100_000 + "e1000000x", "-0." + "0" * 100_000 + "1e"])
def test_leading_zeros_of_the_integer_part_are_not_json(tok):
    assert _columnar.parse_number(tok.encode()) is None


def test_an_infinite_number_anywhere_in_a_message_is_declined():
    """An unread field, an unknown feature or an envelope number beyond the double range: the general path
    rejects the message (``number is infinity``), so the compiled path never takes it."""
    huge = "0." + "0" * 100_000 + "1e1000000"
    def msg(feats='"a": 1.5', extra=""):
        return (f'{{"event_id": "e1", "model": "m", "model_version": "v1", "timestamp": 1700000000, '
                f'"features": {{{feats}}}, "prediction": "yes"{extra}}}').encode()
    dec = _columnar.Decoder([("m", ("a",), ("c",), False)])
    bad = [msg(f'"a": {huge}'), msg(f'"zz": {huge}'), msg(extra=f', "trace": [{huge}]'),
           msg(extra=f', "score": {huge}'), msg(extra=', "latency_ms": 1e400'), msg(extra=f', "t": {{"u": -{huge}}}'), msg(extra=', "t": ' + "9" * 400),
           msg().replace(b"1700000000", b"0." + b"0" * 100_000 + b"17e1000000")]
    declined, outs = dec.decode(bad + [msg()], 0.0, 1e11)
    assert declined == list(range(len(bad))) and outs[0] is not None
    within = msg().replace(b"1700000000", b"0." + b"0" * 100_000 + b"17e100009")  # 1.7e8: in range, exact
    declined, (out,) = _columnar.Decoder([("m", ("a",), ("c",), False)]).decode([within], 0.0, 1e11)
    assert declined == [] and np.frombuffer(out[1], dtype=np.float64).tolist() == [1.7e8]


# ---- size limits ---------------------------------------------------------------------------------------------

def _limited(limit_string=None, limit_message=None, name="m", **kw):
    kwargs = {}
    if limit_string is not None:
        kwargs["max_string_bytes"] = limit_string
    if limit_message is not None:
        kwargs["max_message_bytes"] = limit_message
    return _columnar.Decoder([(name, ("a",), ("c",), True, True)], **kwargs)


def _event(**over):
    base = {"event_id": '"e1"', "model": '"m"', "model_version": '"v1"', "timestamp": "1700000000",
            "features": '{"a": 1.5, "c": "p"}', "prediction": '"yes"', "segment": '{"country": "nl"}'}
    base.update(over)
    return ("{" + ", ".join(f'"{k}": {v}' for k, v in base.items()) + "}").encode()


def test_the_limits_default_to_1024_string_bytes_and_a_mebibyte_per_message():
    dec = _columnar.Decoder([("m", ("a",), ("c",), True, True)])
    pad = ', "t": "' + "x" * ((1 << 20) - len(_event()) - 9) + '"'
    at = _event(segment='{"country": "nl"}' + pad)
    assert len(at) == 1 << 20
    over = at.replace(b'"t": "', b'"t": "x')
    cat = lambda n: _event(features='{"a": 1.5, "c": "' + "k" * n + '"}')
    declined, _ = dec.decode([at, over, cat(1024), cat(1025)], 0.0, 1e11)
    assert declined == [1, 3]


def test_a_message_just_at_the_limit_is_taken_just_over_declined():
    msg = _event()
    for limit, declined in ((len(msg), []), (len(msg) - 1, [0]), (len(msg) + 1, []), (1, [0])):
        assert _limited(limit_message=limit).decode([msg], 0.0, 1e11)[0] == declined, limit


@pytest.mark.parametrize("field", ["event_id", "model_version", "category", "class", "segment key", "segment value",
                                   "model"])
@pytest.mark.parametrize("char", ["k", "é", "日"])
def test_a_kept_string_just_at_the_limit_is_taken_just_over_declined(field, char):
    """Every string the decoder keeps, its length in UTF-8 bytes at the limit (taken) and one unit over
    (declined), in 1-, 2- and 3-byte characters."""
    limit = 24
    for n_chars, want in ((limit // len(char.encode()), []), (limit // len(char.encode()) + 1, [0])):
        s = char * n_chars
        over = {"event_id": {"event_id": f'"{s}"'}, "model_version": {"model_version": f'"{s}"'},
                "category": {"features": f'{{"a": 1.5, "c": "{s}"}}'}, "class": {"prediction": f'"{s}"'},
                "segment key": {"segment": f'{{"{s}": "nl"}}'}, "segment value": {"segment": f'{{"country": "{s}"}}'},
                "model": {"model": f'"{s}"'}}[field]
        dec = _limited(limit, name=s if field == "model" else "m")
        declined, outs = dec.decode([_event(**over)], 0.0, 1e11)
        assert declined == want, (field, n_chars)
        assert (outs[0] is None) == bool(want)
        if not want:  # the string reaches the columns whole
            out = outs[0]
            got = {"event_id": lambda: out[11][0], "model_version": lambda: out[5][1][0],
                   "category": lambda: out[5][0][0], "class": lambda: out[6][0],
                   "segment key": lambda: next(iter(out[14][0])), "segment value": lambda: out[14][0]["country"],
                   "model": lambda: s}[field]()
            assert got == s


def test_strings_the_decoder_does_not_keep_are_bounded_by_the_message_size_only():
    dec = _limited(8)
    long = "w" * 5000
    values = [_event(features=f'{{"a": 1.5, "c": "p", "unread": "{long}"}}'), _event(trace=f'"{long}"'),
              _event(**{long: '"x"'}), _event(features=f'{{"a": 1.5, "c": "p", "{long}": 1}}')]
    assert dec.decode(values, 0.0, 1e11)[0] == []


@pytest.mark.parametrize("kw", ["max_string_bytes", "max_message_bytes"])
@pytest.mark.parametrize("bad", [0, -1, -(10**30), 1.5, "10", None, True, b"1"])
def test_the_limits_must_be_positive_ints(kw, bad):
    with pytest.raises(ValueError, match=kw):
        _columnar.Decoder([("m", ("a",), (), False)], **{kw: bad})


def test_the_limits_are_keywords_and_a_huge_one_is_no_limit():
    with pytest.raises(TypeError):
        _columnar.Decoder([("m", ("a",), (), False)], 10)
    dec = _limited(10**30, 2**63)
    assert dec.decode([_event(event_id='"' + "i" * 128 + '"')], 0.0, 1e11)[0] == []
    assert dec.decode([_event(event_id='"' + "i" * 129 + '"')], 0.0, 1e11)[0] == [0]  # ids: 128 characters


# ---- building and calling the Decoder directly -----------------------------------------------------------------

def _isolated(code):
    """Runs ``code`` in a fresh interpreter (a crash there fails this test instead of killing the run); its
    output, the Decoder imported as D and a spec helper ``ok`` (a valid spec) defined."""
    import subprocess
    import sys

    prelude = ("import gc\nfrom stream_monitor.core._columnar import Decoder as D\n"
               "ok = ('m', ('a',), ('c',), False)\n"
               "def raises(f):\n"
               "    try:\n        f()\n    except Exception as exc:\n        return type(exc).__name__\n"
               "    return 'nothing'\n")
    r = subprocess.run([sys.executable, "-c", prelude + code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, f"exit {r.returncode}: {r.stderr[-3000:]}"
    return r.stdout.split()


@pytest.mark.parametrize(("code", "want"), [
    ("print(raises(lambda: D([('\\ud800', ('a',), (), False)])))", ["UnicodeEncodeError"]),
    ("print(raises(lambda: D([('m', ('\\ud800',), (), False)])))", ["UnicodeEncodeError"]),
    ("print(raises(lambda: D([('m', ('a',), ('b', 'x\\udfff'), False)])))", ["UnicodeEncodeError"]),
    ("print(raises(lambda: D([ok, ('\\ud800', ('a',) * 3, ('b',), True)])))", ["UnicodeEncodeError"]),
    ("print(raises(lambda: D([['m', ('a',), (), False]])), raises(lambda: D([5])), raises(lambda: D([()])))",
     ["TypeError"] * 3),
    ("print(raises(lambda: D([('m', ['a'], (), False)])), raises(lambda: D([('m', (1,), (), False)])),"
     " raises(lambda: D([('m', (), (None,), False)])), raises(lambda: D([(3, (), (), False)])),"
     " raises(lambda: D((ok,))), raises(lambda: D(None)), raises(lambda: D()))", ["TypeError"] * 7),
    ("print(raises(lambda: D([('m', ('a', 'b', 'a'), (), False)])), raises(lambda: D([('m', ('a',), ('a',), 0)])),"
     " raises(lambda: D([ok, ok])))", ["ValueError"] * 3),
    ("print(raises(lambda: D([('m', ('a',), (), False, False, 5, -1)])))", ["ValueError"]),
    ("print(raises(lambda: D([('m', ('a',), (), False, False, 2**40, -1)])))", ["OverflowError"]),
])
def test_a_bad_spec_raises_and_leaves_nothing_behind(code, want):
    """Wrong types, lone surrogates in names, duplicates: an exception, never a crash (a name that cannot be
    encoded once crashed the half-built decoder's release)."""
    assert _isolated(code + "\ngc.collect()") == want


def test_a_decoder_whose_init_failed_or_never_ran_is_refused_not_dereferenced():
    out = _isolated(
        "d = D.__new__(D)\n"
        "print(raises(lambda: d.decode([b'{}'], 0.0, 1.0)))\n"  # never initialised
        "for bad in ([ok, ('\\ud800', ('a',), (), False)], [ok, ('m2', (1,), (), False)], [ok, ok]):\n"
        "    d = D.__new__(D)\n"
        "    print(raises(lambda: d.__init__(bad)), raises(lambda: d.decode([b'{}', None], 0.0, 1.0)))\n"
        "    del d\n"
        "    gc.collect()\n"
        "d = D.__new__(D)\n"
        "print(raises(lambda: d.__init__([ok, ('\\ud800', (), (), False)])))\n"
        "d.__init__([ok])\n"  # a failed init, then a good one: usable
        "print(d.decode([b'{}'], 0.0, 1.0)[0])\n"
        "del d\n"
        "D.__new__(D)\n"  # dealloc of one never initialised
        "gc.collect()\n"
        "print('done')\n")
    assert out == ["RuntimeError", "UnicodeEncodeError", "RuntimeError", "TypeError", "RuntimeError",
                   "ValueError", "RuntimeError", "UnicodeEncodeError", "[0]", "done"]


def test_init_twice_is_refused_and_the_decoder_still_works():
    dec = _columnar.Decoder([("m", ("a",), ("c",), False)])
    with pytest.raises(RuntimeError, match="initialised once"):
        dec.__init__([("x", (), (), False)])
    with pytest.raises(RuntimeError, match="initialised once"):
        dec.__init__([("m", ("\ud800",), (), False)])
    declined, outs = dec.decode([_event(), _event(model='"x"')], 0.0, 1e11)
    assert declined == [1] and len(outs) == 1 and outs[0] is not None


def test_a_spec_that_calls_back_into_the_decoder_while_it_is_built():
    """A spec's truth test runs Python code: calling the decoder under construction from there is refused."""
    dec = _columnar.Decoder.__new__(_columnar.Decoder)
    seen = []

    class Sneaky:
        def __bool__(self):
            for call in (lambda: dec.__init__([("x", (), (), False)]), lambda: dec.decode([b"{}"], 0.0, 1.0)):
                try:
                    call()
                except RuntimeError as exc:
                    seen.append(str(exc))
            return True

    dec.__init__([("m", ("a",), ("c",), Sneaky(), True)])
    assert len(seen) == 2 and "initialised once" in seen[0] and "not initialised" in seen[1]
    assert dec.decode([_event()], 0.0, 1e11)[0] == []


def test_what_is_not_bytes_is_declined_by_position():
    """None (a message without a value) and anything else that is not bytes is left to the general path."""
    dec = _columnar.Decoder([("m", ("a",), ("c",), True, True)])
    values = [None, _event(), "text", bytearray(_event()), memoryview(_event()), 7, _event(), b""]
    declined, (out,) = dec.decode(values, 0.0, 1e11)
    assert declined == [0, 2, 3, 4, 5, 7]
    assert np.frombuffer(out[0], dtype=np.int64).tolist() == [1, 6]
    assert dec.decode([], 0.0, 1e11) == ([], [None])
    with pytest.raises(TypeError):
        dec.decode((b"{}",), 0.0, 1.0)
    with pytest.raises(TypeError):
        dec.decode([b"{}"], "0", 1.0)


@pytest.mark.parametrize(("lo", "hi"), [(2e9, 1e9), (1700000000.5, 1700000000.0), (math.nan, 1e11),
                                        (0.0, math.nan), (math.inf, -math.inf)])
def test_time_bounds_that_hold_no_time_decline_every_message(lo, hi):
    dec = _columnar.Decoder([("m", ("a",), ("c",), True, True)])
    assert dec.decode([_event(), _event(event_id='"e2"')], lo, hi) == ([0, 1], [None])


def test_a_decoder_of_no_models_declines_everything():
    dec = _columnar.Decoder([])
    assert dec.decode([_event(), None, b"{}"], 0.0, 1e11) == ([0, 1, 2], [])
    assert dec.decode([], 0.0, 1e11) == ([], [])


@pytest.mark.compiled
def test_a_fleet_of_models_is_found_by_name_as_a_few_are():
    """Past a few models the decoder finds a message's model in a hash table of the names: every model of a
    fleet (names that share prefixes, lengths and hashes' low bits) gets exactly its events, an unknown name or
    a prefix of a known one is left to the general path, and both paths decide alike."""
    from stream_monitor.core.events import PredictionDecoder

    names = [f"m{i}" for i in range(40)] + ["m", "fraud-eu", "fraud-eu-2", "fraud.eu:v2", "x" * 200]
    models = parse_config({"models": {n: {"features": {"numeric": ["a"], "categorical": ["c"]}} for n in names}}
                          ).models
    rng = random.Random(5)
    values = []
    for i in range(2000):
        name = rng.choice([*names, "m40", "fraud", "unknown"])
        values.append(_json({"event_id": f"e{i}", "model": name, "model_version": "v1", "timestamp": 1.7e9 + i,
                             "features": {"a": rng.random(), "c": rng.choice("pq")}, "prediction": "yes"}).encode())
    decoder = PredictionDecoder(models)
    batch = decoder.decode(values)
    got = {name: me.positions for name, me in batch.models.items()}
    want: dict[str, list[int]] = {}
    for i, raw in enumerate(values):
        name = json.loads(raw)["model"]
        if name in models:
            want.setdefault(name, []).append(i)
    assert got == want and set(batch.unknown.values()) == {"m40", "fraud", "unknown"}
    assert_decides_as_the_general_path(decoder, values)
    # the compiled decoder itself found every known model (it declines a message whose model it cannot find)
    declined, _ = _columnar.Decoder(decoder_specs(models)).decode(values, 0.0, 1e11)
    assert sorted(declined) == sorted(batch.unknown)
