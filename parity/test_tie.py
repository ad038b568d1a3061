"""Check 3: the tie is real in both implementations: one storage, through every operation users apply."""

from __future__ import annotations

from typing import Any

import pytest
from transformers import GPT2Config, GPT2LMHeadModel

from nanogpt.hf import hf_config_from_gpt
from parity.impl import Implementation, reference_implementation
from parity.plugin import IMPL_KEY
from parity.tie import (
    inplace_update_problem,
    optimizer_step_problem,
    survival_problems,
    tie_problem,
    twin_config,
)


def _both(reference_model: Any, hf_model: Any) -> list[tuple[str, Any, bool]]:
    return [("reference nanoGPT", reference_model, False), ("Hugging Face", hf_model, True)]


def test_storage_shared_after_loading(reference_model: Any, hf_model: Any) -> None:
    problems = [tie_problem(m, label, is_hf) for label, m, is_hf in _both(reference_model, hf_model)]
    assert not any(problems), "\n".join(p for p in problems if p)


def test_inplace_update_visible_through_both_names(reference_model: Any, hf_model: Any) -> None:
    problems = [inplace_update_problem(m, label) for label, m, _ in _both(reference_model, hf_model)]
    assert not any(problems), "\n".join(p for p in problems if p)


def test_optimizer_step_moves_both_names_identically(reference_model: Any, hf_model: Any) -> None:
    problems = [optimizer_step_problem(m, label) for label, m, _ in _both(reference_model, hf_model)]
    assert not any(problems), "\n".join(p for p in problems if p)


@pytest.fixture
def implementation(request: pytest.FixtureRequest) -> Implementation:
    """The implementation under test: --impl's, or the reference nanoGPT."""
    return request.config.stash.get(IMPL_KEY, None) or reference_implementation()


@pytest.fixture
def small_twins(parity_target: Any, implementation: Implementation) -> tuple[Any, Any]:
    """Each implementation's class at the target's vocabulary and head count, with 1 narrow layer."""
    small = twin_config(parity_target.config)
    ours = implementation.build(small)[0].to(parity_target.dtype)
    hf_cfg = {k: v for k, v in hf_config_from_gpt(small).items() if k != "architectures"}
    theirs = GPT2LMHeadModel(GPT2Config(**hf_cfg)).to(parity_target.dtype)
    return ours, theirs


def test_tie_survives_to_deepcopy_and_state_dict_round_trip(
    small_twins: tuple[Any, Any], implementation: Implementation, parity_target: Any
) -> None:
    """.to(other dtype), copy.deepcopy and torch.save/load of the state dict all keep one storage."""
    ours, theirs = small_twins
    small = twin_config(parity_target.config)
    problems = survival_problems(
        ours, implementation.label, lambda: implementation.build(small)[0].to(parity_target.dtype)
    )
    problems += survival_problems(
        theirs,
        "Hugging Face",
        lambda: GPT2LMHeadModel(theirs.config).to(theirs.lm_head.weight.dtype),
        is_hf=True,
    )
    assert not problems, "\n".join(problems)
