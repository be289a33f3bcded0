"""Room names: the one rule the relay enforces and every client checks before it connects.

No torch and no websockets here: the relay (``server.py``) and the client both import it.
"""

from __future__ import annotations

import argparse
import re

ROOM_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")
ROOM_RULE = "letters, digits, _ . - (1 to 64 characters)"


def is_room_name(name: str) -> bool:
    return ROOM_NAME.fullmatch(name) is not None


def room_name_option(text: str) -> str:
    """``argparse`` type of ``--room``: a name the relay would refuse is a usage error, not an
    HTTP 404 after the model has loaded."""
    if not is_room_name(text):
        raise argparse.ArgumentTypeError(f"{text!r} is not a room name: use {ROOM_RULE}")
    return text
