"""``stream-monitor`` command line."""

from __future__ import annotations

import argparse
import contextlib
import difflib
import faulthandler
import logging
import os
import signal
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import orjson

from .config import ConfigError, MonitorConfig, load_config

if TYPE_CHECKING:
    from .kafka.clients import Connection


class UsageError(ValueError):
    """A command cannot do what it was asked: one line, exit 2."""


__all__ = ["main"]


def _bootstrap(args: argparse.Namespace, configured: str | None) -> str:
    b = args.bootstrap_servers or os.environ.get("KAFKA_BOOTSTRAP_SERVERS") or configured
    if not b:
        raise SystemExit("no broker: pass --bootstrap-servers, set KAFKA_BOOTSTRAP_SERVERS or kafka.bootstrap_servers"
                         " (or start one with `stream-monitor broker`)")
    return b


def _connection(args: argparse.Namespace, cfg: MonitorConfig) -> Connection:
    """The checked connection of a command: one clear line and exit 3 when Kafka cannot be reached."""
    from .kafka.clients import Connection

    conn = Connection.from_config(cfg, _bootstrap(args, cfg.kafka.bootstrap_servers))
    conn.check()
    return conn


def _cmd_run(args: argparse.Namespace) -> int:
    stop_requested: list[int] = []
    service = None

    def _stop(signum: int, _frame: object) -> None:
        logging.getLogger(__name__).info("signal %d: committing the current work and stopping", signum)
        stop_requested.append(signum)
        if service is not None:
            service.stop()

    signal.signal(signal.SIGTERM, _stop)  # first: a stop during start-up is a clean stop too
    signal.signal(signal.SIGINT, _stop)
    with contextlib.suppress(ValueError, OSError, AttributeError):  # no real stderr (embedded): no dump
        faulthandler.register(signal.SIGUSR1)  # `kill -USR1 <pid>` prints every thread's stack: where is it stuck?
    from .exporter import MonitorMetrics
    from .kafka.runner import MonitorService

    cfg = load_config(args.config)
    metrics = MonitorMetrics()
    if cfg.prometheus.port is not None:
        try:
            metrics.serve(cfg.prometheus.port, cfg.prometheus.host)
        except OSError as exc:
            raise UsageError(f"prometheus.port {cfg.prometheus.port} on {cfg.prometheus.host} is not available "
                             f"({exc.strerror}; another monitor on this host?): set prometheus.port to a free port, "
                             "or null for no endpoint") from None
        logging.getLogger(__name__).info("Prometheus metrics on http://%s:%d/metrics", cfg.prometheus.host,
                                         cfg.prometheus.port)
    service = MonitorService(cfg, _bootstrap(args, cfg.kafka.bootstrap_servers), metrics=metrics)
    if stop_requested:
        return 0
    service.run()
    return 0


def _cmd_check(args: argparse.Namespace) -> int:
    from .core.monitor import load_references

    cfg = load_config(args.config)
    try:
        load_references(cfg)  # reference files load and fit; detectors construct: what `run` would hit
    except ValueError as exc:
        raise ConfigError("\n".join(f"{args.config}: {line}" for line in str(exc).splitlines())) from None
    print(f"{args.config}: OK, {len(cfg.models)} model(s): {', '.join(cfg.models)}")
    return 0


def _cmd_broker(args: argparse.Namespace) -> int:
    from .kafka import broker

    if args.fetch_only:
        print(broker.fetch_kafka_jars())
        return 0
    broker.serve_forever()
    return 0


def _cmd_reference_build(args: argparse.Namespace) -> int:
    from .core.reference import build_reference, read_events

    cfg = load_config(args.config)
    if args.model not in cfg.models:
        raise SystemExit(f"model {args.model!r} is not in {args.config} (models: {', '.join(cfg.models)})")
    m = cfg.models[args.model]
    events = read_events(args.input)
    ref = build_reference(events, m.name, m.features.numeric, m.features.categorical, m.prediction,
                          m.monitor_score, m.drift.bins, m.drift.max_categories, m.drift.max_known_categories,
                          m.drift.sample_size)
    out = ref.save(args.output)
    print(f"reference {ref.id} for model {m.name}: {ref.pane.n} events -> {out}")
    return 0


