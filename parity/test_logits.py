"""Check 1: the same token batches give the same logits in both implementations."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from parity.batches import BATCH_KINDS, gradient_batch, token_batch
from parity.checks import GradientRun, check_logits, hf_logits, reference_logits
from parity.compare import ParityFailure, compare_tensors
from parity.tolerances import logits_tolerance

# Several sequences in one batch: here that is the gradient batch (parity/batches.py `gradient_batch`, 2 x 64
# tokens), whose logits the forward + backward of `gradient_run` compares at no extra cost. A forward of a
# second multi-sequence batch (4 x 64, which the bisect command still uses) cost 8 s at gpt2-xl on a CPU.
LOGITS_KINDS = tuple(k for k in BATCH_KINDS if k != "several_sequences")


@pytest.mark.parametrize("kind", LOGITS_KINDS)
def test_logits_match(
    kind: str, parity_target: Any, reference_model: Any, hf_model: Any, parity_report: Any
) -> None:
    idx = token_batch(kind, parity_target.config).to(parity_target.device)
    record = check_logits(reference_model, hf_model, idx, parity_target.config.n_layer, kind)
    parity_report.add(parity_target.name, [record])


def test_logits_match_on_several_sequences(
    parity_target: Any, reference_model: Any, hf_model: Any, gradient_run: GradientRun, parity_report: Any
) -> None:
    """The gradient batch's logits, from the forward passes of `gradient_run`."""
    found = gradient_run.logits
    if isinstance(found, ParityFailure) or not found.passed:
        # Run the check again to diagnose (first diverging module); if it passes now, report what differed.
        idx = gradient_batch(parity_target.config)[0].to(parity_target.device)
        check_logits(reference_model, hf_model, idx, parity_target.config.n_layer, "gradient batch")
        raise found if isinstance(found, ParityFailure) else ParityFailure(f"[logits] {found.summary()}")
    parity_report.add(parity_target.name, [found])


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
    # and three forward passes of a multi-sequence batch cost most of a minute at gpt2-xl on a CPU.
    idx = token_batch("sentence", parity_target.config).to(parity_target.device)
    saved = _set_dropout(reference_model, 0.1) | _set_dropout(hf_model, 0.1)
    try:
        with torch.no_grad():
            evaluated = hf_logits(hf_model, idx)
        n_layer = parity_target.config.n_layer
        check_logits(reference_model, hf_model, idx, n_layer, "dropout=0.1, eval", hf_out=evaluated)
        reference_model.train()
        with torch.no_grad():
            trained = reference_logits(reference_model, idx)
        reference_model.eval()
        differs = not compare_tensors(
            "logits", "train", trained, evaluated, logits_tolerance(trained.dtype)
        ).passed
        assert differs, "dropout=0.1 in train mode changed nothing: the dropout setting did not take effect"
    finally:
        reference_model.eval()
        _restore_dropout(saved)
