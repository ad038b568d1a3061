"""The child's PID namespace (parity/sandbox/isolation.py, parity/sandbox/pid1.py), without the harness.

Process 1 runs the command as process 2 and reports how it ended, a signal included (process 1 itself would
ignore a SIGKILL it sent itself), and how many processes it left running; the report is parsed strictly.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from parity.sandbox.isolation import parse_status, pid_namespace

REPO_ROOT = Path(__file__).resolve().parents[1]
needs_namespace = pytest.mark.skipif(bool(pid_namespace().problem), reason="no PID namespace on this machine")


@pytest.mark.parametrize(
    ("text", "parsed"),
    [("exit 0 left 0", (0, 0)), ("exit 3 left 2", (3, 2)), ("signal 9 left 0", (-9, 0))],
)
def test_the_report_is_parsed(text: str, parsed: tuple[int, int]) -> None:
    assert parse_status(text) == parsed


@pytest.mark.parametrize("text", ["", "exit", "exit 0", "exit -1 left 0", "quit 0 left 0", "exit 0 left x"])
def test_anything_else_is_no_report(text: str) -> None:
    assert parse_status(text) is None


def run_as_process_2(code: str) -> tuple[int, tuple[int, int] | None]:
    """python -c code under process 1 in a new PID namespace: (unshare's status, process 1's report)."""
    read, write = os.pipe()
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    command = [*pid_namespace().prefix, sys.executable, "-m", "parity.sandbox.pid1", str(write)]
    proc = subprocess.run(
        [*command, sys.executable, "-c", code], pass_fds=(write,), env=env, timeout=60, capture_output=True
    )
    os.close(write)
    report = parse_status(os.read(read, 64).decode())
    os.close(read)
    return proc.returncode, report


@needs_namespace
def test_the_command_is_process_2_and_its_exit_status_is_reported() -> None:
    assert run_as_process_2("import os, sys; sys.exit(0 if os.getpid() == 2 else 7)") == (0, (0, 0))
    assert run_as_process_2("import sys; sys.exit(3)") == (0, (3, 0))


@needs_namespace
def test_a_signal_it_sends_itself_is_reported_as_the_signal() -> None:
    assert run_as_process_2("import os, signal; os.kill(os.getpid(), signal.SIGKILL)")[1] == (-9, 0)


@needs_namespace
def test_what_it_leaves_running_is_killed_and_counted() -> None:
    code = "import os, time\nif os.fork() == 0:\n    os.setsid(); time.sleep(3600)\n"
    assert run_as_process_2(code)[1] == (0, 1)
