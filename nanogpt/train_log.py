"""What the trainer prints: the per-iteration log line and the one-line progress display on stderr."""

from __future__ import annotations

import math
import sys
import time

from nanogpt.progress_bar import Redraws, bar, redraw_line


class Progress:
    """A one-line progress display on stderr (iteration, loss, rate, ETA), redrawn at most 4x a second."""

    def __init__(self, total: int, start: int, enabled: bool) -> None:
        self.total, self.start, self.enabled = total, start, enabled
        self.t0 = time.time()
        self.redraws = Redraws()

    def update(self, it: int, loss: float | None) -> None:
        """Redraw for iteration it (1-based count of finished steps)."""
        if not self.enabled or not self.redraws.due(final=it >= self.total):
            return
        rate = (it - self.start) / max(time.time() - self.t0, 1e-9)
        eta = (self.total - it) / rate if rate > 0 else float("inf")
        loss_text = f" loss {loss:.4f}" if loss is not None else ""
        shown = f"{it}/{self.total}{loss_text} {rate:.2f} it/s ETA {format_seconds(eta)}"
        redraw_line(f"{bar(it / max(self.total, 1))} {shown}")

    def close(self) -> None:
        """End the progress line."""
        if self.enabled:
            sys.stderr.write("\n")
            sys.stderr.flush()


def format_seconds(seconds: float) -> str:
    """12.3s, 4m05s, 1h02m."""
    if not math.isfinite(seconds):
        return "?"
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def format_log_line(
    it: int, loss: float, lr: float, dt: float, tokens_per_s: float, mfu: float | None
) -> str:
    """The per-iteration log line: loss, learning rate, step time, tokens/s, MFU (n/a without a peak)."""
    mfu_text = f"{mfu * 100:.2f}%" if mfu is not None else "n/a"
    return (
        f"iter {it}: loss {loss:.4f}, lr {lr:.3e}, time {dt * 1000:.1f}ms, "
        f"{tokens_per_s:,.0f} tok/s, mfu {mfu_text}"
    )
