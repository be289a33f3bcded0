"""Stateful streaming EnCodec, the wire format and the jitter buffer.

The encoder and decoder load torch and the codec; they are imported on first use so that the relay
(which only parses packets) stays light.
"""

from typing import Any

__all__ = ["StartMode", "StreamingDecoder", "StreamingEncoder"]


def __getattr__(name: str) -> Any:
    if name == "StreamingEncoder":
        from .encoder import StreamingEncoder

        return StreamingEncoder
    if name == "StreamingDecoder":
        from .decoder import StreamingDecoder

        return StreamingDecoder
    if name == "StartMode":
        from .stream import StartMode

        return StartMode
    raise AttributeError(f"module 'streaming' has no attribute {name!r}")
