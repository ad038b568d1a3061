"""The child's progress lines, shown on the caller's terminal as they arrive instead of after the verdicts.

The child (parity/sandbox/child.py) writes a `{"progress": LINE, "nonce": ...}` message to its pipe for
every progress line: each phase it starts and ends (import, build, each check) and the subject's own lines
(loading a model, the forward + backward). The parent's reader thread feeds every chunk it reads to
`ProgressRelay.feed`, which keeps the progress lines that carry the nonce; the waiting thread prints them
with `ProgressRelay.wait`, through parity/subject/progress.py's `note` (pytest's terminal reporter under
pytest, else stderr), so a run on gpt2 never sits a minute without a line. A phase's start line
(`label ...`) is held back for HOLD_S: a phase that ends sooner shows only its end line (`label: done in
0.3 s`), one line per check on a small model. Only short lines are kept, and control characters are
replaced, so nothing the child writes can redraw the caller's terminal.
"""

from __future__ import annotations

import json
import queue
import subprocess
import time
from collections.abc import Callable

from parity.subject.progress import note

# A progress message is one short JSON line; a longer line (the result) is not looked at here.
MAX_PROGRESS_BYTES = 2048
# How often the waiting thread prints what arrived (seconds).
POLL_S = 0.1
# A phase's start line is shown only when it has not ended within this many seconds.
HOLD_S = 2.0
PREFIX = b'{"progress": '


def printable(text: str) -> str:
    """text with every control character (escape sequences, carriage returns) replaced by '?'."""
    return "".join(c if c.isprintable() else "?" for c in text)


class ProgressRelay:
    """Progress lines of one child: fed by the reader thread, printed by the thread that waits for it."""

    def __init__(self, nonce: str, show: Callable[[str], None] = note, indent: str = "  ") -> None:
        self.nonce = nonce
        self.show = show
        self.indent = indent
        self._pending = b""
        self._skipping = False  # inside a line too long to be a progress line
        self._lines: queue.SimpleQueue[tuple[float, str]] = queue.SimpleQueue()
        self._held: tuple[float, str] | None = None  # a start line, and when it arrived

    def feed(self, chunk: bytes) -> None:
        """Take one chunk of the pipe (called by the reader thread, in the order read)."""
        *complete, rest = chunk.split(b"\n")
        for n, piece in enumerate(complete):
            line, self._pending = self._pending + piece, b""
            if not (self._skipping and n == 0):
                self._keep(line)
            self._skipping = False
        if self._skipping:
            return
        self._pending += rest
        if len(self._pending) > MAX_PROGRESS_BYTES or not PREFIX.startswith(self._pending[: len(PREFIX)]):
            self._pending, self._skipping = b"", True

    def _keep(self, line: bytes) -> None:
        if len(line) > MAX_PROGRESS_BYTES or not line.startswith(PREFIX):
            return
        try:
            message = json.loads(line)
        except ValueError:
            return
        if isinstance(message, dict) and message.get("nonce") == self.nonce:
            text = message.get("progress")
            if isinstance(text, str):
                self._lines.put((time.monotonic(), printable(text)))

    def flush(self, final: bool = False) -> None:
        """Print the lines that have arrived; a start line held past HOLD_S (or any, when final) too."""
        while True:
            try:
                arrived, text = self._lines.get_nowait()
            except queue.Empty:
                break
            if self._held is not None:
                held = self._held[1].removesuffix(" ...")
                self._held = None
                if not text.startswith(f"{held}: "):  # not its end: another phase began inside it
                    self.show(self.indent + f"{held} ...")
            if text.endswith(" ..."):
                self._held = (arrived, text)
            else:
                self.show(self.indent + text)
        if self._held is not None and (final or time.monotonic() - self._held[0] >= HOLD_S):
            self.show(self.indent + self._held[1])
            self._held = None

    def wait(self, proc: subprocess.Popen, timeout: float) -> None:
        """proc.wait(timeout), printing the lines as they arrive; subprocess.TimeoutExpired past timeout."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            try:
                proc.wait(timeout=max(0.0, min(POLL_S, left)))
                break
            except subprocess.TimeoutExpired:
                if left <= POLL_S:
                    raise
            finally:
                self.flush()
