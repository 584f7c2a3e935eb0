"""Hostile prediction messages: a committed corpus of edge cases with the reject class the contract gives each
(docs/events.md), and a seeded generator of messages near every limit of the contract.

Each finding that once made a decoder disagree, crash or raise is a corpus case (named for it). The generator
writes events by hand — any key order, whitespace, escapes, numbers spelled many ways, nesting, duplicates —
and gives most of them one defect of one class, so that the reject class of a message is well defined.
"""

from __future__ import annotations

import random
import re

from stream_monitor.config import parse_config

NOW = 1_700_000_000.5
MODEL_CONFIG = {"models": {
    # "m" joins labels (ids, predictions and scores made as objects), keeps segments, classes; "r" regresses
    "m": {"features": {"numeric": ["x", "y"], "categorical": ["c"]}, "prediction": "categorical",
          "monitor_score": True, "segments": {"keys": ["country"]}, "performance": {"task": "binary", "positive_label": "yes"}},
    "r": {"features": {"numeric": ["x"], "categorical": ["c"]}, "prediction": "numeric"},
}}


def models():
    return parse_config(MODEL_CONFIG).models


def event(model: str = "m", **fields: bytes) -> bytes:
    """A valid event of ``model`` with some fields replaced by raw JSON text (b"" drops the field)."""
    base = {b"event_id": b'"e1"', b"model": f'"{model}"'.encode(), b"model_version": b'"v1"',
            b"timestamp": b"1700000000.5", b"features": b'{"x":1.5,"y":-2,"c":"a"}', b"prediction": b'"yes"',
            b"score": b"0.25"}
    for k, v in fields.items():
        base[k.encode()] = v
    return b"{" + b",".join(b'"' + k + b'":' + v for k, v in base.items() if v != b"") + b"}"


def _feats(**over: bytes) -> bytes:
    f = {b"x": b"1.5", b"y": b"-2", b"c": b'"a"'}
    for k, v in over.items():
        f[k.encode()] = v
    return b"{" + b",".join(b'"' + k + b'":' + v for k, v in f.items()) + b"}"


