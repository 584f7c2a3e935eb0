"""The unit of exactly-once work: outputs, state records and consumer offsets commit in one Kafka transaction.

:class:`Checkpointer` owns the monitor's transactional producer (``transactional.id`` from
``kafka.instance_id``): the first record produced begins a transaction; :meth:`Checkpointer.commit` adds the
consumer offsets (``send_offsets_to_transaction``, fenced by the consumer group's generation) and commits. A
record the broker refuses, a fenced or wedged producer, or a timeout aborts the transaction and raises
:class:`CommitFailed`: nothing of it becomes visible to ``read_committed`` readers, and the caller redoes the
work from the last commit.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Message, Producer, TopicPartition

from ..config import MonitorConfig
from .clients import Connection, producer_config

__all__ = ["Checkpointer", "CommitFailed"]

logger = logging.getLogger(__name__)


class CommitFailed(RuntimeError):
    """The open transaction could not be committed: it was aborted, and the work since the last commit must be
    redone from the last committed state and offsets."""


class Checkpointer:
    """The transactional producer: outputs, state records and offsets of a unit of work commit as one.

    Deliveries are checked at commit: a record the broker refused (too large, no such topic, not authorised)
    makes the commit fail, the transaction abort, and the reason reach the log.
    """

    def __init__(self, cfg: MonitorConfig, conn: Connection) -> None:
        self.cfg = cfg
        self.conn = conn
        self.timeout_s = max(10.0, cfg.kafka.transaction_timeout_s)
        self.open = False
        self.errors: list[str] = []
        self._wedged: list[Producer] = []
        self._new_producer()

    def _new_producer(self) -> None:
        conf = producer_config(self.cfg, transactional=True)
        self.producer_id = conf["transactional.id"]
        self.producer = self.conn.producer(conf)
        self.producer.init_transactions(self.timeout_s)  # fences an earlier incarnation with the same id

    def _delivered(self, err: KafkaError | None, msg: Message) -> None:
        if err is not None and len(self.errors) < 20:
            self.errors.append(f"{msg.topic()}: {err.str()}")

    def _begin(self) -> None:
        if not self.open:
            self.producer.begin_transaction()
            self.open = True
            self.errors = []

    def _abort_with(self, exc: KafkaException) -> CommitFailed:
        """Abort after ``exc``; the error to raise names the refused records when there were any."""
        why = "; ".join(self.errors[:3]) or exc.args[0].str()
        self.abort(exc.args[0])
        return CommitFailed(why)

    def produce(self, topic: str, key: bytes | None, value: bytes | None,
                headers: list[tuple[str, bytes]] | None = None, partition: int | None = None) -> None:
        self._begin()
        kwargs: dict[str, Any] = {"key": key, "value": value, "headers": headers, "on_delivery": self._delivered}
        if partition is not None:
            kwargs["partition"] = partition
        for _ in range(100):
            try:
                self.producer.produce(topic, **kwargs)
                break
            except BufferError:  # local queue full: serve delivery reports, then retry
                self.producer.poll(0.5)
            except KafkaException as exc:  # the transaction is in error (an earlier record was refused)
                raise self._abort_with(exc) from None
        else:
            self.abort()
            raise CommitFailed(f"producer queue stayed full while producing to {topic}")
        self.producer.poll(0)

    def commit(self, offsets: list[TopicPartition], group_metadata: Any) -> None:
        """Commit the open transaction with ``offsets``; raises :class:`CommitFailed` after aborting it."""
        self._begin()
        producer = self.producer
        outcome: list[BaseException | None] = []

        def run() -> None:
            try:
                if offsets:
                    producer.send_offsets_to_transaction(offsets, group_metadata, self.timeout_s)
                producer.commit_transaction(self.timeout_s)
                outcome.append(None)
            except BaseException as exc:  # noqa: BLE001 - handed to the caller's thread
                outcome.append(exc)

        # librdkafka's send_offsets_to_transaction() can block past its timeout when the group coordinator
        # goes away (confluentinc/librdkafka#5456, #5511): a watchdog replaces a wedged producer instead of
        # waiting for ever. The new producer's init_transactions() fences the old one and aborts its work.
        worker = threading.Thread(target=run, name="txn-commit", daemon=True)
        worker.start()
        worker.join(2 * self.timeout_s + 10)
        if not outcome:
            logger.error("transaction commit stuck for %.0fs: replacing the producer (its work is aborted)",
                         2 * self.timeout_s + 10)
            self._wedged.append(producer)  # never destroyed under a blocked call
            self.open = False
            self._new_producer()
            raise CommitFailed("commit did not return: producer replaced")
        exc = outcome[0]
        if exc is None:
            self.open = False
            return
        if not isinstance(exc, KafkaException):
            raise exc
        raise self._abort_with(exc) from None

    def abort(self, err: KafkaError | None = None) -> None:
        """Abort the open transaction (a fenced or fatally failed producer is replaced)."""
        try:
            if err is not None and err.fatal():
                raise KafkaException(err)
            if self.open:
                self.producer.abort_transaction(self.timeout_s)
        except KafkaException as exc:
            logger.warning("transactional producer unusable (%s): starting a new one", exc.args[0].str())
            self.producer.flush(0)
            self._new_producer()
        self.open = False

    def close(self) -> None:
        if self.open:
            self.abort()
        self.producer.flush(5)
        self.producer = None  # type: ignore[assignment]  # release the client now, not when collected
