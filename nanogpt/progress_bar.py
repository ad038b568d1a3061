"""The one progress bar of the project: its text, how often it is redrawn, and the redraw in place.

The trainer's iteration display (`nanogpt.train_log`) and the harness's phase lines
(`parity.subject.progress`) both draw `[#########.....]` with `bar`, redraw at most every
REDRAW_INTERVAL_S through `Redraws`, and overwrite the terminal line with `redraw_line`.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

BAR_WIDTH = 30
# A redraw costs a terminal write; more often than 4 times a second is noise.
REDRAW_INTERVAL_S = 0.25


def bar(fraction: float, width: int = BAR_WIDTH) -> str:
    """`[####......]`: fraction (clamped to [0, 1]) of width filled, rounded down so full means done."""
    filled = int(width * min(1.0, max(0.0, fraction)))
    return f"[{'#' * filled}{'.' * (width - filled)}]"


class Redraws:
    """Paces redraws: one is due at most every REDRAW_INTERVAL_S, and always for the final state."""

    def __init__(self) -> None:
        self._last = float("-inf")

    def due(self, final: bool = False) -> bool:
        """True when a redraw should happen now (and records it)."""
        now = time.perf_counter()
        if now - self._last < REDRAW_INTERVAL_S and not final:
            return False
        self._last = now
        return True


def redraw_line(text: str, stream: TextIO | None = None) -> None:
    """Overwrite the current terminal line of stream (stderr by default) with text."""
    stream = sys.stderr if stream is None else stream
    stream.write("\r\x1b[2K" + text)
    stream.flush()
