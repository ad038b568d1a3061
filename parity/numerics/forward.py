"""Forward-pass comparisons: logits of token batches and the implementation's own loss against Hugging Face's.

A failure names the first diverging module (parity/numerics/diagnose.py), whichever comparison a user sees
first.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
from torch.nn import functional as F

from parity.core.compare import Comparison, ParityFailure, compare_tensors
from parity.core.outputs import split_output
from parity.core.tolerances import logits_tolerance
from parity.numerics.chunked import compare_chunked
from parity.numerics.diagnose import first_divergence


def implementation_logits(model: torch.nn.Module, idx: torch.Tensor) -> torch.Tensor:
    """Full-sequence logits of a model whose forward returns logits, (logits, loss), a dict or HF output."""
    return split_output(model(idx))[0]


def hf_logits(model: Any, idx: torch.Tensor) -> torch.Tensor:
    """Logits of a transformers causal LM."""
    return model(idx, use_cache=False).logits


def hf_last_logits(model: Any, idx: torch.Tensor) -> torch.Tensor:
    """A transformers causal LM's logits at the last position, (B, V): the head of the last position only,
    where its forward takes `logits_to_keep` (transformers >= 4.50), so that a whole block's context does not
    cost a (T, V) logits tensor (411 MB for 1024 tokens of GPT-2's vocabulary in float64)."""
    if "logits_to_keep" in inspect.signature(type(model).forward).parameters:
        return model(idx, use_cache=False, logits_to_keep=1).logits[:, -1, :]
    return hf_logits(model, idx)[:, -1, :]


def compare_logits(
    model: torch.nn.Module,
    hf_model: Any,
    idx: torch.Tensor,
    n_layer: int,
    label: str,
    hf_out: torch.Tensor | None = None,
) -> Comparison:
    """Same logits for idx, or ParityFailure naming the first diverging module.

    hf_out: Hugging Face's logits for idx if the caller already has them (saves a forward pass).
    """
    with torch.no_grad():
        ours = implementation_logits(model, idx)
        theirs = hf_logits(hf_model, idx) if hf_out is None else hf_out
    if ours.shape[:-1] == theirs.shape[:-1] and ours.size(-1) > theirs.size(-1):
        raise ParityFailure(
            f"[logits] logits[{label}]: the implementation returns {ours.size(-1)} vocabulary columns, "
            f"Hugging Face {theirs.size(-1)}: padded vocabulary rows leak into the logits and every softmax "
            "(crop the logits to the real vocabulary, logical_vocab_size)"
        )
    tol = logits_tolerance(ours.dtype)
    rec = compare_chunked("logits", f"logits[{label}]", ours, theirs, tol)
    if not rec.passed:
        where, _ = first_divergence(model, hf_model, idx, n_layer, tol)
        with torch.no_grad():
            again = implementation_logits(model, idx)
        if not torch.equal(again, ours):
            where += (
                "\n  the implementation's logits differ between two identical calls: dropout (or other "
                "randomness) is active, though the model should be in eval mode"
            )
        raise ParityFailure(f"[logits] {where}\n  {rec.summary()}")
    return rec


def loss_of(logits: torch.Tensor, targets: torch.Tensor, ignore_index: int = -100) -> torch.Tensor:
    """Mean next-token cross-entropy, computed the same way for both sides, ignoring ignore_index targets."""
    flat = logits.reshape(-1, logits.size(-1))
    if flat.dtype in (torch.float16, torch.bfloat16):
        flat = flat.float()  # softmax over 50k classes in half precision loses the loss's low bits
    return F.cross_entropy(flat, targets.reshape(-1), ignore_index=ignore_index)


def logits_and_own_loss(
    model: torch.nn.Module, idx: torch.Tensor, targets: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The implementation's forward with targets: its logits and its own loss (ours if it returns none)."""
    logits, loss = split_output(model(idx, targets))
    return logits, loss if loss is not None else loss_of(logits, targets)


def compare_loss(
    model: torch.nn.Module, hf_model: Any, idx: torch.Tensor, targets: torch.Tensor
) -> Comparison:
    """The implementation's own loss (forward with targets) equals HF's loss for the same labels."""
    with torch.no_grad():
        ours = logits_and_own_loss(model, idx, targets)[1]
        theirs = loss_of(hf_logits(hf_model, idx), targets)
    return loss_comparison(ours, theirs, ours.dtype)


def loss_comparison(ours: torch.Tensor, theirs: torch.Tensor, dtype: torch.dtype) -> Comparison:
    """The implementation's own loss against HF's, at the tolerance of the run's dtype (HF may return a
    float32 loss for a half-precision model), or ParityFailure."""
    rec = compare_tensors("loss", "loss", ours.detach(), theirs.detach(), logits_tolerance(dtype))
    if not rec.passed:
        raise ParityFailure(f"[loss] {rec.summary()}")
    return rec
