"""Where the pure core's time goes per window, without a broker: the monitor's core on the benchmark model.

Decodes the events of ``workload.py`` (30 features, ~790 bytes each) once with the monitor's decoder, then feeds
the same batches (``--batch``, default the monitor's ``batch.max_messages``) to a fresh ``Monitor`` per pass
(after a warm-up reference of 5,000 events) and
reports, per window size, the core's microseconds per event and, per window, the time in each stage (timed
around the calls, best of ``--rounds`` passes): the window evaluation (``evaluate_windows``: the windows that
close in one batch, together), and in it the binned statistics of the windows and their evidence spans; pane
updates are the rest of the core besides the window report (``to_dict``) and the alert policy. In the same run,
alternating: the binned statistics with the numpy functions the compiled kernel replaced
(``stats.binned_statistics(compiled=False)``), the panes counted with the numpy functions the compiled pane
kernel replaced (``PaneInput(compiled=False)``: the batch coded and each pane counted by numpy calls), and the
windows evaluated one at a time (a call each, as before they were evaluated together).

Then decode and core together, as the service runs them on one thread (each batch decoded, then processed)
and with ``batch.decode_ahead`` (batch N+1 decoded on a second thread while the core processes batch N; the
compiled decoder parses without the GIL): alternating passes, best of ``--rounds``, the speed-up of decoding
ahead when a second CPU is free (no broker in this process or on this machine's CPUs meanwhile).

Last, decode and core in turn per batch size (``--batch-sizes``; alternating passes, best of ``--rounds``): what
``batch.max_messages`` saves by sharing per-batch and per-evaluation costs among more events.

    python bench/core_profile.py [--events 200000] [--windows 1000 5000 100] [--rounds 3] [--batch N]
                                 [--batch-sizes 5000 10000 20000 50000]
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import orjson

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, os.path.dirname(__file__))

from workload import make, model_config  # noqa: E402

from stream_monitor.config import BatchConfig, parse_config  # noqa: E402
from stream_monitor.core import alerts, drift, monitor, sketches, stats  # noqa: E402
from stream_monitor.core.events import PredictionDecoder  # noqa: E402
from stream_monitor.kafka.runner import tune_gc  # noqa: E402

WARM = 5000  # the warm-up reference's events: the first batch of every pass


def timed(obj: Any, name: str, acc: dict[str, float], label: str) -> Callable[[], None]:
    """Wrap ``obj.name`` to add its wall time to ``acc[label]``; returns the undo."""
    f = getattr(obj, name)

    @functools.wraps(f)
    def g(*a: Any, **k: Any) -> Any:
        t = time.perf_counter()
        try:
            return f(*a, **k)
        finally:
            acc[label] = acc.get(label, 0.0) + time.perf_counter() - t

    setattr(obj, name, g)
    return lambda: setattr(obj, name, f)


def one_at_a_time(binning: Any, ref: Any, windows: Any, *args: Any) -> list[Any]:
    """``evaluate_windows`` as before windows were evaluated together: each window in a call of its own."""
    return [drift.evaluate_windows(binning, ref, [w], *args)[0] for w in windows]


def one_pass(cfg: Any, batches: list[Any], compiled: bool | None, alone: bool = False, panes_numpy: bool = False
             ) -> tuple[float, dict[str, float], int]:
    acc: dict[str, float] = {}
    kernel = sketches._kernel
    if panes_numpy:  # every PaneInput then codes and counts with the numpy functions
        sketches._kernel = None
    binned = stats.binned_statistics
    together = monitor.evaluate_windows
    if alone:
        monitor.evaluate_windows = one_at_a_time  # type: ignore[assignment]
    undo = [lambda: setattr(sketches, "_kernel", kernel), lambda: setattr(monitor, "evaluate_windows", together),
            timed(monitor, "evaluate_windows", acc, "window evaluation"),
            timed(monitor.WindowResult, "to_dict", acc, "window report"),
            timed(alerts.AlertPolicy, "update", acc, "alert policy")]
    stats.binned_statistics = functools.partial(binned, compiled=compiled)  # type: ignore[assignment]
    undo.append(lambda: setattr(stats, "binned_statistics", binned))
    undo.append(timed(stats, "binned_statistics", acc, "  binned statistics"))  # undone first
    try:
        mon = monitor.Monitor(cfg)
        mon.process_batch(batches[0], [])  # the warm-up reference
        acc.clear()
        windows = 0
        t0 = time.perf_counter()
        for b in batches[1:]:
            windows += len(mon.process_batch(b, []).results)
        return time.perf_counter() - t0, acc, windows
    finally:
        for u in reversed(undo):
            u()


def cut(values: list[Any], batch: int) -> list[list[Any]]:
    """The warm-up reference's events, then batches of ``batch``."""
    return [values[:WARM]] + [values[i:i + batch] for i in range(WARM, len(values), batch)]


