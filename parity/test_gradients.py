"""Check 2: backward of the same loss gives the same gradient for every parameter, the tied one included."""

from __future__ import annotations

from typing import Any

from parity.batches import gradient_batch
from parity.checks import check_gradient_decomposition, check_gradients


def test_gradients_match(
    parity_target: Any, reference_model: Any, hf_model: Any, parity_report: Any, clean_grads: None
) -> None:
    idx, targets = (t.to(parity_target.device) for t in gradient_batch(parity_target.config))
    records = check_gradients(reference_model, hf_model, idx, targets, parity_target.config.output_vocab_size)
    parity_report.add(parity_target.name, records)
    assert any(r.tensor == "transformer.wte.weight" for r in records), (
        "the tied matrix's gradient was not compared"
    )


def test_tied_gradient_is_sum_of_embedding_and_head_paths(
    parity_target: Any, reference_model: Any, parity_report: Any, clean_grads: None
) -> None:
    idx, targets = (t.to(parity_target.device) for t in gradient_batch(parity_target.config))
    parity_report.add(parity_target.name, [check_gradient_decomposition(reference_model, idx, targets)])
