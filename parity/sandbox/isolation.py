"""A PID namespace for the tested code's process, where the operating system gives one.

`unshare --pid --fork` (util-linux) starts parity/sandbox/pid1.py as process 1 of a new PID namespace,
which runs the sandbox child as process 2: the child cannot see or signal the harness's processes (a
`SIGSTOP` to its parent reaches only process 1, which ignores it), and everything it starts dies with the
namespace when the child ends, whatever session it moved to. As root this needs nothing else; otherwise a
user namespace (`--user --map-root-user`) where the system allows unprivileged ones. Where neither works
(no unshare, no Linux, namespaces disabled), `pid_namespace` says why, and the child runs without one
(the subreaper of parity/sandbox/reaper.py still ends its daemons).
"""

from __future__ import annotations

import functools
import shutil
import subprocess
import sys
from dataclasses import dataclass

UNSHARE_PID = ("--pid", "--fork", "--kill-child")
PROBE_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class Namespace:
    """The command prefix that starts a program in a new PID namespace, or why there is none."""

    prefix: tuple[str, ...]
    problem: str = ""


@functools.cache
def pid_namespace() -> Namespace:
    """How this machine starts a process in a PID namespace of its own (probed once per process)."""
    if not sys.platform.startswith("linux"):
        return Namespace((), "PID namespaces are Linux's")
    unshare = shutil.which("unshare")
    if unshare is None:
        return Namespace((), "no unshare command (util-linux)")
    problems = []
    for extra in ((), ("--user", "--map-root-user")):
        prefix = (unshare, *extra, *UNSHARE_PID)
        try:
            probe = subprocess.run(
                [*prefix, sys.executable, "-c", "import os; print(os.getpid())"],
                capture_output=True,
                text=True,
                timeout=PROBE_TIMEOUT_S,
                stdin=subprocess.DEVNULL,
            )
        except (OSError, subprocess.TimeoutExpired) as e:
            problems.append(f"{type(e).__name__}: {e}")
            continue
        if probe.returncode == 0 and probe.stdout.strip() == "1":
            return Namespace(prefix)
        problems.append(
            probe.stderr.strip().splitlines()[-1] if probe.stderr.strip() else f"status {probe.returncode}"
        )
    return Namespace((), f"unshare --pid failed: {problems[-1]}")


def parse_status(text: str) -> tuple[int, int] | None:
    """pid1.py's report: (the child's returncode, negative for a signal as subprocess gives it; how many
    processes it left running), or None for anything else."""
    parts = text.split()
    if len(parts) != 4 or parts[2] != "left" or not all(p.isdigit() for p in (parts[1], parts[3])):
        return None
    if parts[0] not in ("exit", "signal"):
        return None
    code = int(parts[1])
    return (code if parts[0] == "exit" else -code), int(parts[3])
