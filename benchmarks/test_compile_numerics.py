"""Numerics: a compiled tied model computes what its eager twin computes, within COMPILE_TOLERANCES.

The two sides come from the session fixture `compiled_case`: after the gate's training steps, the
compiled model and an eager deep copy of it take the same SGD step (`compare_step_with_eager`). Every
parameter's gradient is checked under every name it has, so the tied matrix is checked as
transformer.wte.weight and as lm_head.weight: its gradient must be the sum of both uses in both worlds.
"""

from __future__ import annotations

import pytest
import torch

from benchmarks.conftest import CompiledCase
from parity.core.tolerances import COMPILE

# Compiled vs eager tolerances, with their reasons: parity/core/tolerances.py COMPILE.
COMPILE_TOLERANCES = {k: dict(rtol=t.rtol, atol=t.atol) for k, t in COMPILE.items()}


def test_logits_and_loss_match_eager(compiled_case: CompiledCase) -> None:
    eager, compiled = compiled_case.comparison.eager, compiled_case.comparison.compiled
    torch.testing.assert_close(
        compiled.logits,
        eager.logits,
        **COMPILE_TOLERANCES["logits"],
        msg=lambda m: f"{compiled_case.name} logits: {m}",
    )
    torch.testing.assert_close(
        compiled.loss,
        eager.loss,
        **COMPILE_TOLERANCES["loss"],
        msg=lambda m: f"{compiled_case.name} loss: {m}",
    )


def test_every_gradient_matches_eager(compiled_case: CompiledCase) -> None:
    eager, compiled = compiled_case.comparison.eager, compiled_case.comparison.compiled
    assert compiled.grads.keys() == eager.grads.keys()
    assert {"lm_head.weight", "transformer.wte.weight"} <= compiled.grads.keys(), (
        "tied aliases not both named"
    )
    for name, grad in eager.grads.items():
        torch.testing.assert_close(
            compiled.grads[name],
            grad,
            **COMPILE_TOLERANCES["grads"],
            msg=lambda m, name=name: f"{compiled_case.name} gradient of {name}: {m}",
        )


@pytest.mark.parametrize("check", ["params_after_step", "logits_after_step"])
def test_one_optimizer_step_leaves_the_same_model(compiled_case: CompiledCase, check: str) -> None:
    eager, compiled = compiled_case.comparison.eager, compiled_case.comparison.compiled
    if check == "logits_after_step":
        pairs = {"logits": (compiled.logits_after_step, eager.logits_after_step)}
    else:
        pairs = {name: (compiled.params_after_step[name], p) for name, p in eager.params_after_step.items()}
    for name, (actual, expected) in pairs.items():
        torch.testing.assert_close(
            actual,
            expected,
            **COMPILE_TOLERANCES[check],
            msg=lambda m, name=name: f"{compiled_case.name} {check} ({name}): {m}",
        )
    # The step moved the model at all, so the comparison is not of two untouched copies.
    assert not torch.equal(compiled.logits_after_step, compiled.logits)
