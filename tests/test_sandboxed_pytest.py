"""`pytest parity/ --impl`: the tested code runs in a child process, and the run reads as an in-process one.

A sandboxed run's JSON report holds the same checks, records and profiles as an `--in-process` run on the
same implementation (a failing one, whose logits check writes profiles, and a correct one); the tested
code's output is hidden without -v and shown with it. Hostile code (an exit at import, sys.exit(0) in
forward, a hang past --impl-timeout) cannot end or hang the pytest run: every check is CANNOT-TEST with
what happened, the run exits 125 within the timeout plus a margin, and nothing is written next to the
code. The corpus (tests/test_corpus.py) sends every variant through the same front end.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from bisect_fixtures.corpus import END_MARGIN_S
from bisect_fixtures.variants import write_model
from front_ends import pytest_parity_argv, run_batch

from parity.checks.registry import CHECK_NAMES
from parity.core.errors import UsageError
from parity.frontends.bisect import resolve_model
from parity.frontends.pytest_frontend import child_run
from parity.frontends.pytest_frontend.child_run import (
    CHILD_RUN_KEY,
    EXIT_CANNOT_TEST,
    ChildRun,
    parse_timeout,
    run_child,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
pytest_plugins = ["pytester"]
# Edits of the upstream-style template (bisect_fixtures/variants.py): the exact GELU fails logits (with a
# profile), loss, grads, inference and train-steps; print-spam passes and prints 200 lines per forward.
IMPLEMENTATIONS = {"failing": "exact-gelu", "correct": "print-spam"}
SPAM = "spam 199"
Run = tuple[int, str, dict[str, Any]]  # exit status, terminal output, report


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[str, bool], Run]:
    """Each implementation through `pytest parity/ --impl` with --in-process and in a child, all four runs
    in one child process; the failing one's child run with -v (the correct one's without), so that both ways
    of showing its output are seen."""
    checkpoint = resolve_model("small", "cpu", None).ensure_checkpoint()
    cases, reports = {}, {}
    for kind, edit in IMPLEMENTATIONS.items():
        tmp = tmp_path_factory.mktemp(kind)
        impl = write_model(tmp / "repo", edit)
        for in_process in (True, False):
            name = f"{kind}-{'in-process' if in_process else 'child'}"
            reports[kind, in_process] = tmp / f"report-{name}.json"
            verbosity = "-v" if kind == "failing" and not in_process else "-q"
            where = ["--in-process"] if in_process else []
            cases[name] = [
                verbosity,
                "--impl",
                str(impl),
                "--model",
                str(checkpoint),
                "--parity-report",
                str(reports[kind, in_process]),
                *where,
            ]
    # One thread: the sandbox's child runs with its caller's count, so both runs round alike.
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env.pop("PYTEST_ADDOPTS", None)
    results = run_batch("pytest", cases, env, tmp_path_factory.mktemp("runs") / "results.json")
    out: dict[tuple[str, bool], Run] = {}
    for (kind, in_process), report in reports.items():
        result = results[f"{kind}-{'in-process' if in_process else 'child'}"]
        out[kind, in_process] = (result["rc"], result["stdout"], json.loads(report.read_text()))
    return out


@pytest.mark.parametrize("kind", IMPLEMENTATIONS)
def test_a_child_run_reports_what_an_in_process_run_does(
    kind: str, runs: dict[tuple[str, bool], Run]
) -> None:
    (code_here, out_here, here), (code_child, out_child, child) = runs[kind, True], runs[kind, False]
    assert code_child == code_here == (1 if kind == "failing" else 0), out_child[-3000:]
    assert "checked in a child process, timeout 120 s" in out_child and "child process" not in out_here
    assert [c["check"] for c in child["checks"]] == sorted(CHECK_NAMES)
    for part in ("checks", "records", "profiles"):
        assert child[part] == here[part], f"{part} differ:\n{child[part]}\n{here[part]}"
    if kind == "failing":
        failed = {c["check"] for c in child["checks"] if c["status"] == "FAIL"}
        assert {"logits", "loss", "grads"} <= failed and child["profiles"], failed
        assert any(not r["passed"] for r in child["records"])


def test_the_tested_codes_output_is_shown_only_with_v(runs: dict[tuple[str, bool], Run]) -> None:
    _, quiet, _ = runs["correct", False]
    assert SPAM not in quiet and "load: loaded" in quiet
    assert "line(s); -v shows them" in quiet
    _, verbose, _ = runs["failing", False]
    assert "captured output of the tested code (1 lines):\n    | number of parameters: 0.13M" in verbose


def _pytest_parity(impl: Path, cwd: Path, *extra: str) -> tuple[subprocess.CompletedProcess[str], float]:
    """`python -m pytest parity/ --impl impl` in a fresh interpreter (the code may kill it), from cwd."""
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))
    checkpoint = resolve_model("small", "cpu", None).ensure_checkpoint()
    start = time.monotonic()
    argv = pytest_parity_argv(impl, checkpoint, *extra)
    done = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    return done, time.monotonic() - start


# (template edit, extra options, what the verdicts say, the child's timeout). The corpus runs
# exit-0-in-forward by default and every hostile variant with -m slow; this exit at import is cheap.
HOSTILE = [
    pytest.param(
        "os-exit-0-at-import", (), "exited with status 0 during import", 120, id="os-exit-0-at-import"
    ),
    pytest.param(
        "exit-in-forward",
        (),
        "exited with status 0 during check logits",
        120,
        id="sys-exit-0-in-forward",
        marks=pytest.mark.slow,
    ),
    pytest.param(
        "hang-in-forward",
        ("--impl-timeout", "15"),
        "timed out after 15 s during",
        15,
        id="hang-in-forward",
        marks=pytest.mark.slow,
    ),
]


@pytest.mark.parametrize("edit, extra, says, timeout", HOSTILE)
def test_hostile_code_cannot_end_or_hang_the_run(
    edit: str, extra: tuple[str, ...], says: str, timeout: int, tmp_path: Path
) -> None:
    impl = write_model(tmp_path / "repo", edit)
    before = sorted((tmp_path / "repo").rglob("*"))
    report = tmp_path / "report.json"
    done, seconds = _pytest_parity(impl, tmp_path, "--parity-report", str(report), *extra)
    output = done.stdout[-5000:] + done.stderr[-3000:]
    assert done.returncode == EXIT_CANNOT_TEST, output
    checks = json.loads(report.read_text())["checks"]
    assert [c["check"] for c in checks] == sorted(CHECK_NAMES)
    assert all(c["status"] == "CANNOT-TEST" and says in c["reason"] for c in checks), checks
    assert "could not run: exit status 125 (cannot test), not 0" in done.stdout, output
    if "--impl-timeout" in extra:
        assert "--impl-timeout sets the limit" in checks[0]["reason"]
    # Nothing under pytest's control was killed or hung: the run ended on its own, with its summary.
    assert "skipped" in done.stdout.splitlines()[-1] and seconds < timeout + END_MARGIN_S, output
    assert sorted((tmp_path / "repo").rglob("*")) == before, "something was written next to the tested code"


def test_impl_timeout_is_a_positive_number_of_seconds_for_the_child() -> None:
    assert parse_timeout(None, in_process=False) is None and parse_timeout("2.5", in_process=False) == 2.5
    for bad in ("0", "-1", "inf", "nan", "soon"):
        with pytest.raises(UsageError, match="give a positive number of seconds"):
            parse_timeout(bad, in_process=False)
    with pytest.raises(UsageError, match="--in-process runs the code in pytest's own process"):
        parse_timeout("30", in_process=True)
    small = resolve_model("small", "cpu", None)
    assert ChildRun("m.py", False, 7.0).timeout_for(small) == 7.0
    assert ChildRun("m.py", False, None).timeout_for(small) == 120.0


class _Config:
    """What run_child reads of a pytest config: its stash and --tied-decay."""

    def __init__(self, child: ChildRun) -> None:
        self.stash = pytest.Stash()
        self.stash[CHILD_RUN_KEY] = child

    def getoption(self, name: str) -> str:
        return "yes"


def test_a_checkpoint_the_child_cannot_load_ends_the_run_as_a_usage_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As in an in-process run: a bad checkpoint is the user's input, not a verdict on the tested code."""
    impl = write_model(tmp_path / "repo")
    (tmp_path / "empty").mkdir()
    target = replace(resolve_model("small", "cpu", None), checkpoint=tmp_path / "empty")
    monkeypatch.setattr(child_run, "note", lambda text: None)
    with pytest.raises(
        pytest.exit.Exception, match="cannot load the checkpoint: .*empty: no config.json"
    ) as e:
        run_child(_Config(ChildRun(str(impl), False, None)), target, ["logits", "tied-storage"])
    assert e.value.returncode == pytest.ExitCode.USAGE_ERROR


def test_in_process_and_run_module_without_impl_change_nothing(pytester: pytest.Pytester) -> None:
    """Without --impl the reference runs in pytest's process anyway: the options are accepted and ignored."""
    args = [str(REPO_ROOT / "parity"), "--co", "-q", "-p", "no:cacheprovider", "--model", "gpt2"]
    untimed = lambda out: re.sub(r" in [0-9.]+s\b", "", out)  # noqa: E731 - the summary line's duration
    result = pytester.runpytest_inprocess(*args, "--in-process", "--run-module", "--impl-timeout", "5")
    assert result.ret == pytest.ExitCode.OK
    with_options = untimed(result.stdout.str())
    result = pytester.runpytest_inprocess(*args)
    assert result.ret == pytest.ExitCode.OK
    assert untimed(result.stdout.str()) == with_options and "test_check[gpt2-logits]" in with_options
