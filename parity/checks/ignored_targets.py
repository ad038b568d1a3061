"""The loss with ignored targets: part of the loss check, on the gradient batch with a third of them masked.

nanoGPT's loss ignores targets of -1 (`F.cross_entropy(..., ignore_index=-1)`); Hugging Face's labels, and
PyTorch's cross-entropy by default, ignore -100. The masked batch is passed in the implementation's
convention (parity/foreign/discovery.py: targets, labels shifted inside or not), the ignored targets first
as -1 (as -100 for Hugging Face's `labels=`), then as the other: a loss of code that never meets -1 (a
training script using PyTorch's default) is not wrong, and the summary says which it ignores. Its own loss
must equal the mean cross-entropy of Hugging Face's logits over the kept positions; a loss that ignores
neither, or counts the ignored positions, is named. Off the CPU the probe is skipped: a target out of range
is a device-side assert there, which ends the process instead of raising.
"""

from __future__ import annotations

import torch
from torch import nn

from parity.core.compare import ParityFailure
from parity.core.outputs import split_output
from parity.foreign.discovery import HF_IGNORED, IGNORED
from parity.numerics.forward import loss_comparison, loss_of
from parity.subject.batches import gradient_batch
from parity.subject.subject import Subject

# Every MASK_EVERY-th target (from the second) is ignored, and the first row's last one.
MASK_EVERY = 3


def masked_targets(targets: torch.Tensor) -> torch.Tensor:
    """targets with a third of the positions set to IGNORED (nanoGPT's -1)."""
    masked = targets.clone()
    masked[:, 1::MASK_EVERY] = IGNORED
    masked[0, -1] = IGNORED
    return masked


def _own_loss(model: nn.Module, idx: torch.Tensor, masked: torch.Tensor, value: int) -> torch.Tensor | str:
    """The implementation's loss with the ignored targets passed as value; what it raised, if it did."""
    convention = getattr(type(model), "_parity_loss", None)
    try:
        with torch.no_grad():
            if convention is None:  # a model the harness did not adapt: nanoGPT's forward(idx, targets)
                return split_output(model(idx, masked.masked_fill(masked == IGNORED, value)))[1]
            saved, convention.ignore_index = convention.ignore_index, value
            try:
                return split_output(model(idx, masked))[1]
            finally:
                convention.ignore_index = saved
    except Exception as e:  # noqa: BLE001 - a loss that cannot take an ignored target is the finding
        return f"forward raised {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"


def ignored_targets(subject: Subject) -> str:
    """What the implementation's loss ignores, in words; ParityFailure when it is not the kept mean."""
    model = subject.model()
    convention = getattr(type(model), "_parity_loss", None)
    if convention is not None and convention.parameter is None:
        return "forward computes no loss of its own: ignored targets are the harness's"
    if torch.device(subject.device).type != "cpu":
        return f"ignored targets not probed on {subject.device} (an out-of-range target is a device assert)"
    idx, targets = (t.to(subject.device) for t in gradient_batch(subject.config))
    masked = masked_targets(targets)
    with torch.no_grad():
        theirs = loss_of(subject.hf_gradient_logits(), masked, ignore_index=IGNORED)
    labels = convention is not None and convention.may_shift
    found: dict[int, str] = {}
    n = int((masked == IGNORED).sum())
    for value in (HF_IGNORED, IGNORED) if labels else (IGNORED, HF_IGNORED):
        ours = _own_loss(model, idx, masked, value)
        if isinstance(ours, str):
            found[value] = ours
            continue
        try:
            rec = loss_comparison(ours, theirs, subject.dtype)
        except ParityFailure as e:
            found[value] = f"loss {float(ours):.6f}: {str(e).removeprefix('[loss] ')}"
            continue
        whose = "nanoGPT's" if value == IGNORED else "Hugging Face's and PyTorch's default"
        return (
            f"with {n} of {masked.numel()} targets ignored as {value} ({whose}), the loss is Hugging Face's "
            f"over the kept positions ({rec.summary()})"
        )
    tried = "; ".join(f"passed as {v}: {what}" for v, what in found.items())
    raised = all(what.startswith("forward raised") for what in found.values())
    cause = f"its loss ignores neither nanoGPT's {IGNORED} nor Hugging Face's {HF_IGNORED} " + (
        "(out of range: it ignores no index, or another one; nanoGPT: "
        f"F.cross_entropy(..., ignore_index={IGNORED}))"
        if raised
        else "(the ignored positions are counted in its mean)"
    )
    raise ParityFailure(
        f"[loss] with {n} of {masked.numel()} targets ignored, {cause}; Hugging Face's loss over the kept "
        f"positions is {float(theirs):.6f}\n  {tried}"
    )
