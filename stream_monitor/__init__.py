"""stream-monitor: a streaming monitor for ML models in production.

Embed the core without Kafka::

    from stream_monitor import Monitor, parse_config
    monitor = Monitor(parse_config({...}))
    out = monitor.process_batch(predictions, labels)   # out.alerts, out.reports, out.signals
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["Monitor", "load_config", "parse_config", "__version__"]


def __getattr__(name: str) -> Any:  # lazy: the command line starts without loading numpy and scipy
    if name == "Monitor":
        from .core.monitor import Monitor

        return Monitor
    if name in ("load_config", "parse_config"):
        from . import config

        return getattr(config, name)
    raise AttributeError(f"module 'stream_monitor' has no attribute {name!r}")
