"""Run the checks on foreign code in a child process whose only trusted output is a result carrying a nonce.

The tested code may call `sys.exit(0)` in `forward`, `os._exit` at import, hang, crash, print megabytes,
write files, or monkeypatch transformers to hide its own bug. `run_checks_in_child` starts
`python -m parity.sandbox.child` in its own session (process group) with a temporary working directory,
a pipe for the tested code's stdout and stderr, and a pipe for messages, both read within fixed bounds
(parity/sandbox/channel.py). The parent sends the request and a random nonce on the child's stdin; the
child reports each phase (import, build, check NAME) and finally the verdicts, every message carrying the
nonce. Only a complete, well-formed result with the nonce, on a channel nothing else wrote to, is trusted:
any other end (an exit without a result, a signal, a hang past the timeout) makes every check CANNOT-TEST,
saying what happened and in which phase. When the child ends, its process group is killed, and so is
every process it left behind, a detached daemon too (parity/sandbox/reaper.py), and the checkpoint and the
harness's and transformers' sources are checked against hashes taken before the child started
(parity/sandbox/files.py). The parent, which never
imports the tested code, also computes `hf_fingerprint` (the logits of a tiny seeded GPT2LMHeadModel,
parity/sandbox/fingerprint.py) and the witness of Hugging Face's model of the target itself
(parity/sandbox/witness.py: a patch may act at the tested model's shape only); the child computes both
again after building the model and after the checks, and a difference means the tested code changed
transformers in its process: CANNOT-TEST.
"""

from __future__ import annotations

import dataclasses
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from nanogpt.hf import CheckpointError
from nanogpt.schema import param_count
from parity.checks.registry import CHECK_NAMES
from parity.core.verdicts import Status, Verdict
from parity.sandbox.channel import Channel, OutputTail, drain
from parity.sandbox.files import changed_checkpoint, changed_code, code_hashes, file_hashes
from parity.sandbox.fingerprint import fingerprint_differs, hf_fingerprint
from parity.sandbox.isolation import parse_report, pid_namespace
from parity.sandbox.reaper import killed_note, reaping_descendants
from parity.sandbox.relay import ProgressRelay
from parity.sandbox.witness import clean_witness, witness_differs
from parity.subject.targets import ParityTarget

# The harness's own root, put on the child's PYTHONPATH (the child's cwd is a temporary directory).
HARNESS_ROOT = Path(__file__).resolve().parents[2]
# Default wall-clock limits: a small model's checks take seconds, plus the child's imports of torch and
# transformers; a GPT-2 size gets more per parameter (train-steps dominates: AdamW on both models).
SMALL_TIMEOUT_S = 120.0
TIMEOUT_S_PER_124M_PARAMS = 600.0
SMALL_PARAMS = 10_000_000  # below this, SMALL_TIMEOUT_S
# How much of the captured output (its last OUTPUT_TAIL_BYTES, parity/sandbox/channel.py) a CANNOT-TEST
# reason quotes.
REASON_TAIL_LINES = 3
STATUS_BYTES = 4096  # "exit N left K" or "signal N left K" from parity/sandbox/pid1.py, after a "view" line
# Lines of the tested code's captured output that -v shows (the last ones).
OUTPUT_LINES_SHOWN = 200
CHANGED_TRANSFORMERS = (
    "the tested code changed transformers (GPT-2 logits in this process differ from a clean process's)"
)
CHANGED_HARNESS = "the tested code changed the harness or torch in its process (parity/sandbox/integrity.py)"
CHANGED_HF_MODEL = (
    "the tested code changed Hugging Face's GPT-2 in its process (its logits on this model differ from a "
    "clean process's)"
)


@dataclass
class SandboxResult:
    """The verdicts from the child, or CANNOT-TEST for each check with what happened instead."""

    verdicts: list[Verdict]
    output: str  # the tested code's stdout and stderr (their last bytes: parity/sandbox/channel.py)
    what_happened: str  # "" when the child returned a trusted result
    notes: list[str] = field(default_factory=list)  # load summary: what was left out, config, files written
    checkpoint_error: str = ""  # the checkpoint itself is bad: the caller's mistake, not the commit's


