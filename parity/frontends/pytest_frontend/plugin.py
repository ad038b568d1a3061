"""pytest plugin of the parity harness: command-line options, validation, header, parametrization, report.

Loaded from the root conftest.py, so `pytest parity/ --model gpt2-large` works from the repository root.
The options are declared in parity/frontends/options.py, with the bisect command's: each value is
converted while the command line is parsed, and what needs several options is validated in
`pytest_configure`, before collection and before any model is built; a bad choice is a one-line usage
error that lists the valid choices. `--impl` code is run in a child process
(parity/frontends/pytest_frontend/child_run.py) unless `--in-process` asks for it to be imported here.
A test marked `gpu` is skipped without CUDA, or fails with `--require-gpu`, so a misconfigured GPU CI
runner (no driver, a CPU-only torch) cannot pass by skipping everything; the benchmarks use it too.
"""

from __future__ import annotations

import os
from typing import Any

import pytest
import torch

from nanogpt.hf import CheckpointError
from nanogpt.paths import OutputPathError
from parity.core.errors import ImplementationError, UsageError
from parity.core.exit_codes import decide
from parity.core.tolerances import gradients_tolerance, logits_tolerance
from parity.core.verdicts import Status, Verdict
from parity.foreign.impl import Implementation, import_implementation
from parity.frontends.options import GROUP_TITLE, PYTEST, add_options
from parity.frontends.pytest_frontend.child_run import (
    CHILD_RUN_KEY,
    EXIT_CANNOT_TEST,
    RESULTS_KEY,
    ChildRun,
    merge_worker_part,
    parse_timeout,
    summary_lines,
    worker_part,
)
from parity.frontends.report import ParityReport, check_report_path
from parity.subject.loading import GPT2_ACTIVATION, silence_progress_bars, versions
from parity.subject.memory import fixed_mmap_threshold
from parity.subject.targets import ParityTarget, resolve_targets

TARGETS_KEY = pytest.StashKey[list[ParityTarget]]()
REPORT_KEY = pytest.StashKey[ParityReport]()
IMPL_KEY = pytest.StashKey[Implementation]()  # set only with --impl --in-process
# A failed check's short name ("FAIL logits") for pytest's short test summary, set by the test itself.
SHORT_FAILURE_KEY = pytest.StashKey[str]()
# Why the run exits 125 instead of 0, one line per model, found at the session's end.
CANNOT_TEST_KEY = pytest.StashKey[list[str]]()
WORKER_REPORT = "parity_report"  # key of a pytest-xdist worker's report part in its workeroutput
WORKER_CHILD = "parity_child"  # key of a pytest-xdist worker's child notes and output


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("nanogpt-parity", GROUP_TITLE)
    add_options(group.addoption, PYTEST, pytest.UsageError)


def pytest_configure(config: pytest.Config) -> None:
    silence_progress_bars()  # transformers' "Loading weights" bar would fill a failed test's captured stderr
    fixed_mmap_threshold()  # freed tensors leave the process at once (the peaks the memory plan predicts)
    try:
        targets = resolve_targets(
            config.getoption("--model"),
            config.getoption("--weights"),
            config.getoption("--device"),
            config.getoption("--dtype"),
            revision=config.getoption("--revision"),
            hf_activation=config.getoption("--hf-activation"),
        )
    except UsageError as e:
        raise pytest.UsageError(str(e)) from None
    impl, in_process, run_module = (config.getoption(o) for o in ("--impl", "--in-process", "--run-module"))
    try:
        timeout = parse_timeout(config.getoption("--impl-timeout"), in_process=bool(impl and in_process))
    except UsageError as e:
        raise pytest.UsageError(str(e)) from None
    # Without --impl, the reference runs in this process: --in-process and --run-module change nothing.
    # The path was checked when the options were parsed (options.implementation_path); the child imports it.
    if impl and in_process:
        try:
            config.stash[IMPL_KEY] = import_implementation(
                impl, run_module=run_module, mapping=config.getoption("--mapping")
            )
        except ImplementationError as e:
            raise pytest.UsageError(f"--impl: {e}") from None
    elif impl:
        config.stash[CHILD_RUN_KEY] = ChildRun(impl, run_module, timeout)
    config.stash[TARGETS_KEY] = targets
    config.stash[REPORT_KEY] = ParityReport.for_targets(targets, impl)
    if config.getoption("--parity-report"):  # never the --impl file or the checkpoint
        try:
            check_report_path(config.getoption("--parity-report"), targets, impl)
        except OutputPathError as e:
            raise pytest.UsageError(str(e)) from None


