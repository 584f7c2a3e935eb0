"""The compiled parts (C extensions built with the package) and the switch that turns them off.

Each compiled part has a Python/numpy counterpart with the same results, slower: the decoder (``_columnar``),
the binned statistics (``_binned``) and the pane updates (``_panes``). They are optional at install time (no C
compiler: not built) and can be turned off at run time with ``STREAM_MONITOR_NO_EXTENSIONS=1`` — what CI does
to run the whole suite on the path a user without a compiler gets.
"""

from __future__ import annotations

import importlib
import os
from types import ModuleType

__all__ = ["DISABLED", "SWITCH", "load"]

#: The environment switch: set to 1 to run without any compiled part.
SWITCH = "STREAM_MONITOR_NO_EXTENSIONS"
DISABLED = os.environ.get(SWITCH, "") not in ("", "0")

def load(name: str) -> ModuleType | None:
    """The compiled module ``stream_monitor.core.<name>``, or None when it is not built or switched off."""
    if DISABLED:
        return None
    try:
        return importlib.import_module(f"{__package__}.{name}")
    except ImportError:
        return None

