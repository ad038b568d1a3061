"""The sandbox's bounds, through both front ends: what the tested code writes and starts ends with its run.

Measured before these bounds: one line of a million '[' on the result pipe was a RecursionError and bisect
exit 129 (which aborts `git bisect run`); 1 GiB of junk on the pipe grew the parent by 3 GB and 1 GiB of
prints was kept whole in a temporary file; a process that double-forked and called setsid outlived the
run. Each implementation here is the upstream-style template with a few lines at the top of forward, run
once per process.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from bisect_fixtures.variants import model_source
from front_ends import run_batch

from parity.core.exit_codes import EXIT_SKIP
from parity.frontends.bisect import resolve_model
from parity.sandbox.channel import MAX_JSON_DEPTH, OUTPUT_TAIL_BYTES, Channel, OutputTail, nesting_exceeds
from parity.sandbox.files import file_hashes
from parity.sandbox.isolation import READ_ONLY_ENV_VAR, pid_namespace
from parity.subject.synthetic import (
    CACHE_ENV_VAR,
    DEFAULT_SEED,
    checkpoint_name,
    checkpoint_problem,
    ensure_synthetic_checkpoint,
)
from parity.subject.targets import SMALL_CONFIG

REPO_ROOT = Path(__file__).resolve().parents[1]
# The two lines of defence against a write outside the child's directories: the read-only view of the disk
# refuses it (EROFS: the code crashed), and without the view the parent's hashes find what changed.
VIEWS = [
    pytest.param(
        "read-only",
        marks=pytest.mark.skipif(not pid_namespace().view, reason="no read-only view of the disk here"),
    ),
    "hashes",
]
REFUSED = "crashed: OSError: [Errno 30] Read-only file system"
VIEW_OFF = f"ran without a read-only view of the disk (turned off by {READ_ONLY_ENV_VAR}=0)"
FORWARD_START = "        device = idx.device\n"
ONCE = """        import os
        if not getattr(os, "_parity_test_done", False):
            os._parity_test_done = True
"""
# One line of a million '[' to every descriptor the tested code may hold (the result pipe among them).
DEEP_LINE = """            for fd in range(3, 256):
                try:
                    os.write(fd, b"[" * 1_000_000 + b"\\n")
                except OSError:
                    pass
"""
# A daemon: fork, setsid in the child, fork again, the grandchild writes its pid (as the harness's /proc
# names it, outside the child's PID namespace) and sleeps for an hour.
DAEMON = """            first = os.fork()
            if first == 0:
                os.setsid()
                if os.fork() == 0:
                    with open({pid_file!r}, "w") as f:
                        f.write(os.readlink("/proc/self"))
                    __import__("time").sleep(3600)
                os._exit(0)
            os.waitpid(first, 0)
            while not os.path.exists({pid_file!r}):
                __import__("time").sleep(0.01)
"""
# MiB of junk lines on stdout and on every other descriptor (the result pipe among them).
FLOOD = """            junk = b"x" * 1023 + b"\\n"
            for _ in range({stdout_mib} * 1024):
                os.write(1, junk)
            for fd in range(3, 256):
                try:
                    for _ in range({pipe_mib} * 1024):
                        os.write(fd, junk)
                except OSError:
                    pass
"""

# SIGSTOP to its parent, then to the parent's process group (where there is none, the call fails quietly).
STOPS_PARENT = """            import signal
            for kill in (os.kill, os.killpg):
                try:
                    kill(os.getppid(), signal.SIGSTOP)
                except OSError:
                    pass
"""
# Appends a line to the harness's own parity/__init__.py, only where the path holds the marker (a copy).
REWRITES_HARNESS = """            import parity
            source = os.path.join(os.path.dirname(parity.__file__), "__init__.py")
            assert {marker!r} in source, source
            with open(source, "a") as f:
                f.write("# changed by the tested code\\n")
"""


def write_impl(path: Path, lines: str) -> Path:
    """The template with lines run at the top of its first forward."""
    path.write_text(model_source().replace(FORWARD_START, FORWARD_START + ONCE + lines))
    return path


def running(pid: int) -> bool:
    """True if pid names a live process (a zombie is not one)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


@pytest.fixture(scope="module")
def checkpoint() -> Path:
    return resolve_model("small", "cpu", None).ensure_checkpoint()


