"""The child's PID namespace and read-only view of the disk (parity/sandbox/isolation.py, pid1.py, view.py),
without the harness.

Process 1 runs the command as process 2 and reports how it ended, a signal included (process 1 itself would
ignore a SIGKILL it sent itself), and how many processes it left running; the report is parsed strictly.
In the read-only view the command can write in the directories it was given and /dev/shm only.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from parity.frontends.bisect import resolve_model
from parity.sandbox.isolation import READ_ONLY_ENV_VAR, parse_report, parse_status, pid_namespace
from parity.sandbox.view import (
    MS_BIND,
    MS_NODEV,
    MS_NOEXEC,
    MS_NOSUID,
    MS_RDONLY,
    MS_REMOUNT,
    mounts,
    remount_flags,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
needs_namespace = pytest.mark.skipif(bool(pid_namespace().problem), reason="no PID namespace on this machine")
needs_view = pytest.mark.skipif(
    not pid_namespace().view, reason="no read-only view of the disk on this machine"
)
# Creates (and removes) a file at each path given on its command line; prints {path: "" or the error}.
CREATE_EACH = """import json, os, sys
results = {}
for path in sys.argv[1:]:
    try:
        with open(path, "x") as f:
            f.write("x")
        os.remove(path)
        results[path] = ""
    except OSError as e:
        results[path] = e.strerror
with open("/dev/null", "w") as f:
    f.write("device nodes stay writable")
print(json.dumps(results))
"""


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


def test_the_mount_table_is_read_with_its_escapes_and_locked_flags_kept() -> None:
    line = "36 27 0:40 / /mnt/a\\040b rw,nosuid,nodev,noexec,relatime shared:1 - tmpfs tmpfs rw,size=4k"
    assert mounts(line + "\n") == [("/mnt/a b", {"rw", "nosuid", "nodev", "noexec", "relatime"})]
    flags = MS_REMOUNT | MS_BIND | MS_RDONLY
    assert (
        remount_flags({"rw", "nosuid", "nodev", "noexec", "relatime"})
        == flags | MS_NOSUID | MS_NODEV | MS_NOEXEC
    )
    assert remount_flags({"rw", "noatime"}) == flags  # atime flags: the kernel keeps those of the mount


def test_a_view_problem_is_read_from_its_own_line_of_the_report() -> None:
    assert parse_report("view not in a mount namespace of its own\nexit 3 left 0") == (
        (3, 0),
        "not in a mount namespace of its own",
    )
    assert parse_report("exit 0 left 1") == ((0, 1), "")
    assert parse_report("") == (None, "")


def run_in_view(tmp_path: Path, paths: list[Path]) -> tuple[dict[str, str], str]:
    """CREATE_EACH on paths as process 2, its working directory tmp_path/work the one writable directory
    given: ({path: "" or why the file could not be created}, the report's view problem)."""
    work = tmp_path / "work"
    work.mkdir()
    read, write = os.pipe()
    command = pid_namespace().command(
        write, [sys.executable, "-c", CREATE_EACH, *map(str, paths)], [str(work)]
    )
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    proc = subprocess.run(
        command, pass_fds=(write,), env=env, cwd=work, timeout=60, capture_output=True, text=True
    )
    os.close(write)
    report, problem = parse_report(os.read(read, 4096).decode())
    os.close(read)
    assert proc.returncode == 0 and report == (0, 0), proc.stderr
    return json.loads(proc.stdout), problem


@needs_view
def test_in_the_view_the_child_writes_only_its_directory_and_shared_memory(tmp_path: Path) -> None:
    """Next to the checkpoint, in the harness, in $HOME and beside its working directory: read-only; its
    working directory and /dev/shm: writable. Nothing it tried to write outside is left behind."""
    checkpoint = resolve_model("small", "cpu", None).ensure_checkpoint()
    outside = [checkpoint / "new-file", REPO_ROOT / "parity" / "new-file", Path.home() / "new-file"]
    outside.append(tmp_path / "new-file")
    inside = [tmp_path / "work" / "new-file", Path("/dev/shm") / f"nanogpt-parity-test-{os.getpid()}"]
    results, problem = run_in_view(tmp_path, outside + inside)
    assert problem == ""
    assert results == {**{str(p): "Read-only file system" for p in outside}, **{str(p): "" for p in inside}}
    assert not any(p.exists() for p in outside + inside)


@needs_namespace
def test_the_switch_turns_the_view_off_with_a_one_line_reason(tmp_path: Path) -> None:
    """NANOGPT_PARITY_SANDBOX_READONLY=0: no mount namespace, the PID namespace still, and the reason the
    load note gives."""
    program = (
        "from parity.sandbox.isolation import pid_namespace\n"
        "n = pid_namespace()\n"
        "print(n.view, '--mount' in n.prefix, bool(n.prefix), n.view_problem)\n"
    )
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), **{READ_ONLY_ENV_VAR: "0"})
    done = subprocess.run(
        [sys.executable, "-c", program], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.stdout == f"False False True turned off by {READ_ONLY_ENV_VAR}=0\n", done.stderr


@needs_view
def test_where_the_view_cannot_be_made_the_command_runs_and_process_1_says_why(tmp_path: Path) -> None:
    """Process 1 told that the namespace it runs in is the harness's (here a fresh one, so that nothing
    could reach the machine's mounts) makes nothing read-only, says so in one line, and runs the command."""
    unshare = shutil.which("unshare")
    assert unshare is not None
    read, write = os.pipe()
    pid1 = f"{sys.executable} -m parity.sandbox.pid1 {write} --outside-mount-namespace"
    script = f'exec {pid1} "$(readlink /proc/self/ns/mnt)" --writable /nowhere "$@"'
    command = [*pid_namespace().prefix, "sh", "-c", script, "sh", sys.executable, "-c", CREATE_EACH]
    outside = tmp_path / "new-file"
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    proc = subprocess.run(
        [*command, str(outside)], pass_fds=(write,), env=env, timeout=60, capture_output=True, text=True
    )
    os.close(write)
    report = parse_report(os.read(read, 4096).decode())
    os.close(read)
    assert report == ((0, 0), "not in a mount namespace of its own"), proc.stderr
    assert json.loads(proc.stdout) == {str(outside): ""}
