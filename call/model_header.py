"""What a model implies for the wire: the ``HEADER`` its streams carry and the fingerprint that
names it, so that peers with different models refuse each other instead of decoding noise.

Kept apart from ``call.wire`` because only a peer that runs a model needs it; a model here is
anything with an EnCodec ``config`` and a ``fingerprint()`` (the benchmarks' Opus baseline too).
"""

from __future__ import annotations

from typing import Any

from .wire import FINGERPRINT_SIZE, StreamHeader


def stream_header_for(model: Any, stream_id: int = 0, start_time_us: int = 0) -> StreamHeader:
    """The ``HEADER`` of a stream produced by ``model``."""
    config = model.config
    return StreamHeader(
        fingerprint=model_fingerprint(model),
        sample_rate=int(config.sampling_rate),
        channels=int(config.audio_channels),
        samples_per_frame=int(config.hop_length),
        codebook_nbits=int(config.codebook_nbits),
        max_codebooks=config.num_quantizers,
        stream_id=stream_id,
        start_time_us=start_time_us,
    )


def model_fingerprint(model: Any) -> bytes:
    """8 bytes naming the model, weights included."""
    return model.fingerprint()[:FINGERPRINT_SIZE]
