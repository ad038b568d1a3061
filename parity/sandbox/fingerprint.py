"""The fingerprint of transformers in a process: the logits of tiny seeded GPT-2 models, in float64.

The tested code may monkeypatch transformers (its GELU, its attention) to hide its own bug. The sandbox
parent (parity/sandbox/parent.py), which never imports the tested code, computes `hf_fingerprint`; the
child (parity/sandbox/child.py) computes it again before and after the tested code runs, and
`fingerprint_differs` says whether the two processes ran the same transformers.
"""

from __future__ import annotations

from typing import Any

import torch

from parity.sandbox.witness import numbers_differ

# The fingerprint must agree to within rounding (the same float64 ops in another process, maybe another
# thread count); a monkeypatched GELU or attention moves it by about 1e-3.
FINGERPRINT_ATOL = 1e-10


def hf_fingerprint() -> list[float]:
    """The logits of tiny seeded GPT2LMHeadModels (eager and SDPA attention) on a fixed batch, in float64."""
    from transformers import GPT2Config, GPT2LMHeadModel

    saved = torch.get_default_dtype()
    out: list[float] = []
    try:
        torch.set_default_dtype(torch.float32)  # the tested code may have changed it; init depends on it
        with torch.random.fork_rng(devices=[]), torch.no_grad():
            for attention in ("eager", "sdpa"):
                torch.manual_seed(1234)
                config = GPT2Config(
                    n_layer=2,
                    n_head=2,
                    n_embd=16,
                    vocab_size=64,
                    n_positions=16,
                    bos_token_id=0,
                    eos_token_id=0,
                )
                config._attn_implementation = attention
                model = GPT2LMHeadModel(config).to(torch.float64).eval()
                idx = (torch.arange(12) * 7 % 64).view(2, 6)
                out += model(idx).logits.flatten().tolist()
    finally:
        torch.set_default_dtype(saved)
    return out


def fingerprint_differs(clean: list[float], other: Any) -> bool:
    """True unless other is a list of numbers equal to clean within FINGERPRINT_ATOL."""
    return numbers_differ(clean, other, atol=FINGERPRINT_ATOL)
