"""The tie is one Parameter: two Parameter objects over one storage are named by the tie probes.

Sharing storage is not enough: after load_state_dict(assign=True) without a re-tie, or a head re-wrapped in
its own nn.Parameter, the two names share memory as two Parameters, each getting its own partial gradient
and its own optimizer update. These tests build that state on a tiny model and read the probes' messages.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from nanogpt.model import GPT
from parity.numerics.tie import optimizer_tie_problem, same_storage, tie_problem


def rewrapped(model: GPT) -> GPT:
    """model with its head re-wrapped as a second Parameter over the embedding's storage."""
    model.lm_head.weight = nn.Parameter(model.transformer.wte.weight.data)
    return model


def test_two_parameters_over_one_storage_are_not_a_tie(make_gpt: Callable[..., GPT]) -> None:
    """tie_problem names the two Parameter objects and the double update, though the storage is one."""
    model = rewrapped(make_gpt())
    assert same_storage(model.lm_head.weight, model.transformer.wte.weight)
    problem = tie_problem(model, "m")
    assert problem is not None
    assert "two Parameter objects" in problem and "updates it twice" in problem


def test_one_parameter_is_a_tie(make_gpt: Callable[..., GPT]) -> None:
    """The reference's tie is one Parameter: neither probe objects."""
    model = make_gpt()
    assert model.lm_head.weight is model.transformer.wte.weight
    assert tie_problem(model, "m") is None
    optimizer = model.configure_optimizers(0.1, 1e-3, (0.9, 0.95), "cpu")
    assert optimizer_tie_problem(optimizer.param_groups, model) is None


def test_optimizer_holding_two_parameters_over_the_tie_is_named(make_gpt: Callable[..., GPT]) -> None:
    """An optimizer over both Parameters updates the one storage twice: the message names both."""
    model = rewrapped(make_gpt())
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    problem = optimizer_tie_problem(optimizer.param_groups, model)
    assert problem is not None
    assert "2 Parameter objects" in problem
    assert "lm_head.weight" in problem and "transformer.wte.weight" in problem


def test_untied_model_is_not_the_optimizer_probes_business(make_gpt: Callable[..., GPT]) -> None:
    """Two storages are untied, which tied-storage reports; optimizer_tie_problem stays silent."""
    model = make_gpt(tie_weights=False)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    assert optimizer_tie_problem(optimizer.param_groups, model) is None
