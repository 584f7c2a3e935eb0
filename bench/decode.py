"""The decode stage alone: bytes of prediction events into validated columns, against ``orjson.loads``.

Same bytes, same run, the benchmark model of ``workload.py`` (~780-byte events, 30 features), batches of 5,000
as the monitor consumes them, best of ``--repeat`` passes each (the machine is shared):

- ``orjson.loads`` of every value, results dropped (the bare loop's per-event work);
- ``json.loads`` of the standard library, for scale;
- the general path: ``decode_predictions`` (orjson, the contract checked in Python) + ``build_columns``;
- the monitor's path: ``PredictionDecoder`` with its compiled decoder (each message's bytes parsed into its
  model's column buffers, checks fused, no Python object per event but the id and shared category strings),
  which is what ``stream-monitor run`` uses;
- of it, the compiled parse alone (the buffers it fills and the few objects it makes; the rest is making the
  columns from them);
- the same without the compiled decoder (typed msgspec structures per model, columns filled from them): what
  runs where the package was installed without a C compiler.

With ``--against REV`` it also builds the compiled decoder of git revision ``REV`` (its ``_columnar.c``, with
the compiler and flags Python's own extensions use) into a temporary directory and times the two builds on the
same batches, alternating, ``--repeat`` rounds: the speed-up of this build over that one, per round and median.

    python bench/decode.py [--events 100000] [--repeat 5] [--against REV]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shlex
import subprocess
import sys
import sysconfig
import tempfile
import time
from typing import Any

import numpy as np
import orjson

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, os.path.dirname(__file__))

from workload import make, model_config  # noqa: E402

from stream_monitor.config import parse_config  # noqa: E402
from stream_monitor.core.events import PredictionBatch, PredictionDecoder, decode_predictions  # noqa: E402
from stream_monitor.kafka.runner import tune_gc  # noqa: E402


ROOT = os.path.join(os.path.dirname(__file__), "..")


def build_of(rev: str, tmp: str) -> Any:
    """The compiled decoder module of git revision ``rev``, built in ``tmp``."""
    source = subprocess.run(["git", "-C", ROOT, "show", f"{rev}:stream_monitor/core/_columnar.c"], check=True,
                            capture_output=True).stdout
    src, so = os.path.join(tmp, "_columnar.c"), os.path.join(tmp, "_columnar" + sysconfig.get_config_var("EXT_SUFFIX"))
    with open(src, "wb") as fh:
        fh.write(source)
    cc = shlex.split(sysconfig.get_config_var("CC") or "cc")
    flags = shlex.split(sysconfig.get_config_var("CFLAGS") or "") + shlex.split(sysconfig.get_config_var("CCSHARED") or "")
    subprocess.run([*cc, *flags, "-shared", f"-I{sysconfig.get_paths()['include']}", src, "-o", so], check=True)
    spec = importlib.util.spec_from_file_location("against._columnar", so)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def against(rev: str, cfg: Any, batches: list[list[bytes]], events: int, repeat: int) -> None:
    from stream_monitor.core import _columnar

    specs = [(name, m.features.numeric, m.features.categorical, bool(m.segments.keys)) for name, m in cfg.models.items()]

    def decoder(mod: Any) -> Any:  # the same parse from both builds: no row objects, no extra numeric columns
        try:
            return mod.Decoder([(*s, False) for s in specs])
        except TypeError:  # a build from before its specs took whether to make row objects
            return mod.Decoder(specs)

    with tempfile.TemporaryDirectory() as tmp:
        decoders = {"this build": decoder(_columnar), rev: decoder(build_of(rev, tmp))}
        for d in decoders.values():
            d.decode(batches[0], 0.0, 1e11)  # warm
        times: dict[str, list[float]] = {k: [] for k in decoders}
        for _ in range(repeat):  # alternating
            for name, d in decoders.items():
                t = time.perf_counter()
                for b in batches:
                    d.decode(b, 0.0, 1e11)
                times[name].append(time.perf_counter() - t)
    ratios = [o / n for n, o in zip(times["this build"], times[rev])]
    print(f"this build against {rev}'s decoder, alternating, {repeat} rounds: "
          f"{min(times['this build']) / events * 1e6:.2f} vs {min(times[rev]) / events * 1e6:.2f} us/event (best); "
          f"speed-up per round {', '.join(f'{r:.2f}' for r in ratios)}; median {float(np.median(ratios)):.2f}x")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--events", type=int, default=100_000)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--against", metavar="REV", help="also time the compiled decoder of git revision REV")
    args = ap.parse_args()
    tune_gc()
    rng = np.random.default_rng(0)
    values = [orjson.dumps(e) for e in make(args.events, rng, 0)]
    batches = [values[i:i + 5000] for i in range(0, len(values), 5000)]
    cfg = parse_config({"models": {"bench": model_config(1000)}})
    decoder = PredictionDecoder(cfg.models, compiled=True)
    python_decoder = PredictionDecoder(cfg.models, compiled=False)

    def orjson_loads() -> None:
        loads = orjson.loads
        for b in batches:
            for v in b:
                loads(v)

    def stdlib_json() -> None:
        for b in batches:
            for v in b:
                json.loads(v)

    def general_path() -> None:
        for b in batches:
            PredictionBatch.from_events(decode_predictions(b)[0], cfg.models)

    def monitor_path() -> None:
        for b in batches:
            decoder.decode(b)

    def parse_alone() -> None:  # the compiled parse and its buffers, without the columns made from them
        parse = decoder._c.decode  # type: ignore[union-attr]
        for b in batches:
            parse(b, 0.0, 1e11)

    def without_compiled() -> None:
        for b in batches:
            python_decoder.decode(b)

    cases = [orjson_loads, stdlib_json, general_path, monitor_path, parse_alone, without_compiled]
    best = {f.__name__: float("inf") for f in cases}
    for _ in range(args.repeat):  # interleaved, so a busy moment of the machine hits every case alike
        for f in cases:
            t = time.perf_counter()
            f()
            best[f.__name__] = min(best[f.__name__], time.perf_counter() - t)
    base = best["orjson_loads"]
    print(f"{args.events:,} events of {np.mean([len(v) for v in values]):.0f} bytes, batches of 5,000, "
          f"best of {args.repeat}")
    labels = {"orjson_loads": "orjson.loads (dicts, dropped)", "stdlib_json": "json.loads (stdlib)",
              "general_path": "general path -> columns", "monitor_path": "monitor's decoder -> columns",
              "parse_alone": "  its compiled parse alone", "without_compiled": "  without it: msgspec -> columns"}
    for name, secs in best.items():
        print(f"{labels[name]:32s} {args.events / secs:10,.0f} events/s  {secs / args.events * 1e6:5.2f} us/event  "
              f"{base / secs:4.2f}x orjson.loads")
    if args.against:
        against(args.against, cfg, batches, args.events, args.repeat)


if __name__ == "__main__":
    main()
