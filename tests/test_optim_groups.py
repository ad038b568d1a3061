"""Recording an implementation's optimizer groups (parity/checks/optim_groups.py): what torch refuses is still
named, and torch's Optimizer is left as it was, whatever configure_optimizers does and on whichever thread."""

from __future__ import annotations

import threading
from typing import Any

import pytest
import torch
from torch import nn

from parity.checks.optim_groups import configured_optimizer, decay_membership


class TwoGroups(nn.Module):
    """A model whose configure_optimizers lists one matrix in two groups; another thread builds an optimizer
    while torch's refusal is on its way out."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.zeros(2, 2))
        self.b = nn.Parameter(torch.zeros(2))

    def configure_optimizers(
        self, weight_decay: float, learning_rate: float, **_: Any
    ) -> torch.optim.Optimizer:
        groups = [
            {"params": [self.w, self.b], "weight_decay": weight_decay},
            {"params": [self.w], "weight_decay": 0.0},
        ]
        try:
            return torch.optim.AdamW(groups, lr=learning_rate)
        finally:
            other = threading.Thread(target=lambda: torch.optim.SGD([nn.Parameter(torch.zeros(3))], lr=0.1))
            other.start()
            other.join()


class Crashes(nn.Module):
    """A model whose configure_optimizers raises after building an optimizer."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.zeros(2))

    def configure_optimizers(self, **_: Any) -> torch.optim.Optimizer:
        torch.optim.SGD([self.w], lr=0.1)
        raise RuntimeError("configure_optimizers crashed")


def test_groups_torch_refuses_are_recorded_from_the_calling_thread_only() -> None:
    original = torch.optim.Optimizer.__init__
    model = TwoGroups()
    optimizer = configured_optimizer(model, "cpu")
    assert "more than one parameter group" in optimizer.refused
    assert decay_membership(optimizer, model) == {"w": [0.1, 0.0], "b": [0.1]}
    assert torch.optim.Optimizer.__init__ is original


def test_torch_is_restored_when_configure_optimizers_raises() -> None:
    original = torch.optim.Optimizer.__init__
    with pytest.raises(RuntimeError, match="crashed"):
        configured_optimizer(Crashes(), "cpu")
    assert torch.optim.Optimizer.__init__ is original
