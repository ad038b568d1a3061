"""The JSON parity report (`--parity-report PATH`): every check's verdict, its comparisons, the environment.

`pytest parity/` and the bisect command write the same schema through `ParityReport.write`. Every verdict
is stored, passing, failing or cannot-test, with its reason, details and comparison records, so a failing
run's report says what failed and by how much. The file is strict JSON (non-finite numbers become the
strings "nan", "inf" and "-inf") and two runs write reports that can be diffed: entries are sorted and
nothing time-dependent is stored except in the clearly separate `timing` section (each check's wall time
per model, and synthetic checkpoint generation). Its fields are documented in docs/running.md; a change
of their meaning raises `SCHEMA_VERSION`. The report never replaces what the run reads: the `--impl` file
or package and each checkpoint are refused as its path (`check_report_path`, before the run and again
when writing).
"""

from __future__ import annotations

import json
import math
import os
import platform
import re
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

from nanogpt.atomic import atomic_file
from nanogpt.paths import refuse_inputs, resolve_output_file
from parity.core.errors import ImplementationError
from parity.core.verdicts import Verdict
from parity.foreign.impl import check_implementation_path
from parity.subject.loading import versions
from parity.subject.targets import ParityTarget

SCHEMA_VERSION = 1  # raised when a field of the report changes meaning or goes away
PACKAGE = "nanogpt-parity"
PYPROJECT = Path(__file__).resolve().parents[2] / "pyproject.toml"


def package_version() -> str:
    """The installed package's version, else the checkout's pyproject.toml version, else "unknown"."""
    try:
        return metadata.version(PACKAGE)
    except metadata.PackageNotFoundError:
        pass
    try:
        found = re.search(r'^version\s*=\s*"([^"]+)"', PYPROJECT.read_text(), re.MULTILINE)
    except OSError:
        found = None
    return found.group(1) if found else "unknown"


def report_inputs(targets: Sequence[ParityTarget], impl: str | None) -> list[tuple[str, Path]]:
    """What a report must never replace: the --impl file or package and each target's checkpoint."""
    inputs = [("the checkpoint", t.checkpoint) for t in targets if t.checkpoint is not None]
    if impl is not None:
        try:
            inputs.insert(0, ("--impl", check_implementation_path(impl)))
        except ImplementationError:
            pass  # refused by the option's own check
    return inputs


def check_report_path(
    path: str | os.PathLike[str], targets: Sequence[ParityTarget], impl: str | None
) -> Path:
    """The validated --parity-report path: a regular or new file, never an input (OutputPathError)."""
    out = resolve_output_file(path, "--parity-report")  # through a symlink; never onto a device
    refuse_inputs(out, report_inputs(targets, impl), "--parity-report")
    return out


class ParityReport:
    """Collects comparison records and check outcomes during a run; writes them atomically at the end."""

    def __init__(self, environment: dict[str, Any]) -> None:
        self.environment = dict(environment, python=platform.python_version(), machine=platform.machine())
        self.records: list[dict[str, Any]] = []
        self.checks: list[dict[str, Any]] = []
        self.timing: dict[str, float] = {}
        self.profiles: list[dict[str, Any]] = []  # per-module difference profiles of diagnosed logits
        # Per model, the load summary of the code under test (discovery, tensor mapping, what was left out).
        self.load: dict[str, list[str]] = {}
        # What the run read, which write never replaces (report_inputs); set by for_targets.
        self.targets: list[ParityTarget] = []
        self.impl: str | None = None

    @classmethod
    def for_targets(cls, targets: Sequence[ParityTarget], impl: str | None = None) -> ParityReport:
        """An empty report on targets: implementation (None: the reference), versions, device, models."""
        models = [
            {"name": t.name, "weights": t.weights, "reason": t.reason, "dtype": t.dtype_name} for t in targets
        ]
        report = cls(
            {
                "implementation": "reference" if impl is None else str(impl),
                "package_version": package_version(),
                **versions(),
                "device": targets[0].device,
                "models": models,
            }
        )
        report.targets = list(targets)
        report.impl = impl
        return report

    def add_verdict(self, model: str, verdict: Verdict) -> None:
        """Store one check's verdict on one model, and its comparison records."""
        entry = dict(verdict.to_json(), model=model)
        seconds = entry.pop("seconds")
        if seconds is not None:
            self.timing[f"{model}: check {verdict.check} (s)"] = seconds
        self.records.extend(dict(r, model=model) for r in entry.pop("records"))
        self.profiles.extend(dict(p, model=model) for p in entry.pop("profiles"))
        self.checks.append(entry)

    def to_json(self) -> dict[str, Any]:
        """The whole report as a JSON-serializable dict, in a stable order."""
        key = lambda d: (d["model"], d.get("check", ""), d.get("tensor", ""))  # noqa: E731
        return {
            "schema_version": SCHEMA_VERSION,
            "environment": self.environment,
            "load": self.load,
            "checks": sorted(self.checks, key=key),
            "records": sorted(self.records, key=key),
            "profiles": self.profiles,
            "timing": self.timing,
        }

    def write(self, path: str | os.PathLike[str]) -> Path:
        """Write the report atomically (temporary file in the same directory, then rename), never onto an
        input of the run (OutputPathError)."""
        out = check_report_path(path, self.targets, self.impl)  # checkpoints generated since count too
        with atomic_file(out, "w") as fh:
            json.dump(strict_json(self.to_json()), fh, indent=2, allow_nan=False)
            fh.write("\n")
        return out


def strict_json(value: Any) -> Any:
    """value, every non-finite float replaced by "nan", "inf" or "-inf" (strict JSON has no such numbers)."""
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, dict):
        return {k: strict_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [strict_json(v) for v in value]
    return value
