"""Mutants of the harness: changes that narrow what it compares, each of which one of our tests must catch.

A harness that compares only the last position's logits, a constant token batch, a report that always says
PASS, a tolerance 1000x looser, a comparison that ignores the relative difference norm, a gradient comparison
that skips tensors, a tie check that reads one name twice, the implementation's own loss ignored, or a
full-block batch cut in half would still pass a correct implementation: only a test that needs the harness's
full strength notices. Each entry here patches one such weakness into the running harness and names the
detector, a test of ours that must then fail (tests/test_harness_mutants.py); its kill rate is printed next to
the model mutants'.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from unittest import mock

import torch

import parity.checks.forward
import parity.core.compare
import parity.core.tolerances
import parity.core.verdicts
import parity.numerics.forward
import parity.numerics.gradients
import parity.numerics.tie
import parity.subject.batches
from parity.core.compare import Comparison


@dataclass(frozen=True)
class HarnessMutant:
    """One weakening of the harness, and the detector (a catalog entry or a test) that must then fail."""

    name: str
    patch: Callable[[], contextlib.AbstractContextManager[Any]]
    detector: str  # a catalog entry (tests/mutants.py) whose verdict must change, or a test's name
    doc: str


@contextlib.contextmanager
def last_position_only() -> Iterator[None]:
    original = parity.numerics.forward.compare_chunked

    def compare(check: str, name: str, actual: torch.Tensor, expected: torch.Tensor, *a: Any) -> Comparison:
        if check == "logits" and actual.dim() == 3:
            actual, expected = actual[:, -1:], expected[:, -1:]
        return original(check, name, actual, expected, *a)

    with (
        mock.patch.object(parity.numerics.forward, "compare_chunked", compare),
        mock.patch.object(parity.numerics.gradients, "compare_chunked", compare),
    ):
        yield


@contextlib.contextmanager
def constant_tokens() -> Iterator[None]:
    with mock.patch.object(
        parity.subject.batches,
        "_random_tokens",
        lambda shape, vocab, seed: torch.zeros(shape, dtype=torch.long),
    ):
        yield


@contextlib.contextmanager
def report_always_passed() -> Iterator[None]:
    original = parity.core.verdicts.Verdict.to_json
    with mock.patch.object(
        parity.core.verdicts.Verdict, "to_json", lambda self: {**original(self), "status": "PASS"}
    ):
        yield


@contextlib.contextmanager
def tolerance_1000x_looser() -> Iterator[None]:
    tol = parity.core.tolerances.LOGITS[torch.float64]
    assert tol.norm is not None
    looser = parity.core.tolerances.Tolerance(
        tol.rtol * 1000, tol.atol * 1000, "harness mutant", tol.norm * 1000
    )
    with mock.patch.dict(parity.core.tolerances.LOGITS, {torch.float64: looser}):
        yield


@contextlib.contextmanager
def norm_ignored() -> Iterator[None]:
    with mock.patch.object(parity.core.compare.Comparison, "norm_exceeded", property(lambda self: False)):
        yield


@contextlib.contextmanager
def gradients_skip_positions() -> Iterator[None]:
    original = parity.numerics.gradients.compared_parameters

    def without_positions(ours: dict[str, Any], theirs: dict[str, Any]) -> tuple[list[str], list[str]]:
        names, problems = original(ours, theirs)
        return [n for n in names if "wpe" not in n], problems

    with mock.patch.object(parity.numerics.gradients, "compared_parameters", without_positions):
        yield


@contextlib.contextmanager
def tie_reads_one_name() -> Iterator[None]:
    with mock.patch.object(parity.numerics.tie, "HEAD", parity.numerics.tie.EMBEDDING):
        yield


@contextlib.contextmanager
def own_loss_ignored() -> Iterator[None]:
    def logits_and_loss_of_logits(model: Any, idx: torch.Tensor, targets: torch.Tensor) -> Any:
        logits = parity.numerics.forward.implementation_logits(model, idx)
        return logits, parity.numerics.forward.loss_of(logits, targets)

    with mock.patch.object(parity.numerics.gradients, "logits_and_own_loss", logits_and_loss_of_logits):
        yield


@contextlib.contextmanager
def full_block_halved() -> Iterator[None]:
    original = parity.subject.batches.token_batch

    def token_batch(kind: str, config: Any) -> torch.Tensor:
        idx = original(kind, config)
        return idx[:, : config.block_size // 2] if kind == "full_block" else idx

    with mock.patch.object(parity.checks.forward, "token_batch", token_batch):
        yield


HARNESS_MUTANTS = (
    HarnessMutant(
        "logits-last-position-only",
        last_position_only,
        "causal-mask-missing-one-layer",
        "logits compared at the last position only (where a missing causal mask changes nothing)",
    ),
    HarnessMutant(
        "constant-token-batch",
        constant_tokens,
        "test_batches_cover_the_vocabulary",
        "every random token batch is token 0",
    ),
    HarnessMutant(
        "report-always-passed",
        report_always_passed,
        "test_failing_run_reports_the_failed_check",
        "the JSON report writes PASS whatever the verdict",
    ),
    HarnessMutant(
        "logits-tolerance-1000x-looser",
        tolerance_1000x_looser,
        "gelu-constant-5-digits",
        "float64 logits tolerance 1e-6 instead of 1e-9",
    ),
    HarnessMutant(
        "norm-criterion-ignored",
        norm_ignored,
        "test_systematic_difference_fails_by_its_norm",
        "only the element-wise bound is checked: a small difference in every element passes",
    ),
    HarnessMutant(
        "gradients-skip-wpe",
        gradients_skip_positions,
        "positions-detached",
        "the gradient comparison leaves out the position embeddings",
    ),
    HarnessMutant(
        "tie-reads-one-name",
        tie_reads_one_name,
        "head-not-tied",
        "the tie checks read transformer.wte.weight where they should read lm_head.weight",
    ),
    HarnessMutant(
        "own-loss-ignored",
        own_loss_ignored,
        "loss-shifts-targets-again",
        "the loss check recomputes the loss from the logits instead of taking the implementation's own",
    ),
    HarnessMutant(
        "full-block-halved",
        full_block_halved,
        "attention-window-64",
        "the full-block batch is cut to half the block",
    ),
)


def detector_path(name: str) -> Path:
    """Where a detector lives, for messages."""
    return Path(__file__).with_name("test_mutants.py" if "-" in name else "test_harness_mutants.py")
