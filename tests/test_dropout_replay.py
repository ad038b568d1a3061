"""Mask replay of the dropout-sites check (parity/checks/dropout.py): record HF's masks, replay them.

A mask recorded on Hugging Face's model and replayed on the same model gives the same train-mode logits; the
explicit attention that stands in for scaled_dot_product_attention computes what the kernel does; a dropout
call of another shape, or one more than Hugging Face's, is named by its site and both shapes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch.nn import functional as F

from parity.checks.dropout import (
    MaskRecorder,
    MaskReplay,
    ReplayMismatch,
    explicit_attention,
    mismatch_message,
    site_name,
)


@pytest.fixture
def tiny_hf(make_hf_gpt2: Callable[..., Any]) -> Any:
    """A two-layer GPT2LMHeadModel (16 channels, 2 heads), eager attention, dropout 0.1, in train mode."""
    hf = make_hf_gpt2(resid_pdrop=0.1, embd_pdrop=0.1, attn_pdrop=0.1, attn_implementation="eager")
    return hf.train()


def test_masks_replayed_on_hugging_face_itself_give_its_logits(tiny_hf: Any) -> None:
    hf = tiny_hf
    idx = torch.randint(0, 97, (2, 8), generator=torch.Generator().manual_seed(1))
    recorder = MaskRecorder()
    with torch.no_grad(), recorder:
        recorded = hf(idx).logits
    # Embeddings, then per block the attention weights and both residual branches.
    assert [d.shape for d in recorder.drops] == [(2, 8, 16), *[(2, 2, 8, 8), (2, 8, 16), (2, 8, 16)] * 2]
    replay = MaskReplay(recorder.drops)
    with torch.no_grad(), replay:
        replayed = hf(idx).logits
    assert torch.equal(replayed, recorded)
    assert len(replay.outputs) == len(recorder.drops)
    with torch.no_grad():
        assert not torch.allclose(hf.eval()(idx).logits, recorded), "the masks dropped nothing"


def test_explicit_attention_is_the_kernel_without_dropout() -> None:
    q, k, v = torch.randn(3, 2, 2, 5, 4, dtype=torch.float64).unbind(0)
    named = {"query": q, "key": k, "value": v, "attn_mask": None, "is_causal": True, "scale": None}
    expected = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    torch.testing.assert_close(explicit_attention(named, lambda w: w), expected)


def test_a_dropout_of_another_shape_is_named_with_both_shapes(tiny_hf: Any) -> None:
    hf = tiny_hf
    idx = torch.randint(0, 97, (2, 8), generator=torch.Generator().manual_seed(1))
    recorder = MaskRecorder()
    with torch.no_grad(), recorder:
        hf(idx)
    replay = MaskReplay(recorder.drops)
    with pytest.raises(ReplayMismatch) as caught, torch.no_grad(), replay:
        F.dropout(torch.ones(2, 8, 16), 0.1, True)  # the embeddings: Hugging Face's shape
        F.dropout(torch.ones(2, 8, 16), 0.1, True)  # where Hugging Face drops the attention weights
    message = mismatch_message(caught.value, n_layer=2)
    assert message.startswith("block 0 attention weights: ")
    assert "(2, 2, 8, 8)" in message and "(2, 8, 16)" in message


def test_a_dropout_beyond_hugging_faces_is_named() -> None:
    replay = MaskReplay([])
    with pytest.raises(ReplayMismatch) as caught, replay:
        F.dropout(torch.ones(3, 4), 0.1, True)
    assert "drops none" in mismatch_message(caught.value, n_layer=1)


def test_sites_are_named_in_hugging_faces_call_order() -> None:
    names = [site_name(i, 2) for i in range(8)]
    assert names == [
        "embeddings",
        "block 0 attention weights",
        "block 0 attention output (residual)",
        "block 0 MLP output (residual)",
        "block 1 attention weights",
        "block 1 attention output (residual)",
        "block 1 MLP output (residual)",
        "after block 1 (Hugging Face drops nothing more)",
    ]