def output_summary(result: SandboxResult, details: bool) -> list[str]:
    """The load notes, then the tested code's captured output (its last OUTPUT_LINES_SHOWN lines) with
    details, else how many lines there are: what every front end shows of the child."""
    lines = [f"load: {note}" for note in result.notes]
    output = result.output.splitlines()
    if details and output:
        lines.append(f"captured output of the tested code ({len(output)} lines):")
        lines += [f"  | {line}" for line in output[-OUTPUT_LINES_SHOWN:]]
    elif output:
        lines.append(f"the tested code printed {len(output)} line(s); -v shows them")
    return lines


def default_timeout(target: ParityTarget) -> float:
    """Seconds the child may take: SMALL_TIMEOUT_S, or scaled by parameter count for larger models."""
    params = param_count(target.config)
    if params < SMALL_PARAMS:
        return SMALL_TIMEOUT_S
    return float(round(SMALL_TIMEOUT_S + TIMEOUT_S_PER_124M_PARAMS * params / 124e6))


def target_message(target: ParityTarget) -> dict[str, Any]:
    """What the child needs to rebuild the target (the checkpoint already written by the parent)."""
    return {
        "name": target.name,
        "config": dataclasses.asdict(target.config),
        "weights": target.weights,
        "reason": target.reason,
        "device": target.device,
        "dtype": str(target.dtype).removeprefix("torch."),
        # Absolute: the child runs in a temporary directory, and --model DIR is relative to the caller's.
        "checkpoint": str(target.ensure_checkpoint().resolve()),
        "seed": target.seed,
        "dtype_reason": target.dtype_reason,
        "hf_activation": target.hf_activation,
        # Made here: the child's view of the synthetic cache is read-only (parity/sandbox/view.py).
        "twin_checkpoint": str(target.ensure_twin_checkpoint().resolve()),
    }


def _read_all(fd: int, chunks: Channel, relay: ProgressRelay) -> None:
    with os.fdopen(fd, "rb") as pipe:
        while chunk := pipe.read1(65536):
            chunks.append(chunk)
            relay.feed(chunk)


def _files_written(workdir: Path) -> list[str]:
    files = sorted(p for p in workdir.rglob("*") if p.is_file())
    listed = ", ".join(f"{p.relative_to(workdir)} ({p.stat().st_size} bytes)" for p in files[:5])
    return (
        [
            f"the tested code wrote {len(files)} file(s) into its working directory (a temporary one, "
            f"removed): {listed}{' ...' if len(files) > 5 else ''}"
        ]
        if files
        else []
    )


def _verdicts_of(result: dict[str, Any], names: list[str]) -> list[Verdict] | None:
    """The result's verdicts, when they are well formed and answer exactly the checks asked for."""
    try:
        verdicts = [Verdict.from_json(v) for v in result["verdicts"]]
    except (KeyError, TypeError, ValueError):
        return None
    return verdicts if [v.check for v in verdicts] == [c for c in CHECK_NAMES if c in names] else None


def _describe_end(
    returncode: int | None, timed_out: float | None, phase: str, output: str, limit_option: str = "--timeout"
) -> str:
    """What happened to a child with no trusted result, in one line (limit_option names the timeout)."""
    if timed_out is not None:
        what = (
            f"timed out after {timed_out:g} s during {phase} (its process group was killed; {limit_option} "
            "sets the limit)"
        )
    elif returncode is not None and returncode < 0:
        what = f"killed by signal {signal.Signals(-returncode).name} during {phase}"
    else:
        what = f"exited with status {returncode} during {phase} without returning a verdict"
    tail = [line.strip() for line in output.strip().splitlines() if line.strip()][-REASON_TAIL_LINES:]
    return f"the tested code's process {what}" + (f"; last output: {' | '.join(tail)}" if tail else "")


