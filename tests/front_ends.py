"""The product's two front ends, driven the way a user runs them, their verdicts read back.

`run_pytest_parity` runs `pytest parity/ --impl FILE --model CHECKPOINT --parity-report R` through pytest's
own `pytester` fixture, in this process and isolated from it (modules, paths, working directory, output),
and returns the JSON report; `via_pytest` turns that report into verdicts. `via_bisect` runs the bisect
command with `--parity-report R` and reads its verdicts the same way. The mutant catalog, the harness
mutants and the report tests all drive the product through these. `pytest parity/` runs here with
`--in-process` by default: the harness mutants patch the harness in this process, and the catalog saves a
child start-up per entry. `run_batch` sends many command lines through one front end in one child
process, which imports torch once per batch.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from parity.frontends.bisect import main as bisect_main
from parity.frontends.bisect import run as bisect_run

TESTS_DIR = Path(__file__).resolve().parent
REPO_ROOT = TESTS_DIR.parent
PARITY_DIR = REPO_ROOT / "parity"

# {check: (status, reason, details)}
Verdicts = dict[str, tuple[str, str, str]]


def pytest_parity_argv(impl: Path, checkpoint: Path, *extra: str) -> list[str]:
    """`python -m pytest parity/ --impl IMPL --model CHECKPOINT ...` as a fresh interpreter's command line."""
    parity = [str(PARITY_DIR), "--rootdir", str(REPO_ROOT), "-q", "-p", "no:cacheprovider"]
    return [sys.executable, "-m", "pytest", *parity, "--impl", str(impl), "--model", str(checkpoint), *extra]


def run_pytest_parity(
    pytester: pytest.Pytester,
    impl: Path,
    checkpoint: Path,
    report: Path,
    *extra: str,
    in_process: bool = True,
    verbose: bool = False,
) -> tuple[int, str, dict[str, Any]]:
    """`pytest parity/ --impl impl --model checkpoint --parity-report report`, -q or -v, by pytester in this
    process (the tested code too, with in_process); (exit status, terminal output, the report)."""
    result = pytester.runpytest_inprocess(
        str(PARITY_DIR),
        "-v" if verbose else "-q",
        "-p",
        "no:cacheprovider",
        "--impl",
        str(impl),
        "--model",
        str(checkpoint),
        "--parity-report",
        str(report),
        *(["--in-process"] if in_process else []),
        *extra,
    )
    data = json.loads(report.read_text()) if report.is_file() else {}
    return int(result.ret), result.stdout.str(), data


def via_pytest(
    pytester: pytest.Pytester, impl: Path, checkpoint: Path, out: Path, *extra: str, in_process: bool = True
) -> Verdicts:
    """`pytest parity/ --impl impl --model checkpoint`; the verdicts from its JSON report."""
    code, output, data = run_pytest_parity(
        pytester, impl, checkpoint, out / f"{impl.stem}.json", *extra, in_process=in_process
    )
    expected = (0, 1, 125)  # 125: a check that applies could not run (a crash is never a pass)
    assert code in expected, (
        f"pytest parity/ --impl {impl.name} ended with exit status {code}:\n{output[-3000:]}"
    )
    return report_verdicts(data)


def via_bisect(impl: Path, checkpoint: Path, out: Path) -> Verdicts:
    """The bisect command on impl, in-process (the tested code in its child); its JSON report's verdicts."""
    report = out / f"{impl.stem}-bisect.json"
    output = io.StringIO()
    with contextlib.redirect_stdout(output):  # -v: the details and the tested code's output, for a failure
        code = bisect_run(
            ["--impl", str(impl), "--model", str(checkpoint), "-v", "--parity-report", str(report)]
        )
    assert code in (0, 1, 125), f"the bisect command exited {code}:\n{output.getvalue()}"
    return report_verdicts(json.loads(report.read_text()))


def report_verdicts(data: dict[str, Any]) -> Verdicts:
    """{check: (status, reason, details)} from a JSON report of one model (`--parity-report`)."""
    return {c["check"]: (c["status"], c["reason"], c["details"]) for c in data["checks"]}


# ----------------------------------------------------------------------------------------------------------
# many command lines through one front end, in one child process

# The child's whole program: this module's run_cases_here (the tests folder is on its path).
BATCH_MAIN = "import sys, front_ends; front_ends.run_cases_here(*sys.argv[1:])"


def run_batch(
    front_end: str, cases: dict[str, list[str]], env: dict[str, str], results: Path, timeout: float = 600
) -> dict[str, dict[str, Any]]:
    """Each case's arguments through one front end, every case in one child process started in the repository.

    front_end "pytest" runs `pytest parity/ -p no:cacheprovider -p no:randomly ARGS`, "bisect" the bisect
    command (`main(ARGS)`); the child imports torch and transformers once per batch, not once per case. Per
    case: its exit status ("rc"), "stdout", "stderr", and both in the order they were written ("output").
    results: where the child writes them (a JSON file).
    """
    env = dict(env, PYTHONPATH=os.pathsep.join(filter(None, [str(TESTS_DIR), env.get("PYTHONPATH")])))
    proc = subprocess.run(
        [sys.executable, "-c", BATCH_MAIN, front_end, json.dumps(cases), str(results)],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads(results.read_text())


class _Tee(io.StringIO):
    """A captured stream that also writes into a shared one, so stdout and stderr keep their interleaving."""

    def __init__(self, both: io.StringIO) -> None:
        super().__init__()
        self.both = both

    def write(self, text: str) -> int:
        self.both.write(text)
        return super().write(text)


def run_cases_here(front_end: str, cases: str, results: str) -> None:
    """The child's side of run_batch: the cases through front_end one after another; results to a file."""
    out: dict[str, dict[str, Any]] = {}
    for name, args in json.loads(cases).items():
        both = io.StringIO()
        stdout, stderr = _Tee(both), _Tee(both)
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            if front_end == "pytest":
                rc = int(pytest.main(["parity/", "-p", "no:cacheprovider", "-p", "no:randomly", *args]))
            else:
                rc = bisect_main(args)
        out[name] = dict(rc=rc, stdout=stdout.getvalue(), stderr=stderr.getvalue(), output=both.getvalue())
    Path(results).write_text(json.dumps(out))
