"""The logits check's full block on the narrow twin, where the memory plan keeps long extra passes there.

At GPT-2 sizes the full block's forward of both models was two thirds of the default run's time yardstick;
the twin runs the same classes through the same loader at one layer and few channels, so a bug that only a
long sequence shows (an attention window, a mask or a position table wrong past some length) still FAILs,
and the verdict says where it was found.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from mutants import gpt_with
from torch.nn import functional as F

import nanogpt.model
from nanogpt.model import CausalSelfAttention, GPTConfig
from parity.checks import forward
from parity.checks.check import run_check
from parity.checks.registry import CHECKS
from parity.core.verdicts import Status
from parity.foreign.impl import Implementation, reference_implementation
from parity.subject import subject as subject_module
from parity.subject.batches import gradient_batch
from parity.subject.subject import Subject
from parity.subject.targets import ParityTarget


class SlidingWindow32(CausalSelfAttention):
    """Attention over a sliding window of 32 tokens: wrong only past position 32."""

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        i = torch.arange(q.size(-2), device=q.device)
        mask = (i[:, None] >= i[None, :]) & (i[:, None] - i[None, :] < 32)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=1.0 / math.sqrt(q.size(-1)))


def test_the_full_block_runs_on_the_narrow_twin_where_the_plan_says(extras_on_twin: ParityTarget) -> None:
    verdict = run_check(CHECKS["logits"], Subject(reference_implementation(), extras_on_twin))
    assert verdict.status is Status.PASS, verdict.reason
    assert "the full block on the narrow twin (1 layer" in verdict.reason
    names = [r.tensor for r in verdict.records]
    assert "logits[full_block] (narrow twin)" in names and "logits[sentence]" in names


def test_the_full_block_stays_on_the_loaded_models_otherwise() -> None:
    from parity.frontends.bisect import resolve_model

    target = resolve_model("small", "cpu", None)
    assert target.memory.train_full_size
    verdict = run_check(CHECKS["logits"], Subject(reference_implementation(), target))
    assert verdict.status is Status.PASS, verdict.reason
    assert "narrow twin" not in verdict.reason
    assert "logits[full_block]" in [r.tensor for r in verdict.records]


def test_a_bug_only_the_full_block_shows_fails_on_the_twin_saying_where(
    extras_on_twin: ParityTarget, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The small model's block is the gradient batch's length (64); at GPT-2 sizes the block (1024) is 16x
    # longer. A 16-token gradient batch gives the same picture: only the full block reaches past the window.
    def short(config: GPTConfig) -> tuple[torch.Tensor, torch.Tensor]:
        idx, targets = gradient_batch(config)
        return idx[:, :16], targets[:, :16]

    monkeypatch.setattr(subject_module, "gradient_batch", short)
    monkeypatch.setattr(forward, "gradient_batch", short)
    impl = Implementation(
        "sliding-window-32", Path(nanogpt.model.__file__), nanogpt.model, gpt_with(SlidingWindow32), GPTConfig
    )
    verdict = run_check(CHECKS["logits"], Subject(impl, extras_on_twin))
    assert verdict.status is Status.FAIL, verdict.reason
    assert verdict.reason.startswith("on the narrow twin (1 layer"), verdict.reason
    assert "first divergence at transformer.h.0.attn" in verdict.reason, verdict.reason
    assert "logits[full_block]" in verdict.details, verdict.details


@pytest.mark.usefixtures("twin_cannot_be_built")
def test_the_full_block_falls_back_to_the_loaded_models_without_a_twin(extras_on_twin: ParityTarget) -> None:
    verdict = run_check(CHECKS["logits"], Subject(reference_implementation(), extras_on_twin))
    assert verdict.status is Status.PASS, verdict.reason
    assert "narrow twin" not in verdict.reason
    assert "logits[full_block]" in [r.tensor for r in verdict.records]


class HeadOfADetachedCopy(nanogpt.model.GPT):
    """The head reads a detached copy of the tied matrix: the tied gradient has the embedding path alone."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__(config)
        head = self.lm_head
        head.forward = lambda x: F.linear(x, head.weight.detach())


def test_tied_gradient_runs_on_the_narrow_twin_where_the_plan_says(extras_on_twin: ParityTarget) -> None:
    verdict = run_check(CHECKS["tied-gradient"], Subject(reference_implementation(), extras_on_twin))
    assert verdict.status is Status.PASS, verdict.reason
    assert "on the narrow twin (1 layer" in verdict.reason
    assert [r.tensor for r in verdict.records] == ["tied = embedding path + head path (narrow twin)"]


def test_a_lost_head_path_fails_tied_gradient_on_the_twin_saying_where(extras_on_twin: ParityTarget) -> None:
    impl = Implementation(
        "detached-head", Path(nanogpt.model.__file__), nanogpt.model, HeadOfADetachedCopy, GPTConfig
    )
    verdict = run_check(CHECKS["tied-gradient"], Subject(impl, extras_on_twin))
    assert verdict.status is Status.FAIL, verdict.reason
    assert verdict.reason.startswith("[grads] on the narrow twin (1 layer"), verdict.reason
    assert "no gradient on one of the two paths" in verdict.reason, verdict.reason


@pytest.mark.usefixtures("twin_cannot_be_built")
def test_tied_gradient_falls_back_to_the_loaded_models_without_a_twin(extras_on_twin: ParityTarget) -> None:
    verdict = run_check(CHECKS["tied-gradient"], Subject(reference_implementation(), extras_on_twin))
    assert verdict.status is Status.PASS, verdict.reason
    assert "narrow twin" not in verdict.reason
    assert [r.tensor for r in verdict.records] == ["tied = embedding path + head path"]