def both_front_ends(impl: Path, checkpoint: Path, tmp: Path) -> dict[str, dict]:
    """The logits check on impl through `pytest parity/ --impl` and the bisect command."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env.pop("PYTEST_ADDOPTS", None)
    common = ["--impl", str(impl), "--model", str(checkpoint)]
    pytest_run = run_batch("pytest", {"run": [*common, "-k", "logits"]}, env, tmp / "pytest.json")["run"]
    bisect_run = run_batch("bisect", {"run": [*common, "--checks", "logits"]}, env, tmp / "bisect.json")[
        "run"
    ]
    return {"pytest": pytest_run, "bisect": bisect_run}


def test_a_million_brackets_on_the_result_pipe_is_cannot_test_naming_it(
    tmp_path: Path, checkpoint: Path
) -> None:
    impl = write_impl(tmp_path / "model.py", DEEP_LINE)
    for front_end, result in both_front_ends(impl, checkpoint, tmp_path).items():
        output = str(result["output"])
        assert result["rc"] == EXIT_SKIP, f"{front_end}: {output[-3000:]}"
        assert "Traceback" not in output and "RecursionError" not in output, output[-3000:]
        assert (
            "the tested code wrote to the harness's result channel: 1,000,001 bytes that are not the "
            "harness's messages (first: b'[[[[" in output
        ), f"{front_end}: {output[-3000:]}"


def test_a_daemon_the_tested_code_starts_ends_with_the_run(
    tmp_path: Path, checkpoint: Path, shared_dir: Path
) -> None:
    pid_files = {name: shared_dir / f"{name}.pid" for name in ("pytest", "bisect")}
    for name, pid_file in pid_files.items():
        write_impl(tmp_path / f"{name}.py", DAEMON.format(pid_file=str(pid_file)))
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env.pop("PYTEST_ADDOPTS", None)
    for name in pid_files:
        argv = ["--impl", str(tmp_path / f"{name}.py"), "--model", str(checkpoint)]
        argv += ["-k", "logits"] if name == "pytest" else ["--checks", "logits"]
        start = time.monotonic()
        result = run_batch(name, {"run": argv}, env, tmp_path / f"{name}.json")["run"]
        output = str(result["output"])
        assert result["rc"] == 0, f"{name}: {output[-3000:]}"
        assert "killed 1 process(es) the tested code left running after its process" in output, output[-3000:]
        daemon = int(pid_files[name].read_text())
        assert not running(daemon), f"{name}: the daemon {daemon} outlived the run"
        assert time.monotonic() - start < 120, "the daemon held the pipes open: the run waited for it"


@pytest.mark.skipif(
    bool(pid_namespace().problem), reason="no PID namespace here: SIGSTOP of the parent hangs"
)
def test_the_tested_code_cannot_stop_the_harness(tmp_path: Path, checkpoint: Path) -> None:
    """In its PID namespace the child's parent is process 1, which ignores a SIGSTOP sent from inside; the
    harness's processes have no PID there. Without the namespace this run hung for good."""
    impl = write_impl(tmp_path / "model.py", STOPS_PARENT)
    start = time.monotonic()
    for front_end, result in both_front_ends(impl, checkpoint, tmp_path).items():
        output = str(result["output"])
        assert result["rc"] == 0, f"{front_end}: {output[-3000:]}"
        assert "logits" in output and "PASS" in output, f"{front_end}: {output[-3000:]}"
    assert time.monotonic() - start < 300


