"""The batches of a training run, step by step: drawn in the main process or ahead of time by workers.

A step's batch (segments, augmentation) and its bandwidth depend on nothing but `(seed, step)`, so
any process can build any step's batch and a resumed run sees what an uninterrupted one would have.
That is what lets a GPU run hand the augmentation (per-example FFTs and resampling, ~1–2 ms each on
one core) to worker processes: on a GPU the model step is faster than one core can augment a batch.
"""

from __future__ import annotations

import collections
import multiprocessing
from collections.abc import Iterator, Sequence

import numpy as np

from .augment import SegmentSampler


def draw_batch(sampler: SegmentSampler, seed: int, step: int, batch_size: int, bandwidths: Sequence[float], probs: np.ndarray) -> tuple[np.ndarray, float]:
    """Step `step`'s segments `(batch, 1, samples)` and the bandwidth (kbps) its quantizer dropout keeps."""
    rng = np.random.default_rng([seed, step])
    x = sampler.batch(rng, batch_size)
    return x, bandwidths[rng.choice(len(bandwidths), p=probs)]


_worker_args: tuple = ()


def _init_worker(*args) -> None:
    global _worker_args
    _worker_args = args


def _draw_in_worker(step: int) -> tuple[np.ndarray, float]:
    sampler, seed, batch_size, bandwidths, probs = _worker_args
    return draw_batch(sampler, seed, step, batch_size, bandwidths, probs)


class BatchStream:
    """Batches for steps `first, first + 1, …`; with `workers > 0`, up to `2 × workers` are built ahead.

    Workers are forked: create the stream before CUDA is initialised (a forked CUDA context is unusable)
    and they share the corpus array with the parent instead of copying it.
    """

    def __init__(self, sampler: SegmentSampler, seed: int, batch_size: int, bandwidths: Sequence[float], probs: np.ndarray, workers: int = 0) -> None:
        self.args = (sampler, seed, batch_size, list(bandwidths), np.asarray(probs))
        self.workers = workers
        self.pool = multiprocessing.get_context("fork").Pool(workers, _init_worker, self.args) if workers > 0 else None

    def __call__(self, first: int) -> Iterator[tuple[np.ndarray, float]]:
        return self._serial(first) if self.pool is None else self._ahead(first)

    def _serial(self, step: int) -> Iterator[tuple[np.ndarray, float]]:
        sampler, seed, batch_size, bandwidths, probs = self.args
        while True:
            yield draw_batch(sampler, seed, step, batch_size, bandwidths, probs)
            step += 1

    def _ahead(self, step: int) -> Iterator[tuple[np.ndarray, float]]:
        pending: collections.deque = collections.deque()
        while True:
            while len(pending) < 2 * self.workers:
                pending.append(self.pool.apply_async(_draw_in_worker, (step,)))
                step += 1
            yield pending.popleft().get()

    def close(self) -> None:
        if self.pool is not None:
            self.pool.terminate()
            self.pool.join()
