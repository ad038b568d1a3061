"""Shared weight storage, and gradients compared as they are produced: how gpt2-xl fits twice in memory.

The reference's parameters become views of Hugging Face's (Conv1D weights through their transposes), except
a parameter loaded wrong, which keeps its own storage and fails the logits; the gradients of the pair are
compared as backward produces them and freed when they match. A tiny synthetic checkpoint (2 layers, 16
channels, 97 tokens), written under tmp_path, loads in milliseconds.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from nanogpt.model import GPTConfig
from nanogpt.schema import CONV1D_SUFFIXES, to_linear_layout
from parity.core.compare import ParityFailure, compare_tensors, without_padding_rows
from parity.core.tolerances import gradients_tolerance
from parity.numerics.forward import compare_logits, hf_logits, implementation_logits, loss_of
from parity.numerics.gradients import compare_gradients, run_gradients
from parity.numerics.tie import EMBEDDING, HEAD, get_tensor, same_storage
from parity.subject.batches import gradient_batch
from parity.subject.loading import load_hf, load_reference, share_parameters
from parity.subject.synthetic import ensure_synthetic_checkpoint

TINY = GPTConfig(block_size=32, vocab_size=97, n_layer=2, n_head=2, n_embd=16)


@pytest.fixture
def tiny_checkpoint(tmp_path: Path) -> Path:
    path, _ = ensure_synthetic_checkpoint(TINY, "tiny", root=tmp_path)
    return path


@pytest.fixture
def shared_pair(tiny_checkpoint: Path) -> tuple[Any, Any]:
    """HF and the reference, float32, the reference's parameters views of HF's."""
    hf = load_hf(tiny_checkpoint, torch.float32, "cpu")
    ref = load_reference(tiny_checkpoint, torch.float32, "cpu")
    assert share_parameters(ref, hf, source_is_hf=True) == []
    return ref, hf


def test_shared_parameters_are_views_of_hugging_face(shared_pair: tuple[Any, Any]) -> None:
    ref, hf = shared_pair
    theirs = dict(hf.named_parameters())
    for name, p in ref.named_parameters():
        other = theirs[name].t() if name.endswith(CONV1D_SUFFIXES) else theirs[name]
        assert same_storage(p, other), name
    assert ref.is_tied() and get_tensor(ref, HEAD) is get_tensor(ref, EMBEDDING)
    with torch.no_grad():
        hf.transformer.h[0].mlp.c_fc.weight[0, 1] += 1.0  # one write is seen through both models
    assert ref.transformer.h[0].mlp.c_fc.weight[1, 0] == hf.transformer.h[0].mlp.c_fc.weight[0, 1]


def test_a_parameter_loaded_wrong_keeps_its_own_storage(tiny_checkpoint: Path) -> None:
    hf = load_hf(tiny_checkpoint, torch.float32, "cpu")
    ref = load_reference(tiny_checkpoint, torch.float32, "cpu")
    with torch.no_grad():
        ref.transformer.h[1].ln_2.bias.add_(0.5)  # as if the loader had read another tensor
    kept = share_parameters(ref, hf, source_is_hf=True)
    assert kept == ["transformer.h.1.ln_2.bias"]
    assert not same_storage(ref.transformer.h[1].ln_2.bias, hf.transformer.h[1].ln_2.bias)
    idx = torch.randint(0, TINY.vocab_size, (2, 8), generator=torch.Generator().manual_seed(0))
    with pytest.raises(ParityFailure, match="ln_2"):
        compare_logits(ref, hf, idx, TINY.n_layer, "wrong bias")


def test_untied_control_shares_everything_but_its_head(tiny_checkpoint: Path) -> None:
    hf = load_hf(tiny_checkpoint, torch.float32, "cpu")
    untied = load_hf(tiny_checkpoint, torch.float32, "cpu", tie_word_embeddings=False)
    assert share_parameters(untied, hf) == [HEAD]
    assert same_storage(get_tensor(untied, EMBEDDING), get_tensor(hf, EMBEDDING))
    assert not same_storage(get_tensor(untied, HEAD), get_tensor(untied, EMBEDDING))


def test_streamed_gradients_equal_the_comparison_after_both_backwards(
    tiny_checkpoint: Path, shared_pair: tuple[Any, Any]
) -> None:
    ref, hf = shared_pair
    idx, targets = gradient_batch(TINY)
    records = compare_gradients(ref, hf, idx, targets, TINY.vocab_size)
    assert all(p.grad is None for p in [*ref.parameters(), *hf.parameters()]), "matching pairs are freed"
    # The same comparison the old way, on independent models: both backward passes, then compare.
    ref2 = load_reference(tiny_checkpoint, torch.float32, "cpu")
    hf2 = load_hf(tiny_checkpoint, torch.float32, "cpu")

    loss_of(implementation_logits(ref2, idx), targets).backward()
    loss_of(hf_logits(hf2, idx), targets).backward()
    tol = gradients_tolerance(torch.float32)
    theirs = dict(hf2.named_parameters())
    after = []
    for n, p in sorted(ref2.named_parameters()):
        ours = without_padding_rows(n, p.grad, TINY.vocab_size)
        after.append(compare_tensors("grads", n, ours, to_linear_layout(n, theirs[n].grad), tol))
    assert [r.tensor for r in records] == [r.tensor for r in after] and all(r.passed for r in after)
    assert all(r.passed for r in records) and len(records) == len(list(ref.parameters()))


def test_a_differing_gradient_fails_and_keeps_both_gradients(shared_pair: tuple[Any, Any]) -> None:
    ref, hf = shared_pair
    # Untie the reference's c_fc from HF's storage and change it: its gradient (and those upstream) differ.
    fc = ref.transformer.h[1].mlp.c_fc
    fc.weight = torch.nn.Parameter(fc.weight.detach().clone() * 3.0)
    idx, targets = gradient_batch(TINY)
    with pytest.raises(ParityFailure, match=r"\[grads\] \d+ of \d+ parameter gradients differ"):
        compare_gradients(ref, hf, idx, targets, TINY.vocab_size)
    assert fc.weight.grad is not None and hf.transformer.h[1].mlp.c_fc.weight.grad is not None


@pytest.mark.parametrize("shared", [True, False], ids=["shared", "independent"])
def test_hf_tied_gradient_summed_in_place_is_a_tied_backward(tiny_checkpoint: Path, shared: bool) -> None:
    """run_gradients runs HF's backward through its untied twin and adds the head path into the embedding's
    gradient: every comparison is the one against HF's plain tied backward, and every flag is restored."""
    idx, targets = gradient_batch(TINY)
    ref = load_reference(tiny_checkpoint, torch.float64, "cpu")
    hf = load_hf(tiny_checkpoint, torch.float64, "cpu")
    if shared:
        assert share_parameters(ref, hf, source_is_hf=True) == []
    loss_of(hf_logits(hf, idx), targets).backward()  # HF's own tied backward: the expected gradients
    expected = {n: p.grad.clone() for n, p in hf.named_parameters()}
    hf.zero_grad(set_to_none=True)
    ref.transformer.wpe.weight.requires_grad_(False)  # a flag of the implementation's own: kept as it is
    run = run_gradients(ref, hf, idx, targets, TINY.vocab_size, True)
    assert not ref.transformer.wpe.weight.requires_grad and hf.transformer.wpe.weight.requires_grad
    assert all(p.requires_grad for n, p in ref.named_parameters() if n != "transformer.wpe.weight")
    assert hf.lm_head.weight is hf.transformer.wte.weight, "HF's untied twin is tied again"
    assert all(p.grad is None for p in ref.parameters() if p.requires_grad), "matching pairs are freed"
    assert all(r.passed for r in run.records) and len(run.records) == len(expected) - 1
    # The frozen position embedding has no gradient: named, on the implementation's side; HF kept its own.
    assert run.failure is not None
    assert "transformer.wpe.weight: no gradient on the implementation side" in str(run.failure)
    torch.testing.assert_close(hf.transformer.wpe.weight.grad, expected["transformer.wpe.weight"])
    torch.testing.assert_close(run.tied_gradient, expected[EMBEDDING], rtol=0, atol=1e-15)
    with torch.no_grad():
        assert float(run.hf_loss) == float(loss_of(hf_logits(hf, idx), targets))