def run_checks_in_child(
    impl_path: str | None,
    run_module: bool,
    target: ParityTarget,
    names: list[str],
    tied_decay: bool,
    timeout: float,
    limit_option: str = "--timeout",
    loader: str | None = None,
    mapping: str | None = None,
    profiles: bool = True,
) -> SandboxResult:
    """The named checks' verdicts on the implementation at impl_path (None: the reference), run in a child.

    limit_option is the caller's option that sets timeout, for the message of a child that ran past it;
    loader is --loader (MODULE:FUNCTION), the implementation's own loader that the own-loader check runs;
    mapping is --mapping FILE, where GPT-2's tensors live in the implementation (foreign/mapping_file.py);
    profiles: whether the logits check computes its difference profiles (only a report keeps them).
    """
    names = [c for c in CHECK_NAMES if c in names]
    clean = hf_fingerprint()  # in this process, which never imports the tested code
    try:
        clean_model = clean_witness(
            target
        )  # Hugging Face's model of the target itself (parity/sandbox/witness.py)
    except CheckpointError as e:
        return SandboxResult([], "", "", [], str(e))
    checkpoint = target.ensure_checkpoint()
    hashes = file_hashes(checkpoint)  # held here, where the child cannot rewrite them
    sources = code_hashes()  # the harness's and the imported transformers modules' files
    nonce = secrets.token_hex(16)
    request = {
        "nonce": nonce,
        "impl": None if impl_path is None else str(Path(impl_path).expanduser().resolve()),
        "label": impl_path,
        "run_module": run_module,
        "target": target_message(target),
        "checks": names,
        "tied_decay": tied_decay,
        "loader": loader,
        "mapping": None if mapping is None else str(Path(mapping).expanduser().resolve()),
        "profiles": profiles,
        # The caller's thread count: CPU reductions split by threads round differently in the last bit.
        "num_threads": torch.get_num_threads(),
    }
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1", HF_HUB_OFFLINE="1", TRANSFORMERS_VERBOSITY="error")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(HARNESS_ROOT), os.environ.get("PYTHONPATH")]))
    workdir = Path(tempfile.mkdtemp(prefix="nanogpt-parity-sandbox-"))
    tmpdir = Path(tempfile.mkdtemp(prefix="nanogpt-parity-sandbox-tmp-"))  # its TMPDIR: writable in the view
    env["TMPDIR"] = str(tmpdir)
    read_fd, write_fd = os.pipe()
    namespace = pid_namespace()
    status_read, status_write = os.pipe() if namespace.prefix else (-1, -1)  # process 1's report
    child = namespace.command(
        status_write,
        [sys.executable, "-m", "parity.sandbox.child", str(write_fd)],
        [str(workdir), str(tmpdir)],
    )
    view_problem = namespace.view_problem
    chunks = Channel(nonce)  # only lines with the nonce, up to a cap (parity/sandbox/channel.py)
    output = OutputTail()  # the last OUTPUT_TAIL_BYTES of the tested code's stdout and stderr
    relay = ProgressRelay(nonce)  # the child's progress lines, shown as they arrive
    timed_out, left = None, 0
    try:
        with reaping_descendants() as reaped:  # also what detached itself with setsid
            proc = subprocess.Popen(
                child,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                pass_fds=(write_fd,) if status_write < 0 else (write_fd, status_write),
                cwd=workdir,
                env=env,
                start_new_session=True,
            )
            printer = threading.Thread(target=drain, args=(proc.stdout, output), daemon=True)
            printer.start()
            for fd in (write_fd, status_write):
                if fd >= 0:
                    os.close(fd)
            write_fd = status_write = -1
            reader = threading.Thread(target=_read_all, args=(read_fd, chunks, relay), daemon=True)
            reader.start()
            read_fd = -1  # the reader owns it now
            try:
                try:
                    assert proc.stdin is not None
                    proc.stdin.write(json.dumps(request).encode() + b"\n")
                    proc.stdin.close()
                except OSError:
                    pass  # the child died before reading its request: its end says what happened
                try:
                    relay.wait(proc, timeout)
                except subprocess.TimeoutExpired:
                    timed_out = timeout
            finally:  # also on Ctrl-C: the child's own session does not get the terminal's SIGINT
                _kill_group(proc)
                proc.wait()
        reader.join(timeout=10)
        printer.join(timeout=10)
        relay.flush(final=True)
        returncode = proc.returncode
        if status_read >= 0:  # how the child itself ended, not process 1 or unshare
            reported, view_problem = parse_report(_read_report(status_read))
            returncode, left = (returncode, 0) if reported is None else reported
            view_problem = view_problem or namespace.view_problem
    finally:
        for fd in (read_fd, write_fd, status_read, status_write):
            if fd >= 0:
                os.close(fd)
        notes_written = reaped + _files_written(workdir)
        if left:
            notes_written.insert(0, killed_note(left))
        if namespace.problem:
            notes_written.append(
                "the tested code ran without a PID namespace of its own or a read-only view of the disk "
                f"({namespace.problem})"
            )
        elif view_problem:
            notes_written.append(f"the tested code ran without a read-only view of the disk ({view_problem})")
        shutil.rmtree(workdir, ignore_errors=True)
        shutil.rmtree(tmpdir, ignore_errors=True)
    messages, channel_problem = chunks.messages()
    changed = changed_checkpoint(checkpoint, hashes, synthetic=target.weights == "synthetic")
    changed = "; ".join(filter(None, [changed, changed_code(sources)]))
    return _judge(
        messages,
        names,
        (clean, clean_model, target.device),
        returncode,
        timed_out,
        output.text(),
        notes_written,
        limit_option,
        "; ".join(filter(None, [channel_problem, changed])),
    )


