"""Every corpus variant (tests/bisect_fixtures/corpus.py) gets its expected verdicts from every front end.

A front end is one entry of FRONT_ENDS: a function running an implementation and returning its exit code
and the verdict of each check, read from the JSON report it writes (`--parity-report`). The bisect command
and `pytest parity/ --impl` run every variant, hostile ones included: both run the tested code in a child
process. With -m slow both run the correct ones (and those marked float32) again in float32, the CUDA
default. Adding a front end is one FRONT_ENDS entry.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from bisect_fixtures.corpus import CORPUS, END_MARGIN_S, HOSTILE_TIMEOUT_S, TABLED_CHECKS, Variant
from front_ends import pytest_parity_argv

from parity.core.verdicts import Status

REPO_ROOT = Path(__file__).resolve().parents[1]


@dataclass
class FrontEndRun:
    """What a front end said about one implementation."""

    exit_code: int
    expected_exit_code: int  # what this front end must exit with for the variant's expected verdicts
    verdicts: dict[str, Status]
    output: str
    seconds: float


def _env(tmp_path: Path) -> dict[str, str]:
    env = dict(
        os.environ, NANOGPT_PARITY_CACHE=os.environ.get("NANOGPT_PARITY_CACHE", str(tmp_path / "cache"))
    )
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))
    return env


def report_verdicts(report: Path) -> dict[str, Status]:
    """Each check's status in a front end's JSON report; none when the run ended without one."""
    checks = json.loads(report.read_text())["checks"] if report.is_file() else []
    return {c["check"]: Status(c["status"]) for c in checks}


def _timed_run(argv: list[str], env: dict[str, str], tmp_path: Path) -> tuple[int, str, float]:
    """(exit status, stdout + stderr, seconds) of argv run from a scratch folder."""
    start = time.monotonic()
    done = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    return done.returncode, done.stdout + done.stderr, time.monotonic() - start


def run_bisect(variant: Variant, impl: Path, tmp_path: Path, *extra: str) -> FrontEndRun:
    """`python -m parity.frontends.bisect --impl IMPL ...` (every check, the default), from a scratch folder;
    the verdicts from its JSON report."""
    report = tmp_path / "bisect-report.json"
    bisect = [sys.executable, "-m", "parity.frontends.bisect", "--impl", str(impl)]
    argv = [*bisect, *variant.options, *extra, "--parity-report", str(report)]
    code, output, seconds = _timed_run(argv, _env(tmp_path), tmp_path)
    return FrontEndRun(code, variant.exit_code, report_verdicts(report), output, seconds)


def run_parity_suite(variant: Variant, impl: Path, tmp_path: Path, *extra: str) -> FrontEndRun:
    """`python -m pytest parity/ --impl IMPL ...` on the bisect command's small model, from a scratch folder;
    the verdicts from its JSON report (none when the run ended without one)."""
    from parity.frontends.bisect import resolve_model

    checkpoint = resolve_model("small", "cpu", None).ensure_checkpoint()
    report = tmp_path / "parity-report.json"
    options = (*variant.pytest_options, *extra)
    argv = pytest_parity_argv(impl, checkpoint, "--parity-report", str(report), *options)
    env = dict(_env(tmp_path), PYTHONDONTWRITEBYTECODE="1")
    code, output, seconds = _timed_run(argv, env, tmp_path)
    return FrontEndRun(code, variant.pytest_exit_code, report_verdicts(report), output, seconds)


@dataclass(frozen=True)
class FrontEnd:
    """A way to run an implementation, the variants it applies to, and marks (slow: opt-in)."""

    run: Callable[[Variant, Path, Path], FrontEndRun]
    applies: Callable[[Variant], bool]
    marks: tuple[pytest.MarkDecorator, ...] = ()


FRONT_ENDS: dict[str, FrontEnd] = {
    "bisect": FrontEnd(run_bisect, lambda v: True),
    "pytest": FrontEnd(run_parity_suite, lambda v: True),
    # float32 is the CUDA default: a correct implementation must pass there too, and the variants marked
    # float32 keep their verdicts (opt-in: -m slow).
    "bisect-float32": FrontEnd(
        lambda v, impl, tmp: run_bisect(v, impl, tmp, "--dtype", "float32"),
        lambda v: v.correct or v.float32,
        (pytest.mark.slow,),
    ),
    "pytest-float32": FrontEnd(
        lambda v, impl, tmp: run_parity_suite(v, impl, tmp, "--dtype", "float32"),
        lambda v: v.correct or v.float32,
        (pytest.mark.slow,),
    ),
}
# Expected verdicts that wait for a fix elsewhere, as strict xfails: when the fix lands they XPASS and
# fail, and the entry goes. (variant, front end) -> the reason.
# What the default run (and CI) covers: one variant of each real-world shape and each kind of hostility, by
# the bisect command, and the pytest front end on a correct and a hostile variant; `-m slow` runs every
# (front end, variant) pair. Each case starts two or three interpreters (15-20 s).
DEFAULT_CASES = {
    ("bisect", "script-style"),
    ("bisect", "mingpt-style-factory-config"),
    ("bisect", "llmc-style-zero-stage-no-dropout-sdpa"),
    ("bisect", "package-with-relative-imports"),
    ("bisect", "exit-0-in-forward"),
    ("bisect", "os-exit-1-at-import"),
    ("bisect", "hang-in-forward"),
    ("bisect", "patches-transformers"),
    ("bisect", "patches-transformers-for-its-width"),
    ("bisect", "hf-lineage-conv1d-lm-head-decoder"),
    ("bisect", "book-style-untied"),
    ("bisect", "rmsnorm-no-bias"),
    ("pytest", "mingpt-style-factory-config"),
    ("pytest", "exit-0-in-forward"),
    ("pytest", "forward-raises-not-applicable"),
}
PENDING: dict[tuple[str, str], str] = {}  # (variant, front end) -> why it is expected to fail, for now


def _cases() -> list:
    cases = []
    for front_end, spec in FRONT_ENDS.items():
        for v in CORPUS:
            if spec.applies(v):
                reason = PENDING.get((v.name, front_end))
                marks = [*spec.marks, *([pytest.mark.xfail(strict=True, reason=reason)] if reason else [])]
                if (front_end, v.name) not in DEFAULT_CASES and pytest.mark.slow not in marks:
                    marks.append(pytest.mark.slow)
                cases.append(pytest.param(front_end, v, id=f"{front_end}-{v.name}", marks=marks))
    return cases


def _files(directory: Path) -> set[Path]:
    return {p.relative_to(directory) for p in directory.rglob("*")}


@pytest.mark.parametrize("front_end, variant", _cases())
def test_corpus_variant_gets_its_expected_verdicts(front_end: str, variant: Variant, tmp_path: Path) -> None:
    impl = variant.write(tmp_path / "repo")
    before = _files(tmp_path / "repo")
    run = FRONT_ENDS[front_end].run(variant, impl, tmp_path)
    assert run.exit_code == run.expected_exit_code, run.output
    assert run.verdicts == variant.expected, run.output
    for text in variant.says:
        assert text in run.output, f"{text!r} not in:\n{run.output}"
    if variant.hostile:
        assert run.seconds < HOSTILE_TIMEOUT_S + END_MARGIN_S, f"took {run.seconds:.0f} s\n{run.output}"
    # Nothing is written into the user's repository: no __pycache__, no file the code wrote.
    assert _files(tmp_path / "repo") == before


def test_corpus_tables_every_registered_check() -> None:
    """A new check gets its expected verdict for every variant before the corpus runs it."""
    from parity.checks.registry import CHECK_NAMES

    assert TABLED_CHECKS == CHECK_NAMES
