"""The checkpoint-once check (parity/checks/counts.py) fails on the bugs it is there for.

It is called directly on a tiny reference model whose `state_dict` is broken in one way each time: the
tied matrix stored twice (a copy under lm_head.weight), and a state dict that leaves tensors out.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from nanogpt.model import GPT
from nanogpt.schema import HEAD
from parity.checks.counts import checkpoint_once_check
from parity.core.compare import ParityFailure


def checkpoint_check(model: GPT) -> None:
    """The registry's checkpoint-once check on model (it reads nothing else of its subject)."""
    checkpoint_once_check(SimpleNamespace(model=lambda: model))


class HeadCopiedInStateDict(GPT):
    """Tied in memory, but state_dict() hands out a copy of the head: checkpoints hold the matrix twice."""

    def state_dict(self, *args: Any, **kwargs: Any) -> Any:
        state = super().state_dict(*args, **kwargs)
        state[HEAD] = state[HEAD].clone()
        return state


class StateDictWithoutBlocks(GPT):
    """state_dict() leaves out the blocks: a checkpoint of it cannot hold the parameters."""

    def state_dict(self, *args: Any, **kwargs: Any) -> Any:
        state = super().state_dict(*args, **kwargs)
        return {k: v for k, v in state.items() if ".h." not in k}


def test_correct_model_passes(make_gpt: Any) -> None:
    checkpoint_check(make_gpt())


def test_tied_matrix_stored_twice_fails(make_gpt: Any) -> None:
    model = make_gpt()
    model.__class__ = HeadCopiedInStateDict
    with pytest.raises(ParityFailure, match="tied matrix is stored twice"):
        checkpoint_check(model)


def test_state_dict_missing_tensors_fails(make_gpt: Any) -> None:
    model = make_gpt()
    model.__class__ = StateDictWithoutBlocks
    with pytest.raises(ParityFailure, match="bytes of storage for"):
        checkpoint_check(model)
