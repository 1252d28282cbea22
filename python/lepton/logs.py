"""lepton's event log in Python: every event of the C++ core (loads, warm-ups, swaps, alias
moves, promotions, rollbacks, anomalies, errors) reaches the ``logging`` logger ``lepton``, and
can be read back as dicts or written as JSON lines to a file."""
from __future__ import annotations

import atexit
import json
import logging
import os
import threading
from typing import Any, Dict, List, Optional

from . import _core

logger = logging.getLogger("lepton")

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}
_bridge: Optional[threading.Thread] = None
_bridge_lock = threading.Lock()
_stopping = threading.Event()


def _event(raw: Dict[str, Any]) -> Dict[str, Any]:
    e = dict(raw)
    e["details"] = json.loads(e["details"] or "{}")
    e.pop("json", None)
    return e


def events(since: int = 0, *, model: Optional[str] = None, limit: int = 1000) -> List[Dict[str, Any]]:
    """Events with a sequence number above ``since`` (oldest first), of ``model`` if given."""
    out = [_event(e) for e in _core.events_since(int(since), 0.0, 1_000_000)]
    if model is not None:
        out = [e for e in out if e["model"] == model]
    return out[:limit]


def recent_events(n: int = 100, *, model: Optional[str] = None) -> List[Dict[str, Any]]:
    """The latest ``n`` events, of ``model`` if given."""
    return [_event(e) for e in _core.recent_events(int(n), model or "")]


def log_to_file(path: Optional[str]) -> None:
    """Also appends every event as one JSON line to ``path`` (rotated at 64 MiB); ``None`` stops."""
    _core.set_event_file(str(path) if path else "")


def _forward(seq: int) -> None:
    while not _stopping.is_set():
        batch = _core.events_since(seq, 0.2, 1000)  # waits with the GIL released
        if 0 < len(batch) < 1000:
            # Busy periods (thousands of loads and evictions a second) are forwarded in batches of
            # up to 50 ms rather than one wake, and one turn of the GIL, per event.
            _stopping.wait(0.05)
        for e in batch:
            seq = max(seq, e["seq"])
            level = _LEVELS.get(e["level"], logging.INFO)
            if logger.isEnabledFor(level):
                logger.log(
                    level,
                    "%s %s%s: %s",
                    e["kind"],
                    e["model"],
                    f":{e['version']}" if e["version"] else "",
                    e["message"],
                    extra={"lepton_event": _event(e)},
                )


def _start_log_bridge() -> None:
    """Starts the thread that forwards the core's events to ``logging`` (once per process)."""
    global _bridge
    with _bridge_lock:
        if _bridge is None or not _bridge.is_alive():
            # Events emitted before this point are in recent_events(); the bridge forwards the rest.
            _bridge = threading.Thread(
                target=_forward, args=(_core.last_event_seq(),), name="lepton-log-bridge", daemon=True
            )
            _bridge.start()


def _after_fork_in_child() -> None:
    # The parent's bridge thread does not exist here; the next deployment starts one.
    global _bridge, _bridge_lock
    _bridge, _bridge_lock = None, threading.Lock()


os.register_at_fork(after_in_child=_after_fork_in_child)


@atexit.register
def _stop_log_bridge() -> None:
    # A daemon thread must not be inside the core when the interpreter shuts down.
    _stopping.set()
    if _bridge is not None:
        _bridge.join(timeout=2)
