"""The relay's log: one JSON object per line on the ``relay`` logger, shared by ``server.py`` and
the relay's modules in ``call`` (no torch here)."""

from __future__ import annotations

import json
import logging
import time

log = logging.getLogger("relay")


def log_event(event: str, level: int = logging.INFO, **fields: object) -> None:
    """One JSON object per line, so logs can be filtered and aggregated by machine."""
    log.log(level, json.dumps({"t": round(time.time(), 3), "event": event, **fields}))
