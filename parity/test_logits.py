"""Check 1: the same token batches give the same logits and the same loss in both implementations."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from parity.batches import BATCH_KINDS, gradient_batch, token_batch
from parity.checks import check_logits, check_loss, hf_logits, reference_logits
from parity.compare import compare_tensors
from parity.tolerances import logits_tolerance


@pytest.mark.parametrize("kind", BATCH_KINDS)
def test_logits_match(
    kind: str, parity_target: Any, reference_model: Any, hf_model: Any, parity_report: Any
) -> None:
    idx = token_batch(kind, parity_target.config).to(parity_target.device)
    record = check_logits(reference_model, hf_model, idx, parity_target.config.n_layer, kind)
    parity_report.add(parity_target.name, [record])


def test_loss_matches(parity_target: Any, reference_model: Any, hf_model: Any, parity_report: Any) -> None:
    # The gradient batch (2 x 64 tokens): batched like several_sequences at half its tokens, which at gpt2-xl
    # on a CPU is 4 s of the 3 x (one forward + backward) the whole run may take (benchmarks/parity_scaling.py).
    idx, targets = (t.to(parity_target.device) for t in gradient_batch(parity_target.config))
    parity_report.add(parity_target.name, [check_loss(reference_model, hf_model, idx, targets)])


def _set_dropout(model: torch.nn.Module, p: float) -> dict[torch.nn.Module, float]:
    """Set every dropout probability of model to p (nn.Dropout modules and float `dropout` attributes)."""
    saved: dict[torch.nn.Module, float] = {}
    for m in model.modules():
        if isinstance(m, torch.nn.Dropout):
            saved[m] = m.p
            m.p = p
        elif isinstance(getattr(m, "dropout", None), float):
            saved[m] = m.dropout
            m.dropout = p
    return saved


def _restore_dropout(saved: dict[torch.nn.Module, float]) -> None:
    for m, p in saved.items():
        if isinstance(m, torch.nn.Dropout):
            m.p = p
        else:
            m.dropout = p


def test_dropout_config_matches_in_eval_mode(parity_target: Any, reference_model: Any, hf_model: Any) -> None:
    """A model configured with dropout 0.1 still matches in eval mode, and dropout really is active in train."""
    # The short sentence batch: this is about configuration, not batching (test_logits_match covers that),
    # and four forward passes of several_sequences cost a minute at gpt2-xl on a CPU.
    idx = token_batch("sentence", parity_target.config).to(parity_target.device)
    saved = _set_dropout(reference_model, 0.1) | _set_dropout(hf_model, 0.1)
    try:
        check_logits(reference_model, hf_model, idx, parity_target.config.n_layer, "dropout=0.1, eval")
        reference_model.train()
        with torch.no_grad():
            trained = reference_logits(reference_model, idx)
        reference_model.eval()
        with torch.no_grad():
            evaluated = hf_logits(hf_model, idx)
        differs = not compare_tensors(
            "logits", "train", trained, evaluated, logits_tolerance(trained.dtype)
        ).passed
        assert differs, "dropout=0.1 in train mode changed nothing: the dropout setting did not take effect"
    finally:
        reference_model.eval()
        _restore_dropout(saved)
