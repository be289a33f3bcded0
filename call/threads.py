"""How many threads torch may use: one setting for every process that runs a call.

A call runs its encoder and its decoder on one worker thread each (the model never runs on the
event loop). With torch's default intra-op pool (one thread per core) in each of them, the two
pools and the event loop oversubscribe the cores: the single-frame LSTM steps, too small to gain
from splitting, were measured 20× slower that way. One intra-op thread per model thread is what
the latency benchmark measures and what the command line uses unless told otherwise.
"""

from __future__ import annotations

DEFAULT_THREADS = 1


def configure_threads(threads: int = DEFAULT_THREADS) -> None:
    """Set torch's intra-op threads for the whole process, before any model runs.

    The setting is process-wide: worker threads started later (the call's executors) take it up.
    """
    import torch

    if threads < 1:
        raise ValueError(f"threads must be 1 or more, got {threads}")
    torch.set_num_threads(threads)
