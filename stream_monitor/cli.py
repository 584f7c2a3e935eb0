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
import textwrap
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from .config import ConfigError, MonitorConfig, load_config

if TYPE_CHECKING:
    from .kafka.clients import Connection


class UsageError(ValueError):
    """A command cannot do what it was asked: one line, exit 2."""


__all__ = ["main"]


def compiled_parts() -> dict[str, str]:
    """Which implementation each compiled part has in this process: ``compiled``, or its fallback and why
    (``not built``: no C compiler when the package was installed; ``disabled``: built, but switched off).

    Read from the modules that use them, so it is what a run uses, not merely what is installed."""
    from importlib.util import find_spec

    from .core import events, sketches, stats

    def state(in_use: bool, module: str, fallback: str) -> str:
        if in_use:
            return "compiled"
        try:
            built = find_spec(f"stream_monitor.core.{module}") is not None
        except (ImportError, ValueError):
            built = False
        return f"{fallback} fallback, {'disabled' if built else 'not built'}"

    return {"decoder": state(events._columnar is not None, "_columnar", "python"),
            "statistics": state(stats.compiled(), "_binned", "numpy"),
            "panes": state(sketches.compiled(), "_panes", "numpy")}


def version_line() -> str:
    """``stream-monitor 0.1.0 (decoder: compiled; statistics: compiled; panes: compiled)``."""
    from . import __version__

    parts = "; ".join(f"{name}: {how}" for name, how in compiled_parts().items())
    return f"stream-monitor {__version__} ({parts})"


class _VersionAction(argparse.Action):
    """``--version``: the version and the compiled parts in use, found only when asked (they load numpy)."""

    def __init__(self, option_strings: list[str], dest: str = argparse.SUPPRESS,
                 default: str = argparse.SUPPRESS, help: str | None = None) -> None:
        super().__init__(option_strings, dest=dest, default=default, nargs=0, help=help)

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: object,
                 option_string: str | None = None) -> None:
        print(version_line())
        parser.exit()


def _bootstrap(args: argparse.Namespace, configured: str | None) -> str:
    b = args.bootstrap_servers or os.environ.get("KAFKA_BOOTSTRAP_SERVERS") or configured
    if not b:
        raise UsageError("no broker: pass --bootstrap-servers, set KAFKA_BOOTSTRAP_SERVERS or "
                         "kafka.bootstrap_servers (or start one with `stream-monitor broker`)")
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

    logging.getLogger(__name__).info("%s", version_line())  # which decoder and kernels this process runs
    cfg = load_config(args.config)
    metrics = MonitorMetrics(max_feature_series=cfg.prometheus.max_feature_series)
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
    t = cfg.topics
    inputs = [t.predictions] + ([t.labels] if any(m.uses_labels for m in cfg.models.values()) else [])
    internal = [t.state, t.join] + ([t.panes, t.references] if cfg.scale_out.enabled else [])
    print(f"group {cfg.kafka.group_id}: reads {', '.join(inputs)}; writes {t.alerts}, {t.breaker}, {t.metrics}, "
          f"{t.dead_letter}; internal {', '.join(internal)}")
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
        raise UsageError(f"model {args.model!r} is not in {args.config} (models: {', '.join(cfg.models)})")
    m = cfg.models[args.model]
    events = read_events(args.input)
    ref = build_reference(events, m.name, m.features.numeric, m.features.categorical, m.prediction,
                          m.monitor_score, m.drift.bins, m.drift.max_categories, m.drift.max_known_categories,
                          m.drift.sample_size, segment_keys=m.segments.keys, top_n=m.segments.top_n)
    out = ref.save(args.output)
    print(f"reference {ref.id} for model {m.name}: {ref.pane.n} events -> {out}")
    if ref.segments is not None:
        print("slices: " + ", ".join(f"{s['key']}={s['value']} ({s['reference_events']} events)"
                                     for s in ref.segments.describe()))
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

        source = args.input.name if args.input is not None else args.topic
        args.report.write_text(render_report(result, f"stream-monitor backtest: {source}"))
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
            return 0
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


EXIT_CODES = """exit codes:
  0  done
  2  bad config, arguments or input (the message names the key, option or line)
  3  Kafka cannot be reached or refuses us (one line, within kafka.connect_timeout_s)"""

CONFIG_HELP = "monitor config file (YAML); `stream-monitor check-config --config FILE` validates it"
BOOTSTRAP_HELP = ("Kafka bootstrap servers, host:port[,host:port] (default: KAFKA_BOOTSTRAP_SERVERS, then the "
                  "config's kafka.bootstrap_servers)")


