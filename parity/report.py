"""The JSON parity report (`--parity-report PATH`): every compared tensor's errors and the environment.

Two runs write reports that can be diffed: records are sorted, numbers are plain floats, and nothing
time-dependent is stored except in the clearly separate `timing` section.
"""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path
from typing import Any

from nanogpt.atomic import atomic_file
from nanogpt.paths import resolve_output_file
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
        out = resolve_output_file(path, "--parity-report")  # through a symlink; never onto a device
        with atomic_file(out, "w") as fh:
            json.dump(self.to_json(), fh, indent=2, allow_nan=True)
            fh.write("\n")
        return out
