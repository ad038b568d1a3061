"""Every process the tested code starts ends with its child process, a daemon that left the session too.

The sandbox parent (parity/sandbox/parent.py) kills the child's process group when the child ends, which
misses a process that double-forked and called `setsid`. On Linux, `reaping_descendants` makes the parent
a child subreaper (`prctl(PR_SET_CHILD_SUBREAPER)`) while the child runs: an orphaned descendant of the
child is then reparented to the parent instead of to init, so once the child has ended, every process that
became the parent's child since the start is killed and reaped, again until none is left (the children
of a killed daemon are orphaned in turn). Elsewhere no such call exists and a detached process may outlive
the run; the context's notes say so.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path

PR_SET_CHILD_SUBREAPER = 36  # linux/prctl.h
PR_GET_CHILD_SUBREAPER = 37
SWEEP_S = 10.0  # how long the sweep may take: a killed process is reaped in milliseconds
NO_SUBREAPER = (
    "on this platform a process the tested code detached from its session (setsid) may outlive the run"
)


def _prctl() -> ctypes._CFuncPtr | None:  # type: ignore[name-defined]
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None


def set_subreaper(on: bool) -> bool | None:
    """Make this process a child subreaper (or not); returns the previous setting, None where unsupported."""
    prctl = _prctl()
    if prctl is None:
        return None
    previous = ctypes.c_int(0)
    if prctl(PR_GET_CHILD_SUBREAPER, ctypes.byref(previous), 0, 0, 0) != 0:
        return None
    if prctl(PR_SET_CHILD_SUBREAPER, int(on), 0, 0, 0) != 0:
        return None
    return bool(previous.value)


def children() -> set[int]:
    """The process ids whose parent is this process (from /proc; empty where there is no /proc)."""
    me, out = os.getpid(), set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_bytes().rsplit(b")", 1)[1].split()  # the name in parentheses may hold spaces
        except (OSError, IndexError):
            continue
        if len(fields) > 1 and int(fields[1]) == me:
            out.add(int(stat.parent.name))
    return out


def killed_note(killed: int) -> str:
    """The note of a run whose tested code left processes running, killed when it ended."""
    return f"killed {killed} process(es) the tested code left running after its process ended"


def sweep(keep: set[int], deadline_s: float = SWEEP_S) -> int:
    """SIGKILL and reap this process's children that are not in keep, until none is left; how many."""
    killed: set[int] = set()
    deadline = time.monotonic() + deadline_s
    while (left := children() - keep) and time.monotonic() < deadline:
        for pid in left:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
            killed.add(pid)
        for pid in left:
            with contextlib.suppress(ChildProcessError):
                while os.waitpid(pid, os.WNOHANG) == (0, 0) and time.monotonic() < deadline:
                    time.sleep(0.01)
    return len(killed)


@contextlib.contextmanager
def reaping_descendants() -> Iterator[list[str]]:
    """While the body starts and waits for the child, be its descendants' subreaper; on leaving, kill and
    reap what they left running. Yields the notes to show (what was killed, or that nothing could be)."""
    notes: list[str] = []
    previous = set_subreaper(True)
    keep = children()  # the caller's own children, started before: never touched
    try:
        yield notes
    finally:
        if previous is None:
            notes.append(NO_SUBREAPER)
        else:
            killed = sweep(keep)
            if not previous:
                set_subreaper(False)
            if killed:
                notes.append(killed_note(killed))
