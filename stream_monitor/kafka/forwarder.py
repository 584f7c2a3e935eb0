"""``stream-monitor alerts forward``: the alert topic to Alertmanager's v2 API.

Its own consumer group (``<kafka.group_id>-alertmanager`` unless ``--group`` says otherwise) reads the alert
topic ``read_committed`` and posts every event (:mod:`..alertmanager` maps it). **At least once**: offsets
are committed only after Alertmanager accepted the batch's alerts; a failed post is retried with a growing
backoff and nothing is skipped. A redelivered event (after a restart) is posted again, which Alertmanager
treats as the same alert (same labels); within one run duplicates are dropped by ``alert_id``.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import orjson
from confluent_kafka import KafkaException

from ..alertmanager import AlertBook, AlertmanagerClient, AlertmanagerError, ForwarderMetrics, iso_time
from ..config import MonitorConfig
from .clients import Connection

__all__ = ["AlertForwarder"]

logger = logging.getLogger(__name__)


class AlertForwarder:
    """Follows the alert topic and posts to Alertmanager until :meth:`stop`."""

    def __init__(self, cfg: MonitorConfig, conn: Connection, alertmanager: str, group: str | None = None,
                 metrics: ForwarderMetrics | None = None, hold_s: float = 3600.0, resend_s: float = 60.0) -> None:
        self.cfg = cfg
        self.conn = conn
        self.client = AlertmanagerClient(alertmanager)
        self.group = group or f"{cfg.kafka.group_id}-alertmanager"
        self.metrics = metrics or ForwarderMetrics()
        self.book = AlertBook(hold_s=hold_s, resend_s=resend_s)
        self.posted = 0
        self._stop = threading.Event()

    def stop(self) -> None:
        self._stop.set()

    def run(self, until: float | None = None) -> int:
        """Forward until :meth:`stop` (or the monotonic time ``until``); returns the alerts posted."""
        consumer = self.conn.consumer({"group.id": self.group, "auto.offset.reset": "earliest",
                                       "enable.auto.commit": False, "isolation.level": "read_committed"})
        consumer.subscribe([self.cfg.topics.alerts])
        logger.info("forwarding %s to %s as group %s", self.cfg.topics.alerts, self.client.url, self.group)
        try:
            while not self._stop.is_set() and (until is None or time.monotonic() < until):
                msgs = consumer.consume(500, 0.5)
                posts: list[dict[str, Any]] = []
                for m in msgs:
                    if m.error():
                        continue
                    try:
                        alert = orjson.loads(m.value())
                        posts += self.book.posts(alert, time.time())
                    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError):
                        logger.warning("skipped a record that is not an alert event at %s[%d]@%d", m.topic(),
                                       m.partition(), m.offset())
                posts += self.book.due(time.time())
                if not self._post(posts):
                    return self.posted  # stopped while Alertmanager was down: nothing committed past it
                if msgs:
                    try:
                        consumer.commit(asynchronous=False)
                    except KafkaException as exc:  # redelivered after a restart: posted again, harmless
                        logger.warning("offset commit failed (%s); those alerts may be posted again", exc)
        finally:
            consumer.close()
        return self.posted

    def _post(self, posts: list[dict[str, Any]]) -> bool:
        """Post until Alertmanager accepts (True) or the forwarder is stopped (False)."""
        failures = 0
        while posts:
            try:
                self.client.post(posts)
            except AlertmanagerError as exc:
                failures += 1
                self.metrics.failures.inc()
                logger.error("posting %d alert(s) failed (%s); retrying", len(posts), exc)
                if self._stop.wait(min(30.0, 0.5 * 2 ** min(failures - 1, 6))):
                    return False
                continue
            soon = iso_time(time.time() + 1)  # fixed-width ISO times compare as strings
            for p in posts:
                self.metrics.posted.labels("firing" if p["endsAt"] > soon else "resolved").inc()
            self.posted += len(posts)
            return True
        return True

