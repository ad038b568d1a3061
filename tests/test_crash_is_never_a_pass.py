"""A crash is never a pass: the harness's own exceptions count only when the harness raised them, and a
check that applies but could not run makes `pytest parity/` exit 125, as the bisect command does.

The end-to-end cases (a forward that raises, one that raises the harness's NotApplicable) are corpus
variants run through both front ends (tests/bisect_fixtures/corpus.py).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from nanogpt.errors import CheckpointError
from parity.checks.check import Check, run_check
from parity.core.errors import HARNESS_DIRS, NotApplicable, raised_by_harness
from parity.core.exit_codes import EXIT_SKIP
from parity.core.verdicts import Status
from parity.frontends.pytest_frontend.plugin import cannot_test_lines


def _raiser(error: Exception, filename: Path):
    """A function that raises error, compiled as if it were written in filename."""
    namespace: dict = {"error": error}
    exec(compile("def run(subject):\n    raise error\n", str(filename), "exec"), namespace)
    return namespace["run"]


@pytest.mark.parametrize("error", [NotApplicable("no such part"), CheckpointError("not this checkpoint")])
def test_the_harness_s_exceptions_from_the_tested_code_are_its_crash(
    error: Exception, tmp_path: Path
) -> None:
    check = Check("logits", "PASS when ...", "the models", _raiser(error, tmp_path / "model.py"))
    verdict = run_check(check, subject=None)  # type: ignore[arg-type]
    assert verdict.status is Status.CANNOT_TEST
    assert verdict.applicable, "an implementation's crash must not read as an absent part"
    assert verdict.reason == f"crashed: {type(error).__name__}: {error}"


def test_the_harness_s_own_exceptions_keep_their_meaning() -> None:
    inside = HARNESS_DIRS[0] / "checks" / "counts.py"
    absent = run_check(Check("own-count", "", "", _raiser(NotApplicable("no count"), inside)), None)  # type: ignore[arg-type]
    assert (absent.status, absent.applicable, absent.reason) == (Status.CANNOT_TEST, False, "no count")
    with pytest.raises(CheckpointError):
        run_check(Check("logits", "", "", _raiser(CheckpointError("bad file"), inside)), None)  # type: ignore[arg-type]


def test_raised_by_harness_reads_the_innermost_frame(tmp_path: Path) -> None:
    for filename, expected in ((tmp_path / "model.py", False), (HARNESS_DIRS[1] / "model.py", True)):
        try:
            _raiser(ValueError("x"), filename)(None)
        except ValueError as e:
            assert raised_by_harness(e) is expected


def _checks(**statuses: tuple[str, bool]) -> list[dict]:
    return [
        {"model": "m", "check": c.replace("_", "-"), "status": s, "reason": "r", "applicable": a}
        for c, (s, a) in statuses.items()
    ]


def test_pytest_exits_125_when_a_check_that_applies_could_not_run() -> None:
    crashed = _checks(logits=("CANNOT-TEST", True), tied_storage=("PASS", True))
    assert cannot_test_lines(crashed) == [
        f"m: cannot test this commit: logits could not run: exit status {EXIT_SKIP} (cannot test), not 0"
    ]
    absent_part = _checks(own_count=("CANNOT-TEST", False), tied_storage=("PASS", True))
    assert cannot_test_lines(absent_part) == []
    assert cannot_test_lines(_checks(own_count=("CANNOT-TEST", False)))  # nothing judged at all
    assert cannot_test_lines(_checks(logits=("FAIL", True), grads=("CANNOT-TEST", True))) == []  # exits 1
