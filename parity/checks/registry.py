"""The registry of named parity checks: one definition that every front end runs.

`pytest parity/` (one test per check and model, its id the check's name), the bisect command
(`--checks NAME,...`, listed in its --help), the JSON report and the mutant catalog all take their checks
from `CHECKS` and run them through `parity.checks.check.run_check`. Each check is defined once, in one of the
check modules: architecture (architecture), forward (logits, loss, inference), dropout (dropout-sites),
backward (grads, tied-gradient), counts and the tie (tied-storage, param-count, own-count, optimizer-once,
checkpoint-once), training (decay-groups, train-steps, init, init-scheme), own_loader (own-loader).
"""

from __future__ import annotations

from collections.abc import Iterable

from parity.checks.architecture import ARCHITECTURE_CHECKS
from parity.checks.backward import BACKWARD_CHECKS
from parity.checks.check import Check, run_check
from parity.checks.counts import COUNT_CHECKS
from parity.checks.dropout import DROPOUT_CHECKS
from parity.checks.forward import FORWARD_CHECKS
from parity.checks.own_loader import OWN_LOADER_CHECKS
from parity.checks.training import TRAINING_CHECKS
from parity.core.verdicts import NAME_WIDTH, Verdict
from parity.subject.subject import Subject


def build_registry(checks: Iterable[Check]) -> dict[str, Check]:
    """The checks by name, in the order given; ValueError when two checks share a name."""
    registry: dict[str, Check] = {}
    for check in checks:
        if check.name in registry:
            raise ValueError(f"two checks are named {check.name!r}: a check's name must be unique")
        registry[check.name] = check
    return registry


# In the order they run: the structure first, forward, backward, the tie and counts, then the checks that
# build or train models, and last the implementation's own loader.
CHECKS: dict[str, Check] = build_registry(
    (
        *ARCHITECTURE_CHECKS,
        *FORWARD_CHECKS,
        *DROPOUT_CHECKS,
        *BACKWARD_CHECKS,
        *COUNT_CHECKS,
        *TRAINING_CHECKS,
        *OWN_LOADER_CHECKS,
    )
)
CHECK_NAMES: tuple[str, ...] = tuple(CHECKS)
assert max(len(n) for n in CHECK_NAMES) <= NAME_WIDTH, "widen verdicts.NAME_WIDTH"


def run_checks(names: list[str], subject: Subject) -> list[Verdict]:
    """Verdicts of the named checks, in registry order (every check restores what it changes)."""
    return [run_check(CHECKS[name], subject) for name in CHECK_NAMES if name in names]