def test_a_lost_embedding_path_fails_on_the_tied_matrix_alone(tiny_checkpoint: Path) -> None:
    """The tie broken in forward (the head reads a detached copy): only the tied matrix's gradient differs."""
    ref = load_reference(tiny_checkpoint, torch.float64, "cpu")
    hf = load_hf(tiny_checkpoint, torch.float64, "cpu")
    head = ref.lm_head
    head.forward = lambda x: torch.nn.functional.linear(x, head.weight)  # still tied: the control
    idx, targets = gradient_batch(TINY)
    assert run_gradients(ref, hf, idx, targets, TINY.vocab_size).failure is None
    ref.transformer.wte.forward = lambda i: torch.nn.functional.embedding(
        i, ref.transformer.wte.weight.detach()
    )
    run = run_gradients(ref, hf, idx, targets, TINY.vocab_size)
    assert run.failure is not None
    assert [r.tensor for r in run.records if not r.passed] == ["transformer.wte.weight"], str(run.failure)


def _storages(model: torch.nn.Module) -> dict[str, int]:
    return {n: p.untyped_storage().data_ptr() for n, p in model.named_parameters()}


def test_the_independent_plan_shares_the_tied_matrix_alone() -> None:
    """Below SHARE_WEIGHTS_ABOVE_BYTES each model keeps the weights its loader produced, but the tied matrix,
    which has one layout in both, is Hugging Face's storage; each model keeps its own Parameter and tie."""
    from parity.foreign.impl import reference_implementation
    from parity.frontends.bisect import resolve_model
    from parity.subject.subject import Subject

    target = resolve_model("small", "cpu", None)
    assert not target.memory.share_weights
    subject = Subject(reference_implementation(), target)
    model, hf = subject.model(), subject.hf()
    assert get_tensor(model, HEAD) is get_tensor(model, EMBEDDING), "the implementation's own tie"
    assert get_tensor(model, EMBEDDING) is not get_tensor(hf, EMBEDDING)
    assert same_storage(get_tensor(model, EMBEDDING), get_tensor(hf, EMBEDDING))
    theirs = set(_storages(hf).values())
    assert [n for n, ptr in _storages(model).items() if ptr in theirs] == [EMBEDDING]


def test_an_untied_implementation_keeps_both_matrices_of_its_own(tmp_path: Path) -> None:
    from bisect_fixtures.variants import write_model

    from parity.foreign.impl import import_implementation
    from parity.frontends.bisect import resolve_model
    from parity.subject.subject import Subject

    subject = Subject(
        import_implementation(write_model(tmp_path, "untied")), resolve_model("small", "cpu", None)
    )
    model, hf = subject.model(), subject.hf()
    assert get_tensor(model, HEAD) is not get_tensor(model, EMBEDDING)
    assert not set(_storages(model).values()) & set(_storages(hf).values())
