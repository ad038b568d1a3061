"""Backward checks: every parameter's gradient, and the tied gradient as the sum of its two paths.

grads reads the one forward + backward of both models that a Subject runs on the gradient batch;
tied-gradient reads the implementation's tied gradient from it, or runs on the narrow twin where the memory
plan keeps extra passes there.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from nanogpt.schema import EMBEDDING, HEAD, mapping_of
from parity.checks.check import Check
from parity.core.compare import ParityFailure, without_padding_rows
from parity.core.tolerances import gradients_tolerance
from parity.core.verdicts import Outcome
from parity.numerics.chunked import compare_chunked
from parity.numerics.forward import hf_logits, implementation_logits, loss_of
from parity.numerics.gradients import compare_gradient_decomposition
from parity.numerics.tie import get_tensor, same_storage
from parity.subject.batches import gradient_batch
from parity.subject.subject import Subject, clean_grads, found_on, twin_clause


def _untied_gradient_note(model: nn.Module, hf: Any, vocab: int, subject: Subject) -> str | None:
    """For an untied implementation: do its two matrices' gradients add up to HF's tied gradient?"""
    head, emb = get_tensor(model, HEAD), get_tensor(model, EMBEDDING)
    if same_storage(head, emb) and head is emb:
        return None
    idx, targets = (t.to(subject.device) for t in gradient_batch(subject.config))
    with clean_grads(model, hf):
        loss_of(implementation_logits(model, idx), targets).backward()
        loss_of(hf_logits(hf, idx), targets).backward()
        hf_grad = get_tensor(hf, EMBEDDING).grad
        if head.grad is None or emb.grad is None or hf_grad is None:
            return (
                "the implementation is untied (lm_head.weight is not transformer.wte.weight); "
                "see tied-storage"
            )
        summed = without_padding_rows(EMBEDDING, emb.grad + head.grad, vocab)
        rec = compare_chunked(
            "grads", "wte.grad + lm_head.grad", summed, hf_grad, gradients_tolerance(hf_grad.dtype)
        )
    if rec.passed:
        return (
            "the implementation is untied: transformer.wte.weight and lm_head.weight each get one of the "
            "tied gradient's two paths (their sum equals Hugging Face's tied gradient); see tied-storage"
        )
    return (
        "the implementation is untied, and even wte.grad + lm_head.grad differs from Hugging Face's: "
        f"{rec.summary()}"
    )


def grads_check(subject: Subject) -> Outcome:
    """Every parameter's gradient against its Hugging Face counterpart (Conv1D transposes accounted for)."""
    run = subject.gradient_run()
    if run.failure is not None:
        note = _untied_gradient_note(subject.model(), subject.hf(), subject.config.output_vocab_size, subject)
        found = run.logits
        if not note and (isinstance(found, ParityFailure) or not found.passed):
            note = "the forward pass differs already (see logits), so every gradient after it does"
        message = f"[grads] {note}\n{run.failure}" if note else str(run.failure)
        raise ParityFailure(message, run.records)
    tied = mapping_of(subject.model()).target(EMBEDDING)  # records are in the implementation's names
    if not any(r.tensor == tied for r in run.records):
        raise ParityFailure(f"[grads] the tied matrix's gradient ({tied}) was not compared", run.records)
    worst = max(r.max_abs for r in run.records)
    worst_norm = max(r.rel_norm for r in run.records)
    return Outcome(
        f"{len(run.records)} parameter gradients match Hugging Face (max abs diff {worst:.1e}, relative "
        f"difference norm {worst_norm:.1e}, tolerance {gradients_tolerance(subject.dtype)})",
        "\n".join(r.summary() for r in run.records),
        run.records,
    )


def tied_gradient_check(subject: Subject) -> Outcome:
    """The tied gradient equals embedding-path + head-path gradients of an untied twin of the same model.

    On the narrow twin where the memory plan keeps extra passes there (`Subject.extras_twin`): the paths and
    their sum are the same code at any width, the full-size tied gradient is compared with Hugging Face's
    (grads), and at gpt2 in float64 the untied twin's backward at full size took 1.5 s.
    """
    twin = subject.extras_twin()
    if twin is None:
        model, config = subject.model(), subject.config
        tied = subject.gradient_run().take_tied_gradient()  # None when taken before: then computed again
    else:
        model, config, tied = twin.model, twin.config, None
    idx, targets = (t.to(subject.device) for t in gradient_batch(config))
    with found_on(twin, "grads"), clean_grads(model):
        rec = compare_gradient_decomposition(model, idx, targets, tied_gradient=tied)
    where = ""
    if twin is not None:
        rec.tensor += " (narrow twin)"
        where = f", {twin_clause(twin.config, twin.why)}"
    summary = f"the tied gradient is the sum of its embedding and head paths ({rec.summary()}){where}"
    return Outcome(summary, records=[rec])


BACKWARD_CHECKS = (
    Check(
        "grads",
        "every parameter's gradient equals Hugging Face's, element by element and in the norm of "
        "their difference (Conv1D transposes accounted for)",
        "both models; the shared forward + backward",
        grads_check,
    ),
    Check(
        "tied-gradient",
        "the tied gradient is the sum of its embedding path and its head path",
        "the implementation; one more backward of an untied twin (a second Parameter over the tied storage), "
        "on the narrow twin where the memory plan keeps extra passes there",
        tied_gradient_check,
    ),
)
