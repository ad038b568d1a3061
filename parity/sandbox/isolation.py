"""A PID namespace and a read-only view of the disk for the tested code, where the system gives them.

`unshare --pid --fork` (util-linux) starts parity/sandbox/pid1.py as process 1 of a new PID namespace,
which runs the sandbox child as process 2: the child cannot see or signal the harness's processes (a
`SIGSTOP` to its parent reaches only process 1, which ignores it), and everything it starts dies with the
namespace when the child ends, whatever session it moved to. As root this needs nothing else; otherwise a
user namespace (`--user --map-root-user`) where the system allows unprivileged ones. Where neither works
(no unshare, no Linux, namespaces disabled), `pid_namespace` says why, and the child runs without one
(the subreaper of parity/sandbox/reaper.py still ends its daemons).

The same call also makes a mount namespace (`--mount`, its propagation private) where process 1 makes
every mount read-only except the directories the child may write (parity/sandbox/view.py): an accidental
write to the checkpoint, the harness, the libraries or the user's files fails with EROFS instead of
happening. Where `--mount` fails, or NANOGPT_PARITY_SANDBOX_READONLY=0 turns the view off (a diagnostic
switch), the child runs in the PID namespace alone and `view_problem` says why.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass

UNSHARE_PID = ("--pid", "--fork", "--kill-child")
UNSHARE_MOUNT = ("--mount", "--propagation", "private")
PROBE_TIMEOUT_S = 10.0
READ_ONLY_ENV_VAR = "NANOGPT_PARITY_SANDBOX_READONLY"  # "0" turns the read-only view off
SHARED_MEMORY = "/dev/shm"  # torch's and multiprocessing's shared memory: writable in the view


@dataclass(frozen=True)
class Namespace:
    """The command prefix that starts a program in a new PID namespace, or why there is none; whether it
    also makes a mount namespace for the read-only view, or why not."""

    prefix: tuple[str, ...]
    problem: str = ""
    view: bool = False
    view_problem: str = ""

    def command(self, status_fd: int, command: list[str], writable: list[str]) -> list[str]:
        """command run as process 2 under parity/sandbox/pid1.py (reporting on status_fd), in a view of the
        disk that is read-only except writable and /dev/shm where there is one; command itself where
        there is no namespace."""
        if not self.prefix:
            return command
        options: list[str] = []
        if self.view:
            options = ["--outside-mount-namespace", os.readlink("/proc/self/ns/mnt")]
            for directory in [*writable, SHARED_MEMORY]:
                options += ["--writable", str(directory)]
        return [*self.prefix, sys.executable, "-m", "parity.sandbox.pid1", str(status_fd), *options, *command]


def _probe(prefix: tuple[str, ...]) -> str:
    """ "" if prefix starts a program as process 1 of a new PID namespace, else why not (one line)."""
    try:
        probe = subprocess.run(
            [*prefix, sys.executable, "-c", "import os; print(os.getpid())"],
            capture_output=True,
            text=True,
            timeout=PROBE_TIMEOUT_S,
            stdin=subprocess.DEVNULL,
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"{type(e).__name__}: {e}"
    if probe.returncode == 0 and probe.stdout.strip() == "1":
        return ""
    return probe.stderr.strip().splitlines()[-1] if probe.stderr.strip() else f"status {probe.returncode}"


@functools.cache
def pid_namespace() -> Namespace:
    """How this machine starts a process in a PID namespace of its own, with a mount namespace for the
    read-only view where it can (probed once per process)."""
    if not sys.platform.startswith("linux"):
        return Namespace((), "PID namespaces are Linux's")
    unshare = shutil.which("unshare")
    if unshare is None:
        return Namespace((), "no unshare command (util-linux)")
    owners = ((), ("--user", "--map-root-user"))
    view_problem = f"turned off by {READ_ONLY_ENV_VAR}=0"
    if os.environ.get(READ_ONLY_ENV_VAR, "").strip() != "0":
        for extra in owners:
            prefix = (unshare, *extra, *UNSHARE_MOUNT, *UNSHARE_PID)
            problem = _probe(prefix)
            if not problem:
                return Namespace(prefix, view=True)
        view_problem = f"unshare --mount failed: {problem}"
    for extra in owners:
        prefix = (unshare, *extra, *UNSHARE_PID)
        problem = _probe(prefix)
        if not problem:
            return Namespace(prefix, view_problem=view_problem)
    return Namespace((), f"unshare --pid failed: {problem}", view_problem=view_problem)


def parse_report(text: str) -> tuple[tuple[int, int] | None, str]:
    """pid1.py's whole report: its last line parsed by parse_status, and the problem of a `view PROBLEM`
    line ("" when there is none: the view was made, or not asked for)."""
    lines = text.splitlines()
    views = [line.removeprefix("view ").strip() for line in lines if line.startswith("view ")]
    return (parse_status(lines[-1]) if lines else None), (views[0] if views else "")


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
