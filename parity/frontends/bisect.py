"""`nanogpt-parity-bisect` (`python -m parity.frontends.bisect`): verdicts as `git bisect run` exit codes.

Runs the named checks of parity/checks/registry.py on an implementation (`--impl path/to/model.py`, default
the reference nanoGPT) in a sandboxed child process (parity/sandbox/parent.py), prints one line per check, and
exits with what `git bisect run` understands: 0 good, 1 bad, 125 "cannot test this commit" (import error, no
GPT class, a crash, an exit or a hang past `--timeout` of the tested code, a changed transformers), and 129
for a usage error of this command, which aborts the bisection instead of marking commits bad (argparse's own
exit status 2 would read as bad). Good means every selected check passes, unless `--expect CHECK=pass|fail`
says otherwise, so one can look for the commit where something broke or where it first became true. The
default model is small (2 layers, width 64, a 512-token vocabulary, float64 on CPU: seconds per commit);
`--model` takes a GPT-2 size or a checkpoint directory. `--parity-report PATH` writes the verdicts as
`pytest parity/` does (parity/frontends/report.py), whether the commit is good, bad or untestable; a usage
error writes nothing.

    git bisect start BAD GOOD
    git bisect run python -m parity.frontends.bisect --impl model.py --checks tied-storage
"""

from __future__ import annotations

import argparse
import sys
import traceback
from typing import NoReturn

from nanogpt.hf import CheckpointError
from nanogpt.paths import OutputPathError
from parity.checks.registry import CHECK_NAMES
from parity.core.errors import UsageError
from parity.core.exit_codes import EXIT_ABORT, decide
from parity.core.verdicts import format_verdicts
from parity.frontends.options import BISECT, OptionError, add_options, parse_checks
from parity.frontends.report import ParityReport, check_report_path
from parity.sandbox.parent import SandboxResult, default_timeout, output_summary, run_checks_in_child
from parity.subject.loading import GPT2_ACTIVATION, silence_progress_bars
from parity.subject.memory import available_memory, ignore_memory_check, memory_problem
from parity.subject.targets import SMALL_CONFIG, ParityTarget, resolve_targets

__all__ = ["PROG", "SMALL_CONFIG", "build_parser", "check_memory", "main", "resolve_model", "run"]

PROG = "nanogpt-parity-bisect"  # the installed command; `python -m parity.frontends.bisect` is the same


class BisectArgumentParser(argparse.ArgumentParser):
    """argparse, but a usage error exits with EXIT_ABORT (argparse's 2 would mark the commit bad)."""

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(EXIT_ABORT, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    """The command line of the bisect command (its options are declared in parity/frontends/options.py)."""
    parser = BisectArgumentParser(
        prog=PROG,
        description="Run named parity checks on a nanoGPT-style implementation; exit 0 good, 1 bad, "
        "125 untestable (git bisect skip), 129 usage error (aborts git bisect run).",
    )
    add_options(parser.add_argument, BISECT, OptionError)
    return parser


def resolve_model(
    model: str, device: str | None, dtype: str | None, hf_activation: str = GPT2_ACTIVATION
) -> ParityTarget:
    """--model's target: the small synthetic model, a GPT-2 size (pretrained when cached), or a directory."""
    return resolve_targets(model, "auto", device, dtype, allow_all=False, hf_activation=hf_activation)[0]


def check_memory(target: ParityTarget, checks: list[str]) -> None:
    """UsageError with the estimate when the run cannot fit in this machine's memory (CPU runs).

    The same plan as `pytest parity/`: checks that train or re-initialise run on copies only where they
    fit, else on the narrow twin (parity/subject/subject.py), so the plan does not depend on the selection.
    """
    if target.device != "cpu" or ignore_memory_check():
        return
    what = f"checking {', '.join(c for c in CHECK_NAMES if c in checks)}"
    problem = memory_problem(target.name, target.memory, available_memory(), what)
    if problem:
        raise UsageError(problem)


def print_sandbox_output(result: SandboxResult, details: bool) -> None:
    """The load summary always; the tested code's captured output with -v, else how much there is."""
    for line in output_summary(result, details):
        print(line)


def write_report(path: str, target: ParityTarget, result: SandboxResult, impl: str | None = None) -> None:
    """The JSON report of the child's verdicts and load notes on target at path, in the schema of
    `pytest parity/ --parity-report`."""
    report = ParityReport.for_targets([target], impl)
    report.load[target.name] = list(result.notes)
    verdicts = result.verdicts
    for verdict in verdicts:
        report.add_verdict(target.name, verdict)
    report.write(path)


def run(argv: list[str] | None = None) -> int:
    """Parse, check in a sandboxed child process, print; returns the exit code for git bisect run."""
    silence_progress_bars()  # one line per check, no loading bars
    try:
        args = build_parser().parse_args(argv)  # a bad value: OptionError; an unknown option: exits 129
        expect = dict(args.expect)
        selected = parse_checks(args.checks) if args.checks is not None or not expect else list(expect)
        selected += [c for c in expect if c not in selected]
        everything = args.checks is None or args.checks.strip() == "all"
        named = frozenset(() if everything else selected)
        target = resolve_model(args.model, args.device, args.dtype, args.hf_activation)
        check_memory(target, selected)
        target.ensure_checkpoint()
        if args.parity_report:  # never the --impl file or the checkpoint
            check_report_path(args.parity_report, [target], args.impl)
    except (OptionError, UsageError, CheckpointError, OutputPathError) as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return EXIT_ABORT
    timeout = args.timeout if args.timeout is not None else default_timeout(target)
    label = args.impl if args.impl is not None else "nanogpt (reference)"
    activation = "" if args.hf_activation == GPT2_ACTIVATION else f", HF activation {args.hf_activation}"
    print(
        f"implementation: {label}; model: {target.name} ({target.weights}), "
        f"{target.dtype_name} on {target.device}{activation}; checked in a child process, "
        f"timeout {timeout:g} s",
        flush=True,
    )
    result = run_checks_in_child(
        args.impl,
        args.run_module,
        target,
        selected,
        args.tied_decay == "yes",
        timeout,
        loader=args.loader,
        mapping=args.mapping,
        profiles=bool(args.parity_report),
    )
    if result.checkpoint_error:
        print(f"{PROG}: error: {result.checkpoint_error}", file=sys.stderr)
        return EXIT_ABORT
    print_sandbox_output(result, args.details)
    print(format_verdicts(result.verdicts, args.details))
    code, why = decide(result.verdicts, expect, named)
    if args.parity_report:
        try:
            write_report(args.parity_report, target, result, args.impl)
        except (OutputPathError, OSError) as e:  # checked while parsing; changed since
            print(f"{PROG}: error: {e}", file=sys.stderr)
            return EXIT_ABORT
    print(f"{why} (exit {code})", flush=True)
    return code


def main(argv: list[str] | None = None) -> int:
    """The command; an unexpected error of the command itself aborts the bisection instead of marking bad."""
    try:
        return run(argv)
    except Exception:
        traceback.print_exc()
        print(
            f"{PROG}: internal error (exit {EXIT_ABORT} aborts git bisect run)",
            file=sys.stderr,
        )
        return EXIT_ABORT


if __name__ == "__main__":
    sys.exit(main())