#: (name, message, class the contract gives it: "accept", "unknown" or a reject class)
CORPUS: list[tuple[str, bytes | None, str]] = [
    ("valid", event(), "accept"),
    ("valid_numeric_model", event("r", prediction=b"3.25"), "accept"),
    ("unknown_model", event("nobody"), "unknown"),
    ("no_value", None, "empty"),
    ("empty_bytes", b"", "not_json"),
    # the compiled path took these with a wrong value: leading zeros of the fraction were not counted
    ("leading_zeros_huge_exponent", event(features=_feats(x=b"0." + b"0" * 100_000 + b"1e1000000")),
     "number_out_of_range"),
    ("leading_zeros_epoch", event(timestamp=b"0." + b"0" * 100_000 + b"17e1000000"), "number_out_of_range"),
    ("leading_zeros_epoch_in_range", event(timestamp=b"0." + b"0" * 100_000 + b"17e100010"), "accept"),
    ("leading_zeros_fine", event(features=_feats(x=b"0." + b"0" * 400 + b"1e400")), "accept"),
    ("long_mantissa_negative_exponent", event(features=_feats(x=b"1" * 5000 + b"e-5000")), "accept"),
    ("tiny_underflows_to_zero", event(features=_feats(x=b"1e-400")), "accept"),
    ("exponent_overflow", event(features=_feats(x=b"1e400")), "number_out_of_range"),
    ("exponent_overflow_unread", event(features=_feats(u=b"-1E+400")), "number_out_of_range"),
    ("huge_integer_unread", event(trace=b"9" * 400), "number_out_of_range"),
    # the fallback path raised (the service stopped) or took what the general path rejects
    ("deep_1000", event(features=_feats(u=b"[" * 1000 + b"]" * 1000)), "too_deep"),
    ("deep_objects_1000", event(trace=b'{"a":' * 1000 + b"1" + b"}" * 1000), "too_deep"),
    ("deep_100000", event(trace=b"[" * 100_000 + b"]" * 100_000), "too_deep"),
    ("depth_64_fits", event(trace=b"[" * 63 + b"]" * 63), "accept"),
    ("depth_65", event(trace=b"[" * 64 + b"]" * 64), "too_deep"),
    ("integer_310_digits_prediction", event(prediction=b"9" * 310), "number_out_of_range"),
    ("integer_310_digits_numeric_prediction", event("r", prediction=b"9" * 310), "number_out_of_range"),
    ("integer_2_64_class", event(prediction=b"18446744073709551616"), "accept"),  # a double: a type error
    ("integer_2_64_minus_1_class", event(prediction=b"18446744073709551615"), "accept"),  # a class
    ("integer_below_int64_class", event(prediction=b"-9223372036854775809"), "accept"),  # a double
    ("integer_2_53_plus_1_numeric", event("r", prediction=b"9007199254740993"), "accept"),  # rounds
    ("integer_2_64_category", event(features=_feats(c=b"18446744073709551616")), "accept"),
    ("invalid_utf8_in_key", event(features=b'{"x":1,"c\xff":"a"}'), "bad_unicode"),
    ("invalid_utf8_in_unread_value", event(trace=b'"\xc0\xaf"'), "bad_unicode"),
    ("invalid_utf8_in_category", event(features=_feats(c=b'"\xe2\x82"')), "bad_unicode"),
    ("utf8_encoded_surrogate", event(features=_feats(c=b'"\xed\xa0\x80"')), "bad_unicode"),
    ("escaped_lone_high_surrogate", event(features=_feats(c=b'"\\ud800"')), "bad_unicode"),
    ("escaped_lone_low_surrogate_unread", event(trace=b'"\\udc00x"'), "bad_unicode"),
    ("escaped_surrogate_pair", event(features=_feats(c=b'"\\ud83d\\ude00"')), "accept"),
    ("non_ascii_category", event(features=_feats(c='"Zürich 日本"'.encode())), "accept"),
    ("bom", b"\xef\xbb\xbf" + event(), "not_json"),
    ("nan_literal", event(features=_feats(x=b"NaN")), "not_json"),
    ("infinity_literal", event(score=b"Infinity"), "not_json"),
    ("trailing_garbage", event() + b"x", "not_json"),
    ("control_char_in_string", event(model_version=b'"v\x01"'), "not_json"),
    ("duplicate_key_last_wins", event(features=b'{"x":1,"x":2,"c":"a","c":"b"}'), "accept"),
    ("duplicate_model_last_wins", event().replace(b'"model":"m"', b'"model":"nobody","model":"m"'), "accept"),
    ("huge_category", event(features=_feats(c=b'"' + b"a" * 1_000_000 + b'"')), "string_too_long"),
    ("category_at_limit", event(features=_feats(c=b'"' + b"a" * 1024 + b'"')), "accept"),
    ("category_over_limit", event(features=_feats(c=b'"' + b"a" * 1025 + b'"')), "string_too_long"),
    ("category_multibyte_at_limit", event(features=_feats(c='"'.encode() + "é".encode() * 1024 + b'"')),
     "accept"),
    ("unread_long_text_is_fine", event(features=_feats(text=b'"' + b"w " * 50_000 + b'"')), "accept"),
    ("event_id_over_limit", event(event_id=b'"' + b"i" * 1025 + b'"'), "string_too_long"),
    ("class_over_limit", event(prediction=b'"' + b"k" * 1025 + b'"'), "string_too_long"),
    ("segment_value_over_limit", event(segment=b'{"country":"' + b"n" * 1025 + b'"}'), "string_too_long"),
    ("message_over_limit", event(trace=b'"' + b"t" * (1 << 20) + b'"'), "too_large"),
    ("bool_prediction", event(prediction=b"true"), "accept"),
    ("missing_timestamp", event(timestamp=b""), "contract"),
    ("millisecond_timestamp", event(timestamp=b"1700000000000"), "timestamp"),
    ("iso_timestamp", event(timestamp=b'"2023-11-14T22:13:20Z"'), "accept"),
    ("negative_zero_latency", event(latency_ms=b"-0.0"), "accept"),
    ("negative_latency", event(latency_ms=b"-1"), "contract"),
    ("score_string", event(score=b'"0.5"'), "contract"),
    ("event_not_object", b"[1,2]", "contract"),
]


# ---- the generator ----------------------------------------------------------------------------------------

_WS = [b"", b"", b"", b" ", b"\n", b"\t", b" \r\n "]
_STR = ['"a"', '"b"', '"Zürich"', '"日本"', '"\\u00e9"', '"\\ud83d\\ude00"', '"a\\"b"', '"\\\\"', '"\\/"',
        '"tab\\t"', '""']


