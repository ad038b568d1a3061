"""The first-divergence diagnosis names the module where two implementations start to differ.

A module diverges where its output fails the tolerance element-wise or, for small systematic bugs that stay
under the element-wise tolerance until later LayerNorms amplify them, where the relative norm of the
difference exceeds the dtype's noise (the `norm` of parity/core/tolerances.py `LOGITS`). Tiny float32 GPT-2s
from a synthetic checkpoint; the bug is a forward hook that scales one module's output.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch

from nanogpt.model import GPTConfig
from parity.core.tolerances import hidden_divergence, logits_tolerance
from parity.numerics.diagnose import first_divergence, relative_norm
from parity.subject.batches import token_batch
from parity.subject.loading import load_hf, load_reference
from parity.subject.synthetic import ensure_synthetic_checkpoint

pytestmark = pytest.mark.usefixtures("one_thread")

CONFIG = GPTConfig(block_size=32, vocab_size=97, n_layer=3, n_head=2, n_embd=16)


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Any]:
    """The reference and Hugging Face's model from one tiny synthetic checkpoint, in float32."""
    path, _ = ensure_synthetic_checkpoint(CONFIG, "diagnose", root=tmp_path_factory.mktemp("ckpt"))
    return load_reference(path, torch.float32, "cpu"), load_hf(path, torch.float32, "cpu")


def _scaled(module: torch.nn.Module, factor: float) -> Any:
    return module.register_forward_hook(lambda _m, _i, out: out * factor)


def test_small_systematic_bug_is_placed_at_its_module(pair: tuple[Any, Any]) -> None:
    reference, hf = pair
    idx = token_batch("several_sequences", CONFIG)
    tol = logits_tolerance(torch.float32)
    handle = _scaled(reference.transformer.h[1].mlp, 1 + 1e-4)
    try:
        where, records = first_divergence(reference, hf, idx, CONFIG.n_layer, tol)
    finally:
        handle.remove()
    # Element-wise, h.1.mlp still passes (its outputs are ~1e-2: a 1e-4 change is ~1e-6 absolute) ...
    assert records[-1].tensor == "transformer.h.1.mlp" and records[-1].mismatched == 0, where
    # ... but its relative difference norm is 1e-4, far above float32's noise: the tolerance's norm fails it.
    assert records[-1].norm_exceeded and not records[-1].passed
    assert where.startswith("first divergence at transformer.h.1.mlp: relative difference norm 1.00e-04"), (
        where
    )
    assert "suspect the MLP" in where


def test_float32_noise_alone_is_not_a_divergence(pair: tuple[Any, Any]) -> None:
    reference, hf = pair
    idx = token_batch("full_block", CONFIG)
    where, records = first_divergence(reference, hf, idx, CONFIG.n_layer, logits_tolerance(torch.float32))
    assert where.startswith("all hidden states up to ln_f match"), where
    assert len(records) == 2 + 5 * CONFIG.n_layer  # drop, 5 probes per block, ln_f


def test_relative_norm() -> None:
    e = torch.tensor([3.0, 4.0], dtype=torch.float64)
    assert relative_norm(e + torch.tensor([0.0, 5e-4], dtype=torch.float64), e) == pytest.approx(1e-4)
    assert relative_norm(torch.zeros(2), torch.zeros(2)) == 0.0
    assert relative_norm(torch.ones(2), torch.zeros(2)) == float("inf")
    assert hidden_divergence(torch.float32) > 1e-6  # above measured float32 noise (docs/measurements.md)


def test_bypassed_module_is_unobserved_not_blamed(pair: tuple[Any, Any]) -> None:
    """Blocks that run their MLP's layers through a lambda (llm.c / minGPT style) never call mlp.forward; a
    bug in ln_f is still placed at ln_f, and the bypassed modules are named as unobserved."""
    reference, hf = pair
    saved = []
    for block in reference.transformer.h:
        m = block.mlp
        mlpf = lambda x, m=m: m.dropout(m.c_proj(m.gelu(m.c_fc(x))))  # noqa: E731
        saved.append((block, block.forward))
        block.forward = lambda x, b=block, f=mlpf: (lambda y: y + f(b.ln_2(y)))(x + b.attn(b.ln_1(x)))
    handle = _scaled(reference.transformer.ln_f, 1.0 + 1e-3)
    try:
        idx = token_batch("several_sequences", CONFIG)
        where, _ = first_divergence(reference, hf, idx, CONFIG.n_layer, logits_tolerance(torch.float32))
    finally:
        handle.remove()
        for block, forward in saved:
            block.forward = forward
    assert where.startswith("first divergence at transformer.ln_f:"), where
    assert "not observed" in where and "transformer.h.0.mlp" in where, where


def test_bug_inside_a_bypassed_module_is_placed_at_its_block(pair: tuple[Any, Any]) -> None:
    reference, hf = pair
    block = reference.transformer.h[0]
    m = block.mlp
    block.forward = lambda x: (lambda y: y + 1.001 * m.c_proj(m.gelu(m.c_fc(block.ln_2(y)))))(
        x + block.attn(block.ln_1(x))
    )
    try:
        # The bug sits inside the bypassed MLP; the block's own output shows it, so it is placed at the block.
        where, _ = first_divergence(
            reference,
            hf,
            token_batch("several_sequences", CONFIG),
            CONFIG.n_layer,
            logits_tolerance(torch.float32),
        )
    finally:
        del block.forward
    assert where.startswith("first divergence at transformer.h.0:") and "transformer.h.0.mlp" in where, where
