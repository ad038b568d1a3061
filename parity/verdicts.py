"""Verdicts: what one named check says about an implementation, and how a check's outcome becomes one.

`run_check` turns a check's outcome into a `Verdict`: PASS, FAIL (a `ParityFailure`, whose message names
the cause) or CANNOT-TEST (the implementation lacks what the check needs, cannot be loaded, or crashed
inside the check; the reason says what happened). Every verdict carries the comparison records it rests
on, so a report shows what failed and by how much, not only what passed. The checks themselves are listed
in parity/registry.py.
"""

from __future__ import annotations

import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

import torch

from nanogpt.hf import CheckpointError
from parity.compare import Comparison, ParityFailure
from parity.impl import ImplementationError
from parity.subject import Subject

# Width of the check-name column of verdict lines (the longest registry name).
NAME_WIDTH = 16


class Status(str, Enum):
    """The verdict of one check."""

    PASS = "PASS"
    FAIL = "FAIL"
    CANNOT_TEST = "CANNOT-TEST"


class CannotTest(Exception):
    """The check cannot run on this implementation (something it needs is absent); the message says why."""


class NotApplicable(CannotTest):
    """The implementation has no such part (no get_num_params, no dropout, no configure_optimizers).

    Still CANNOT-TEST in every report, but unlike code that could not be run, an absent part is a design
    choice of a correct model: the bisect command does not skip a commit for it unless the check was named.
    """


@dataclass
class Outcome:
    """What a passing check says about itself, and the comparisons it made."""

    reason: str
    details: str = ""
    records: list[Comparison] = field(default_factory=list)
    profiles: list[dict[str, Any]] = field(default_factory=list)  # per-module differences (diagnose.py)


@dataclass
class Verdict:
    """One check's status, a one-line reason, details for -v, and the comparison records."""

    check: str
    status: Status
    reason: str
    details: str = ""
    records: list[Comparison] = field(default_factory=list)
    profiles: list[dict[str, Any]] = field(default_factory=list)
    applicable: bool = True  # False: CANNOT-TEST because the implementation has no such part (NotApplicable)

    def line(self) -> str:
        """The verdict line every front end prints: status, check, reason."""
        return f"{self.status.value:<11}  {self.check:<{NAME_WIDTH}}  {self.reason}"

    def to_json(self) -> dict[str, Any]:
        """The verdict for the JSON report."""
        return {
            "check": self.check,
            "status": self.status.value,
            "reason": self.reason,
            "details": self.details,
            "records": [r.to_json() for r in self.records],
            "profiles": self.profiles,
            "applicable": self.applicable,
        }

    @classmethod
    def from_json(cls, d: Any) -> Verdict:
        """The verdict that to_json wrote (sent by the sandbox's child); ValueError when d is not exactly one."""
        keys = {"check", "status", "reason", "details", "records", "profiles", "applicable"}
        if not isinstance(d, dict) or set(d) != keys:
            raise ValueError(f"not a verdict: {d!r:.200}")
        texts = [d[k] for k in ("check", "reason", "details")]
        if not all(isinstance(t, str) for t in texts) or not isinstance(d["records"], list):
            raise ValueError(f"not a verdict: {d!r:.200}")
        if not isinstance(d["applicable"], bool):
            raise ValueError(f"not a verdict's applicable flag: {d['applicable']!r:.200}")
        if not isinstance(d["profiles"], list) or not all(isinstance(p, dict) for p in d["profiles"]):
            raise ValueError(f"not a verdict's profiles: {d['profiles']!r:.200}")
        check, reason, details = texts
        records = [Comparison.from_json(r) for r in d["records"]]
        return cls(check, Status(d["status"]), reason, details, records, d["profiles"], d["applicable"])


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


def run_check(check: Check, subject: Subject) -> Verdict:
    """One check's verdict. CheckpointError propagates: a bad checkpoint is the user's input, not the code's."""
    try:
        torch.manual_seed(0)  # an implementation with randomness fails the same way every run
        outcome = check.run(subject)
    except ParityFailure as e:
        return Verdict(check.name, Status.FAIL, *_split_message(check.name, str(e)), records=e.records,
                       profiles=e.profiles)  # fmt: skip
    except NotApplicable as e:
        return Verdict(check.name, Status.CANNOT_TEST, *_split_message(check.name, str(e)), applicable=False)
    except (CannotTest, ImplementationError) as e:
        return Verdict(check.name, Status.CANNOT_TEST, *_split_message(check.name, str(e)))
    except CheckpointError:
        raise
    except Exception as e:  # the implementation crashed inside the check: it cannot be judged on this
        first = f"crashed: {type(e).__name__}: {e}".splitlines()[0]
        return Verdict(check.name, Status.CANNOT_TEST, first, traceback.format_exc())
    return Verdict(check.name, Status.PASS, outcome.reason, outcome.details, outcome.records, outcome.profiles)


def format_verdicts(verdicts: list[Verdict], details: bool = False) -> str:
    """One line per check; with details, each check's details indented below it."""
    lines = []
    for v in verdicts:
        lines.append(v.line())
        if details and v.details:
            lines += [f"    {line}" for line in v.details.rstrip().splitlines()]
    return "\n".join(lines)
