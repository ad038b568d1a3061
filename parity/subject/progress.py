"""Progress lines for long work: one line per phase with its elapsed time, a bar where the terminal is a TTY.

Generating gpt2-xl's checkpoint, loading two 6 GB models or running their backward pass takes tens of
seconds; without a line saying what is happening, that wait looks like a hang. `phase(label)` prints
`label ...` when the work starts and `label: done in 12.3 s` when it ends (on a TTY, one line that a bar
redraws). Under pytest the lines must reach the terminal although output is captured, so this module is
also a pytest plugin: its `pytest_configure` routes the lines through the terminal reporter with capture
suspended, the way pytest's own live logging does. Outside pytest they go to stderr; in the sandbox's
child, to its pipe (`send_lines_to`), and the parent shows them as they arrive (parity/sandbox/relay.py).
PYTEST_DONT_REWRITE: no asserts here, and `nanogpt-parity` imports this module before pytest loads it.
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from nanogpt.progress_bar import Redraws, bar, redraw_line


class _StderrSink:
    """Lines to stderr; a bar only when stderr is a terminal."""

    def __init__(self) -> None:
        self.stream = sys.stderr

    @property
    def isatty(self) -> bool:
        return bool(getattr(self.stream, "isatty", lambda: False)())

    def line(self, text: str) -> None:
        self.stream.write(text + "\n")
        self.stream.flush()

    def redraw(self, text: str) -> None:
        redraw_line(text, self.stream)


class _TerminalReporterSink:
    """Lines through pytest's terminal reporter, with output capture suspended while writing."""

    def __init__(self, reporter: Any, capture: Any) -> None:
        self.reporter = reporter
        self.capture = capture

    @property
    def isatty(self) -> bool:
        return bool(getattr(self.reporter, "isatty", False))

    def _suspended(self) -> contextlib.AbstractContextManager[None]:
        return self.capture.global_and_fixture_disabled() if self.capture else contextlib.nullcontext()

    def line(self, text: str) -> None:
        with self._suspended():
            self.reporter.write_line(text)

    def redraw(self, text: str) -> None:
        with self._suspended():
            self.reporter.ensure_newline()  # the bar gets a line of its own, not the test file's
            self.reporter.rewrite(text, erase=True)


class _LineSink:
    """Every line to one function, never a bar (a redraw is dropped; the phase's end line follows)."""

    isatty = False

    def __init__(self, write: Callable[[str], None]) -> None:
        self.line = write

    def redraw(self, text: str) -> None:
        pass


_sink: Any = None  # set while a pytest session with this plugin is configured, or by send_lines_to


def send_lines_to(write: Callable[[str], None]) -> None:
    """Hand every progress line of this process to write (the sandbox's child: its pipe to the parent)."""
    global _sink
    _sink = _LineSink(write)


def _current_sink() -> Any:
    return _sink if _sink is not None else _StderrSink()


def note(text: str) -> None:
    """Print one line to the terminal (through pytest's reporter when under pytest)."""
    _current_sink().line(text)


class Phase:
    """A running phase: `update(done)` redraws the bar on a TTY when the total is known."""

    def __init__(self, label: str, total: float | None, unit: str, sink: Any) -> None:
        self.label = label
        self.total = total
        self.unit = unit
        self.sink = sink
        self.start = time.perf_counter()
        self._redraws = Redraws()
        self.bar = bool(total) and sink.isatty

    @property
    def elapsed(self) -> float:
        """Seconds since the phase started."""
        return time.perf_counter() - self.start

    def update(self, done: float) -> None:
        """Record progress (in the phase's unit); redraws the bar on a TTY, paced by `Redraws`."""
        if not self.bar or self.total is None or not self._redraws.due(final=done >= self.total):
            return
        shown = f"{done:.1f}/{self.total:.1f} {self.unit} {self.elapsed:.1f} s"
        self.sink.redraw(f"{self.label} {bar(done / self.total)} {shown}")


@contextlib.contextmanager
def phase(label: str, total: float | None = None, unit: str = "") -> Iterator[Phase]:
    """Announce a phase, yield it (for `update`), then print `label: done in N s` (or `failed after`)."""
    sink = _current_sink()
    p = Phase(label, total, unit, sink)
    if p.bar:
        p.update(0)
    else:
        sink.line(f"{label} ...")
    try:
        yield p
    except BaseException:
        _finish(sink, p, f"{label}: failed after {p.elapsed:.1f} s")
        raise
    _finish(sink, p, f"{label}: done in {p.elapsed:.1f} s")


def _finish(sink: Any, p: Phase, text: str) -> None:
    if p.bar:
        sink.redraw(text)
        sink.line("")
    else:
        sink.line(text)


@pytest.hookimpl(trylast=True)
def pytest_configure(config: pytest.Config) -> None:
    """Route progress lines through the terminal reporter (absent on pytest-xdist workers: stderr then)."""
    global _sink
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None and not hasattr(config, "workerinput"):
        _sink = _TerminalReporterSink(reporter, config.pluginmanager.get_plugin("capturemanager"))


def pytest_unconfigure(config: pytest.Config) -> None:
    global _sink
    _sink = None
