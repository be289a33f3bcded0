"""What a call hears, written to a WAV file as it is decoded: on disk whatever happens.

The file is valid at every moment: libsndfile rewrites the WAV header's lengths after each write
(``SFC_SET_UPDATE_HEADER_AUTO``), so a recording cut short by Ctrl-C, a crash or ``kill -9``
holds everything heard until then, readable by any WAV reader. (``SoundFile.flush()`` is not
enough: it only syncs to disk and leaves the header's data length at 0 until the file is
closed, which libsndfile tolerates and Python's ``wave`` and most players do not.) When the
stream's ``END`` comes, the file is cut or padded to the sender's exact input length.
"""

from __future__ import annotations

import numpy as np
import soundfile

from .resample import FILE_QUALITY, Resampler

OUTPUT_FORMATS = {"pcm16": "PCM_16", "float": "FLOAT"}
"""``--output-format`` names and their WAV sample formats; 16-bit PCM is what players expect."""

_SFC_UPDATE_HEADER_NOW = 0x1060
_SFC_SET_UPDATE_HEADER_AUTO = 0x1061  # libsndfile's sf_command codes (sndfile.h); soundfile names neither


def _sf_command(file: soundfile.SoundFile, command: int, value: int) -> None:
    soundfile._snd.sf_command(file._file, command, soundfile._ffi.NULL, value)


class Recording:
    """A WAV file that grows as audio at the model's ``rate`` is written to it, block by block.

    ``file_rate`` (default ``rate``): the file's sample rate, resampled as it is written.
    Nothing is held back but what the resampler needs to finish its current block. The file is
    created by the first write (or by :meth:`finish`), so a call that hears nothing leaves none.
    """

    def __init__(self, path: str, rate: int, channels: int, file_rate: int | None = None,
                 output_format: str = "pcm16") -> None:
        self.path, self.rate, self.channels = path, rate, channels
        self.file_rate = file_rate or rate
        self.subtype = OUTPUT_FORMATS[output_format]
        self.resample = Resampler(rate, self.file_rate, channels, FILE_QUALITY) if self.file_rate != rate else None
        self.file: soundfile.SoundFile | None = None
        self.samples = 0
        """Samples taken so far, at the model's rate."""
        self.frames = 0
        """Samples in the file, at its own rate."""
        self.length: int | None = None
        """The stream's exact length at the model's rate, once its ``END`` has said it."""

    @property
    def seconds(self) -> float:
        return self.samples / self.rate

    def write(self, audio: np.ndarray) -> None:
        """Append ``(channels, n)`` float32 samples at the model's rate (none past :attr:`length`)."""
        if self.length is not None:
            audio = audio[:, : max(0, self.length - self.samples)]
        self.samples += audio.shape[-1]
        samples = audio.T
        self._put(self.resample(samples) if self.resample is not None else samples)

    def finish(self, length: int | None) -> None:
        """The stream is over: make the file ``length`` samples long (at the model's rate; the
        sender's exact input length), or keep what was heard for ``None`` (no ``END`` came);
        then close it."""
        if length is not None and self.samples < length:
            self.write(np.zeros((self.channels, length - self.samples), np.float32))
        if self.resample is not None:
            self._put(self.resample.flush())
        self._open()
        target = self.frames if length is None else round(length * self.file_rate / self.rate)
        if self.frames > target:  # samples past the end came before the END said where it is
            self.file.truncate(target)
            _sf_command(self.file, _SFC_UPDATE_HEADER_NOW, 0)
            self.frames = target
        self._put(np.zeros((target - self.frames, self.channels), np.float32))
        self.close()

    def close(self) -> None:
        """Close the file as it is (what was heard so far); it was valid on disk all along."""
        if self.file is not None:
            self.file.close()

    def _open(self) -> None:
        if self.file is None:
            self.file = soundfile.SoundFile(self.path, "w", samplerate=self.file_rate, channels=self.channels,
                                            subtype=self.subtype, format="WAV")
            _sf_command(self.file, _SFC_SET_UPDATE_HEADER_AUTO, 1)

    def _put(self, samples: np.ndarray) -> None:
        self._open()
        if len(samples):
            self.file.write(samples)
            self.frames += len(samples)
