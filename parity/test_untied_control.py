"""Check 5: the control. HF loaded with tie_word_embeddings=False from a checkpoint that stores only wte.

This is exactly the regression seen when nanoGPT first tied its weights and users' HF references were
loaded untied: transformers 5 then initializes lm_head randomly. The harness must detect it and name
`tie_word_embeddings` in the message. The control differs from the tied HF model only in its head, so
it is loaded in the checkpoint's own dtype (float32 maps the file: nothing is read yet) and every tensor it
loaded identically is then shared with `hf_model` (`share_parameters`); only its head is converted to the
run's dtype. A third gpt2-xl, or a third float64 gpt2-medium, would not fit in memory, and the head is
what this test is about.
"""

from __future__ import annotations

from typing import Any

import pytest

from parity.batches import token_batch
from parity.checks import check_logits
from parity.compare import ParityFailure
from parity.loading import load_hf, share_parameters
from parity.tie import HEAD, tie_problem


def test_untied_hf_reference_is_detected(
    parity_target: Any, checkpoint: Any, reference_model: Any, hf_model: Any
) -> None:
    untied = load_hf(checkpoint, "auto", parity_target.device, tie_word_embeddings=False)
    kept = share_parameters(untied, hf_model, convert=True)
    assert kept == [HEAD], f"the untied control shares everything but its head, not {kept}"
    untied.lm_head.to(parity_target.dtype)
    problem = tie_problem(untied, "Hugging Face", is_hf=True)
    assert problem is not None and "tie_word_embeddings" in problem, problem
    # The short sentence batch: a random head shows on any batch, and a failing check_logits runs the
    # models five times (the check, the divergence search, a repeat), a minute of gpt2-xl on a CPU.
    idx = token_batch("sentence", parity_target.config).to(parity_target.device)
    with pytest.raises(ParityFailure, match="tie_word_embeddings=True"):
        check_logits(reference_model, untied, idx, parity_target.config.n_layer, "untied control")
