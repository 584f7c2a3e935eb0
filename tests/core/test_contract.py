"""Every decoding path keeps one contract (docs/events.md), whatever the bytes.

Three decoders read prediction events — the compiled one (``_columnar.c``), msgspec's typed structures (the
path without a compiler, or with ``STREAM_MONITOR_NO_EXTENSIONS=1``) and the general path on orjson that both
hand what they are not sure of — and an oracle on Python's own ``json`` (tests/core/contract_oracle.py) states
the contract independently. On the committed corpus of hostile messages (tests/core/hostile.py) and on seeded
generated ones, they must give the same verdict: the same reject class, or the same kept values, bit for bit.
Nothing may raise. ``python -m tests.core.fuzz_decoders`` runs the same comparison for as long as you like.
"""

from __future__ import annotations

import math
import struct

import pytest

from stream_monitor.core import events as events_module
from stream_monitor.core.events import REJECT_CLASSES, Limits, PredictionDecoder, TimeRange, decode_predictions
from stream_monitor.core.keys import event_keys

from . import contract_oracle, hostile

PATHS = ["compiled", "python"]
_HI = 1e11


def decoder(path: str, limits: Limits = Limits()) -> PredictionDecoder:
    if path == "compiled" and events_module._columnar is None:
        pytest.skip("the compiled decoder is not built or is switched off")
    return PredictionDecoder(hostile.models(), TimeRange(946684800.0, _HI), compiled=path == "compiled",
                             limits=limits)


def _bits(x: float) -> bytes:
    return struct.pack("<d", x) if not math.isnan(x) else b"nan"


def verdicts(dec: PredictionDecoder, values: list[bytes | None]) -> list[tuple]:
    """Each message's verdict from one batch decoded at once, in the oracle's terms."""
    batch = dec.decode(values)
    out: list[tuple | None] = [None] * len(values)
    for r in batch.rejects:
        assert r.kind in REJECT_CLASSES, r
        out[r.index] = (r.kind,)
    for i, name in batch.unknown.items():
        out[i] = ("unknown", name)
    for name, me in batch.models.items():
        c = me.cols
        ids = [e["event_id"] for e in me.events()] if name == "m" else [None] * c.n
        for row, pos in enumerate(me.positions):
            out[pos] = ("accept", name, {
                "timestamp": _bits(float(c.event_time[row])), "model_version": c.version(row),
                "numeric": [_bits(v) for v in c.numeric[row].tolist()],
                "numeric_type_error": c.numeric_type_error[row].tolist(),
                "categorical": c.categorical[row].tolist(), "categorical_type_error":
                    c.categorical_type_error[row].tolist(), "latency_ms": _bits(float(c.latency_ms[row])),
                "segment": c.segment[row].tolist(), "key": int(c.key[row]), "event_id": ids[row]})
    assert all(v is not None for v in out), "a message was neither an event nor a reject"
    return out  # type: ignore[return-value]


def expected(raw: bytes | None, limits: Limits = Limits()) -> tuple:
    v = contract_oracle.decide(raw, hostile.models(), max_message_bytes=limits.max_message_bytes,
                               max_string_length=limits.max_string_length, hi=_HI)
    if v.kind == "unknown":
        return ("unknown", v.model)
    if v.kind != "accept":
        return (v.kind,)
    r = v.row
    assert r is not None
    return ("accept", v.model, {
        "timestamp": _bits(r["timestamp"]), "model_version": r["model_version"],
        "numeric": [_bits(x) for x in r["numeric"]], "numeric_type_error": r["numeric_type_error"],
        "categorical": r["categorical"], "categorical_type_error": r["categorical_type_error"],
        "latency_ms": _bits(r["latency_ms"]), "segment": r["segment"],
        "key": int(event_keys([r["event_id"]])[0]), "event_id": r["event_id"] if v.model == "m" else None})


def disagreements(dec: PredictionDecoder, values: list[bytes | None], limits: Limits = Limits()) -> list[str]:
    got = verdicts(dec, values)
    bad = []
    for raw, g in zip(values, got):
        e = expected(raw, limits)
        if g != e:
            bad.append(f"{(raw or b'')[:160]!r}{'...' if raw and len(raw) > 160 else ''}: decoder {g!r:.300}, "
                       f"contract {e!r:.300}")
    return bad


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize(("name", "raw", "cls"), hostile.CORPUS, ids=[c[0] for c in hostile.CORPUS])
def test_the_corpus_is_decided_as_the_contract_says(path, name, raw, cls):
    assert expected(raw)[0] == cls  # the oracle says what the corpus says
    assert disagreements(decoder(path), [raw]) == []


@pytest.mark.parametrize("path", PATHS)
def test_the_corpus_in_one_batch_between_valid_events(path):
    values = []
    for _, raw, _ in hostile.CORPUS:
        values += [hostile.event(event_id=b'"before"'), raw, hostile.event("r", event_id=b'"after"')]
    assert disagreements(decoder(path), values) == []


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("seed", range(3))
def test_generated_messages_are_decided_as_the_contract_says(path, seed):
    values = hostile.messages(seed, 1500)
    assert disagreements(decoder(path), values) == []


@pytest.mark.parametrize("path", PATHS)
def test_the_limits_are_the_configured_ones(path):
    limits = Limits(max_message_bytes=4096, max_string_length=100)
    values = [hostile.event(features=b'{"x":1,"c":"' + b"c" * n + b'"}') for n in (100, 101)]
    values += [hostile.event(trace=b'"' + b"t" * n + b'"') for n in (3900, 4096)]
    assert [v[0] for v in verdicts(decoder(path, limits), values)] == ["accept", "string_too_long", "accept",
                                                                      "too_large"]
    assert disagreements(decoder(path, limits), values, limits) == []


def test_labels_keep_the_same_contract():
    label = b'{"event_id":"e1","model":"m","label":%s,"timestamp":1700000000}'
    values = [label % b'"yes"', label % (b'"' + b"l" * 1025 + b'"'), label % b"1e400",
              (label % b"1").replace(b"e1", b"e\xff"), label % (b"[" * 70 + b"]" * 70), None]
    _, _, rejects = events_module.decode_labels(values)
    # nested deeper than the limit is refused before the label's type is looked at
    assert [r.kind for r in rejects] == ["string_too_long", "number_out_of_range", "bad_unicode", "too_deep",
                                         "empty"]


def test_a_defect_while_decoding_rejects_that_message_only(monkeypatch, caplog):
    dec = decoder("python")
    good, poison = hostile.event(), hostile.event(event_id=b'"poison"')
    real = decode_predictions

    def broken(values, *args, **kwargs):
        if any(v is not None and b"poison" in v for v in values):
            raise RuntimeError("a defect")
        return real(values, *args, **kwargs)

    monkeypatch.setattr(events_module, "decode_predictions", broken)
    monkeypatch.setattr(dec, "_decode", None)  # every message takes the general path
    batch = dec.decode([good, poison, hostile.event("r")])
    assert [(r.index, r.kind) for r in batch.rejects] == [(1, "decoder_error")]
    assert "a defect" in batch.rejects[0].reason
    assert batch.models["m"].positions == [0] and batch.models["r"].positions == [2]
    assert "decoding message 1 failed" in caplog.text


def test_the_reject_classes_are_documented():
    with open("docs/events.md", encoding="utf-8") as fh:
        doc = fh.read()
    assert all(f"`{kind}`" in doc for kind in REJECT_CLASSES)
    assert all(f"`{k}`" in doc for k in ("events.max_message_bytes", "events.max_string_length"))