def test_a_flood_costs_the_parent_neither_memory_nor_disk(tmp_path: Path, checkpoint: Path) -> None:
    """256 MiB of prints and 768 MiB of junk on the result pipe: the bisect command's peak memory stays
    below the flood's size, only the end of the prints comes back, and nothing lands in the temporary
    directory."""
    impl = write_impl(tmp_path / "model.py", FLOOD.format(stdout_mib=256, pipe_mib=768))
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    program = (
        "import re, sys\n"
        "from parity.frontends.bisect import main\n"
        f"argv = ['--impl', {str(impl)!r}, '--model', {str(checkpoint)!r}, '--checks', 'logits', '-v']\n"
        "code = main(argv)\n"
        # VmHWM: this process's own peak. ru_maxrss would include the spawning pytest process's peak,
        # which Linux carries across the vfork + exec that started this one.
        "status = open('/proc/self/status').read()\n"
        "print('peak KiB', re.search(r'VmHWM:\\s+(\\d+) kB', status).group(1))\n"
        "sys.exit(code)\n"
    )
    env = dict(os.environ, TMPDIR=str(scratch), OMP_NUM_THREADS="1")
    done = subprocess.run(
        [sys.executable, "-c", program], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == EXIT_SKIP, done.stdout[-3000:] + done.stderr[-3000:]
    peak_mib = int(done.stdout.rsplit("peak KiB", 1)[1]) / 1024
    assert peak_mib < 768, f"the parent peaked at {peak_mib:.0f} MiB"
    assert "805,306,368 bytes that are not the harness's messages" in done.stdout, done.stdout[-3000:]
    before = re.search(r"\| \[\.\.\. (\d+) bytes before\]", done.stdout)
    assert before and int(before.group(1)) >= 256 * 2**20 - OUTPUT_TAIL_BYTES, done.stdout[-3000:]
    assert done.stdout.count("x" * 1023) <= OUTPUT_TAIL_BYTES // 1024, "only the end of the prints"
    assert not list(scratch.iterdir()), "nothing is left in the temporary directory"


@pytest.mark.parametrize("view", VIEWS)
def test_a_rewritten_harness_source_is_cannot_test_naming_it(
    tmp_path: Path, checkpoint: Path, view: str
) -> None:
    """The bisect command run from a copy of the harness, whose parity/__init__.py the tested code appends
    to: in the read-only view the write fails (the code crashed: CANNOT-TEST) and the file is unchanged;
    without it every check is CANNOT-TEST naming the file and how to restore it. The real harness is
    untouched either way."""
    copy = tmp_path / "harness"
    for name in ("parity", "nanogpt"):
        shutil.copytree(REPO_ROOT / name, copy / name, ignore=shutil.ignore_patterns("__pycache__"))
    real = (REPO_ROOT / "parity" / "__init__.py").read_bytes()
    impl = write_impl(tmp_path / "model.py", REWRITES_HARNESS.format(marker=str(copy)))
    program = (
        "import sys\n"
        "from parity.frontends.bisect import main\n"
        f"sys.exit(main(['--impl', {str(impl)!r}, '--model', {str(checkpoint)!r}, '--checks', 'logits']))\n"
    )
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(copy))
    if view == "hashes":
        env[READ_ONLY_ENV_VAR] = "0"
    changed = copy / "parity" / "__init__.py"
    before = file_hashes(copy)
    done = subprocess.run(
        [sys.executable, "-c", program], cwd=copy, env=env, capture_output=True, text=True, timeout=600
    )
    output = done.stdout + done.stderr
    assert done.returncode == EXIT_SKIP, output[-3000:]
    assert (REPO_ROOT / "parity" / "__init__.py").read_bytes() == real
    if view == "read-only":
        assert f"{REFUSED}: {str(changed)!r}" in output, output[-3000:]
        assert file_hashes(copy) == before, "the write was refused: nothing changed"
        assert "source file(s) of the harness" not in output
        return
    assert VIEW_OFF in output, output[-3000:]
    assert changed.read_bytes().endswith(b"# changed by the tested code\n"), "the tested code ran"
    assert (
        f"the tested code changed 1 source file(s) of the harness or of transformers: {changed}; " in output
    ), output[-3000:]


def test_the_channel_keeps_only_nonce_lines_up_to_its_cap_and_names_the_rest() -> None:
    nonce = "n0nce"
    message = b'{"kind": "phase", "phase": "import", "nonce": "n0nce"}'
    deep = b'{"x": ' + b"[" * 40 + b"]" * 40 + b', "nonce": "n0nce"}'
    channel = Channel(nonce, cap=4096)
    for chunk in (b"junk without it\n" + message[:10], message[10:] + b"\n", deep + b"\n", b"y" * 10_000):
        channel.append(chunk)
    messages, problem = channel.messages()
    assert messages == [{"kind": "phase", "phase": "import", "nonce": "n0nce"}]
    assert problem == (
        "the tested code wrote to the harness's result channel: 16 bytes that are not the harness's messages "
        f"(first: b'junk without it'); 1 message(s) nested more than {MAX_JSON_DEPTH} deep; more than its "
        "cap of 4,096 bytes (10,000 bytes dropped)"
    )
    assert channel.kept <= 4096
    assert Channel(nonce).messages() == ([], "")
    assert not nesting_exceeds(b'{"a": "[[[[[[[[", "b": [[1]]}', 3) and nesting_exceeds(b'[[[["x"]]]]', 3)


