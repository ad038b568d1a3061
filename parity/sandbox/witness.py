"""Hugging Face's logits on the target itself, computed where the tested code never ran: the witness that
the model the sandboxed checks compare against is Hugging Face's.

The sandboxed child (parity/sandbox/child.py) builds Hugging Face's GPT-2 in the process that imported the
tested code, which may have patched transformers (its GELU, its attention, its loader) for the tested
model's shape only, where the tiny fingerprint of parity/sandbox/parent.py does not look. So the parent,
before it starts the child, loads Hugging Face's model of the target and reduces its logits on the gradient
batch to a few numbers (`clean_witness`); the child computes the same numbers with the very model its checks
use, once it is loaded and again after the checks (`witness`). The two processes run the same kernels on the
same thread count, so on CPU the numbers agree bit for bit, and any difference means the checks did not
compare with Hugging Face's GPT-2: CANNOT-TEST.
"""

from __future__ import annotations

import contextlib
import math
from typing import Any

import torch

from nanogpt.hf import CheckpointError
from nanogpt.hf_files import read_hf_config, weight_files
from parity.numerics.forward import hf_logits, loss_of
from parity.subject.batches import gradient_batch
from parity.subject.loading import load_hf
from parity.subject.memory import param_bytes, release_free_memory
from parity.subject.progress import phase
from parity.subject.subject import PROGRESS_MIN_BYTES
from parity.subject.targets import ParityTarget

# Logit entries sampled evenly across the batch, besides their sum, their sum of squares and the loss.
SAMPLED_LOGITS = 16
# How far two witnesses may differ, relative to each value's magnitude. CPU: not at all (the same kernels on
# the same thread count are deterministic). CUDA: cuBLAS may choose another algorithm in another process,
# which reorders float32 sums (reasoned, not yet measured on a GPU); a patch that changes the function moves
# the logits by far more (exact GELU: 2.3e-4 of their norm at GPT-2's width).
WITNESS_RTOL = {"cpu": 0.0, "cuda": 1e-5}


def witness(hf_model: Any, target: ParityTarget) -> list[float]:
    """Sum, sum of squares, loss and SAMPLED_LOGITS entries of the logits on the target's gradient batch."""
    idx, targets = (t.to(target.device) for t in gradient_batch(target.config))
    with torch.no_grad():
        logits = hf_logits(hf_model, idx)
        loss = float(loss_of(logits, targets))
        flat = logits.detach().flatten().to(torch.float64)
    picks = torch.linspace(0, flat.numel() - 1, SAMPLED_LOGITS).long()
    return [float(flat.sum()), float(flat.square().sum()), loss, *flat[picks].tolist()]


def clean_witness(target: ParityTarget) -> list[float]:
    """The witness of Hugging Face's model of the target, loaded in this (clean) process and freed after.

    A checkpoint that cannot be loaded is a CheckpointError naming the problem, as the child's loaders say it.
    """
    checkpoint = target.ensure_checkpoint()
    read_hf_config(checkpoint)
    weight_files(checkpoint)
    big = param_bytes(target.config, target.dtype) >= PROGRESS_MIN_BYTES  # seconds of silence otherwise
    label = f"{target.name}: Hugging Face's model in this process, the witness for the child's"
    with phase(label) if big else contextlib.nullcontext():
        try:
            hf = load_hf(checkpoint, target.dtype, target.device, True, activation=target.hf_activation)
        except (OSError, ValueError, RuntimeError) as e:
            raise CheckpointError(f"{checkpoint}: Hugging Face's GPT2LMHeadModel cannot load it: {e}") from e
        try:
            return witness(hf, target)
        finally:
            del hf
            release_free_memory()


def witness_differs(clean: list[float], other: Any, device: str) -> bool:
    """True unless other is a witness equal to clean within WITNESS_RTOL for the device."""
    return numbers_differ(clean, other, rtol=WITNESS_RTOL.get(device.split(":")[0], WITNESS_RTOL["cuda"]))


def numbers_differ(clean: list[float], other: Any, atol: float = 0.0, rtol: float = 0.0) -> bool:
    """True unless other (sent by the child: anything) is a list of finite numbers, each within
    atol + rtol * the larger magnitude of clean's. A non-finite value always differs."""
    if not isinstance(other, list) or len(other) != len(clean):
        return True
    try:
        pairs = [(float(a), float(b)) for a, b in zip(clean, other, strict=True)]
    except (TypeError, ValueError):
        return True
    return not all(
        math.isfinite(a) and math.isfinite(b) and abs(a - b) <= atol + rtol * max(abs(a), abs(b))
        for a, b in pairs
    )
