"""The JSON parity report (`--parity-report PATH`): every compared tensor's errors and the environment.

Two runs write reports that can be diffed: records are sorted, numbers are plain floats, and nothing
time-dependent is stored except in the clearly separate `timing` section.
"""

from __future__ import annotations

import json
import os
import platform
import tempfile
from pathlib import Path
from typing import Any

from parity.compare import Comparison


class ParityReport:
    """Collects comparison records and check outcomes during a run; writes them atomically at the end."""

    def __init__(self, environment: dict[str, Any]) -> None:
        self.environment = dict(environment, python=platform.python_version(), machine=platform.machine())
        self.records: list[dict[str, Any]] = []
        self.checks: list[dict[str, Any]] = []
        self.timing: dict[str, float] = {}

    def add(self, model: str, records: list[Comparison]) -> None:
        """Store comparison records of one model."""
        for r in records:
            self.records.append(dict(r.to_json(), model=model))

    def add_check(self, model: str, check: str, passed: bool, message: str = "") -> None:
        """Store the verdict of a named check."""
        self.checks.append({"model": model, "check": check, "passed": passed, "message": message})

    def to_json(self) -> dict[str, Any]:
        """The whole report as a JSON-serializable dict, in a stable order."""
        key = lambda d: (d["model"], d.get("check", ""), d.get("tensor", ""))  # noqa: E731
        return {
            "environment": self.environment,
            "checks": sorted(self.checks, key=key),
            "records": sorted(self.records, key=key),
            "timing": self.timing,
        }

    def write(self, path: str | os.PathLike[str]) -> Path:
        """Write the report atomically (temporary file in the same directory, then rename)."""
        out = Path(path)
        out.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", dir=out.parent)
        try:
            with os.fdopen(fd, "w") as fh:
                json.dump(self.to_json(), fh, indent=2, allow_nan=True)
                fh.write("\n")
            os.replace(tmp, out)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return out
