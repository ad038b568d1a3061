"""Every numeric tolerance of the parity harness, in one place, each with its reason.

The harness compares two implementations of the same function, so the only legitimate differences come
from floating-point rounding in a different order of operations (HF's Conv1D computes `addmm(b, x, W)`
with W stored (in, out); ours computes `x @ W.T + b`; attention kernels differ). Tolerances are chosen
from measured differences with a wide safety margin, and are kept tight enough that real bugs fail:
on CPU float64 a tanh-vs-exact GELU swap, a LayerNorm eps of 1e-6 instead of 1e-5 and a missing attention
scale all produce differences many orders of magnitude above them (the mutant tests in tests/ prove it).
`torch.testing.assert_close` semantics: a pair passes when |actual - expected| <= atol + rtol * |expected|.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Tolerance:
    """An (rtol, atol) pair with the reason it is what it is."""

    rtol: float
    atol: float
    reason: str

    def __str__(self) -> str:
        return f"rtol={self.rtol:g}, atol={self.atol:g}"


# Forward outputs (logits, hidden states, loss).
LOGITS: dict[torch.dtype, Tolerance] = {
    torch.float64: Tolerance(
        rtol=1e-9,
        atol=1e-9,
        reason="measured max |diff| 5.6e-15 (synthetic gpt2, all batches incl. a full 1024-token "
        "block); >1e5 margin; a GELU swap or LayerNorm eps change shows ~1e-5 or more",
    ),
    torch.float32: Tolerance(
        rtol=1e-4,
        atol=1e-4,
        reason="fp32 accumulation over 12-48 blocks: measured max |diff| 2.9e-6 on synthetic gpt2 (logits "
        "of magnitude ~1); >30x margin for deeper models; TF32 must be off on GPU",
    ),
    torch.bfloat16: Tolerance(
        rtol=1.6e-2,
        atol=1e-1,
        reason="bf16 keeps 8 mantissa bits (eps 7.8e-3); different kernel orders differ by a few ulps per "
        "op; GPU only (bf16 matmul on most CPUs is ~200x slower than fp32)",
    ),
    torch.float16: Tolerance(
        rtol=1e-2,
        atol=5e-2,
        reason="fp16 keeps 11 mantissa bits (eps 9.8e-4) but overflows easily; a few ulps per op",
    ),
}

# Gradients: backward accumulates over the batch and the sequence, and the tied matrix sums two paths,
# so rounding grows by roughly one more reduction than in the forward pass.
GRADIENTS: dict[torch.dtype, Tolerance] = {
    torch.float64: Tolerance(
        rtol=1e-8,
        atol=1e-10,
        reason="measured max |diff| 2.5e-16 (synthetic gpt2); >1e5 margin",
    ),
    torch.float32: Tolerance(
        rtol=1e-3,
        atol=1e-5,
        reason="fp32 gradients accumulate over batch x sequence; measured max |diff| 1.6e-7 and max "
        "relative error 3.3e-3 on entries above atol (synthetic gpt2)",
    ),
    torch.bfloat16: Tolerance(rtol=5e-2, atol=1e-2, reason="bf16: see LOGITS; gradients add one reduction"),
    torch.float16: Tolerance(rtol=3e-2, atol=5e-3, reason="fp16: see LOGITS; gradients add one reduction"),
}

# The tied gradient against (embedding-path + head-path) of an untied twin of the same implementation:
# the same kernels, only the final sum of two tensors differs in order, so this is nearly exact.
DECOMPOSITION: dict[torch.dtype, Tolerance] = {
    torch.float64: Tolerance(rtol=1e-12, atol=1e-15, reason="same kernels, one extra addition"),
    torch.float32: Tolerance(rtol=1e-5, atol=1e-8, reason="same kernels, one extra addition"),
    torch.bfloat16: Tolerance(rtol=1.6e-2, atol=1e-5, reason="same kernels, one extra addition in bf16"),
    torch.float16: Tolerance(rtol=2e-3, atol=1e-5, reason="same kernels, one extra addition in fp16"),
}


def logits_tolerance(dtype: torch.dtype) -> Tolerance:
    """The forward-pass tolerance for a dtype."""
    return LOGITS[dtype]


def gradients_tolerance(dtype: torch.dtype) -> Tolerance:
    """The gradient tolerance for a dtype."""
    return GRADIENTS[dtype]


def decomposition_tolerance(dtype: torch.dtype) -> Tolerance:
    """The tolerance of tied grad == embedding-path grad + head-path grad."""
    return DECOMPOSITION[dtype]
