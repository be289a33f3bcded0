"""Opus (libopus through ``opuslib``) as a codec that rides our call pipeline, for the benchmark.

:class:`OpusCodec` offers what ``call/sender.py`` and ``call/receiver.py`` ask of a model: a ``config`` (rate,
channels, samples per frame, …) and ``streaming_encoder`` / ``streaming_decoder`` factories. Each
Opus packet travels as one frame of our wire format with 8-bit "codes" (one byte each), so a
one-frame packet costs the same 2-byte header as ours, and the same relay, jitter buffer and
playout carry it. In a call Opus runs in constant bitrate (CBR), ``OPUS_APPLICATION_VOIP``, so that
its bitrate matches ours exactly and every packet of a stream has the same size. Users (and WebRTC)
run it in its default variable bitrate (VBR), which scores higher at the same average rate: the
quality benchmark measures both (``OpusCodec(vbr=True)``: offline round trips only, since VBR packets
of one push differ in size).

Needs the system library libopus (Debian: ``apt-get install libopus0``) and ``pip install opuslib``.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass

import numpy as np
import torch

MIN_BITRATE_KBPS = 1.0
"""libopus accepts targets down to 0.5 kbps; below about 6 kbps its speech is barely usable."""


def opuslib_module():
    """``opuslib``, or a clear error naming what to install."""
    try:
        import opuslib
    except Exception as error:  # ImportError, or the binding failing to find libopus
        raise RuntimeError(
            f"Opus is not available ({error}): install the system library (Debian/Ubuntu: "
            "apt-get install libopus0; macOS: brew install opus) and `pip install opuslib`."
        ) from error
    return opuslib


def libopus_version() -> str:
    api = opuslib_module().api
    return api.info.get_version_string().decode() if hasattr(api, "info") else "libopus"


@dataclass(frozen=True)
class OpusConfig:
    """The fields of an EnCodec config that the call pipeline and the wire format read."""

    frame_ms: float = 20.0
    sampling_rate: int = 24000
    audio_channels: int = 1
    codebook_nbits: int = 8
    target_bandwidths: tuple[float, ...] = (6.0, 12.0, 24.0, 32.0)
    vbr: bool = False

    @property
    def hop_length(self) -> int:
        return int(round(self.sampling_rate * self.frame_ms / 1000))

    @property
    def frame_rate(self) -> float:
        return self.sampling_rate / self.hop_length

    @property
    def num_quantizers(self) -> int:
        """Most "codes" (bytes) a frame can carry: an Opus packet at the highest bitrate."""
        return int(round(max(self.target_bandwidths) * 1000 / (self.frame_rate * self.codebook_nbits)))

    def to_dict(self) -> dict:
        return {"codec": "opus", **asdict(self)}

    def fingerprint(self) -> bytes:
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).digest()[:8]


def make_encoder(config: OpusConfig, bandwidth_kbps: float):
    opuslib = opuslib_module()
    encoder = opuslib.Encoder(config.sampling_rate, config.audio_channels, opuslib.APPLICATION_VOIP)
    encoder.bitrate = int(max(bandwidth_kbps, MIN_BITRATE_KBPS) * 1000)
    encoder.vbr = int(config.vbr)  # CBR: the bitrate is exactly the one asked, every packet the same size
    return encoder


class OpusStreamingEncoder:
    """``push((1, channels, n) float32) -> (1, n_bytes, k)`` packets of the frames completed."""

    def __init__(self, config: OpusConfig, bandwidth: float) -> None:
        self.config = config
        self.encoder = make_encoder(config, bandwidth)
        self.lookahead = int(self.encoder.lookahead)
        self._held = np.zeros((config.audio_channels, 0), np.float32)

    def push(self, audio: torch.Tensor) -> torch.Tensor:
        samples = np.concatenate([self._held, audio[0].numpy()], axis=-1)
        hop = self.config.hop_length
        k = samples.shape[-1] // hop
        packets = [self._encode(samples[:, i * hop : (i + 1) * hop]) for i in range(k)]
        self._held = samples[:, k * hop :]
        if not packets:
            return torch.zeros(1, 1, 0, dtype=torch.long)
        return torch.from_numpy(np.stack(packets, axis=-1))[None]

    def _encode(self, frame: np.ndarray) -> np.ndarray:
        pcm = np.ascontiguousarray(frame.T, dtype=np.float32).tobytes()
        packet = self.encoder.encode_float(pcm, self.config.hop_length)
        return np.frombuffer(packet, np.uint8).astype(np.int64)

    def flush(self) -> torch.Tensor:
        hop = self.config.hop_length
        if self._held.shape[-1]:
            pad = hop - self._held.shape[-1]
            self._held = np.pad(self._held, ((0, 0), (0, pad)))
            return self.push(torch.zeros(1, self.config.audio_channels, 0))
        return torch.zeros(1, 1, 0, dtype=torch.long)


class OpusStreamingDecoder:
    """``push((1, n_bytes, k) codes) -> (1, channels, k * hop)`` audio.

    A one-byte frame of code 0 (what the receiver's concealer feeds before any packet came)
    is decoded as a lost packet, with Opus's own loss concealment.
    """

    def __init__(self, config: OpusConfig) -> None:
        self.config = config
        self.decoder = opuslib_module().Decoder(config.sampling_rate, config.audio_channels)

    def push(self, codes: torch.Tensor) -> torch.Tensor:
        hop, channels = self.config.hop_length, self.config.audio_channels
        out = []
        for frame in codes[0].T.numpy():
            packet = b"" if len(frame) <= 1 and not frame.any() else frame.astype(np.uint8).tobytes()
            pcm = self.decoder.decode_float(packet, hop)
            out.append(np.nan_to_num(np.frombuffer(pcm, np.float32)).reshape(-1, channels).T)
        audio = np.concatenate(out, axis=-1) if out else np.zeros((channels, 0), np.float32)
        return torch.from_numpy(np.ascontiguousarray(audio))[None]

    def flush(self) -> torch.Tensor:
        return torch.zeros(1, self.config.audio_channels, 0)


class OpusCodec:
    """A "model" for ``client.Client`` / the ``call`` package: Opus at ``frame_ms`` ms frames."""

    def __init__(self, frame_ms: float = 20.0, sampling_rate: int = 24000, vbr: bool = False) -> None:
        self.config = OpusConfig(frame_ms=frame_ms, sampling_rate=sampling_rate, vbr=vbr)
        self.name = f"opus-{frame_ms:g}ms" + ("-vbr" if vbr else "")

    def fingerprint(self) -> bytes:
        return self.config.fingerprint()

    def eval(self) -> "OpusCodec":
        return self

    def streaming_encoder(self, bandwidth: float, start: object = None) -> OpusStreamingEncoder:
        if self.config.vbr:
            raise ValueError("the call pipeline carries Opus in CBR: VBR packets of one push differ in size")
        return OpusStreamingEncoder(self.config, bandwidth)

    def streaming_decoder(self, start: object = None) -> OpusStreamingDecoder:
        return OpusStreamingDecoder(self.config)

    @property
    def lookahead_samples(self) -> int:
        """Algorithmic delay beyond the frame: decoded sample ``n`` reproduces input ``n - lookahead``."""
        return int(make_encoder(self.config, 6.0).lookahead)

    def roundtrip(self, audio: np.ndarray, bandwidth: float) -> tuple[np.ndarray, float]:
        """Encode and decode ``(n,)`` mono audio offline; ``(aligned output, kbps on the wire)``.

        The output is shifted by the lookahead so that it lines up with the input sample for sample.
        """
        encoder = OpusStreamingEncoder(self.config, bandwidth)
        decoder = self.streaming_decoder()
        lookahead, hop = encoder.lookahead, self.config.hop_length
        padded = np.concatenate([audio, np.zeros(lookahead + hop, np.float32)])
        frames = [encoder._encode(padded[None, i * hop : (i + 1) * hop]) for i in range(len(padded) // hop)]
        decoded = np.concatenate([decoder.push(torch.from_numpy(f)[None, :, None])[0, 0].numpy() for f in frames])
        kbps = 8 * sum(len(f) for f in frames) / (len(frames) * hop / self.config.sampling_rate) / 1000
        return decoded[lookahead : lookahead + len(audio)], kbps
