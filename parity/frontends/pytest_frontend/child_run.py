"""`pytest parity/ --impl PATH`: tested code runs in a child process (parity/sandbox/parent.py), not pytest's.

Foreign code may exit, hang or patch transformers; imported into pytest's own process it would end or
hang the run, or hide its own bug. So with --impl, `pytest_configure` only checks the path, and the
`verdict_of` fixture (parity/conftest.py) starts one child per target that runs exactly the checks
selected for it (after -k and -m); each test_check reads its verdict from that run. The load notes and
the tested code's output come back for the terminal summary. A check that could not run (the code exited,
crashed, hung, changed transformers or could not be imported or built) makes the run exit EXIT_CANNOT_TEST
instead of 0, by the bisect command's rule (parity/core/exit_codes.py), so that CI never reads a crash as
green. `--in-process` imports the code into pytest's process instead.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import pytest

from parity.core.errors import UsageError
from parity.core.exit_codes import EXIT_SKIP
from parity.frontends.options import parse_seconds
from parity.sandbox.parent import SandboxResult, default_timeout, output_summary, run_checks_in_child
from parity.subject.progress import note
from parity.subject.targets import ParityTarget

EXIT_CANNOT_TEST = EXIT_SKIP  # 125, as the bisect command exits when nothing could be judged
TIMEOUT_OPTION = "--impl-timeout"


@dataclass(frozen=True)
class ChildRun:
    """How --impl is run: the path as typed, --run-module, and --impl-timeout (None: by the model's size)."""

    impl: str
    run_module: bool
    timeout: float | None

    def timeout_for(self, target: ParityTarget) -> float:
        """The child's wall-clock limit on target."""
        return self.timeout if self.timeout is not None else default_timeout(target)


# Set in pytest_configure when --impl runs in a child; the results (and, from pytest-xdist workers, their
# notes and output) per target name.
CHILD_RUN_KEY = pytest.StashKey[ChildRun]()
RESULTS_KEY = pytest.StashKey[dict[str, SandboxResult]]()


def parse_timeout(text: str | float | None, in_process: bool) -> float | None:
    """--impl-timeout as seconds (None when not given); UsageError unless a positive, finite number."""
    if text is None:
        return None
    seconds = parse_seconds(TIMEOUT_OPTION, text)
    if in_process:
        raise UsageError(
            f"{TIMEOUT_OPTION} limits the child process that runs --impl; --in-process runs the code in "
            "pytest's own process, without a limit: drop one of them"
        )
    return seconds


def selected_checks(items: Iterable[pytest.Item], target: ParityTarget) -> list[str]:
    """The checks whose test_check items on target were collected and selected (-k, -m, --lf applied)."""
    checks = []
    for item in items:
        params = getattr(getattr(item, "callspec", None), "params", {})
        if getattr(item, "originalname", None) == "test_check" and params.get("parity_target") is target:
            checks.append(params["check"])
    return checks


def run_child(config: pytest.Config, target: ParityTarget, checks: list[str]) -> SandboxResult:
    """The verdicts of the checks on target from one child process; a bad checkpoint ends the run."""
    child = config.stash[CHILD_RUN_KEY]
    timeout = child.timeout_for(target)
    note(
        f"parity implementation {child.impl} on {target.name}: {len(checks)} check(s), checked in a child "
        f"process, timeout {timeout:g} s ({TIMEOUT_OPTION} sets it)"
    )
    result = run_checks_in_child(
        child.impl,
        child.run_module,
        target,
        checks,
        config.getoption("--tied-decay") == "yes",
        timeout,
        limit_option=TIMEOUT_OPTION,
        loader=config.getoption("--loader"),
        mapping=config.getoption("--mapping"),
        profiles=bool(config.getoption("--parity-report")),
    )
    if result.checkpoint_error:  # the user's input, not a verdict: as test_check does in this process
        pytest.exit(
            f"cannot load the checkpoint: {result.checkpoint_error}", returncode=pytest.ExitCode.USAGE_ERROR
        )
    config.stash.setdefault(RESULTS_KEY, {})[target.name] = result
    return result


def worker_part(config: pytest.Config) -> dict[str, dict[str, Any]]:
    """What an xdist worker hands the controller for its terminal summary: notes and output per target."""
    return {
        name: {"notes": r.notes, "output": r.output} for name, r in config.stash.get(RESULTS_KEY, {}).items()
    }


def merge_worker_part(config: pytest.Config, part: dict[str, dict[str, Any]]) -> None:
    """pytest-xdist (controller): keep the first worker's notes and output of each target (each worker's
    child ran the same checks on the same code)."""
    results = config.stash.setdefault(RESULTS_KEY, {})
    for name, r in part.items():
        results.setdefault(name, SandboxResult([], str(r["output"]), "", [str(n) for n in r["notes"]]))


def summary_lines(config: pytest.Config) -> list[str]:
    """Per target: the load notes and the tested code's output (its last lines with -v, else a count)."""
    details = config.getoption("verbose") > 0
    lines = []
    for name, result in config.stash.get(RESULTS_KEY, {}).items():
        shown = output_summary(result, details)
        if shown:
            lines += [f"{name}: the tested code, run in a child process:", *(f"  {line}" for line in shown)]
    return lines
