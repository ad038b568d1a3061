"""The checkpoint check of parity/test_counts.py fails on the bugs it is there for.

It is called directly on a tiny reference model whose `state_dict` is broken in one way each time: the
tied matrix stored twice (a copy under lm_head.weight), and a state dict that leaves tensors out.
"""

from __future__ import annotations

from typing import Any

import pytest
from parity.test_counts import test_checkpoint_stores_tied_tensor_once as checkpoint_check

from nanogpt.model import GPT
from parity.tie import HEAD


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
    with pytest.raises(AssertionError, match="tied matrix is stored twice"):
        checkpoint_check(model)


def test_state_dict_missing_tensors_fails(make_gpt: Any) -> None:
    model = make_gpt()
    model.__class__ = StateDictWithoutBlocks
    with pytest.raises(AssertionError, match="bytes of tensor storage for"):
        checkpoint_check(model)
