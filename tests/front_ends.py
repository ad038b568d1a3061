"""The product's two front ends, driven in-process the way a user runs them, their verdicts read back.

`via_pytest` runs `pytest parity/ --impl FILE --model CHECKPOINT --parity-report R` and reads the verdicts
from the JSON report (`run_pytest_parity` returns the whole report); `via_bisect` runs the bisect command
with -v and parses its verdict lines. The mutant catalog, the harness mutants and the report tests all
drive the product through these. `pytest parity/` runs here with `--in-process` by default: the harness
mutants patch the harness in this process, and the catalog saves a child start-up per entry.
"""

from __future__ import annotations

import contextlib
import io
import json
import re
from pathlib import Path
from typing import Any

import pytest

from parity.frontends.bisect import run as bisect_run

PARITY_DIR = Path(__file__).resolve().parent.parent / "parity"
VERDICT_LINE = re.compile(r"^(PASS|FAIL|CANNOT-TEST)\s+(\S+)\s+(.*)$")

# {check: (status, reason, details)}
Verdicts = dict[str, tuple[str, str, str]]


def run_pytest_parity(
    impl: Path, checkpoint: Path, report: Path, *extra: str, in_process: bool = True, verbose: bool = False
) -> tuple[int, str, dict[str, Any]]:
    """`pytest parity/ --impl impl --model checkpoint --parity-report report` by pytest.main in this process
    (the tested code too, with in_process), -q or -v; (exit status, terminal output, the report)."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = pytest.main(
            [str(PARITY_DIR), "-v" if verbose else "-q", "-p", "no:cacheprovider", "--impl", str(impl), "--model", str(checkpoint),
             "--parity-report", str(report), *(["--in-process"] if in_process else []), *extra]  # fmt: skip
        )
    data = json.loads(report.read_text()) if report.is_file() else {}
    return int(code), out.getvalue(), data


def via_pytest(impl: Path, checkpoint: Path, out: Path, *extra: str, in_process: bool = True) -> Verdicts:
    """`pytest parity/ --impl impl --model checkpoint`; the verdicts from its JSON report."""
    code, output, data = run_pytest_parity(impl, checkpoint, out / f"{impl.stem}.json", *extra, in_process=in_process)
    expected = (0, 1) if in_process else (0, 1, 125)  # 125: no check could run in the child
    assert code in expected, f"pytest parity/ --impl {impl.name} ended with exit status {code}:\n{output[-3000:]}"
    return {c["check"]: (c["status"], c["reason"], c["details"]) for c in data["checks"]}


def via_bisect(impl: Path, checkpoint: Path) -> Verdicts:
    """The bisect command on impl, in-process; its verdict lines (and -v details) parsed."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = bisect_run(["--impl", str(impl), "--model", str(checkpoint), "-v"])
    assert code in (0, 1, 125), f"the bisect command exited {code}:\n{out.getvalue()}"
    verdicts: Verdicts = {}
    last = None
    for line in out.getvalue().splitlines():
        m = VERDICT_LINE.match(line)
        if m:
            last = m.group(2)
            verdicts[last] = (m.group(1), m.group(3), "")
        elif last and line.startswith("    "):
            status, reason, details = verdicts[last]
            verdicts[last] = (status, reason, (details + "\n" + line[4:]).strip("\n"))
    return verdicts


