"""What a GPT-2 forward returns, read one way: its logits and, when it computed one, its loss.

Implementations return (logits, loss), bare logits, a dict with "logits" or an object with `.logits`
(Hugging Face's `CausalLMOutput`); the adapters, the forward comparisons and the checks all read them
through `split_output`.
"""

from __future__ import annotations

from typing import Any

import torch

from parity.core.errors import ImplementationError


def split_output(out: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(logits, loss or None) of a forward's output; ImplementationError when it holds no logits."""
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
        return out[0], out[1] if len(out) > 1 and isinstance(out[1], torch.Tensor) else None
    if isinstance(out, torch.Tensor):
        return out, None
    if isinstance(out, dict) and isinstance(out.get("logits"), torch.Tensor):
        loss = out.get("loss")
        return out["logits"], loss if isinstance(loss, torch.Tensor) else None
    if isinstance(getattr(out, "logits", None), torch.Tensor):
        return out.logits, getattr(out, "loss", None)
    raise ImplementationError(
        f"forward returned {type(out).__name__}; expected (logits, loss), logits, a dict with 'logits', "
        "or an object with .logits"
    )