def test_the_output_tail_keeps_the_last_bytes_and_counts_the_rest() -> None:
    tail = OutputTail(cap=10)
    for i in range(1000):
        tail.append(b"%03d\n" % i)
    assert tail.text() == "[... 3990 bytes before]\n7\n998\n999\n"
    assert sum(map(len, tail.chunks)) < 20


# config.json gets a trailing space; with sums, SHA256SUMS is rewritten to match (a forger's full job).
REWRITE_CHECKPOINT = """            import hashlib, pathlib
            root = pathlib.Path({directory!r})
            with open(root / "config.json", "ab") as f:
                f.write(b" ")
            if {sums}:
                lines = [f"{{hashlib.sha256((root / n).read_bytes()).hexdigest()}}  {{n}}"
                         for n in ("config.json", "model.safetensors")]
                (root / "SHA256SUMS").write_text("\\\\n".join(lines) + "\\\\n")
"""


@pytest.mark.parametrize("view", VIEWS)
def test_a_checkpoint_the_tested_code_rewrites_is_cannot_test_and_a_synthetic_one_is_written_again(
    tmp_path: Path, checkpoint: Path, view: str
) -> None:
    """Tested code rewrote the user's --model checkpoint, and the synthetic cache with its SHA256SUMS, and
    every later run of an unchanged broken model passed. In the read-only view the write fails (the code
    crashed: CANNOT-TEST) and every file is unchanged; without it the parent's own hashes see both."""
    user = tmp_path / "user-checkpoint"
    shutil.copytree(checkpoint, user)
    cache = tmp_path / "cache"
    label = resolve_model("small", "cpu", None).name
    synthetic = cache / checkpoint_name(label, DEFAULT_SEED)
    env = dict(os.environ, OMP_NUM_THREADS="1", **{CACHE_ENV_VAR: str(cache)})
    if view == "hashes":
        env[READ_ONLY_ENV_VAR] = "0"
    env.pop("PYTEST_ADDOPTS", None)
    for kind, directory, model in (("user", user, str(user)), ("synthetic", synthetic, "small")):
        impl = write_impl(
            tmp_path / f"{kind}.py",
            REWRITE_CHECKPOINT.format(directory=str(directory), sums=kind == "synthetic"),
        )
        for front_end in ("pytest", "bisect"):
            argv = ["--impl", str(impl), "--model", model]
            argv += ["-k", "logits"] if front_end == "pytest" else ["--checks", "logits"]
            result = run_batch(front_end, {"run": argv}, env, tmp_path / f"{kind}-{front_end}.json")["run"]
            output = str(result["output"])
            assert result["rc"] == EXIT_SKIP, f"{kind} {front_end}: {output[-3000:]}"
            if view == "read-only":
                written = directory / "config.json"
                assert f"{REFUSED}: {str(written)!r}" in output, output[-3000:]
                assert "the tested code changed the checkpoint" not in output
                assert file_hashes(directory) == file_hashes(checkpoint), "the write was refused: unchanged"
                continue
            assert VIEW_OFF in output, output[-3000:]
            changed = (
                "SHA256SUMS (changed), config.json (changed)"
                if kind == "synthetic"
                else "config.json (changed)"
            )
            assert f"the tested code changed the checkpoint {directory}: {changed}" in output, output[-3000:]
            if kind == "synthetic":
                assert (
                    "SHA256SUMS is removed, so the next run writes the synthetic checkpoint again" in output
                )
                assert (
                    checkpoint_problem(directory)
                    == "no SHA256SUMS (written by an older version, or incomplete)"
                )
    regenerated = ensure_synthetic_checkpoint(SMALL_CONFIG, label, root=cache)[0]
    assert file_hashes(regenerated) == file_hashes(checkpoint), "written again, byte for byte"