def _cmd_backtest(args: argparse.Namespace) -> int:
    from .backtest import Backtest
    from .core.events import decode_labels
    from .core.reference import read_events

    cfg = load_config(args.config)
    if (args.input is None) == (args.topic is None):
        raise UsageError("backtest: give either --input FILE or --topic TOPIC (with --from/--to)")
    if args.input is not None:
        preds = read_events(args.input)
    else:
        from .kafka.replay import read_range

        preds, rejected = read_range(_connection(args, cfg), args.topic, args.from_, args.to)
        if rejected:
            print(f"{rejected} messages of {args.topic} are not prediction events (skipped)", file=sys.stderr)
    labels: list = []
    if args.labels is not None:
        lines = [line for line in args.labels.read_bytes().splitlines() if line.strip()]
        labels, _, rejects = decode_labels(lines)
        if rejects:
            raise UsageError(f"{args.labels}: line {rejects[0].index + 1}: {rejects[0].reason}")
    bt = Backtest(cfg, batch=args.batch)
    tty = sys.stderr.isatty()
    last = [0.0, -1.0]  # time and count of the last line

    def progress(done: int, total: int) -> None:
        now = time.monotonic()
        if done == last[1] or (done < total and now - last[0] < (0.2 if tty else 5.0)):
            return
        last[0], last[1] = now, done
        width = 30
        filled = int(width * done / max(total, 1))
        line = f"[{'#' * filled}{'.' * (width - filled)}] {done}/{total} events, {len(bt.result.alerts)} alerts"
        print(("\r" + line) if tty else line, end="" if tty and done < total else "\n", file=sys.stderr, flush=True)

    result = bt.run(preds, labels, progress)
    for a in result.alerts:
        print(orjson.dumps(a.to_dict()).decode() if args.json else a.message)
    print(result.summary())
    if args.report is not None:
        from .report import render_report

        args.report.write_text(render_report(result, f"stream-monitor backtest: {args.input or args.topic}"))
        print(f"report: {args.report}")
    return 0


def _cmd_alerts_tail(args: argparse.Namespace) -> int:
    cfg = load_config(args.config)
    conn = _connection(args, cfg)
    consumer = conn.consumer({"group.id": f"stream-monitor-tail-{os.getpid()}", "auto.offset.reset": "earliest",
                              "enable.auto.commit": False, "isolation.level": "read_committed"})
    consumer.subscribe([cfg.topics.alerts])
    deadline = time.monotonic() + args.timeout if args.timeout else None
    try:
        while deadline is None or time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is None or msg.error():
                continue
            try:
                alert = orjson.loads(msg.value())
            except orjson.JSONDecodeError:
                continue  # not an alert event: the alert topic is ours, but anyone may write to it
            if args.model and alert.get("model") != args.model:
                continue
            print(orjson.dumps(alert).decode() if args.json else alert["message"], flush=True)
    except KeyboardInterrupt:
        pass
    finally:
        consumer.close()
    return 0


def _cmd_alerts_forward(args: argparse.Namespace) -> int:
    from .alertmanager import ForwarderMetrics
    from .kafka.forwarder import AlertForwarder

    cfg = load_config(args.config)
    conn = _connection(args, cfg)
    metrics = ForwarderMetrics()
    if args.metrics_port is not None:
        from prometheus_client import start_http_server

        start_http_server(args.metrics_port, addr=cfg.prometheus.host, registry=metrics.registry)
    fwd = AlertForwarder(cfg, conn, args.alertmanager, group=args.group, metrics=metrics, hold_s=args.hold,
                         resend_s=args.resend)

    def _stop(signum: int, _frame: object) -> None:
        fwd.stop()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    n = fwd.run(until=time.monotonic() + args.timeout if args.timeout else None)
    logging.getLogger(__name__).info("posted %d alert(s) to %s", n, args.alertmanager)
    return 0


def _cmd_breaker_status(args: argparse.Namespace) -> int:
    from .kafka.router import BreakerClient

    cfg = load_config(args.config)
    client = BreakerClient(_connection(args, cfg), cfg.topics.breaker).sync()
    try:
        models = [args.model] if args.model else sorted(set(cfg.models) | set(client.signals()))
        for name in models:
            r = client.route(name)
            sig = client.signal(name)
            who = f"{sig.source}{' override' if sig.override else ''}" if sig else "-"
            serving = r.serving_version or "primary"
            print(f"{name:24s} {r.state:9s} epoch={r.epoch:<4d} primary_share={r.primary_share:.2f} "
                  f"serving={serving:10s} by={who:16s} {r.reason}")
    finally:
        client.close()
    return 0