def _number(rng: random.Random, hostile: bool = False) -> str:
    """A number as producers and attackers spell them: plain, long, exponents, leading zeros, boundaries;
    ``hostile``: also beyond the double range, or no JSON number at all."""
    if not hostile:
        for _ in range(100):
            text = _number(rng, True)
            if _in_range(text):
                return text
        return "1"
    kind = rng.randrange(12)
    if kind == 0:
        return repr(rng.gauss(0, 1e3))
    if kind == 1:
        return str(rng.randint(-10**6, 10**6))
    if kind == 2:  # long mantissas
        return ("-" if rng.random() < 0.3 else "") + str(rng.randint(1, 9)) + "".join(
            rng.choice("0123456789") for _ in range(rng.randint(15, 40))) + rng.choice(["", ".5", "e-7", "e3"])
    if kind == 3:  # leading zeros of the fraction, and an exponent that may or may not bring it back
        z = rng.choice([1, 18, 19, 20, 300, 330, 1000])
        if rng.random() < 0.3:  # no exponent: a long fraction, or one below the smallest double
            return f"{rng.choice(['', '-'])}0.{'0' * z}{rng.randint(1, 10**rng.randint(1, 30))}"
        return f"0.{'0' * z}{rng.randint(1, 999)}e{rng.choice([z, z + 1, z + 300, z + 309, z - 300])}"
    if kind == 4:  # exponents near the double's range
        return f"{rng.randint(1, 99)}.{rng.randint(0, 99)}e{rng.choice(['', '+', '-'])}{rng.randint(290, 330)}"
    if kind == 5:  # integers at the 64-bit and 53-bit boundaries
        b = rng.choice([2**53, 2**63, 2**64])
        return str(rng.choice([1, -1]) * b + rng.randint(-2, 2))
    if kind == 6:
        return "9" * rng.choice([18, 19, 20, 308, 309, 310])
    if kind == 7:
        return rng.choice(["0", "-0", "-0.0", "0e0", "0E-0", "1E+2", "4.9e-324", "2.2250738585072014e-308",
                           "1.7976931348623157e308", "1.7976931348623159e308", "5e-324", "2.4703282292062327e-324"])
    if kind == 8:  # not JSON numbers
        return rng.choice(["01", "1.", ".5", "+1", "1e", "--1", "0x10", "1_000", "NaN", "Infinity", "-Infinity"])
    return repr(rng.random())


_JSON_NUMBER = re.compile(r"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?")


def _in_range(text: str) -> bool:
    return _JSON_NUMBER.fullmatch(text) is not None and abs(float(text)) != float("inf")


def _value(rng: random.Random, depth: int = 0) -> str:
    k = rng.randrange(10)
    if k < 4:
        return _number(rng)
    if k < 6:
        return rng.choice(_STR)
    if k == 6:
        return rng.choice(["null", "true", "false"])
    if k == 7 and depth < 4:
        return "[" + ",".join(_value(rng, depth + 1) for _ in range(rng.randint(0, 3))) + "]"
    if k == 8 and depth < 4:
        return "{" + ",".join(f'"k{j}":{_value(rng, depth + 1)}' for j in range(rng.randint(0, 3))) + "}"
    return rng.choice(["1", '"z"'])


def _obj(rng: random.Random, pairs: list[tuple[str, str]]) -> str:
    ws = lambda: rng.choice(_WS).decode()  # noqa: E731
    return "{" + ",".join(f"{ws()}{k}{ws()}:{ws()}{v}{ws()}" for k, v in pairs) + "}"