def pytest_report_header(config: pytest.Config) -> list[str]:
    lines = []
    if IMPL_KEY in config.stash:
        impl = config.stash[IMPL_KEY]
        lines.append(
            f"parity implementation: {impl.label} ({impl.source}), loaded by the nanoGPT converter, in this "
            "process (--in-process)"
        )
    if CHILD_RUN_KEY in config.stash:
        child = config.stash[CHILD_RUN_KEY]
        lines.append(
            f"parity implementation: {child.impl}, loaded by the nanoGPT converter in a child process "
            f"({'imported as it is' if child.run_module else 'definitions only'}; "
            "--in-process imports it here)"
        )
    for t in config.stash[TARGETS_KEY]:
        lines.append(f"parity model: {t.name}; weights: {t.weights} ({t.reason})")
        if t.hf_activation != GPT2_ACTIVATION:
            lines.append(
                f"parity Hugging Face's model: activation_function={t.hf_activation} (--hf-activation)"
            )
        lines.append(
            f"parity device: {t.device}; dtype: {t.dtype_name}; "
            f"tolerances: logits {logits_tolerance(t.dtype)}, gradients {gradients_tolerance(t.dtype)}"
        )
    v = versions()
    lines.append(f"parity versions: torch {v['torch']}, transformers {v['transformers']}")
    return lines


@pytest.hookimpl(wrapper=True)
def pytest_fixture_setup(fixturedef: pytest.FixtureDef[Any], request: pytest.FixtureRequest) -> Any:
    """A checkpoint the loaders refuse (corrupt, untied, not GPT-2) ends the run with its one-line message.

    It is the user's input, not a parity failure: without this, every test would repeat the loader's
    traceback. Only the parity fixtures (parity/conftest.py) are concerned.
    """
    try:
        return (yield)
    except CheckpointError as e:
        if not getattr(fixturedef.func, "__module__", "").startswith("parity."):
            raise
        pytest.exit(f"cannot load the checkpoint: {e}", returncode=pytest.ExitCode.USAGE_ERROR)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    """A failed check's line in pytest's short test summary names the check, not its verdict again.

    The verdict line is in the test's report already; pytest would repeat it in the summary, in full on a
    CI runner or with -vv, details included.
    """
    report = yield
    short = item.stash.get(SHORT_FAILURE_KEY, None)
    crash = getattr(report.longrepr, "reprcrash", None)
    if short is not None and report.failed and crash is not None:
        crash.message = f"{short} (its verdict is in the report above)"
    return report


def record_verdict(config: pytest.Config, model: str, verdict: Verdict) -> None:
    """Send one verdict to the run's report (the JSON file and the verdict table at the end)."""
    config.stash[REPORT_KEY].add_verdict(model, verdict)


def verdict_table(checks: list[dict[str, Any]], markdown: bool = False) -> list[str]:
    """The verdicts as a check x model table, each CANNOT-TEST's reason below it; the Markdown form lists
    each FAIL's reason too (the terminal has those once already, in the failed test's report)."""
    models = list(dict.fromkeys(c["model"] for c in checks))
    names = list(dict.fromkeys(c["check"] for c in checks))
    status = {(c["check"], c["model"]): c["status"] for c in checks}
    if markdown:
        lines = ["| check | " + " | ".join(models) + " |", "| --- |" + " --- |" * len(models)]
        lines += [f"| {n} | " + " | ".join(status.get((n, m), "") for m in models) + " |" for n in names]
        lines += [
            "",
            *(
                f"- **{c['model']} {c['check']}** {c['status']}: {c['reason']}"
                for c in checks
                if c["status"] != "PASS"
            ),
        ]
        return lines
    width = max(len(n) for n in names)
    cols = [max(len(m), 11) for m in models]
    lines = [f"{'check':<{width}}  " + "  ".join(f"{m:<{w}}" for m, w in zip(models, cols, strict=True))]
    lines += [
        f"{n:<{width}}  "
        + "  ".join(f"{status.get((n, m), '-'):<{w}}" for m, w in zip(models, cols, strict=True))
        for n in names
    ]
    lines += [
        f"{c['model']}: {c['status']} {c['check']}: {c['reason']}"
        for c in checks
        if c["status"] == "CANNOT-TEST"
    ]
    return lines


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    """The verdict of every check on every model in one table; also as Markdown in GITHUB_STEP_SUMMARY.

    Below it, with --impl run in a child: its load notes and output; and why the exit status is 125.
    """
    if REPORT_KEY not in config.stash or not config.stash[REPORT_KEY].checks:
        return
    checks = config.stash[REPORT_KEY].checks
    terminalreporter.write_sep("=", "parity verdicts")
    for line in [*verdict_table(checks), *summary_lines(config), *config.stash.get(CANNOT_TEST_KEY, [])]:
        terminalreporter.write_line(line)
    summary = os.environ.get("GITHUB_STEP_SUMMARY")
    if summary and not hasattr(config, "workerinput"):
        with open(summary, "a", encoding="utf-8") as fh:
            fh.write(
                "\n".join(["## nanogpt-parity verdicts", "", *verdict_table(checks, markdown=True), ""])
                + "\n"
            )


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "parity_target" in metafunc.fixturenames:
        targets = metafunc.config.stash[TARGETS_KEY]
        metafunc.parametrize("parity_target", targets, ids=[t.name for t in targets], scope="session")


