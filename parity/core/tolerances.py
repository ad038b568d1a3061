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


# Forward outputs (logits, hidden states, loss). Each tolerance bounds every element (rtol, atol) and the
# relative difference norm ||ours - theirs|| / ||theirs|| of the whole tensor (norm): the element-wise bound
# has to admit the worst single element's rounding, so a bug that moves every element a little stays under
# it. In float32, the CUDA default, the exact-GELU mutant at GPT-2's width moves the logits by 6.5e-4 at
# most (under atol 1e-4 in many layers' outputs) but by 2.3e-4 of their norm. The norm is also what the
# first-divergence diagnosis (parity/numerics/diagnose.py) compares each module's output with.
#
# FLOAT32_NORM, measured: correct float32 runs differ from Hugging Face's by a relative norm of at most
# 1.0e-6 in hidden states (synthetic gpt2 and gpt2-xl, every probed module, several-sequence and full-block
# batches) and 2.7e-6 in logits (gpt2-xl's 1-token batch: three logit vectors, so little averaging; 7.1e-7 to
# 7.6e-7 on its longer batches, 5.6e-7 on synthetic gpt2, 4.6e-7 at 768 channels, 0 where the kernels
# coincide). 5e-5 keeps 18x above the worst of them and stays 4.6x below exact GELU at GPT-2's width
# (2.3e-4) and 2.6x below attention scaled by 1/head_dim at 16 channels (1.3e-4, whose every element passes
# atol). A bug below it is
# below float32's own rounding of the function, within a few times of it, and only float64 can see it: the
# tanh GELU with sqrt(2/pi) rounded to 5 digits moves the logits by 2.4e-6 at 768 channels and 1.4e-7 at 16
# (rounding alone: 5.9e-7 and 1.1e-7, Hugging Face float32 vs float64), exact GELU by 4.1e-7 at 16
# channels, where the activations are too small for the two GELUs to differ (2.3e-4 at 768). float64: noise
# ~1e-15, so 1e-10 still has 1e5 of margin. Half precision: reasoned from the mantissa width, not yet
# measured on a GPU. Correct implementations in other styles (manual attention with mask buffers, SDPA,
# minGPT's factory config; the bisect command's small model in float32) measure 3.3e-7 on the logits.
#
# The loss (the implementation's own, against cross-entropy of Hugging Face's logits) is compared at the
# same tolerance, as a one-element tensor. Measured in float32: identical to the last bit for the reference
# and the corpus's correct models (small, 768 channels, synthetic gpt2); bfloat16 on CPU: 5.9e-4 of a loss
# of 6.25 (Hugging Face computes a half-precision model's loss in float32, and so does the comparison).
LOGITS: dict[torch.dtype, Tolerance] = {
    torch.float64: Tolerance(
        rtol=1e-9,
        atol=1e-9,
        reason="measured max |diff| 5.6e-15 (synthetic gpt2, all batches incl. a full 1024-token "
        "block); >1e5 margin; a GELU swap or LayerNorm eps change shows ~1e-5 or more",
        norm=1e-10,
    ),
    torch.float32: Tolerance(
        rtol=1e-4,
        atol=1e-4,
        reason="fp32 accumulation over 12-48 blocks: measured max |diff| 2.9e-6 on synthetic gpt2, 3.9e-6 on "
        "gpt2-large, 4.8e-6 on gpt2-xl (logits of magnitude ~1); >20x margin; TF32 must be off on GPU. "
        "norm: see FLOAT32_NORM",
        norm=5e-5,
    ),
    torch.bfloat16: Tolerance(
        rtol=1.6e-2,
        atol=1e-1,
        reason="bf16 keeps 8 mantissa bits (eps 7.8e-3); different kernel orders differ by a few ulps per "
        "op (bf16 matmul on most CPUs is ~200x slower than fp32). Reasoned from the mantissa width; "
        "measured on CPU only at the bisect command's small model (2 layers, 64 channels): max |diff| "
        "3.9e-3, norm 4.3e-3. Not yet measured on a GPU or at a GPT-2 size",
        norm=5e-2,
    ),
    torch.float16: Tolerance(
        rtol=1e-2,
        atol=5e-2,
        reason="fp16 keeps 11 mantissa bits (eps 9.8e-4) but overflows easily; a few ulps per op. "
        "Reasoned, not yet measured on a GPU",
        norm=1e-2,
    ),
}

