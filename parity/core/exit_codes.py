"""Exit statuses shared by both front ends (`pytest parity/` and the bisect command), and the one rule
that turns a run's verdicts into one of them.

They follow `git bisect run`'s protocol, so a CI job and a bisection read a run the same way: a check that
should apply but could not run (the implementation raised, exited or hung) is never a pass.
"""

from __future__ import annotations

from parity.core.verdicts import Status, Verdict

EXIT_GOOD = 0
EXIT_BAD = 1
EXIT_SKIP = 125  # git bisect run: this commit cannot be tested; pytest parity/ when no check could be judged
EXIT_ABORT = 129  # git bisect run: anything above 127 stops the bisection


def decide(
    verdicts: list[Verdict], expect: dict[str, bool], named: frozenset[str] = frozenset()
) -> tuple[int, str]:
    """(exit code, why): bad when any verdict contradicts its expectation, else skip when any is unknown.

    A check that does not apply (the implementation has no get_num_params, no dropout, no
    configure_optimizers: `Verdict.applicable`) is unknown only when it was named (--checks, --expect):
    under the default, every check, a correct model without dropout must not make every commit a skip.
    """
    want = {v.check: expect.get(v.check, True) for v in verdicts}
    contradicted = [
        v for v in verdicts if v.status != Status.CANNOT_TEST and (v.status == Status.PASS) != want[v.check]
    ]
    named = named | frozenset(expect)
    unknown = [v for v in verdicts if v.status == Status.CANNOT_TEST and (v.applicable or v.check in named)]
    absent = [v.check for v in verdicts if v.status == Status.CANNOT_TEST and v not in unknown]
    not_applicable = f" (not applicable: {', '.join(absent)})" if absent else ""
    if contradicted:
        parts = []
        for got, expected in ((Status.FAIL, "PASS"), (Status.PASS, "FAIL")):
            names = [v.check for v in contradicted if v.status == got]
            if names:
                parts.append(f"{', '.join(names)} {got.value} (expected {expected})")
        return EXIT_BAD, "bad: " + "; ".join(parts)
    if unknown:
        return EXIT_SKIP, f"cannot test this commit: {', '.join(v.check for v in unknown)} could not run"
    judged = [v for v in verdicts if v.status != Status.CANNOT_TEST]
    if not judged:
        return EXIT_SKIP, f"cannot test this commit: no selected check applies{not_applicable}"
    return EXIT_GOOD, "good: " + ", ".join(f"{v.check} {v.status.value}" for v in judged) + not_applicable
