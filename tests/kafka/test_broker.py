"""The local broker launcher's pure parts."""

import base64

from stream_monitor.kafka.broker import _cluster_id


def test_cluster_ids_are_valid_and_never_look_like_an_option():
    ids = {_cluster_id() for _ in range(5000)}  # about 1 in 64 raw ids starts with '-'
    assert len(ids) == 5000
    for cid in ids:
        assert len(cid) == 22 and not cid.startswith("-")
        assert len(base64.urlsafe_b64decode(cid + "==")) == 16
