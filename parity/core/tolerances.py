"""Every numeric tolerance of the parity harness, in one place, each with its reason.

The harness compares two implementations of the same function, so the only legitimate differences come
from floating-point rounding in a different order of operations (HF's Conv1D computes `addmm(b, x, W)`
with W stored (in, out); ours computes `x @ W.T + b`; attention kernels differ). Tolerances are chosen
from measured differences with a wide safety margin, and are kept tight enough that real bugs fail:
on CPU float64 a tanh-vs-exact GELU swap, a LayerNorm eps of 1e-6 instead of 1e-5 and a missing attention
scale all produce differences many orders of magnitude above them (the mutant tests in tests/ prove it).
`torch.testing.assert_close` semantics: a pair passes when |actual - expected| <= atol + rtol * |expected|.
How the numbers are chosen: docs/tolerances.md; the measurements they rest on: docs/measurements.md.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Tolerance:
    """An (rtol, atol) pair with the reason it is what it is."""

    rtol: float
    atol: float
    reason: str
    # The largest relative difference norm ||actual - expected|| / ||expected|| that counts as rounding:
    # element-wise bounds wide enough for the worst single element let a small systematic difference
    # through (every element a little off), which the norm of the difference catches. None: not checked.
    norm: float | None = None

    def __str__(self) -> str:
        norm = f", norm={self.norm:g}" if self.norm is not None else ""
        return f"rtol={self.rtol:g}, atol={self.atol:g}{norm}"


# Forward outputs (logits, hidden states, the loss): each element within (rtol, atol), and the whole tensor's
# relative difference norm within `norm` (why both: docs/tolerances.md; every figure: docs/measurements.md).
LOGITS: dict[torch.dtype, Tolerance] = {
    torch.float64: Tolerance(
        rtol=1e-9,
        atol=1e-9,
        reason="measured max |diff| 5.6e-15 (synthetic gpt2, every batch incl. a full block); >1e5 margin",
        norm=1e-10,
    ),
    torch.float32: Tolerance(
        rtol=1e-4,
        atol=1e-4,
        reason="measured max |diff| 4.8e-6, norm 2.7e-6 (gpt2-xl, 1-token batch); 20x, 18x margin; TF32 off",
        norm=5e-5,
    ),
    torch.bfloat16: Tolerance(
        rtol=1.6e-2,
        atol=1e-1,
        reason="from 8 mantissa bits; measured only on CPU, small model: max |diff| 3.9e-3, norm 4.3e-3",
        norm=5e-2,
    ),
    torch.float16: Tolerance(
        rtol=1e-2,
        atol=5e-2,
        reason="from 11 mantissa bits (eps 9.8e-4), a few ulps per op; not yet measured on a GPU",
        norm=1e-2,
    ),
}

# Gradients: backward adds a reduction over batch and sequence, and the tied matrix sums two paths.
GRADIENTS: dict[torch.dtype, Tolerance] = {
    torch.float64: Tolerance(
        rtol=1e-8,
        atol=1e-10,
        reason="measured max |diff| 2.5e-16 (synthetic gpt2); >1e5 margin",
        norm=1e-10,
    ),
    torch.float32: Tolerance(
        rtol=1e-3,
        atol=1e-5,
        reason="measured max |diff| 2.1e-7 (40x under atol), norm 1.2e-6 (gpt2-xl); norm 17x margin",
        norm=2e-5,
    ),
    torch.bfloat16: Tolerance(
        rtol=5e-2,
        atol=1e-2,
        reason="bf16 plus one reduction; CPU, small model: max |diff| 4.9e-4, norm 5.0e-3",
        norm=5e-2,
    ),
    torch.float16: Tolerance(
        rtol=3e-2, atol=5e-3, reason="fp16 plus one reduction; not yet measured on a GPU", norm=1e-2
    ),
}

# The tied gradient against (embedding-path + head-path) of an untied twin of the same implementation:
# the same kernels, only the final sum of two tensors differs in order, so this is nearly exact.
DECOMPOSITION: dict[torch.dtype, Tolerance] = {
    torch.float64: Tolerance(rtol=1e-12, atol=1e-15, reason="same kernels, one extra addition"),
    torch.float32: Tolerance(rtol=1e-5, atol=1e-8, reason="same kernels, one extra addition"),
    torch.bfloat16: Tolerance(rtol=1.6e-2, atol=1e-5, reason="same kernels, one extra addition in bf16"),
    torch.float16: Tolerance(rtol=2e-3, atol=1e-5, reason="same kernels, one extra addition in fp16"),
}


# The distribution generate samples from (softmax of the logits / temperature, top-k filtered), against HF's
# warpers on the same context: a logit off by d moves a probability p by at most p * 2d / temperature, so
# rtol is the logits' bound times 2 / 0.7 (the inference check's temperature); atol only covers probabilities
# near 0. On the synthetic models a temperature multiplied instead of divided moves them by ~2e-2 relative.
SAMPLING: dict[torch.dtype, Tolerance] = {
    torch.float64: Tolerance(rtol=3e-9, atol=1e-12, reason="logits rtol 1e-9 x 2/0.7; measured 1.5e-16 rel"),
    torch.float32: Tolerance(rtol=3e-4, atol=1e-7, reason="logits rtol 1e-4 x 2/0.7; measured logits 4.8e-6"),
    torch.bfloat16: Tolerance(rtol=1e-1, atol=1e-3, reason="measured bf16 logits 3.9e-3 x 2/0.7: 9x margin"),
    torch.float16: Tolerance(rtol=3e-2, atol=1e-4, reason="fp16 logits rtol 1e-2 x 2/0.7; not measured"),
}


def logits_tolerance(dtype: torch.dtype) -> Tolerance:
    """The forward-pass tolerance for a dtype."""
    return LOGITS[dtype]


def sampling_tolerance(dtype: torch.dtype) -> Tolerance:
    """The tolerance of the probabilities generate samples from."""
    return SAMPLING[dtype]


def hidden_divergence(dtype: torch.dtype) -> float:
    """The relative difference norm above which a hidden state (or the logits) counts as diverged."""
    norm = LOGITS[dtype].norm
    assert norm is not None
    return norm


def gradients_tolerance(dtype: torch.dtype) -> Tolerance:
    """The gradient tolerance for a dtype."""
    return GRADIENTS[dtype]


def decomposition_tolerance(dtype: torch.dtype) -> Tolerance:
    """The tolerance of tied grad == embedding-path grad + head-path grad."""
    return DECOMPOSITION[dtype]


# ----------------------------------------------------------------------------------------------------------
# The project's other numeric comparisons, here too so that every tolerance of the project is in one file.

# Our converter, HF -> nanoGPT -> HF, in float64 on tiny models (tests/test_hf_convert.py); rtol=0: an
# absolute bound is the honest one for logits of magnitude ~1. A missing transpose is off by ~1e-3.
CONVERSION_F64 = Tolerance(rtol=0.0, atol=1e-12, reason="float64 kernel-order rounding, observed <= 1e-16")

# One model computing the same float64 function sliced differently (the whole sequence vs its last row,
# the library's cross-entropy vs ours on the same logits): a few ulps (tests/test_model.py).
SAME_FUNCTION_F64 = Tolerance(rtol=0.0, atol=1e-12, reason="a few float64 ulps; any real bug is >1e-6")

# Training-step parity in float64 (benchmarks/train_parity.py users, DDP/FSDP vs one process, the bisect
# command's train-steps check): a real bug (a double update, a wrong reduction) moves values by ~lr = 1e-3.
TRAIN_STEPS_F64 = Tolerance(
    rtol=0.0, atol=1e-10, reason="float64 AdamW noise, measured <= 1.4e-15; a real bug moves ~1e-3"
)

# torch.compile (inductor) vs eager, float32 on CPU (benchmarks/test_compile_numerics.py), on the gate
# models (2 layers, 64 channels): inductor reorders reductions, so the last bits differ. A tied gradient
# missing one of its uses is off by ~2e-2, logits from the weights before the step by ~0.4.
COMPILE: dict[str, Tolerance] = {
    "logits": Tolerance(1e-5, 1e-5, "reordered float32 reductions; measured 3e-7 (torch 2.13)"),
    "loss": Tolerance(1e-5, 1e-6, "one more reduction than the logits; measured 0 (torch 2.13)"),
    "grads": Tolerance(1e-4, 1e-6, "may be exactly zero (key biases), atol carries it; measured 7e-8"),
    "params_after_step": Tolerance(1e-5, 1e-7, "one SGD step (lr 0.1) moves lr * grad; measured 7e-9"),
    "logits_after_step": Tolerance(1e-5, 1e-5, "the logits tolerance, with the updated weights"),
}

# Loss at init from scratch, reference vs Hugging Face: two random draws of GPT-2's init differ by sampling
# noise, measured <= 0.12 nats at GPT-2's width; a tie that kept nn.Embedding's N(0, 1) init is >= 9.7 above.
INIT_LOSS_ATOL = 0.5

# Not a tolerance of parity but a guard inside the comparison: float32 (and half-precision) tensors are
# first screened in float32 (parity/numerics/chunked.py `compare_chunked`), where |a - e| and atol + rtol *
# |e| are each rounded by at most 4 float32 ulps (relative 2**-22). An element passes there only if it
# passes with the bound shrunk by this factor (64x the rounding), so "passes in float32" implies "passes in
# exact arithmetic"; every other element goes to the exact float64 comparison. The margin changes how fast
# a verdict is reached, never the verdict.
SCREEN_MARGIN = 2.0**-16

# train-steps (parity/checks/training.py): after 3 AdamW steps, each parameter's difference between the two
# trained copies as a fraction of how far it moved (||ours - theirs|| / ||theirs - before||); a norm, since
# AdamW moves an element whose gradient is rounding noise by up to +-lr. Measured float32 <= 2.9e-4 (768
# channels), bfloat16 9.3e-2 (CPU, small model); half precision is reasoned from the mantissa width.
TRAIN_UPDATE: dict[torch.dtype, float] = {
    torch.float64: 1e-8,
    torch.float32: 1e-2,
    torch.bfloat16: 2e-1,
    torch.float16: 1e-1,
}


def train_update_tolerance(dtype: torch.dtype) -> float:
    """The largest relative difference of two trained copies' updates that counts as rounding."""
    return TRAIN_UPDATE[dtype]


# decay-groups: one float64 step of the implementation's optimizer against torch.optim.AdamW built from the
# same groups on the same gradients, as ||ours - AdamW|| / ||AdamW's update||. The same algorithm differs by
# rounding only (float64 ulps of the update); decay added to the gradient (Adam's L2) moves it by ~1.
OPTIMIZER_STEP_RTOL = 1e-9


# init-scheme: the standard deviation of n independent normal draws estimates sigma with relative standard
# error 1/sqrt(2n); 6 of those keeps a false alarm below 1e-8 per tensor, and 1% covers truncation and the
# smallest tensors' shape effects. A wrong scale (1/sqrt(2 n_layer) forgotten: 3.5x at 12 layers) is far out.
def init_std_rtol(n: int) -> float:
    """Relative tolerance of a measured init std against GPT-2's, for a tensor of n elements."""
    return 0.01 + 6.0 / math.sqrt(2.0 * n)
