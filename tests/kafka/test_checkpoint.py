"""The transactional producer on a real broker: a commit completing in the background while work goes on."""

from __future__ import annotations

import os

import pytest

from stream_monitor.kafka.checkpoint import Checkpointer, CommitFailed
from stream_monitor.kafka.clients import Connection
from tests.kafka.chaos import read_committed
from tests.kafka.helpers import config, create_topic
from tests.streams import model_config

pytestmark = pytest.mark.kafka


def checkpointer(bootstrap: str, run_id: str) -> Checkpointer:
    cfg = config(run_id, {"m": model_config()}, kafka={"transaction_timeout_s": 10, "instance_id": f"cp-{run_id}"})
    return Checkpointer(cfg, Connection.from_config(cfg, bootstrap))


def values(bootstrap: str, topic: str) -> list[bytes]:
    return [m.value() for m in read_committed(bootstrap, topic)]


def test_records_produced_while_a_commit_runs_belong_to_the_next_transaction(kafka_bootstrap, run_id):
    out = f"out-{run_id}"
    create_topic(kafka_bootstrap, out)
    cp = checkpointer(kafka_bootstrap, run_id)
    done: list[str] = []
    try:
        cp.produce(out, b"k", b"first")
        cp.commit([], None, wait=False, done=lambda: done.append("first"))
        cp.produce(out, b"k", b"second")  # held while the commit runs, or the next transaction's first record
        cp.settle()
        assert done == ["first"]
        assert values(kafka_bootstrap, out) == [b"first"], "the second record waits for its own commit"
        cp.produce(out, b"k", b"third")
        cp.commit([], None, done=lambda: done.append("second"))
        assert done == ["first", "second"] and not cp.committing
        assert values(kafka_bootstrap, out) == [b"first", b"second", b"third"]
    finally:
        cp.close()


def test_a_commit_that_fails_in_the_background_is_reported_and_drops_what_was_held(kafka_bootstrap, run_id):
    out, small = f"out-{run_id}", f"small-{run_id}"
    create_topic(kafka_bootstrap, out)
    create_topic(kafka_bootstrap, small, config={"max.message.bytes": "200"})
    cp = checkpointer(kafka_bootstrap, run_id)
    done: list[int] = []
    try:
        cp.produce(out, b"k", b"lost with its transaction")
        cp.produce(small, b"k", os.urandom(1000))  # over the topic's limit even compressed: the broker refuses
        # it, so the transaction cannot commit
        cp.commit([], None, wait=False, done=lambda: done.append(1))
        with pytest.raises(CommitFailed, match=small):
            cp.produce(out, b"k", b"held, then dropped")
            cp.settle()
        assert done == [] and not cp.committing and not cp.open
        cp.produce(out, b"k", b"redone")
        cp.commit([], None)
        assert values(kafka_bootstrap, out) == [b"redone"]
    finally:
        cp.close()