def _unknown_model(model: str, cfg: MonitorConfig) -> str:
    hint = difflib.get_close_matches(model, list(cfg.models), n=1)
    return (f"model {model!r} is not in the config (models: {', '.join(cfg.models)})"
            + (f"; did you mean {hint[0]!r}?" if hint else "") + " Use --force to publish anyway.")


def _cmd_breaker_set(args: argparse.Namespace) -> int:
    from .core.breaker import BreakerSignal
    from .kafka.router import BreakerClient

    cfg = load_config(args.config)
    if args.model not in cfg.models and not args.force:
        raise UsageError(_unknown_model(args.model, cfg))
    conn = _connection(args, cfg)
    client = BreakerClient(conn, cfg.topics.breaker).sync()
    last = client.signal(args.model)
    client.close()
    m = cfg.models.get(args.model)
    primary = (m.breaker.primary_version if m else "") or (last.primary_version if last else "")
    fallback = (m.breaker.fallback_version if m else "") or (last.fallback_version if last else "")
    if args.action == "release":
        if last is None or not last.override:
            print(f"{args.model}: no manual override to release")
            return 1
        state, override, reason = last.state, False, f"manual override released: {args.reason}"
    else:
        state, override, reason = ("open" if args.action == "open" else "closed"), True, args.reason
    share = {"open": 0.0, "closed": 1.0}.get(state, last.primary_share if last else 1.0)
    sig = BreakerSignal(args.model, state, primary, fallback, share, (last.epoch if last else 0) + 1,
                        f"manual: {reason}", [], time.time(), None, "manual", override)
    p = conn.producer({"acks": "all", "enable.idempotence": True})
    p.produce(cfg.topics.breaker, key=args.model.encode(), value=orjson.dumps(sig.to_dict()))
    if p.flush(conn.timeout_s):
        from .kafka.clients import KafkaConnectError

        raise KafkaConnectError(f"could not publish the breaker record to {cfg.topics.breaker} within "
                                f"{conn.timeout_s:.0f}s: check that the topic exists and this user may write to it")
    print(f"{args.model}: {state} (epoch {sig.epoch}, {'override held' if override else 'released'})")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="stream-monitor", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("run", help="run the monitor")
    p.add_argument("--config", required=True, type=Path)
    p.add_argument("--bootstrap-servers")
    p.set_defaults(func=_cmd_run)

    p = sub.add_parser("check-config", help="validate a config file")
    p.add_argument("--config", required=True, type=Path)
    p.set_defaults(func=_cmd_check)

    p = sub.add_parser("broker", help="start a local Kafka broker (from Maven jars when no Docker engine)")
    p.add_argument("--fetch-only", action="store_true", help="only download the Kafka jars into the cache")
    p.set_defaults(func=_cmd_broker)

    p = sub.add_parser("reference", help="reference artifacts")
    rsub = p.add_subparsers(dest="reference_command", required=True)
    b = rsub.add_parser("build", help="build a reference from past predictions (JSONL or CSV)")
    b.add_argument("--config", required=True, type=Path)
    b.add_argument("--model", required=True)
    b.add_argument("--input", required=True, type=Path)
    b.add_argument("--output", required=True, type=Path)
    b.set_defaults(func=_cmd_reference_build)

    p = sub.add_parser("backtest", help="replay past events through the monitor, offline; write an HTML report",
                       description="Replay past prediction events (a JSONL or CSV file, or a range of a topic) "
                       "through the same core as `run`: print the alerts it would have raised and a summary, and "
                       "write a self-contained HTML report (no network needed to open it).",
                       epilog="examples:\n  stream-monitor backtest --config config/example.yaml --input "
                       "preds.jsonl --labels labels.jsonl --report report.html\n  stream-monitor backtest --config "
                       "config/example.yaml --topic predictions --from 2026-11-27T00:00:00Z --to "
                       "2026-11-28T00:00:00Z", formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True, type=Path, help="monitor config (YAML): the models to replay")
    p.add_argument("--input", type=Path, help="past prediction events, JSONL (one per line) or CSV")
    p.add_argument("--labels", type=Path, help="past label events, JSONL (merged with the predictions by event time)")
    p.add_argument("--topic", help="read the prediction events from this topic instead of a file")
    p.add_argument("--from", dest="from_", metavar="BOUND", help="with --topic: first offset, or a time "
                   "(ISO 8601 or epoch seconds like 1764237600.0; the records' Kafka timestamps); default: the beginning")
    p.add_argument("--to", metavar="BOUND", help="with --topic: end offset (excluded) or time; default: the end now")
    p.add_argument("--bootstrap-servers", help="with --topic: Kafka bootstrap servers (default: "
                   "KAFKA_BOOTSTRAP_SERVERS, then kafka.bootstrap_servers)")
    p.add_argument("--report", type=Path, metavar="OUT.html", help="write the HTML report here")
    p.add_argument("--batch", type=int, default=1000, help="predictions per batch fed to the monitor (default 1000)")
    p.add_argument("--json", action="store_true", help="print whole alert events instead of their messages")
    p.set_defaults(func=_cmd_backtest)

    p = sub.add_parser("alerts", help="read the alert topic")
    asub = p.add_subparsers(dest="alerts_command", required=True)
    t = asub.add_parser("tail", help="print alerts as they arrive")
    t.add_argument("--config", required=True, type=Path)
    t.add_argument("--bootstrap-servers")
    t.add_argument("--model")
    t.add_argument("--json", action="store_true", help="print whole alert events")
    t.add_argument("--timeout", type=float, default=0, help="stop after this many seconds (0: never)")
    t.set_defaults(func=_cmd_alerts_tail)
    f = asub.add_parser("forward", help="post alerts to Alertmanager (v2 API), firing and resolved",
                        description="Follow the alert topic as its own consumer group and post every alert to "
                        "Alertmanager's v2 API: at-least-once (offsets are committed after Alertmanager accepted), "
                        "deduplicated by alert_id, firing alerts re-posted while they fire.",
                        epilog="example: stream-monitor alerts forward --config config/example.yaml "
                        "--alertmanager http://alertmanager:9093", formatter_class=argparse.RawDescriptionHelpFormatter)
    f.add_argument("--config", required=True, type=Path, help="monitor config (YAML): kafka and topics.alerts")
    f.add_argument("--bootstrap-servers", help="Kafka bootstrap servers (default: KAFKA_BOOTSTRAP_SERVERS, then the "
                   "config's kafka.bootstrap_servers)")
    f.add_argument("--alertmanager", required=True, metavar="URL", help="Alertmanager base URL, e.g. "
                   "http://localhost:9093")
    f.add_argument("--group", help="consumer group (default: <kafka.group_id>-alertmanager)")
    f.add_argument("--metrics-port", type=int, help="serve the forwarder's /metrics on this port")
    f.add_argument("--hold", type=float, default=3600.0, metavar="SECONDS",
                   help="endsAt of a firing alert this far ahead (default 3600)")
    f.add_argument("--resend", type=float, default=60.0, metavar="SECONDS",
                   help="re-post firing alerts this often (default 60)")
    f.add_argument("--timeout", type=float, default=0, metavar="SECONDS", help="stop after this long (0: never)")
    f.set_defaults(func=_cmd_alerts_forward)

    p = sub.add_parser("breaker", help="read or override the circuit breaker")
    bsub = p.add_subparsers(dest="breaker_command", required=True)
    st = bsub.add_parser("status", help="latest breaker state of every model")
    st.add_argument("--config", required=True, type=Path)
    st.add_argument("--bootstrap-servers")
    st.add_argument("--model")
    st.set_defaults(func=_cmd_breaker_status)
    for action, text in (("open", "force the fallback version (held until released)"),
                         ("close", "force the primary version (held until released)"),
                         ("release", "hand the breaker back to the monitor")):
        b = bsub.add_parser(action, help=text)
        b.add_argument("--config", required=True, type=Path)
        b.add_argument("--bootstrap-servers")
        b.add_argument("--model", required=True)
        b.add_argument("--reason", required=action != "release", default="released by operator")
        b.add_argument("--force", action="store_true", help="publish even for a model that is not in the config")
        b.set_defaults(func=_cmd_breaker_set, action=action)

    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return int(args.func(args))
    except ConfigError as exc:
        print(f"config error:\n{exc}", file=sys.stderr)
        return 2
    except (ValueError, OSError) as exc:  # UsageError included
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except RuntimeError as exc:
        from .kafka.clients import KafkaConnectError, TopicConfigError

        if isinstance(exc, KafkaConnectError):
            print(f"error: {exc}", file=sys.stderr)
            return 3
        if isinstance(exc, TopicConfigError):
            print(f"error: {exc}", file=sys.stderr)
            return 2
        raise


if __name__ == "__main__":
    sys.exit(main())