# Gradients: backward accumulates over the batch and the sequence, and the tied matrix sums two paths,
# so rounding grows by roughly one more reduction than in the forward pass.
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
        reason="fp32 gradients accumulate over batch x sequence; measured max |diff| 1.6e-7 and max "
        "relative error 3.3e-3 on entries above atol (synthetic gpt2); gpt2-large 1.6e-7 and 4.4e-3, gpt2-xl "
        "2.1e-7 and 7.5e-3 (relative errors of entries a few times atol; every |diff| is >40x below atol). "
        "norm: each parameter's relative difference norm, measured <= 1.2e-6 (synthetic gpt2-xl; 8.0e-7 "
        "gpt2, 6.8e-7 at 768 channels, 2.1e-7 at 16); 2e-5 keeps 17x above it. The exact-GELU mutant moves "
        "ln_2.weight's gradient by 4.5e-4 of its norm at gpt2's size, 8.7e-6 at 16 channels (under it)",
        norm=2e-5,
    ),
    torch.bfloat16: Tolerance(
        rtol=5e-2, atol=1e-2, reason="bf16: see LOGITS; gradients add one reduction. CPU, small model: "
        "max |diff| 4.9e-4, norm 5.0e-3", norm=5e-2
    ),
    torch.float16: Tolerance(
        rtol=3e-2, atol=5e-3, reason="fp16: see LOGITS; gradients add one reduction", norm=1e-2
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


def logits_tolerance(dtype: torch.dtype) -> Tolerance:
    """The forward-pass tolerance for a dtype."""
    return LOGITS[dtype]


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
# The project's other numeric comparisons. They live here too so that every tolerance of the project is
# in one file, each with its reason.

# Our converter, HF -> nanoGPT -> HF, compared in float64 on tiny models (tests/test_hf_convert.py): the
# same function through different kernels (HF's Conv1D addmm vs nn.Linear, eager/sdpa attention).
# Observed <= 1e-16 absolute on logits of magnitude ~1; 1e-12 leaves four orders of margin and is still ~9
# orders below a real conversion bug (a missing transpose, erf GELU at ~1e-3). rtol=0: an absolute bound
# is the honest one at this magnitude.
CONVERSION_F64 = Tolerance(rtol=0.0, atol=1e-12, reason="float64 kernel-order rounding, observed <= 1e-16")

# One model computing the same float64 function sliced differently (the whole sequence vs its last row,
# the library's cross-entropy vs ours on the same logits): a few ulps (tests/test_model.py).
SAME_FUNCTION_F64 = Tolerance(rtol=0.0, atol=1e-12, reason="a few float64 ulps; any real bug is >1e-6")

# Training-step parity in float64 (parity/checks/train_parity.py users, DDP/FSDP vs one process, the bisect
# command's train-steps check): after 3-4 AdamW steps (lr 1e-3) summation-order noise is ~1e-13 (measured
# <= 1.4e-15 for parameters, 9e-16 for losses); a real bug (a double update, a wrong reduction) moves values
# by ~lr = 1e-3.
TRAIN_STEPS_F64 = Tolerance(rtol=0.0, atol=1e-10, reason="float64 AdamW noise ~1e-13; a real bug moves ~1e-3")

# torch.compile (inductor) vs eager, float32 on CPU (benchmarks/test_compile_numerics.py). Inductor fuses
# kernels and reorders reductions (layer norm, softmax, the loss's log-sum-exp, gradient sums over batch
# and time), so the two sides differ in the last bits of each reduction, growing through the layers and
# backward. Observed on both gate models (2 layers, 64 channels, logits of order 1, gradients up to 1e-1),
# torch 2.13: logits 3e-7, loss 0, gradients 7e-8, parameters after the step 7e-9, all absolute. Each keeps
# 15-30x headroom and stays far below a real fault: a tied gradient missing one of its two uses is off by
# ~2e-2; logits computed with the weights from before the step are off by ~0.4.
COMPILE: dict[str, Tolerance] = {
    "logits": Tolerance(1e-5, 1e-5, "order-1 values after 2 layers of reordered float32 reductions"),
    "loss": Tolerance(1e-5, 1e-6, "a mean of log-sum-exps: one more reduction than the logits"),
    "grads": Tolerance(
        1e-4, 1e-6, "gradients of order 1e-3..1e-5 that may be exactly zero (key biases): atol carries it"
    ),
    "params_after_step": Tolerance(1e-5, 1e-7, "one SGD step (lr 0.1) moves a parameter by lr * grad"),
    "logits_after_step": Tolerance(1e-5, 1e-5, "the logits tolerance, with the updated weights"),
}

# Loss at init from scratch, reference vs Hugging Face (the mutant catalog's train-steps check for a tie
# made in the wrong direction): two different random draws of the same GPT-2 init differ by sampling
# noise. Measured over seeds 0-2: <= 0.03 nats (tiny config), <= 0.12 at GPT-2's width. A shared matrix
# that kept nn.Embedding's N(0, 1) init is >= 9.7 nats above (tiny), ~730 (wide). 0.5 nats is 4x the
# noise and 20x below the smallest real failure.
INIT_LOSS_ATOL = 0.5

# Not a tolerance of parity but a guard inside the comparison: float32 (and half-precision) tensors are
# first screened in float32 (parity/numerics/chunked.py `compare_chunked`), where |a - e| and atol + rtol * |e| are
# each rounded by at most 4 float32 ulps (relative 2**-22). An element counts as passing there only if it
# passes with the bound shrunk by this factor (2**-16, 64x the rounding), which makes "passes in float32"
# imply "passes in exact arithmetic"; every other element goes to the exact float64 comparison. So the
# margin changes how fast a verdict is reached, never the verdict.
SCREEN_MARGIN = 2.0**-16

# train-steps (parity/checks/training.py): after 3 AdamW steps, each parameter's difference between the two
# trained copies, as a fraction of how far it moved (||ours - theirs|| / ||theirs - before||). A norm, not
# an element-wise bound: AdamW divides by sqrt(v), so an element whose gradient is rounding noise moves by
# up to +-lr on either side (the key part of c_attn's bias, whose exact gradient is zero, is left out for
# that reason). Measured on correct implementations: float64 <= 4.8e-13 (tiny and GPT-2-width catalog
# configs); float32 <= 2.2e-6 (tiny) and 2.9e-4 (768 channels, 4 layers). A real bug moves whole tensors:
# positions detached 1.0, the tied matrix updated twice changes the next loss by 2e-4..1e-3. float32's 1e-2
# keeps 34x above the measured noise; half precision is reasoned from the mantissa width (bfloat16 on CPU at
# the bisect command's small model: 9.3e-2, c_attn.bias, within 2x of its 0.2: the one bound measured this
# close, to be measured at a GPT-2 size on a GPU before it is trusted there).
TRAIN_UPDATE: dict[torch.dtype, float] = {
    torch.float64: 1e-8,
    torch.float32: 1e-2,
    torch.bfloat16: 2e-1,
    torch.float16: 1e-1,
}


def train_update_tolerance(dtype: torch.dtype) -> float:
    """The largest relative difference of two trained copies' updates that counts as rounding."""
    return TRAIN_UPDATE[dtype]


# init-scheme: the standard deviation of n independent normal draws estimates sigma with relative standard
# error 1/sqrt(2n); 6 of those keeps a false alarm below 1e-8 per tensor, and 1% covers truncation and the
# smallest tensors' shape effects. A wrong scale (1/sqrt(2 n_layer) forgotten: 3.5x at 12 layers;
# nn.Linear's default kaiming-uniform: std 1/sqrt(3 C)) is far outside.
def init_std_rtol(n: int) -> float:
    """Relative tolerance of a measured init std against GPT-2's, for a tensor of n elements."""
    return 0.01 + 6.0 / math.sqrt(2.0 * n)
