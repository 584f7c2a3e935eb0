"""The differential fuzz run: generated hostile messages through a decoding path and the contract's oracle.

    python -m tests.core.fuzz_decoders --path compiled --minutes 10
    python -m tests.core.fuzz_decoders --path python --minutes 10

Each round decodes a batch of generated messages (tests/core/hostile.py, a new seed per round) in one call, as
the service does, and compares every message's verdict with the oracle (tests/core/contract_oracle.py). The
run stops at the first disagreement, printing the message and both verdicts, and exits 1; an exception out of
a decoder is a failure too. Run it under the sanitizers with ``.ci/sanitize`` to check the compiled decoder's
memory safety on the same inputs. The test suite runs a few seeds of the same generator.
"""

from __future__ import annotations

import argparse
import sys
import time

from stream_monitor.core.events import Limits, PredictionDecoder, TimeRange

from . import hostile
from .test_contract import _HI, disagreements


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--path", choices=["compiled", "python"], required=True)
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--seed", type=int, default=1000, help="first round's seed (rounds count up from it)")
    ap.add_argument("--batch", type=int, default=2000, help="messages per round")
    args = ap.parse_args(argv)
    dec = PredictionDecoder(hostile.models(), TimeRange(946684800.0, _HI), compiled=args.path == "compiled",
                            limits=Limits())
    stop = time.monotonic() + 60 * args.minutes
    seed, total, started = args.seed, 0, time.monotonic()
    while time.monotonic() < stop:
        values = hostile.messages(seed, args.batch)
        try:
            bad = disagreements(dec, values)
        except Exception as exc:  # noqa: BLE001 - an escape is a finding
            print(f"seed {seed}: the decoder raised {type(exc).__name__}: {exc}", flush=True)
            return 1
        if bad:
            print(f"seed {seed}: {len(bad)} disagreement(s); the first:\n{bad[0]}", flush=True)
            return 1
        total += len(values)
        seed += 1
        if seed % 25 == 0:
            print(f"{args.path}: {total:,} messages, seeds {args.seed}..{seed - 1}, no disagreement "
                  f"({time.monotonic() - started:.0f} s)", flush=True)
    print(f"{args.path}: {total:,} messages in {time.monotonic() - started:.0f} s (seeds {args.seed}..{seed - 1}): "
          "no disagreement, crash or escape")
    return 0


if __name__ == "__main__":
    sys.exit(main())