def message(rng: random.Random, i: int) -> bytes:
    """One generated message: a valid event in any spelling, most with one defect of one class."""
    model = rng.choice(['"m"'] * 6 + ['"r"'] * 3 + ['"other"'])
    feats = [('"x"', _number(rng) if rng.random() < 0.5 else repr(rng.gauss(0, 1))),
             ('"y"', rng.choice([_number(rng), "null", '"7"', "true"])), ('"c"', rng.choice(_STR + ["3", "null"]))]
    if rng.random() < 0.3:
        feats.append(('"extra"', _value(rng)))
    pred = rng.choice(['"yes"', '"no"', "1", "0.5", _number(rng), "true"])
    pairs = [('"event_id"', f'"e{i}"'), ('"model"', model), ('"model_version"', rng.choice(['"v1"', '"v2"'])),
             ('"timestamp"', rng.choice(["1700000000.5", "1700000000", '"2023-11-14T22:13:20Z"'])),
             ('"features"', _obj(rng, feats)), ('"prediction"', pred)]
    if rng.random() < 0.7:
        pairs.append(('"score"', rng.choice([repr(rng.random()), "1", "null", _number(rng)])))
    if rng.random() < 0.4:
        pairs.append(('"latency_ms"', rng.choice(["12.5", "0", "-0.0", "null", _number(rng)])))
    if rng.random() < 0.3:
        pairs.append(('"segment"', rng.choice(['{"country":"nl"}', '{"country":"nl","tier":"gold"}', "null"])))
    if rng.random() < 0.3:
        pairs.append(('"trace"', _value(rng)))
    defect = rng.randrange(14) if rng.random() < 0.7 else -1
    if defect == 11:  # a number beyond the double range, or no JSON number
        far = rng.choice(["1e400", "-1E+309", "9" * 310, f"0.{'0' * rng.choice([19, 400])}1e{rng.choice([330, 800])}",
                          _number(rng, hostile=True)])
        pairs.append((rng.choice(['"trace"', '"score"', '"latency_ms"', '"timestamp"']), far))
    if defect == 0:  # depth around the limit
        d = rng.choice([62, 63, 64, 65, 66, 200])
        pairs.append(('"deep"', "[" * d + "]" * d if rng.random() < 0.5 else '{"a":' * d + "1" + "}" * d))
    elif defect == 1:  # a string near the length limit, kept or not
        n = rng.choice([1023, 1024, 1025, 3000])
        s = '"' + rng.choice(["a", "é", "日"]) * n + '"'
        where = rng.randrange(4)
        if where == 0:
            feats.append(('"c"', s))
            pairs = [p for p in pairs if p[0] != '"features"'] + [('"features"', _obj(rng, feats))]
        else:
            pairs.append([('"event_id"', s), ('"prediction"', s), ('"trace"', s)][where - 1])
    elif defect == 2:  # escaped surrogates, paired or not
        pairs.append(('"trace"', rng.choice(['"\\ud800"', '"\\udfff"', '"\\ud800\\udc00"', '"\\udc00\\ud800"',
                                             '"\\uD834\\uDD1E"', '"\\ud800\\u0041"'])))
    elif defect == 3:  # duplicate keys
        pairs.append(rng.choice(pairs))
    elif defect == 4:  # a field missing
        pairs.remove(rng.choice(pairs))
    elif defect == 5:  # a field of another type
        k = rng.randrange(len(pairs))
        pairs[k] = (pairs[k][0], _value(rng))
    elif defect == 6:  # a timestamp out of range or odd
        pairs.append(('"timestamp"', rng.choice(["1e11", "100000000001", "-1", "1", '"yesterday"', "null",
                                                 '"2023-11-14T22:13:20"', "1700000000000"])))
    rng.shuffle(pairs)
    raw = (rng.choice(_WS).decode() + _obj(rng, pairs) + rng.choice(_WS).decode()).encode()
    if defect == 7:  # a byte flipped
        j = rng.randrange(len(raw))
        raw = raw[:j] + bytes([rng.randrange(256)]) + raw[j + 1:]
    elif defect == 8:  # cut short or trailing data
        raw = rng.choice([raw[: rng.randrange(len(raw))], raw + b"x", raw + b"{}", raw + b" "])
    elif defect == 9:  # invalid UTF-8 somewhere in a string
        bad = rng.choice([b"\xff", b"\xc0\xaf", b"\xed\xa0\x80", b"\xe2\x82", b"\xf4\x90\x80\x80", b"\x80"])
        raw = raw.replace(b'"v', b'"' + bad + b"v", 1) if rng.random() < 0.5 else raw.replace(b'"x"', b'"x' + bad
                                                                                            + b'"', 1)
    elif defect == 10:  # a control character in a string
        raw = raw.replace(b'"v', b'"\x01v', 1)
    return raw


def messages(seed: int, n: int) -> list[bytes]:
    rng = random.Random(seed)
    return [message(rng, i) for i in range(n)]
