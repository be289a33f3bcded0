"""The timing hook of a call's media path, through which the latency benchmark sees each frame."""

from __future__ import annotations

from typing import Callable

Observer = Callable[[str, int, int, int, float], None]
"""Optional timing hook: ``observer(event, stream_id, first_frame, n_frames, time.monotonic())``.

Events, in the order a frame meets them: ``input`` (the block that completed the frames reached
the sender), ``encoded``, ``packet`` (the packet holding them was built), ``received`` (its
message reached the receiver), ``playout`` (the frame left the jitter buffer; ``lost`` instead
when it never came), ``decoded``. The latency benchmark attributes a call's delay to stages with
it; ``None`` (the default) costs one attribute test per step.
"""
