"""Process 1 of the tested code's PID namespace: starts the child, reaps, and says how the child ended.

Started by `unshare --pid --fork` (parity/sandbox/isolation.py) as `python -m parity.sandbox.pid1 STATUS_FD
[--outside-mount-namespace NS --writable DIR...] COMMAND...`. With those options, and `unshare --mount`, it
first makes the namespace's view of the disk read-only except each DIR (parity/sandbox/view.py); where that
fails it writes `view PROBLEM` on a line of its own to STATUS_FD, and the command runs all the same. The
tested code runs as process 2, in a session of its own, so signals behave as they do outside
a namespace (process 1 ignores every signal it has no handler for, even a SIGKILL it sends itself, and
unshare reports a signal as an exit status). Nothing the tested code does reaches a process outside: the
harness's processes have no PID in here, and the signals it may send this process (its parent) are ignored.
When the child ends, this process kills and reaps whatever the tested code left running in the namespace,
writes `exit N left K` or `signal N left K` to STATUS_FD (K: the processes it killed), and exits. Only the
standard library: it starts before, and apart from, everything the child imports.
"""

from __future__ import annotations

import os
import signal
import sys

from parity.sandbox.view import make_read_only_view


def parse_options(args: list[str]) -> tuple[str | None, list[str], list[str]]:
    """(the harness's mount namespace or None, the writable directories, the command) of the arguments
    after STATUS_FD."""
    outside, writable = None, []
    while len(args) >= 2 and args[0] in ("--outside-mount-namespace", "--writable"):
        if args[0] == "--writable":
            writable.append(args[1])
        else:
            outside = args[1]
        args = args[2:]
    return outside, writable, args


def main() -> None:
    """Run the command as process 2; report its end on the file descriptor sys.argv[1]."""
    status_fd = int(sys.argv[1])
    outside, writable, command = parse_options(sys.argv[2:])
    if outside is not None:
        problem = make_read_only_view(writable, outside)
        if problem:
            os.write(status_fd, f"view {' '.join(problem.split())}\n".encode())
    pid = os.fork()
    if pid == 0:
        os.close(status_fd)
        os.setsid()  # a kill(0, ...) of the tested code reaches its own group only
        try:
            os.execv(command[0], command)
        finally:
            os._exit(127)
    while True:  # reap everything reparented to process 1 until the child itself ends
        reaped, status = os.waitpid(-1, 0)
        if reaped == pid:
            break
    if os.WIFSIGNALED(status):
        word = f"signal {os.WTERMSIG(status)}"
    else:
        word = f"exit {os.waitstatus_to_exitcode(status)}"
    left = 0  # what the tested code left running: killed, then reaped here as orphans
    try:
        os.kill(-1, signal.SIGKILL)  # from process 1: every other process of the namespace
    except ProcessLookupError:
        pass
    while True:
        try:
            os.waitpid(-1, 0)
        except ChildProcessError:
            break
        left += 1
    os.write(status_fd, f"{word} left {left}".encode())
    os._exit(0)


if __name__ == "__main__":
    main()
