"""Fixtures of the parity suite: one `Subject` per target (parity/subject/subject.py) that every check reads.

The subject is session-scoped per target (loading gpt2-xl twice would cost minutes and gigabytes); every
check restores what it changes. With --impl the checks run in a child process instead, once per target
(`verdict_of`, parity/frontends/pytest_frontend/child_run.py). Options live in
parity/frontends/pytest_frontend/plugin.py. A run that would not fit in the available memory stops with a
usage error once the tests are collected, before any model is built. The header shows each target's dtype
policy and memory plan; the terminal summary shows what the synthetic checkpoints cost.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from parity.checks.check import run_check
from parity.checks.registry import CHECKS
from parity.core.verdicts import Verdict
from parity.foreign.impl import reference_implementation
from parity.frontends.pytest_frontend.child_run import CHILD_RUN_KEY, run_child, selected_checks
from parity.frontends.pytest_frontend.plugin import IMPL_KEY, TARGETS_KEY
from parity.subject.memory import (
    available_memory,
    format_bytes,
    ignore_memory_check,
    memory_problem,
    per_worker,
    release_free_memory,
)
from parity.subject.subject import Subject
from parity.subject.targets import ParityTarget

# Why the run cannot fit in memory, as found by a pytest-xdist worker (see pytest_collection_finish).
MEMORY_PROBLEM_KEY = pytest.StashKey[str]()
# Per target name: the reference parameters that kept their own storage although the plan shares weights.
UNSHARED_KEY = pytest.StashKey[dict[str, list[str]]]()


def pytest_report_header(config: pytest.Config) -> list[str]:
    """Each target's dtype policy and memory plan.

    The options' header lines come from parity/frontends/pytest_frontend/plugin.py.
    """
    return [
        f"parity policy: {t.name}: {t.dtype_name} ({t.dtype_reason}); {t.memory.describe()}"
        for t in config.stash.get(TARGETS_KEY, [])
    ]


def pytest_collection_finish(session: pytest.Session) -> None:
    """Stop with the estimate, before any model is built, when a collected target cannot fit in memory."""
    config = session.config
    if config.option.collectonly or ignore_memory_check():
        return
    if not any("parity_target" in getattr(item, "fixturenames", ()) for item in session.items):
        return
    available = per_worker(available_memory())
    for t in config.stash.get(TARGETS_KEY, []):
        problem = memory_problem(t.name, t.memory, available) if t.device == "cpu" else None
        if problem and hasattr(config, "workerinput"):
            # A pytest-xdist worker: an exception here reaches the user as a bare "worker crashed"; the
            # `memory_fits` fixture fails every parity test with the message instead, before any load.
            config.stash[MEMORY_PROBLEM_KEY] = problem
            return
        if problem:
            raise pytest.UsageError(problem)


def fail_if_it_cannot_fit(config: pytest.Config) -> None:
    """pytest.fail with the memory problem a pytest-xdist worker found at collection, if any."""
    problem = config.stash.get(MEMORY_PROBLEM_KEY, None)
    if problem:
        pytest.fail(problem, pytrace=False)


@pytest.fixture(scope="session", autouse=True)
def memory_fits(request: pytest.FixtureRequest) -> None:
    """Fail (before any model is built) when a pytest-xdist worker found that the run cannot fit."""
    fail_if_it_cannot_fit(request.config)


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    """What the synthetic checkpoints cost (generated in this run, or reused from the cache)."""
    for t in config.stash.get(TARGETS_KEY, []):
        if t.weights != "synthetic" or t.checkpoint is None:
            continue
        size = sum(f.stat().st_size for f in t.checkpoint.iterdir() if f.is_file())
        cost = (
            f"generated in {t.generation_seconds:.1f} s"
            if t.generation_seconds is not None
            else "reused from the cache"
        )
        terminalreporter.write_line(
            f"parity synthetic checkpoint {t.name}: {cost} ({format_bytes(size)} at {t.checkpoint})"
        )
    for name, kept in config.stash.get(UNSHARED_KEY, {}).items():
        if kept:
            terminalreporter.write_line(
                f"parity {name}: {len(kept)} reference parameter(s) loaded values that differ from Hugging "
                f"Face's and kept their own storage: {', '.join(kept[:5])}"
            )


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The registry's checks run before the harness's self-tests on the same target, in the slots pytest gave
    the parity tests: the first check that loads the checkpoint stops a run on a bad one as a usage error
    (test_checks.py), before a self-test reads Hugging Face's side of it."""
    slots = [n for n, item in enumerate(items) if "parity_target" in getattr(item, "fixturenames", ())]
    ordered = sorted((items[n] for n in slots), key=lambda item: item.path.name != "test_checks.py")
    for n, item in zip(slots, ordered, strict=True):
        items[n] = item


@pytest.fixture(scope="session")
def subject(request: pytest.FixtureRequest, parity_target: ParityTarget) -> Iterator[Subject]:
    """The implementation under test and Hugging Face's GPT-2 on one target, loaded on first use.

    Without --impl it is the reference nanoGPT, loaded through its own GPT.from_pretrained; with --impl
    --in-process, the given code built by its own __init__ with weights from our converter
    (parity/foreign/impl.py). With --impl run in a child it is the reference too, and only its Hugging Face
    side is read here (the harness's self-test, parity/suite/test_untied_control.py).
    """
    impl = request.config.stash.get(IMPL_KEY, None)
    s = Subject(
        impl or reference_implementation(),
        parity_target,
        tied_decay=request.config.getoption("--tied-decay") == "yes",
        reference_loader=impl is None,
        loader=request.config.getoption("--loader"),
        profiles=bool(request.config.getoption("--parity-report")),
    )
    yield s
    request.config.stash.setdefault(UNSHARED_KEY, {})[parity_target.name] = s.unshared
    s.release()


@pytest.fixture(scope="session")
def verdict_of(request: pytest.FixtureRequest, parity_target: ParityTarget) -> Callable[[str], Verdict]:
    """A check's verdict on this target: run on the subject when asked, or read from one child's run.

    With --impl (not --in-process), the child runs every check selected on this target at once, when the
    first of their tests asks; its verdicts carry their records and profiles, as a run here would.
    """
    if CHILD_RUN_KEY not in request.config.stash:
        subject = request.getfixturevalue("subject")
        return lambda check: run_check(CHECKS[check], subject)
    result = run_child(request.config, parity_target, selected_checks(request.session.items, parity_target))
    return {v.check: v for v in result.verdicts}.__getitem__


@pytest.fixture(autouse=True)
def release_memory_after_test() -> Iterator[None]:
    """Hand freed memory back to the OS after each test, so the next test's peak starts from the models."""
    yield
    release_free_memory()
