"""A named check, and how its outcome becomes a verdict.

`run_check` turns a check's outcome into a `Verdict`: PASS, FAIL (a `ParityFailure`, whose message names
the cause) or CANNOT-TEST (the implementation lacks what the check needs, cannot be loaded, or crashed
inside the check; the reason says what happened). The checks themselves are listed in
parity/checks/registry.py.
"""

from __future__ import annotations

import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass

import torch

from nanogpt.errors import CheckpointError
from parity.core.compare import ParityFailure
from parity.core.errors import CannotTest, ImplementationError, NotApplicable, raised_by_harness
from parity.core.verdicts import Outcome, Status, Verdict
from parity.subject.subject import Subject


@dataclass(frozen=True)
class Check:
    """A named check: what PASS means, what it needs, and the function that runs it on a Subject."""

    name: str
    meaning: str  # one line: PASS when ...
    needs: str  # what it loads or builds, and where it runs on a twin
    run: Callable[[Subject], Outcome]


def _split_message(check: str, message: str) -> tuple[str, str]:
    """(first line without the [check] tag, the remaining lines)."""
    first, _, rest = message.strip().partition("\n")
    return first.removeprefix(f"[{check}] "), rest


def _crashed(check: Check, error: Exception) -> Verdict:
    """CANNOT-TEST: the implementation raised inside the check; it cannot be judged on this."""
    first = f"crashed: {type(error).__name__}: {error}".splitlines()[0]
    return Verdict(check.name, Status.CANNOT_TEST, first, traceback.format_exc())


def run_check(check: Check, subject: Subject) -> Verdict:
    """One check's verdict, with its wall time in seconds (rounded to 3 places)."""
    start = time.perf_counter()
    verdict = _judge(check, subject)
    verdict.seconds = round(time.perf_counter() - start, 3)
    return verdict


def _judge(check: Check, subject: Subject) -> Verdict:
    """One check's verdict. CheckpointError propagates: a bad checkpoint is user input, not the code's.

    The harness's exceptions count only when the harness raised them: the same exception from the tested
    code (which may import parity) is the implementation's crash (parity.core.errors.raised_by_harness).
    """
    try:
        torch.manual_seed(0)  # an implementation with randomness fails the same way every run
        outcome = check.run(subject)
    except Exception as e:
        if not raised_by_harness(e):
            return _crashed(check, e)
        if isinstance(e, ParityFailure):
            message = _split_message(check.name, str(e))
            return Verdict(check.name, Status.FAIL, *message, records=e.records, profiles=e.profiles)
        if isinstance(e, NotApplicable):
            message = _split_message(check.name, str(e))
            return Verdict(check.name, Status.CANNOT_TEST, *message, applicable=False)
        if isinstance(e, (CannotTest, ImplementationError)):
            return Verdict(check.name, Status.CANNOT_TEST, *_split_message(check.name, str(e)))
        if isinstance(e, CheckpointError):
            raise
        return _crashed(check, e)
    return Verdict(
        check.name, Status.PASS, outcome.reason, outcome.details, outcome.records, outcome.profiles
    )
