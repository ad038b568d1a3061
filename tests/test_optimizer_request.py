"""The optimizer against the request and the loss with ignored targets, piece by piece: which arguments a
configure_optimizers signature takes, each group read back, the decay policy per parameter, one step against
AdamW (parity/checks/optim_groups.py), and ignored targets passed in a shifting labels convention
(parity/foreign/discovery.py)."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from nanogpt.model import GPT, GPTConfig
from parity.checks.ignored_targets import masked_targets
from parity.checks.optim_groups import (
    REQUEST,
    configured_optimizer,
    decoupled_step_problem,
    policy_departures,
    request_departures,
)
from parity.foreign.adapters import configure_arguments_taken
from parity.foreign.discovery import IGNORED, loss_convention

TINY = GPTConfig(block_size=16, vocab_size=31, n_layer=1, n_head=2, n_embd=8, dropout=0.0)


def nanogpt(self: Any, weight_decay: float, learning_rate: float, betas: Any, device_type: str) -> None: ...
def script(self: Any, weight_decay: float, learning_rate: float, device: str) -> None: ...
def mingpt(self: Any, train_config: Any) -> None: ...
def renamed(self: Any, wd: float, lr_: float, b: Any) -> None: ...


@pytest.mark.parametrize(
    ("method", "taken"),
    [
        (nanogpt, ("weight_decay", "learning_rate", "betas", "device_type")),
        (script, ("weight_decay", "learning_rate", "device_type")),
        (mingpt, ("weight_decay", "learning_rate", "betas", "device_type")),
        (renamed, ("weight_decay", "learning_rate", "betas")),
    ],
)
def test_the_arguments_a_signature_takes(method: Any, taken: tuple[str, ...]) -> None:
    assert configure_arguments_taken(method) == taken


class WithOptimizer(GPT):
    """The reference with configure_optimizers returning the optimizer class it is given."""

    kind: Any = torch.optim.AdamW
    options: dict[str, Any] = {}

    def configure_optimizers(
        self, weight_decay: float, learning_rate: float, betas: Any, device_type: str = "cpu"
    ) -> torch.optim.Optimizer:
        return self.kind(self.optimizer_groups(weight_decay), lr=learning_rate, betas=betas, **self.options)


def _model(kind: Any, **options: Any) -> GPT:
    cls = type("Built", (WithOptimizer,), {"kind": kind, "options": options})
    torch.manual_seed(0)
    return cls(TINY)


def test_one_step_tells_adam_from_adamw() -> None:
    assert decoupled_step_problem(_model(torch.optim.AdamW), REQUEST) is None
    assert decoupled_step_problem(_model(torch.optim.Adam, decoupled_weight_decay=True), REQUEST) is None
    problem = decoupled_step_problem(_model(torch.optim.Adam), REQUEST)
    assert problem is not None and "torch.optim.adam.Adam differs" in problem and "(L2)" in problem


def test_groups_read_back_the_request_only_for_arguments_taken() -> None:
    model = _model(torch.optim.AdamW)
    optimizer = configured_optimizer(model, "cpu", {**REQUEST, "betas": (0.9, 0.999)})
    taken = configure_arguments_taken(WithOptimizer.configure_optimizers)
    problems = request_departures(optimizer, taken, REQUEST)
    assert len(problems) == 2 and all("betas=(0.9, 0.999)" in p and "dropped" in p for p in problems)
    assert request_departures(optimizer, ("weight_decay", "learning_rate"), REQUEST) == []
    assert request_departures(configured_optimizer(model, "cpu", REQUEST), taken, REQUEST) == []


def test_every_bias_and_gain_decayed_is_named() -> None:
    model = _model(torch.optim.AdamW)
    assert policy_departures(configured_optimizer(model, "cpu", REQUEST), model) == (
        [],
        ["transformer.wpe.weight: weight-decayed"],
    )
    every = torch.optim.AdamW([{"params": list(model.parameters()), "weight_decay": 0.1}])
    problems, _ = policy_departures(every, model)
    one_d = [n for n, p in model.named_parameters() if p.dim() < 2]
    assert len(problems) == len(one_d) and all("do not decay" in p for p in problems)


class ShiftsLabels(nn.Module):
    """Hugging Face's labels convention: labels are the input ids, shifted inside, -100 ignored."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.emb = nn.Embedding(11, 11)

    def forward(self, idx: torch.Tensor, labels: torch.Tensor | None = None) -> Any:
        logits = self.emb(idx)
        if labels is None:
            return logits
        return logits, F.cross_entropy(logits[:, :-1].reshape(-1, 11), labels[:, 1:].reshape(-1))


def test_ignored_targets_in_a_shifting_labels_convention_give_the_mean_over_the_kept() -> None:
    model = ShiftsLabels()
    convention = loss_convention(ShiftsLabels.forward)
    idx = torch.randint(0, 11, (2, 9), generator=torch.Generator().manual_seed(1))
    targets = masked_targets(torch.roll(idx, -1, 1))
    convention.detect(ShiftsLabels.forward, model, idx)
    convention.ignore_index = -100
    logits, loss = convention.logits_and_loss(ShiftsLabels.forward, model, idx, targets, lambda: model(idx))
    want = F.cross_entropy(logits.reshape(-1, 11), targets.reshape(-1), ignore_index=IGNORED)
    assert convention.shifted and (targets == IGNORED).any()
    torch.testing.assert_close(loss, want)
    convention.ignore_index = IGNORED  # passed as -1, which this loss does not ignore
    with pytest.raises(IndexError):
        convention.logits_and_loss(ShiftsLabels.forward, model, idx, targets, lambda: model(idx))