def cuda_unavailable_reason() -> str | None:
    """Why CUDA cannot be used here, or None when it can."""
    if torch.cuda.is_available():
        return None
    cuda = torch.version.cuda
    build = "a CPU-only torch build" if cuda is None else f"torch built for CUDA {cuda}"
    return f"needs a CUDA device; none is available ({build}, torch {torch.__version__})"


def pytest_runtest_setup(item: pytest.Item) -> None:
    """Skip a test marked gpu when CUDA is missing; fail it instead under --require-gpu."""
    if item.get_closest_marker("gpu") is None:
        return
    reason = cuda_unavailable_reason()
    if reason is None:
        return
    if item.config.getoption("--require-gpu"):
        pytest.fail(f"--require-gpu: {reason}", pytrace=False)
    pytest.skip(reason)


def cannot_test_lines(checks: list[dict[str, Any]]) -> list[str]:
    """Per model whose verdicts make the bisect command's "cannot test" (a check that applies could not
    run, or none applies): why, in one line. A crash of the implementation is never a pass."""
    lines = []
    for model in dict.fromkeys(c["model"] for c in checks):
        verdicts = [
            Verdict(c["check"], Status(c["status"]), c["reason"], applicable=c["applicable"])
            for c in checks
            if c["model"] == model
        ]
        code, why = decide(verdicts, {})
        if code == EXIT_CANNOT_TEST:
            lines.append(f"{model}: {why}: exit status {EXIT_CANNOT_TEST} (cannot test), not 0")
    return lines


def pytest_sessionfinish(session: pytest.Session) -> None:
    """Write the report (pytest-xdist workers hand their part to the controller instead); exit
    EXIT_CANNOT_TEST where pytest would exit 0 but a check that applies could not run on some model."""
    config = session.config
    if REPORT_KEY not in config.stash:
        return
    report = config.stash[REPORT_KEY]
    for t in config.stash[TARGETS_KEY]:
        if t.generation_seconds is not None:
            report.timing[f"{t.name}: synthetic checkpoint generation (s)"] = round(t.generation_seconds, 3)
    if hasattr(config, "workeroutput"):
        # A pytest-xdist worker: hand its part to the controller, which merges them, writes the file and
        # decides the exit status.
        config.workeroutput[WORKER_REPORT] = {
            "records": report.records,
            "checks": report.checks,
            "profiles": report.profiles,
            "timing": report.timing,
        }
        config.workeroutput[WORKER_CHILD] = worker_part(config)
        return
    for name, result in config.stash.get(RESULTS_KEY, {}).items():  # the child's load summary, per model
        report.load[name] = list(result.notes)
    cannot_test = cannot_test_lines(report.checks)
    if cannot_test and session.exitstatus == pytest.ExitCode.OK:
        session.exitstatus = EXIT_CANNOT_TEST  # pytest's main returns what this hook leaves here
        config.stash[CANNOT_TEST_KEY] = cannot_test  # the terminal summary says why
    path = config.getoption("--parity-report")
    if path:
        report.write(path)


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: Any, error: Any) -> None:
    """pytest-xdist (controller): merge a finished worker's records into the one report."""
    part = getattr(node, "workeroutput", {}).get(WORKER_REPORT)
    if part and REPORT_KEY in node.config.stash:
        report = node.config.stash[REPORT_KEY]
        report.records.extend(part["records"])
        report.checks.extend(part["checks"])
        report.profiles.extend(part.get("profiles", []))
        report.timing.update(part["timing"])
    merge_worker_part(node.config, getattr(node, "workeroutput", {}).get(WORKER_CHILD, {}))
