"""Check 2: one loss, the same in both implementations, and its backward gives the same gradient for every
parameter, the tied one included; the tied gradient is the sum of its embedding and head paths.

All three read one forward + backward of both models on the gradient batch (the `gradient_run` fixture of
parity/conftest.py).
"""

from __future__ import annotations

from typing import Any

from parity.batches import gradient_batch
from parity.checks import GradientRun, check_gradient_decomposition, loss_comparison


def test_loss_matches(parity_target: Any, gradient_run: GradientRun, parity_report: Any) -> None:
    """The reference's own loss (its forward with targets) equals the loss of Hugging Face's logits."""
    record = loss_comparison(gradient_run.reference_loss, gradient_run.hf_loss)
    parity_report.add(parity_target.name, [record])


def test_gradients_match(parity_target: Any, gradient_run: GradientRun, parity_report: Any) -> None:
    if gradient_run.failure is not None:
        raise gradient_run.failure
    parity_report.add(parity_target.name, gradient_run.records)
    assert any(r.tensor == "transformer.wte.weight" for r in gradient_run.records), (
        "the tied matrix's gradient was not compared"
    )


def test_tied_gradient_is_sum_of_embedding_and_head_paths(
    parity_target: Any, reference_model: Any, gradient_run: GradientRun, parity_report: Any, clean_grads: None
) -> None:
    idx, targets = (t.to(parity_target.device) for t in gradient_batch(parity_target.config))
    tied = gradient_run.take_tied_gradient()  # None when an earlier test took it: then computed again
    record = check_gradient_decomposition(reference_model, idx, targets, tied_gradient=tied)
    parity_report.add(parity_target.name, [record])
