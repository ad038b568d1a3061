"""Process 1 of the tested code's PID namespace: starts the child, reaps, and says how the child ended.

Started by `unshare --pid --fork` (parity/sandbox/isolation.py) as `python -m parity.sandbox.pid1 STATUS_FD
COMMAND...`. The tested code runs as process 2, in a session of its own, so signals behave as they do outside
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


def main() -> None:
    """Run sys.argv[2:] as process 2; report its end on the file descriptor sys.argv[1]."""
    status_fd, command = int(sys.argv[1]), sys.argv[2:]
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
