"""Every registered check (parity/checks/registry.py) on every target: one test each, its id the check's name.

A FAIL fails the test with the check's verdict line and its cause (with -v, its details too); a CANNOT-TEST
skips it. Every verdict, whatever its status, reaches the JSON report and the verdict table at the end of
the run, which shows statuses and, below them, each CANNOT-TEST's reason: each text is printed once.
The verdict comes from `verdict_of` (parity/conftest.py): the check run here, or, with --impl, read from
the child process that ran it.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from nanogpt.errors import CheckpointError
from parity.checks.registry import CHECK_NAMES
from parity.core.verdicts import Status, Verdict
from parity.frontends.pytest_frontend.plugin import SHORT_FAILURE_KEY, record_verdict
from parity.subject.targets import ParityTarget


@pytest.mark.parametrize("check", CHECK_NAMES)
def test_check(
    check: str,
    parity_target: ParityTarget,
    verdict_of: Callable[[str], Verdict],
    request: pytest.FixtureRequest,
) -> None:
    try:
        verdict = verdict_of(check)
    except CheckpointError as e:  # the user's input, not a verdict: one line, the run's usage-error status
        pytest.exit(f"cannot load the checkpoint: {e}", returncode=pytest.ExitCode.USAGE_ERROR)
    record_verdict(request.config, parity_target.name, verdict)
    message = verdict.line()
    if verdict.details:
        verbose = request.config.getoption("verbose") > 0
        message += f"\n{verdict.details}" if verbose else " (-v shows the details)"
    if verdict.status is Status.FAIL:
        request.node.stash[SHORT_FAILURE_KEY] = f"FAIL {check}"
        pytest.fail(message, pytrace=False)
    if verdict.status is Status.CANNOT_TEST:
        pytest.skip(f"CANNOT-TEST {check}: the reason is under the parity verdicts table")