def _command(sub: Any, name: str, summary: str, description: str, examples: list[str]) -> argparse.ArgumentParser:
    """A subcommand whose --help shows what it does, examples and the exit codes."""
    epilog = "examples:\n" + "\n".join(f"  {e}" for e in examples) + "\n\n" + EXIT_CODES
    return sub.add_parser(name, help=summary, description=textwrap.fill(description, 100), epilog=epilog,
                          formatter_class=argparse.RawDescriptionHelpFormatter)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="stream-monitor", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Streaming monitor for ML models in production: data drift, concept drift, performance on "
        "delayed labels, alerts and a circuit breaker, over Kafka.",
        epilog="examples:\n  stream-monitor check-config --config config/example.yaml\n"
        "  stream-monitor run --config config/example.yaml --bootstrap-servers localhost:9092\n"
        "  stream-monitor backtest --config config/example.yaml --input preds.jsonl --report report.html\n"
        "  stream-monitor alerts forward --config config/example.yaml --alertmanager http://localhost:9093\n"
        "\n`stream-monitor COMMAND --help` tells more.\n\n" + EXIT_CODES)
    parser.add_argument("--version", action=_VersionAction,
                        help="print the version and whether the compiled decoder and kernels are in use, and exit")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = _command(sub, "run", "run the monitor",
                 "Consume prediction (and label) events, evaluate windows, publish alerts, breaker signals and "
                 "window reports with exactly-once transactions, and serve /metrics on prometheus.port. "
                 "SIGTERM or Ctrl-C commits the current work and stops.",
                 ["stream-monitor run --config config/example.yaml",
                  "KAFKA_BOOTSTRAP_SERVERS=broker:9092 stream-monitor run --config /etc/stream-monitor/config.yaml"])
    p.add_argument("--config", required=True, type=Path, help=CONFIG_HELP)
    p.add_argument("--bootstrap-servers", help=BOOTSTRAP_HELP)
    p.set_defaults(func=_cmd_run)

    p = _command(sub, "check-config", "validate a config file",
                 "Validate the config, load its reference files and build its detectors, as `run` would; "
                 "every problem is reported with the key it is about.",
                 ["stream-monitor check-config --config config/example.yaml"])
    p.add_argument("--config", required=True, type=Path, help=CONFIG_HELP)
    p.set_defaults(func=_cmd_check)

    p = _command(sub, "broker", "start a local Kafka broker (from Maven jars when no Docker engine)",
                 "Start a single-node Kafka for trying the monitor out (until Ctrl-C).",
                 ["stream-monitor broker", "stream-monitor broker --fetch-only"])
    p.add_argument("--fetch-only", action="store_true", help="only download the Kafka jars into the cache")
    p.set_defaults(func=_cmd_broker)

    p = sub.add_parser("reference", help="reference artifacts")
    rsub = p.add_subparsers(dest="reference_command", required=True, metavar="COMMAND")
    b = _command(rsub, "build", "build a reference from past predictions (JSONL or CSV)",
                 "Build a reference artifact (bins, counts and a sample per feature) from past prediction events, "
                 "for reference.type: file.",
                 ["stream-monitor reference build --config config/example.yaml --model loan-approval "
                  "--input last_month.jsonl --output refs/loan.json"])
    b.add_argument("--config", required=True, type=Path, help=CONFIG_HELP)
    b.add_argument("--model", required=True, help="the model (a key under models:) whose features to use")
    b.add_argument("--input", required=True, type=Path, help="past prediction events, JSONL (one per line) or CSV")
    b.add_argument("--output", required=True, type=Path, help="where to write the reference artifact (JSON)")
    b.set_defaults(func=_cmd_reference_build)

    p = _command(sub, "backtest", "replay past events through the monitor, offline; write an HTML report",
                 "Replay past prediction events (a JSONL or CSV file, or a range of a topic) through the same "
                 "core as `run`: print the alerts it would have raised and a summary, and write a "
                 "self-contained HTML report (no network needed to open it).",
                 ["stream-monitor backtest --config config/example.yaml --input preds.jsonl --labels labels.jsonl "
                  "--report report.html",
                  "stream-monitor backtest --config config/example.yaml --topic predictions "
                  "--from 2026-11-27T00:00:00Z --to 2026-11-28T00:00:00Z",
                  "stream-monitor backtest --config config/example.yaml --topic predictions --from 0 --to 50000"])
    p.add_argument("--config", required=True, type=Path, help="monitor config (YAML): the models to replay")
    p.add_argument("--input", type=Path, help="past prediction events, JSONL (one per line) or CSV")
    p.add_argument("--labels", type=Path, help="past label events, JSONL (merged with the predictions by event time)")
    p.add_argument("--topic", help="read the prediction events from this topic instead of a file")
    p.add_argument("--from", dest="from_", metavar="BOUND", help="with --topic: first offset, or a time "
                   "(ISO 8601 or epoch seconds like 1764237600.0; the records' Kafka timestamps); default: the "
                   "beginning")
    p.add_argument("--to", metavar="BOUND", help="with --topic: end offset (excluded) or time; default: the end now")
    p.add_argument("--bootstrap-servers", help="with --topic: " + BOOTSTRAP_HELP)
    p.add_argument("--report", type=Path, metavar="OUT.html", help="write the HTML report here")
    p.add_argument("--batch", type=int, default=1000, help="predictions per batch fed to the monitor (default 1000)")
    p.add_argument("--json", action="store_true", help="print whole alert events instead of their messages")
    p.set_defaults(func=_cmd_backtest)

    p = sub.add_parser("alerts", help="read the alert topic, or forward it to Alertmanager")
    asub = p.add_subparsers(dest="alerts_command", required=True, metavar="COMMAND")
    t = _command(asub, "tail", "print alerts as they arrive",
                 "Print the alert topic (read_committed) from the beginning, then as alerts arrive.",
                 ["stream-monitor alerts tail --config config/example.yaml --model loan-approval",
                  "stream-monitor alerts tail --config config/example.yaml --json --timeout 10"])
    t.add_argument("--config", required=True, type=Path, help=CONFIG_HELP)
    t.add_argument("--bootstrap-servers", help=BOOTSTRAP_HELP)
    t.add_argument("--model", help="only this model's alerts")
    t.add_argument("--json", action="store_true", help="print whole alert events")
    t.add_argument("--timeout", type=float, default=0, metavar="SECONDS", help="stop after this long (0: never)")
    t.set_defaults(func=_cmd_alerts_tail)
    f = _command(asub, "forward", "post alerts to Alertmanager (v2 API), firing and resolved",
                 "Follow the alert topic as its own consumer group and post every alert to Alertmanager's v2 "
                 "API: at-least-once (offsets are committed after Alertmanager accepted), deduplicated by "
                 "alert_id, firing alerts re-posted while they fire.",
                 ["stream-monitor alerts forward --config config/example.yaml --alertmanager http://alertmanager:9093",
                  "stream-monitor alerts forward --config config/example.yaml --alertmanager http://localhost:9093 "
                  "--metrics-port 9109"])
    f.add_argument("--config", required=True, type=Path, help="monitor config (YAML): kafka and topics.alerts")
    f.add_argument("--bootstrap-servers", help=BOOTSTRAP_HELP)
    f.add_argument("--alertmanager", required=True, metavar="URL", help="Alertmanager base URL, e.g. "
                   "http://localhost:9093")
    f.add_argument("--group", help="consumer group (default: <kafka.group_id>-alertmanager)")
    f.add_argument("--metrics-port", type=int, metavar="PORT", help="serve the forwarder's /metrics on this port")
    f.add_argument("--hold", type=float, default=3600.0, metavar="SECONDS",
                   help="endsAt of a firing alert this far ahead (default 3600)")
    f.add_argument("--resend", type=float, default=60.0, metavar="SECONDS",
                   help="re-post firing alerts this often (default 60)")
    f.add_argument("--timeout", type=float, default=0, metavar="SECONDS", help="stop after this long (0: never)")
    f.set_defaults(func=_cmd_alerts_forward)

    p = sub.add_parser("breaker", help="read or override the circuit breaker")
    bsub = p.add_subparsers(dest="breaker_command", required=True, metavar="COMMAND")
    st = _command(bsub, "status", "latest breaker state of every model",
                  "Print each model's latest breaker state from the breaker topic.",
                  ["stream-monitor breaker status --config config/example.yaml"])
    st.add_argument("--config", required=True, type=Path, help=CONFIG_HELP)
    st.add_argument("--bootstrap-servers", help=BOOTSTRAP_HELP)
    st.add_argument("--model", help="only this model")
    st.set_defaults(func=_cmd_breaker_status)
    for action, text in (("open", "force the fallback version (held until released)"),
                         ("close", "force the primary version (held until released)"),
                         ("release", "hand the breaker back to the monitor")):
        b = _command(bsub, action, text, f"Publish a manual breaker record: {text}. Releasing when no override "
                     "holds does nothing (exit 0).",
                     [f"stream-monitor breaker {action} --config config/example.yaml --model loan-approval"
                      + (' --reason "bad release 4.2"' if action != "release" else "")])
        b.add_argument("--config", required=True, type=Path, help=CONFIG_HELP)
        b.add_argument("--bootstrap-servers", help=BOOTSTRAP_HELP)
        b.add_argument("--model", required=True, help="the model whose breaker to set")
        b.add_argument("--reason", required=action != "release", default="released by operator",
                       help="why (kept in the breaker record and shown by `breaker status`)")
        b.add_argument("--force", action="store_true", help="publish even for a model that is not in the config")
        b.set_defaults(func=_cmd_breaker_set, action=action)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
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
