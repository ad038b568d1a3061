"""Verdicts: what one named check says about an implementation, as plain data.

A verdict is PASS, FAIL or CANNOT-TEST with a one-line reason, and carries the comparison records it rests
on, so a report shows what failed and by how much, not only what passed. How a check's outcome becomes a
verdict is parity/checks/check.py.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from parity.core.compare import Comparison

# Width of the check-name column of verdict lines (the longest registry name).
NAME_WIDTH = 16


class Status(str, Enum):
    """The verdict of one check."""

    PASS = "PASS"
    FAIL = "FAIL"
    CANNOT_TEST = "CANNOT-TEST"


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
    seconds: float | None = field(default=None, compare=False)  # wall time of the check (run_check)

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
            "seconds": self.seconds,
        }

    @classmethod
    def from_json(cls, d: Any) -> Verdict:
        """The verdict to_json wrote (sent by the sandbox's child); ValueError when d is not exactly one."""
        keys = {"check", "status", "reason", "details", "records", "profiles", "applicable"}
        if not isinstance(d, dict) or set(d) not in (keys, keys | {"seconds"}):
            raise ValueError(f"not a verdict: {d!r:.200}")
        seconds = d.get("seconds")
        if seconds is not None and (type(seconds) not in (int, float) or not 0 <= seconds < float("inf")):
            raise ValueError(f"not a verdict's wall time: {seconds!r:.200}")
        texts = [d[k] for k in ("check", "reason", "details")]
        if not all(isinstance(t, str) for t in texts) or not isinstance(d["records"], list):
            raise ValueError(f"not a verdict: {d!r:.200}")
        if not isinstance(d["applicable"], bool):
            raise ValueError(f"not a verdict's applicable flag: {d['applicable']!r:.200}")
        if not isinstance(d["profiles"], list) or not all(isinstance(p, dict) for p in d["profiles"]):
            raise ValueError(f"not a verdict's profiles: {d['profiles']!r:.200}")
        check, reason, details = texts
        records = [Comparison.from_json(r) for r in d["records"]]
        verdict = cls(check, Status(d["status"]), reason, details, records, d["profiles"], d["applicable"])
        verdict.seconds = None if seconds is None else float(seconds)
        return verdict


def format_verdicts(verdicts: list[Verdict], details: bool = False) -> str:
    """One line per check; with details, each check's details indented below it."""
    lines = []
    for v in verdicts:
        lines.append(v.line())
        if details and v.details:
            lines += [f"    {line}" for line in v.details.rstrip().splitlines()]
    return "\n".join(lines)
