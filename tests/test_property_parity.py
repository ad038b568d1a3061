"""Property-based parity: for random small GPT-2 configs and random token batches, the reference matches HF.

hypothesis draws a config (1-3 layers, 1-4 heads, head dim 1-8, vocabulary 1-64, so often smaller than
n_embd, block size 1-16) and a batch (1-3 sequences of length 1 to block size, any token ids in range). A
randomly initialised transformers GPT2LMHeadModel (biases and LayerNorm parameters random too, so a dropped
one shows) is converted in memory with GPT.from_pretrained(hf_model), in float64 on CPU, and the parity
checks must hold: logits, loss, every gradient, the tied gradient's two paths, and the tie on both sides.

Profiles (registered in tests/conftest.py, chosen with HYPOTHESIS_PROFILE):
  ci (default): derandomized, 60 examples, no deadline, failure blobs printed: the same examples every run.
  dev: 1000 random examples per run with the local example database, for a longer hunt:
       HYPOTHESIS_PROFILE=dev pytest tests/test_property_parity.py
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
from hypothesis import example, given
from hypothesis import strategies as st
from transformers import GPT2Config, GPT2LMHeadModel

from nanogpt.hf import hf_config_from_gpt
from nanogpt.model import GPT, GPTConfig
from parity.numerics.forward import compare_logits, compare_loss
from parity.numerics.gradients import compare_gradient_decomposition, compare_gradients
from parity.numerics.tie import tie_problem

pytestmark = pytest.mark.usefixtures("one_thread")


@dataclass(frozen=True)
class Case:
    """One drawn example: the architecture, the HF init seed, and a (B, T) batch with its targets."""

    config: GPTConfig
    seed: int
    idx: tuple[tuple[int, ...], ...]
    targets: tuple[tuple[int, ...], ...]


@st.composite
def cases(draw: st.DrawFn) -> Case:
    """A small GPT-2 config and a batch of in-range token ids for it."""
    n_head = draw(st.integers(1, 4))
    config = GPTConfig(
        block_size=draw(st.integers(1, 16)),
        vocab_size=draw(st.integers(1, 64)),
        n_layer=draw(st.integers(1, 3)),
        n_head=n_head,
        n_embd=n_head * draw(st.integers(1, 8)),
    )
    B, T = draw(st.integers(1, 3)), draw(st.integers(1, config.block_size))
    ids = st.lists(st.integers(0, config.vocab_size - 1), min_size=T, max_size=T).map(tuple)
    idx = tuple(draw(ids) for _ in range(B))
    targets = tuple(draw(ids) for _ in range(B))
    return Case(config, draw(st.integers(0, 2**31 - 1)), idx, targets)


def random_hf_gpt2(config: GPTConfig, seed: int) -> GPT2LMHeadModel:
    """A tied float64 GPT2LMHeadModel of config with all parameters random (no zero biases, no unit gains)."""
    hf_cfg = {k: v for k, v in hf_config_from_gpt(config).items() if k != "architectures"}
    torch.manual_seed(seed)
    model = GPT2LMHeadModel(GPT2Config(**hf_cfg)).double().eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g, dtype=p.dtype), alpha=0.05)
    return model


# The smallest architecture everywhere at once: 1 layer, 1 head of width 1, a 1-token vocabulary, block 1.
SMALLEST = Case(GPTConfig(block_size=1, vocab_size=1, n_layer=1, n_head=1, n_embd=1), 0, ((0,),), ((0,),))
# Vocabulary smaller than n_embd, a full block, ids at both ends of the range.
NARROW_VOCAB = Case(
    GPTConfig(block_size=4, vocab_size=3, n_layer=2, n_head=2, n_embd=8),
    1,
    ((0, 2, 2, 1), (2, 0, 1, 0)),
    ((2, 2, 1, 0), (0, 1, 0, 2)),
)


@given(case=cases())
@example(case=SMALLEST)
@example(case=NARROW_VOCAB)
def test_reference_matches_hf_on_random_configs_and_batches(case: Case) -> None:
    hf_model = random_hf_gpt2(case.config, case.seed)
    ours = GPT.from_pretrained(hf_model, dtype=torch.float64).eval()
    idx, targets = torch.tensor(case.idx), torch.tensor(case.targets)
    assert tie_problem(ours, "reference nanoGPT") is None
    assert tie_problem(hf_model, "Hugging Face", is_hf=True) is None
    compare_logits(ours, hf_model, idx, case.config.n_layer, "random")
    compare_loss(ours, hf_model, idx, targets)
    records = compare_gradients(ours, hf_model, idx, targets, case.config.vocab_size)
    assert any(r.tensor == "transformer.wte.weight" for r in records), "the tied gradient was not compared"
    compare_gradient_decomposition(ours, idx, targets)
