"""Alert events as Alertmanager alerts, and a small client of Alertmanager's v2 API. No Kafka here.

An alert event (docs/contracts.md, "Alert event") becomes one Alertmanager alert whose labels identify the incident:
``alertname`` (the kind in CamelCase, e.g. ``DataDrift``), ``model``, ``kind``, ``severity``, ``feature``
(empty when the incident spans several features) and ``alert_id``. Annotations carry the message, the
runbook, the worst statistic and the window. Alertmanager matches a resolution to its firing alert by the
label set, so :class:`AlertBook` remembers the labels posted for each firing ``alert_id`` and resolves with
exactly those (a resolution carries ``severity: info`` in the event itself).

Alertmanager ends an alert that is not re-posted by its ``endsAt``: firing alerts are posted with ``endsAt``
``hold_s`` ahead and re-posted (:meth:`AlertBook.due`) while they fire; a resolution is posted with
``endsAt`` = now.
"""

from __future__ import annotations

import urllib.error
import urllib.request
from collections import OrderedDict
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import orjson
from prometheus_client import CollectorRegistry, Counter

__all__ = ["AlertBook", "AlertmanagerClient", "AlertmanagerError", "ForwarderMetrics", "iso_time", "labels_of",
           "to_alertmanager"]

class AlertmanagerError(RuntimeError):
    """Alertmanager refused or could not be reached; the post is retried."""


def iso_time(t: float) -> str:
    return datetime.fromtimestamp(t, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def labels_of(alert: dict[str, Any]) -> dict[str, str]:
    """The identifying labels of a *firing* alert event."""
    kind = str(alert["kind"])
    return {"alertname": "".join(p.capitalize() for p in kind.split("_")), "model": str(alert["model"]),
            "kind": kind, "severity": str(alert["severity"]), "feature": str(alert.get("feature") or ""),
            "alert_id": str(alert["alert_id"])}


def _resolved_label_sets(alert: dict[str, Any]) -> list[dict[str, str]]:
    """Label sets a resolution may have to end when its firing post is unknown (the forwarder restarted in
    between): the event says ``severity: info``, and the firing severity cannot be recovered from it, so
    every paging severity is resolved. Ending a label set Alertmanager never had is harmless."""
    return [labels_of({**alert, "severity": sev}) for sev in ("warning", "critical")]


def to_alertmanager(alert: dict[str, Any], labels: dict[str, str], now: float, hold_s: float) -> dict[str, Any]:
    """The v2 API's ``postableAlert`` for an alert event."""
    window = alert.get("window") or {}
    starts = float(window.get("end") or alert.get("created_at") or now)
    firing = alert["status"] == "firing"
    annotations = {"summary": str(alert.get("message", ""))[:4000], "runbook_url": str(alert.get("runbook_url", "")),
                   "statistic": f"{alert.get('statistic')}={alert.get('value')} (threshold {alert.get('threshold')})",
                   "window": f"{iso_time(float(window.get('start', starts)))}..{iso_time(float(window.get('end', starts)))}",
                   "model_version": str(alert.get("model_version", ""))}
    return {"labels": labels, "annotations": annotations, "startsAt": iso_time(min(starts, now)),
            "endsAt": iso_time(now + hold_s if firing else now), "generatorURL": str(alert.get("runbook_url", ""))}


@dataclass
class AlertBook:
    """Firing alerts posted (alert_id -> labels and the event), bounded; what to post for the next event."""

    hold_s: float = 3600.0
    resend_s: float = 60.0
    max_alerts: int = 100_000
    firing: OrderedDict[str, tuple[dict[str, str], dict[str, Any], float]] = field(default_factory=OrderedDict)
    _seen: OrderedDict[tuple[str, str, str], None] = field(default_factory=OrderedDict)

    def posts(self, alert: dict[str, Any], now: float) -> list[dict[str, Any]]:
        """Alertmanager alerts for one alert event ([] for a redelivered duplicate)."""
        key = (str(alert["alert_id"]), str(alert["status"]), orjson.dumps(alert.get("features")).decode())
        if key in self._seen:
            return []  # the same event again (redelivery after a restart): already posted
        self._seen[key] = None
        while len(self._seen) > self.max_alerts:
            self._seen.popitem(last=False)
        aid = str(alert["alert_id"])
        out = []
        if alert["status"] == "firing":
            labels = labels_of(alert)
            old = self.firing.get(aid)
            if old is not None and old[0] != labels:  # escalated, or the incident's feature changed
                out.append(to_alertmanager({**old[1], "status": "resolved"}, old[0], now, self.hold_s))
            self.firing[aid] = (labels, alert, now)
            self.firing.move_to_end(aid)
            while len(self.firing) > self.max_alerts:
                self.firing.popitem(last=False)
            out.append(to_alertmanager(alert, labels, now, self.hold_s))
        else:
            old = self.firing.pop(aid, None)
            for labels in [old[0]] if old else _resolved_label_sets(alert):
                out.append(to_alertmanager(alert, labels, now, self.hold_s))
        return out

    def due(self, now: float) -> list[dict[str, Any]]:
        """Firing alerts not posted for ``resend_s``: posted again, so Alertmanager keeps them."""
        out = []
        for aid, (labels, alert, last) in list(self.firing.items()):
            if now - last >= self.resend_s:
                out.append(to_alertmanager(alert, labels, now, self.hold_s))
                self.firing[aid] = (labels, alert, now)
        return out


class AlertmanagerClient:
    """POSTs to ``<url>/api/v2/alerts``."""

    def __init__(self, url: str, timeout_s: float = 10.0) -> None:
        self.url = url.rstrip("/")
        self.timeout_s = timeout_s

    def post(self, alerts: list[dict[str, Any]]) -> None:
        if not alerts:
            return
        req = urllib.request.Request(f"{self.url}/api/v2/alerts", data=orjson.dumps(alerts), method="POST",
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:
                resp.read()
        except urllib.error.HTTPError as exc:
            raise AlertmanagerError(f"{self.url} answered {exc.code}: {exc.read()[:300].decode(errors='replace')}") \
                from None
        except (urllib.error.URLError, OSError) as exc:
            raise AlertmanagerError(f"{self.url} not reachable: {getattr(exc, 'reason', exc)}") from None

    def alerts(self) -> list[dict[str, Any]]:
        with urllib.request.urlopen(f"{self.url}/api/v2/alerts", timeout=self.timeout_s) as resp:
            return orjson.loads(resp.read())


class ForwarderMetrics:
    """Metrics of ``stream-monitor alerts forward`` (served on ``--metrics-port``)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        r = self.registry = registry or CollectorRegistry()
        self.posted = Counter("stream_monitor_forward_alerts", "Alerts posted to Alertmanager", ["status"],
                              registry=r)
        self.failures = Counter("stream_monitor_forward_failures", "Posts to Alertmanager that failed (retried)",
                                registry=r)