def decode_and_core(cfg: Any, values: list[bytes], ahead: bool, batch: int) -> float:
    """Seconds to decode and process ``values`` in batches, in turn or decoding the next batch ahead."""
    decoder = PredictionDecoder(cfg.models)
    mon = monitor.Monitor(cfg)
    raw = cut(values, batch)
    t0 = time.perf_counter()
    if not ahead:
        for r in raw:
            mon.process_batch(decoder.decode(r), [])
        return time.perf_counter() - t0
    with ThreadPoolExecutor(1) as pool:
        pending = None
        for r in [*raw, None]:
            nxt = pool.submit(decoder.decode, r) if r is not None else None
            if pending is not None:
                mon.process_batch(pending.result(), [])
            pending = nxt
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--events", type=int, default=200_000)
    ap.add_argument("--windows", type=int, nargs="+", default=[1000, 5000, 100])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--batch", type=int, default=BatchConfig().max_messages,
                    help="events per batch (default: the monitor's batch.max_messages)")
    ap.add_argument("--batch-sizes", type=int, nargs="*", default=[5000, 10000, 20000, 50000])
    args = ap.parse_args()
    batch = args.batch
    tune_gc()
    rng = np.random.default_rng(0)
    values = [orjson.dumps(e) for start in range(0, args.events, 10_000)
              for e in make(min(10_000, args.events - start), rng, start)]
    print(f"{len(values):,} events of the benchmark model, batches of {batch:,}, reference of 5,000 (warm-up), "
          f"best of {args.rounds} passes; statistics kernel built: {stats.compiled()}, pane kernel built: "
          f"{sketches.compiled()}")
    for window in args.windows:
        cfg = parse_config({"models": {"bench": model_config(window)}})
        decoder = PredictionDecoder(cfg.models)
        batches = [decoder.decode(v) for v in cut(values, batch)]
        events = len(values) - WARM
        best: dict[str, tuple[float, dict[str, float], int]] = {}
        for _ in range(args.rounds):  # alternating: the kernels, numpy statistics, numpy panes, windows one at a time
            for label, compiled, alone, panes_numpy in (("kernel", None, False, False), ("numpy", False, False, False),
                                                        ("panes", None, False, True), ("alone", None, True, False)):
                got = one_pass(cfg, batches, compiled, alone, panes_numpy)
                if label not in best or got[0] < best[label][0]:
                    best[label] = got
        dt, acc, windows = best["kernel"]
        print(f"window {window:,}: core {dt / events * 1e6:.2f} us/event, {windows} windows, "
              f"{dt / windows * 1e3:.3f} ms per window of which:")
        rest = dt - sum(v for k, v in acc.items() if not k.startswith(" "))
        order = ("window evaluation", "  binned statistics", "window report", "alert policy")
        for label, v in [*((k, acc.get(k, 0.0)) for k in order), ("pane updates and the rest", rest)]:
            print(f"  {label:28s} {v / windows * 1e3:7.3f} ms/window  {v / events * 1e6:6.2f} us/event")
        dt_np, acc_np, _ = best["numpy"]
        print(f"  with the numpy statistics:   binned {acc_np['  binned statistics'] / windows * 1e3:.3f} ms/window"
              f" (kernel {acc['  binned statistics'] / windows * 1e3:.3f}), core {dt_np / events * 1e6:.2f} "
              f"us/event (kernel {dt / events * 1e6:.2f})")
        dt_p, _, _ = best["panes"]
        print(f"  with the numpy pane counting: core {dt_p / events * 1e6:.2f} us/event (kernel {dt / events * 1e6:.2f}:"
              f" {dt_p / dt:.2f}x)")
        dt_1, acc_1, _ = best["alone"]
        print(f"  windows evaluated one at a time: evaluation {acc_1['window evaluation'] / windows * 1e3:.3f} "
              f"ms/window (together {acc['window evaluation'] / windows * 1e3:.3f}: "
              f"{acc_1['window evaluation'] / acc['window evaluation']:.2f}x), core {dt_1 / events * 1e6:.2f} "
              f"us/event (together {dt / events * 1e6:.2f})")
    window = args.windows[0]
    cfg = parse_config({"models": {"bench": model_config(window)}})
    best_turn = best_ahead = float("inf")
    for _ in range(args.rounds):
        best_turn = min(best_turn, decode_and_core(cfg, values, False, batch))
        best_ahead = min(best_ahead, decode_and_core(cfg, values, True, batch))
    print(f"decode + core, window {window:,}: in turn {best_turn / len(values) * 1e6:.2f} us/event, decoding ahead "
          f"{best_ahead / len(values) * 1e6:.2f} us/event ({best_turn / best_ahead:.2f}x)")

    for window in args.windows if args.batch_sizes else ():
        cfg = parse_config({"models": {"bench": model_config(window)}})
        by_size: dict[int, float] = {}
        for _ in range(args.rounds):
            for size in args.batch_sizes:
                by_size[size] = min(by_size.get(size, float("inf")), decode_and_core(cfg, values, False, size))
        print(f"decode + core by batch size, window {window:,}: " + ", ".join(
            f"{size:,}: {dt / len(values) * 1e6:.2f} us/event" for size, dt in by_size.items()))


if __name__ == "__main__":
    main()
