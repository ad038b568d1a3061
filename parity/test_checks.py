"""Every registered check (parity/registry.py) on every target: one test each, its id the check's name.

A FAIL fails the test with the check's verdict line and its cause; a CANNOT-TEST skips it with the reason.
Every verdict, whatever its status, reaches the JSON report and the verdict table at the end of the run.
"""

from __future__ import annotations

import pytest

from nanogpt.hf import CheckpointError
from parity.plugin import record_verdict
from parity.registry import CHECK_NAMES, CHECKS
from parity.subject import Subject
from parity.verdicts import Status, run_check


@pytest.mark.parametrize("check", CHECK_NAMES)
def test_check(check: str, subject: Subject, request: pytest.FixtureRequest) -> None:
    try:
        verdict = run_check(CHECKS[check], subject)
    except CheckpointError as e:  # the user's input, not a verdict: one line, the run's usage-error status
        pytest.exit(f"cannot load the checkpoint: {e}", returncode=pytest.ExitCode.USAGE_ERROR)
    record_verdict(request.config, subject.target.name, verdict)
    message = verdict.line() + (f"\n{verdict.details}" if verdict.details else "")
    if verdict.status is Status.FAIL:
        pytest.fail(message, pytrace=False)
    if verdict.status is Status.CANNOT_TEST:
        pytest.skip(f"CANNOT-TEST {check}: {verdict.reason}")