def _read_report(fd: int) -> str:
    """Process 1's report (parity/sandbox/pid1.py), read to its end, at most STATUS_BYTES."""
    data = b""
    while len(data) < STATUS_BYTES and (chunk := os.read(fd, STATUS_BYTES - len(data))):
        data += chunk
    return data.decode(errors="replace")


def _kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL the child's whole process group (what the tested code started too)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _judge(
    messages: list[dict[str, Any]],
    names: list[str],
    clean: tuple[list[float], list[float], str],
    returncode: int | None,
    timed_out: float | None,
    output: str,
    notes_written: list[str],
    limit_option: str,
    tampering: str = "",
) -> SandboxResult:
    """The SandboxResult of the child's trusted messages and how it ended; tampering is what the tested code
    did beyond its process (its result channel, the checkpoint), which makes every check CANNOT-TEST.

    clean: what this process computed without the tested code: the tiny fingerprint, the witness of Hugging
    Face's model of the target, and the target's device.
    """
    fingerprint, model_witness, device = clean
    phases = [m["phase"] for m in messages if isinstance(m.get("phase"), str)]
    phase = phases[-1] if phases else "start-up (before the tested code was imported)"
    results = [m for m in messages if m.get("kind") == "result"]
    if len(results) == 1 and results[0].get("checkpoint_error"):
        return SandboxResult([], output, "", notes_written, str(results[0]["checkpoint_error"]))
    verdicts = _verdicts_of(results[0], names) if len(results) == 1 else None
    if verdicts is None or tampering:  # a result beside a forgery or a changed checkpoint is not trusted
        what = _describe_end(returncode, timed_out, phase, output, limit_option)
        if results:
            what = f"the tested code's process returned a malformed result during {phase}"
        what = "; ".join(filter(None, [what if verdicts is None else "", tampering]))
        return SandboxResult(
            [Verdict(c, Status.CANNOT_TEST, what) for c in names], output, what, notes_written
        )
    result = results[0]
    notes = [str(n) for n in result.get("notes", [])] + notes_written
    fingerprints = result.get("fingerprints")
    harness_changes = result.get("harness_changes", [])
    changed = None
    if not isinstance(harness_changes, list) or harness_changes:
        names_changed = ", ".join(map(str, harness_changes)) if isinstance(harness_changes, list) else "?"
        changed = f"{CHANGED_HARNESS}: {names_changed}"
    elif not isinstance(fingerprints, list) or any(fingerprint_differs(fingerprint, f) for f in fingerprints):
        changed = CHANGED_TRANSFORMERS
    elif any(v.status is not Status.CANNOT_TEST for v in verdicts):  # a verdict rests on the child's HF model
        witnesses = result.get("witnesses")
        if (
            not isinstance(witnesses, list)
            or not witnesses
            or any(witness_differs(model_witness, w, device) for w in witnesses)
        ):
            changed = CHANGED_HF_MODEL
    if changed:
        verdicts = [
            Verdict(v.check, Status.CANNOT_TEST, changed, f"in that process: {v.status.value} {v.reason}")
            for v in verdicts
        ]
        return SandboxResult(verdicts, output, changed, notes)
    return SandboxResult(verdicts, output, "", notes)
