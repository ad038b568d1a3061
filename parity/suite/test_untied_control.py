"""Self-tests of the harness on Hugging Face alone, independent of the implementation under test.

The control is the regression this project exists for: HF loaded with tie_word_embeddings=False from a
checkpoint that stores only wte initializes lm_head randomly. The harness's own functions must detect it
and name `tie_word_embeddings`. It is compared with the tied HF model, never with the implementation, so
a bug elsewhere in the implementation cannot make the control fail. The control is loaded in the
checkpoint's own dtype (float32 maps the file: nothing is read yet) and shares every tensor it loaded
identically with the tied model (`share_parameters`); only its head is converted to the run's dtype. HF's
own tie must be real too: one storage through an in-place write and an optimizer step.
"""

from __future__ import annotations

import pytest
import torch

from nanogpt.schema import HEAD
from parity.core.compare import ParityFailure
from parity.numerics.forward import compare_logits
from parity.numerics.tie import inplace_update_problem, optimizer_step_problem, tie_problem
from parity.subject.batches import token_batch
from parity.subject.loading import load_hf, share_parameters
from parity.subject.subject import Subject


def test_untied_hf_control_is_detected(subject: Subject) -> None:
    target, tied = subject.target, subject.hf()
    untied = load_hf(subject.checkpoint(), "auto", target.device, False, activation=target.hf_activation)
    kept = share_parameters(untied, tied, convert=True)
    if HEAD not in kept:
        # The checkpoint stores lm_head equal to wte (torch.save of a tied model's state_dict): the untied
        # load got the right values in a second tensor, which share_parameters just merged back. Split it
        # again: a copy, not a tie, which the check must still name; the logits cannot show it.
        untied.lm_head.weight = torch.nn.Parameter(untied.lm_head.weight.detach().clone())
        problem = tie_problem(untied, "Hugging Face", is_hf=True)
        assert problem is not None and "a copy, not a tie" in problem and "tie_word_embeddings" in problem, (
            problem
        )
        return
    assert kept == [HEAD], f"the untied control shares everything but its head, not {kept}"
    untied.lm_head.to(target.dtype)
    problem = tie_problem(untied, "Hugging Face", is_hf=True)
    assert problem is not None and "tie_word_embeddings" in problem, problem
    # The one-token batch: a random head shows on any batch, and a failing compare_logits runs the models
    # several times (the check, the divergence search, a repeat); on the sentence it took 2 s at gpt2.
    idx = token_batch("length_1", target.config).to(target.device)
    with pytest.raises(ParityFailure, match="tie_word_embeddings=True"):
        compare_logits(tied, untied, idx, target.config.n_layer, "untied control")


def test_hugging_face_tie_is_real(subject: Subject) -> None:
    hf = subject.hf()
    problems = [
        tie_problem(hf, "Hugging Face", is_hf=True),
        inplace_update_problem(hf, "Hugging Face"),
        optimizer_step_problem(hf, "Hugging Face"),
    ]
    assert not any(problems), "\n".join(p for p in problems if p)
