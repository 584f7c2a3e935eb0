"""A small client for traffic routers: which version should serve model X, and with what share.

    client = BreakerClient("kafka:9092", "stream-monitor.breaker",
                           connection={"security.protocol": "SASL_SSL", "sasl.mechanism": "SCRAM-SHA-512",
                                       "sasl.username": "router", "sasl.password": "..."})
    client.sync()                      # latest state of every model: read the compacted topic to its end
    route = client.route("loan-approval")
    route.primary_share                # 1.0 closed, 0.0 open, probe share when half-open
    client.poll()                      # follow new decisions (call it in your loop, or use follow())

A model with no record has never been tripped: the primary serves everything. Records with an older epoch
than the one already seen are ignored; on equal epochs a manual record wins.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..core.breaker import BreakerSignal
from .clients import Connection
from .compacted import CompactedTopicReader

__all__ = ["BreakerClient", "Route"]


@dataclass(frozen=True)
class Route:
    model: str
    state: str  # closed | open | half_open
    primary_version: str | None  # None when no signal was ever published (serve your primary)
    fallback_version: str | None
    primary_share: float  # share of requests the primary serves; the rest go to the fallback
    epoch: int
    reason: str

    @property
    def serving_version(self) -> str | None:
        """The version that takes the majority of traffic."""
        return self.fallback_version if self.primary_share < 0.5 else self.primary_version


class BreakerClient:
    """Follows the breaker topic. ``bootstrap`` is an address (with ``connection``: security properties such
    as ``{"security.protocol": "SASL_SSL", "sasl.mechanism": "SCRAM-SHA-512", ...}``) or a :class:`Connection`."""

    def __init__(self, bootstrap: str | Connection, topic: str = "stream-monitor.breaker",
                 connection: Mapping[str, Any] | None = None) -> None:
        conn = bootstrap if isinstance(bootstrap, Connection) else Connection(bootstrap, dict(connection or {}))
        self._reader = CompactedTopicReader(conn, topic, validate=BreakerSignal.from_dict)
        self._signals: dict[str, BreakerSignal] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _offer(self, sig: BreakerSignal) -> None:
        cur = self._signals.get(sig.model)
        if cur is None or sig.epoch > cur.epoch or (sig.epoch == cur.epoch and sig.source == "manual"):
            self._signals[sig.model] = sig

    def sync(self, timeout: float = 30.0) -> BreakerClient:
        latest = self._reader.sync(timeout)
        with self._lock:
            for sig in latest.values():
                self._offer(sig)
        return self

    def poll(self) -> list[BreakerSignal]:
        """Apply records published since the last call; returns them."""
        new = [v for _, v in self._reader.poll() if v is not None]
        with self._lock:
            for sig in new:
                self._offer(sig)
        return new

    def follow(self, interval_s: float = 0.2) -> threading.Thread:
        """Poll in a daemon thread until :meth:`close`."""
        def loop() -> None:
            while not self._stop.wait(interval_s):
                self.poll()

        self._thread = threading.Thread(target=loop, name="breaker-follow", daemon=True)
        self._thread.start()
        return self._thread

    def signal(self, model: str) -> BreakerSignal | None:
        with self._lock:
            return self._signals.get(model)

    def signals(self) -> dict[str, BreakerSignal]:
        with self._lock:
            return dict(self._signals)

    def route(self, model: str) -> Route:
        sig = self.signal(model)
        if sig is None:
            return Route(model, "closed", None, None, 1.0, 0, "no signal published: the primary serves")
        return Route(model, sig.state, sig.primary_version, sig.fallback_version, sig.primary_share, sig.epoch,
                     sig.reason)

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        self._reader.close()
