"""How widely a call searches the codebooks: better codes for the same bits, paid in encoder CPU.

One rule for every command that encodes (the client, the file codec, the benchmarks), and one
``argparse`` type so each of them refuses a bad ``--search-width`` the same way, before a model loads.
"""

from __future__ import annotations

import argparse

SEARCH_WIDTH = 4
SEARCH_UP_TO_KBPS = 6.0


def default_search_width(bandwidth: float) -> int:
    """A call's codebook search width (see ``EncodecModel.encode``) when none is asked for.

    On the bundled model at 6 kbps, width 4 raises PESQ-WB by 0.04–0.07 and STOI by
    0.003–0.011 over the greedy search for the same bits (``codec/MODEL_CARD.md``) for 0.3–0.5 ms
    more encoding a frame (0.9 ms in session 5's latency benchmark calls). Above 6 kbps the
    quantization error is already small, the gain is little and the cost grows with the codebooks
    searched (about 1.8 ms a frame at 24 kbps in a call), so those rates search greedily, as
    transformers does.
    """
    return SEARCH_WIDTH if bandwidth <= SEARCH_UP_TO_KBPS else 1


def search_width_option(text: str) -> int:
    """``argparse`` type of the ``--search-width`` options: the command line refuses a bad width
    with a usage message, before any model is loaded or socket opened."""
    try:
        width = int(text)
    except ValueError:
        width = 0
    if width < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number, 1 (greedy) or more; got {text!r}")
    return width
