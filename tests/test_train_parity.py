"""Training-step parity: nanogpt.train.train_step versus a plain HF GPT2LMHeadModel + AdamW loop.

Both sides start from the same float64 weights on the CPU and take the same batches. float64 leaves
only summation-order noise (~1e-16 relative per op); after a few AdamW steps of size ~lr the parameters
agree to ~1e-12, so the tolerances below (1e-10) are four orders of magnitude above the noise and four
below a single wrong update (~lr = 1e-3).
"""

from __future__ import annotations

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from benchmarks.train_parity import TrainHyperParams, compare_train_steps
from nanogpt.model import GPT
from parity.core.tolerances import TRAIN_STEPS_F64

# float64 AdamW noise vs a real bug: TRAIN_STEPS_F64 in parity/core/tolerances.py.
LOSS_ATOL = PARAM_ATOL = STATE_ATOL = TRAIN_STEPS_F64.atol
STEPS = 3
VOCAB, BLOCK, BATCH = 96, 16, 4


# Tiny models gain nothing from a second thread: tests/conftest.py one_thread.
pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_pair(seed: int = 0) -> tuple[GPT, GPT2LMHeadModel]:
    """A random tiny HF GPT-2 (tied, no dropout, float64) and the reference model loaded from it."""
    torch.manual_seed(seed)
    config = GPT2Config(
        vocab_size=VOCAB,
        n_positions=BLOCK,
        n_embd=32,
        n_layer=2,
        n_head=2,
        tie_word_embeddings=True,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
    )
    hf = GPT2LMHeadModel(config).double()
    with torch.no_grad():  # random LayerNorms and biases too, so a dropped one cannot hide behind 1 or 0
        for p in hf.parameters():
            if p.dim() == 1:
                p.add_(torch.randn_like(p) * 0.1)
    assert hf.lm_head.weight is hf.transformer.wte.weight
    ours = GPT.from_pretrained(hf)
    assert ours.is_tied() and ours.transformer.wte.weight.dtype == torch.float64
    return ours, hf


def make_batches(steps: int, micro: int, seed: int = 1) -> list[list[tuple[torch.Tensor, torch.Tensor]]]:
    """steps lists of `micro` micro-batches (x, y), y = x shifted by one token, batch BATCH // micro."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(steps):
        seq = torch.randint(0, VOCAB, (BATCH, BLOCK + 1), generator=g)
        x, y = seq[:, :-1], seq[:, 1:]
        out.append(list(zip(x.chunk(micro), y.chunk(micro), strict=True)))
    return out


def assert_parity(result) -> None:
    problems = result.problems(LOSS_ATOL, PARAM_ATOL, STATE_ATOL)
    assert not problems, "training parity failed:\n" + "\n".join(problems)


@pytest.mark.parametrize(
    "micro_batches, grad_clip",
    [(1, 0.0), (2, 0.0), (1, 0.5), (4, 0.5)],
    ids=["plain", "grad-accum-2", "clip", "grad-accum-4-clip"],
)
def test_train_step_matches_plain_hf_loop(micro_batches: int, grad_clip: float) -> None:
    ours, hf = tiny_pair()
    hp = TrainHyperParams(learning_rate=1e-3, weight_decay=0.1, grad_clip=grad_clip)
    result = compare_train_steps(ours, hf, make_batches(STEPS, micro_batches), hp)
    assert result.steps == STEPS
    assert_parity(result)
    # the runs really trained: the loss moved, and every parameter has state from every step
    assert result.nanogpt_losses[0] != result.nanogpt_losses[-1]
    assert all(s == (STEPS, STEPS) for s in result.optimizer_steps.values())
    if grad_clip:
        # clipping is only tested if it was active: the pre-clip norm exceeded the threshold
        assert min(result.hf_grad_norms) > grad_clip, result.hf_grad_norms


def test_tied_matrix_in_two_groups_is_caught() -> None:
    """Mutant: the tied matrix listed in a second param group is updated twice per step; parity must fail."""

    ours, hf = tiny_pair()
    configure_optimizers = ours.configure_optimizers

    def double_update(*args: object, **kwargs: object) -> torch.optim.Optimizer:
        opt = configure_optimizers(*args, **kwargs)
        # append directly: add_param_group() would refuse the duplicate, a hand-rolled optimizer may not
        opt.param_groups.append(dict(opt.param_groups[1], params=[ours.lm_head.weight], weight_decay=0.0))
        return opt

    ours.configure_optimizers = double_update  # the model's own method, as the trainer calls it
    result = compare_train_steps(ours, hf, make_batches(STEPS, 1), TrainHyperParams())
    problems = result.problems(LOSS_ATOL, PARAM_ATOL, STATE_ATOL)
    assert any("transformer.wte.weight: optimizer step count nanogpt 6" in p for p in problems), problems
    assert any(p.startswith("step 1: loss") for p in problems), problems  # step 0 loss precedes any update
    assert result.param_max_abs_diff["transformer.wte.weight"] > 1e-4
    assert any("group membership differs for transformer.wte.weight" in p for p in problems), problems


def test_weight_decay_membership_and_tied_policy() -> None:
    """Every parameter is in exactly one group on both sides with the same decay; the tied matrix decays."""
    ours, hf = tiny_pair()
    hp = TrainHyperParams(weight_decay=0.1)
    result = compare_train_steps(ours, hf, make_batches(1, 1), hp)
    table = result.decay_table()
    rows = {r.name: r for r in result.decay}
    assert set(rows) == {n for n, _ in ours.named_parameters()}, table
    assert all(r.consistent for r in result.decay), "weight-decay membership differs:\n" + table
    # Policy: the tied embedding/head matrix is 2-D, so it decays (upstream nanoGPT's dimension rule and the
    # HF Trainer's rule agree). A change of policy on either side must fail here, loudly.
    tied = rows["transformer.wte.weight"]
    assert tied.nanogpt_weight_decay == hp.weight_decay and tied.hf_weight_decay == hp.weight_decay, table
    assert "lm_head.weight" not in rows, "the tied matrix must be listed once, under transformer.wte.weight"
    decayed = {n for n, r in rows.items() if r.nanogpt_weight_decay}
    assert decayed == {n for n, p in ours.named_parameters() if p.dim() >= 2}, table
