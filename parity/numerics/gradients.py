"""Backward-pass comparisons: every gradient against Hugging Face's; the tied gradient against its two paths.

`run_gradients` is written to fit gpt2-xl twice in memory: gradients are compared and freed while the
implementation's backward produces them, so a run holds one set of gradients, not two.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import torch

from nanogpt.schema import EMBEDDING, HEAD, is_conv1d, mapping_of
from parity.core.compare import Comparison, ParityFailure, without_padding_rows
from parity.core.tolerances import decomposition_tolerance, gradients_tolerance, logits_tolerance
from parity.numerics.chunked import compare_chunked
from parity.numerics.forward import hf_logits, implementation_logits, logits_and_own_loss, loss_of
from parity.numerics.tie import get_tensor, is_tied, same_storage


@dataclass
class GradientRun:
    """One forward + backward of both implementations on one batch, and what it showed.

    A Subject runs it once per target and four checks read it (parity/subject/subject.py): the logits of the
    batch, the losses, the gradient comparison, and the implementation's tied gradient for the
    tied-gradient check.
    """

    logits: Comparison | ParityFailure  # the two forwards' logits compared, or why they cannot be
    implementation_loss: torch.Tensor  # the implementation's own loss (its forward with targets), detached
    hf_loss: torch.Tensor  # loss_of(HF's logits), detached
    records: list[Comparison]  # every compared gradient pair, in parameter-name order
    failure: ParityFailure | None  # what compare_gradients raises, or None
    tied_gradient: torch.Tensor | None = None  # a copy of the implementation's tied gradient, when kept
    hf_logits: torch.Tensor | None = None  # Hugging Face's logits of the batch, detached (B x T x V)

    def take_tied_gradient(self) -> torch.Tensor | None:
        """The kept tied gradient, handed over once (the run stops holding its memory)."""
        kept, self.tied_gradient = self.tied_gradient, None
        return kept


def compared_parameters(ours: dict[str, str], theirs: dict[str, Any]) -> tuple[list[str], list[str]]:
    """The implementation's names whose gradients are compared (every name whose GPT-2 role HF has, sorted),
    and the problem when the two models' parameter sets differ (none when they are the same).

    ours: the implementation's parameter names -> their nanoGPT names (nanogpt.schema.TensorMapping.role).
    """
    roles = set(ours.values())
    missing, extra = sorted(n for n, r in ours.items() if r not in theirs), sorted(set(theirs) - roles)
    problems = []
    if missing or extra:
        problems.append(
            f"parameter sets differ: only in the implementation {missing[:5]}, only in HF {extra[:5]} "
            "(an lm_head.weight on one side only means one model is untied)"
        )
    return sorted(n for n, r in ours.items() if r in theirs), problems


def compare_gradients(
    model: torch.nn.Module, hf_model: Any, idx: torch.Tensor, targets: torch.Tensor, vocab: int
) -> list[Comparison]:
    """Every parameter's gradient matches HF's: the records of `run_gradients`, or its failure raised."""
    run = run_gradients(model, hf_model, idx, targets, vocab)
    if run.failure is not None:
        raise run.failure
    return run.records


def run_gradients(
    model: torch.nn.Module,
    hf_model: Any,
    idx: torch.Tensor,
    targets: torch.Tensor,
    vocab: int,
    keep_tied_gradient: bool = False,
) -> GradientRun:
    """Backward of the same loss in both models; every gradient compared with its HF counterpart.

    HF's backward runs first; then each implementation parameter's gradient is compared the moment the
    implementation's backward has accumulated it (a post-accumulate-grad hook), and a matching pair is freed
    at once, so the run never holds two full sets of gradients. A pair that differs keeps both for diagnosis.
    Same records and the same failure message (`gradient_failure_message`) as comparing after both backward
    passes. (HF first: while one side's gradients wait, the other side's activations are alive, and nanoGPT's
    are the smaller: HF's GELU keeps several 4 x n_embd intermediates per token and layer.) The implementation
    runs its forward with targets, so that the same pass also gives its own loss; the backward is of
    loss_of(its logits), the loss HF's side uses, so that an implementation whose own loss is wrong fails the
    loss check, not this one. The two forwards' logits are compared as well (`logits`), which makes this batch
    one of the logits checks at no extra cost. keep_tied_gradient: keep the implementation's gradient of the
    tied matrix (the decomposition check's "actual").

    HF's backward runs through its untied twin (`_hf_paths_apart`), and its tied gradient is the two paths'
    gradients added in place: that end of its backward, with every other gradient of HF's alive, holds two
    V x C matrices, where a tied backward holds three (its two paths' and their sum).
    """
    mapping = mapping_of(model)  # HF's gradients are compared in the implementation's names and layouts
    our_params = dict(model.named_parameters())
    theirs_params = dict(hf_model.named_parameters())
    roles = {n: mapping.role(n) for n in our_params}
    common, problems = compared_parameters(roles, theirs_params)
    tied = None
    if keep_tied_gradient:  # a model without the name still gets its gradient comparison
        with contextlib.suppress(AttributeError):
            tied = get_tensor(model, EMBEDDING)
    tol = gradients_tolerance(get_tensor(hf_model, EMBEDDING).dtype)
    records: dict[str, Comparison] = {}
    padding_leaks: set[str] = set()
    kept: list[torch.Tensor] = []
    logits: Comparison | ParityFailure
    waiting: dict[str, int] = {}  # HF tensor -> implementation tensors still to compare (split q/k/v: 3)
    for n in common:
        waiting[roles[n]] = waiting.get(roles[n], 0) + 1

    def compare(name: str) -> None:
        role = roles[name]
        g_ours, g_hf = our_params[name].grad, theirs_params[role].grad
        if tied is not None and our_params[name] is tied and g_ours is not None:
            kept.append(g_ours.detach())  # no copy: a compared gradient is dropped, never changed in place
        if g_ours is None or g_hf is None:
            return  # reported after backward, with the side that has none
        g_ours_cropped = without_padding_rows(role, g_ours, vocab)
        try:
            rec = compare_chunked("grads", name, g_ours_cropped, mapping.hf_view(name, g_hf), tol)
        except ParityFailure as e:  # a shape mismatch; raising inside autograd's hook would lose the context
            problems.append(str(e))
            return
        records[name] = rec
        if g_ours.size(0) > g_ours_cropped.size(0) and g_ours[vocab:].abs().max() != 0:
            padding_leaks.add(name)
        elif rec.passed:
            our_params[name].grad = None
            waiting[role] -= 1
            if not waiting[role]:  # every implementation tensor of this HF tensor compared
                theirs_params[role].grad = None

    with _hf_paths_apart(hf_model) as hf_twin:
        theirs = hf_logits(hf_twin, idx)
        loss = loss_of(theirs, targets)
        if loss.requires_grad:
            loss.backward()
    theirs = theirs.detach()
    hf_loss = loss.detach()
    handles = [  # a frozen parameter takes no hook: "no gradient on the implementation side", below
        our_params[n].register_post_accumulate_grad_hook(lambda _p, n=n: compare(n))
        for n in common
        if our_params[n].requires_grad
    ]
    try:
        own_logits, loss = logits_and_own_loss(model, idx, targets)
        own_loss = loss.detach()
        try:
            bound = logits_tolerance(theirs.dtype)
            logits = compare_chunked("logits", "logits[gradient batch]", own_logits.detach(), theirs, bound)
        except ParityFailure as e:  # shapes differ; the loss and gradient checks still run
            logits = e
        loss = loss_of(own_logits, targets)
        if loss.requires_grad:
            loss.backward()
        del own_logits, loss
    finally:
        for h in handles:
            h.remove()
    for name in common:
        if name not in records and (our_params[name].grad is None or theirs_params[roles[name]].grad is None):
            side = "implementation" if our_params[name].grad is None else "HF"
            problems.append(f"{name}: no gradient on the {side} side")
    problems += [
        f"{name}: padding rows (>= {vocab}) received gradient; padded vocabulary leaks"
        for name in sorted(padding_leaks)
    ]
    ordered = [records[n] for n in common if n in records]
    failure = None
    if problems or not all(r.passed for r in ordered):
        failure = ParityFailure(gradient_failure_message(ordered, problems))
    return GradientRun(logits, own_loss, hf_loss, ordered, failure, kept[0] if kept else None, theirs)


@contextlib.contextmanager
def _hf_paths_apart(hf_model: Any) -> Iterator[Any]:
    """HF's model for a backward whose tied gradient is summed in place: its untied twin (the head a second
    Parameter over the same storage), and on exit the head path's gradient added into the embedding's .grad,
    which then is HF's tied gradient. A model that is not tied is used as it is."""
    if not is_tied(hf_model):
        yield hf_model
        return
    embedding = get_tensor(hf_model, EMBEDDING)
    with untied_twin(hf_model, own_storage=False) as twin:
        head = get_tensor(twin, HEAD)
        head.requires_grad_(embedding.requires_grad)
        try:
            yield twin
        finally:
            if embedding.grad is not None and head.grad is not None:
                embedding.grad.add_(head.grad)
            elif head.grad is not None:
                embedding.grad = head.grad  # no embedding path: the tied gradient is the head's alone
            head.grad = None


@contextlib.contextmanager
def requires_grad_only(model: torch.nn.Module, wanted: Iterable[torch.Tensor]) -> Iterator[None]:
    """Only the wanted parameters that require a gradient still do for the duration; flags restored after.

    Backward still runs through every module (the wanted parameters' paths need it) but computes no weight
    gradient elsewhere.
    """
    keep = {id(p) for p in wanted if p.requires_grad}
    saved = {p: p.requires_grad for p in model.parameters()}
    for p in saved:
        p.requires_grad_(id(p) in keep)
    try:
        yield
    finally:
        for p, flag in saved.items():
            p.requires_grad_(flag)


@contextlib.contextmanager
def untied_twin(model: torch.nn.Module, own_storage: bool = True) -> Iterator[torch.nn.Module]:
    """The same model with lm_head given a Parameter of its own for the tied matrix; re-tied on exit.

    Every other parameter stays shared, so the twin costs one V x C matrix, not a second model. Without
    own_storage the head's Parameter is a view of the tied matrix's storage (for a twin nothing writes to:
    its gradients are still the head path's alone) and costs nothing.
    """
    mapping = mapping_of(model)
    owner, _, attr = mapping.target(HEAD).rpartition(".")
    if mapping.target(HEAD) == mapping.target(EMBEDDING):
        raise ParityFailure(
            f"[grads] the model is tied without a head module of its own ({mapping.target(EMBEDDING)} is "
            "used as the head), so it has no untied twin to compare with"
        )
    head_module = model.get_submodule(owner)
    tied = getattr(head_module, attr)
    if not same_storage(tied, get_tensor(model, EMBEDDING)):
        raise ParityFailure(
            f"[grads] the model is not tied, so it has no untied twin to compare with ({HEAD})"
        )
    setattr(head_module, attr, torch.nn.Parameter(tied.detach().clone() if own_storage else tied.detach()))
    try:
        yield model
    finally:
        setattr(head_module, attr, tied)


def compare_gradient_decomposition(
    model: torch.nn.Module,
    idx: torch.Tensor,
    targets: torch.Tensor,
    tied_gradient: torch.Tensor | None = None,
) -> Comparison:
    """The tied gradient equals embedding-path gradient + head-path gradient of an untied twin.

    tied_gradient: the implementation's gradient of the tied matrix for this batch and loss, if a full
    backward already produced it (`GradientRun.tied_gradient`); otherwise a backward computes it here.
    """
    model.zero_grad(set_to_none=True)
    tied_matrix = get_tensor(model, EMBEDDING)
    if not tied_matrix.requires_grad:
        raise ParityFailure(
            "[grads] the tied matrix does not require a gradient (requires_grad=False): training never "
            "updates it"
        )
    # Only the tied matrix (and the twin's head) requires a gradient: three V x C matrices of memory, not a
    # set of gradients.
    with requires_grad_only(model, [tied_matrix]):
        if tied_gradient is None:
            loss_of(implementation_logits(model, idx), targets).backward()
            tied_gradient = tied_matrix.grad.detach().clone()
            model.zero_grad(set_to_none=True)
        with untied_twin(model, own_storage=False) as twin:
            loss_of(implementation_logits(twin, idx), targets).backward()
            emb_grad = get_tensor(twin, EMBEDDING).grad
            head_grad = get_tensor(twin, HEAD).grad
            if emb_grad is None or head_grad is None:
                raise ParityFailure("[grads] the untied twin has no gradient on one of the two paths")
            summed = emb_grad.detach().add_(head_grad)  # in place: one V x C matrix fewer at gpt2-xl
            rec = compare_chunked(
                "grads",
                "tied = embedding path + head path",
                tied_gradient,
                summed,
                decomposition_tolerance(tied_gradient.dtype),
            )
            head_alone = not rec.passed and torch.allclose(tied_gradient, head_grad)
            del emb_grad, head_grad, summed
    model.zero_grad(set_to_none=True)
    if not rec.passed:
        raise ParityFailure(
            f"[grads] the tied gradient is not the sum of its two paths: {rec.summary()}. "
            + (
                "It equals the head path alone: the embedding path is lost "
                "(the tie is broken during forward)."
                if head_alone
                else ""
            )
        )
    return rec


def gradient_failure_message(records: Iterable[Comparison], problems: list[str], top: int = 8) -> str:
    """A table of the worst-matching parameters, worst first."""
    records = list(records)
    failed = sorted((r for r in records if not r.passed), key=lambda r: (r.nonfinite is None, -_severity(r)))
    first = f"; {problems[0]}" if problems else ""  # the verdict line names the cause
    lines = [f"[grads] {len(failed)} of {len(records)} parameter gradients differ{first}"]
    lines += [f"  - {p}" for p in problems[1:]]
    if failed:
        lines.append(f"  {'parameter':<40} {'max abs':>10} {'max rel':>10} {'rel norm':>10} {'mismatch':>14}")
        for r in failed[:top]:
            if r.nonfinite:
                lines.append(f"  {r.tensor:<40} {r.nonfinite}")
            else:
                lines.append(
                    f"  {r.tensor:<40} {r.max_abs:>10.3e} {r.max_rel:>10.3e} {r.rel_norm:>10.3e} "
                    f"{r.mismatched:>7}/{r.total:<7}"
                )
        if len(failed) > top:
            lines.append(f"  ... and {len(failed) - top} more")
        limit = failed[0].norm_limit
        norm = f", relative difference norm {limit:g}" if limit is not None else ""
        lines.append(f"  tolerance: rtol={failed[0].rtol:g}, atol={failed[0].atol:g}{norm}")
        lines.append("  " + gradient_hint([r.tensor for r in failed]))
    return "\n".join(lines)


def _severity(r: Comparison) -> float:
    """How far past its tolerance a record is: the worse of its element-wise and its norm criterion."""
    elementwise = r.max_abs / (r.atol + 1e-300) if r.mismatched else 0.0
    return max(elementwise, r.rel_norm / r.norm_limit if r.norm_limit else 0.0)


def gradient_hint(names: list[str]) -> str:
    """The likely cause of a set of mismatching gradients."""
    if names == ["transformer.wte.weight"] or names == ["lm_head.weight"]:
        return (
            "likely cause: only the tied matrix differs, so one side is missing one of its two gradient "
            "paths (embedding or output head): the tie is broken or points at another tensor"
        )
    if all(is_conv1d(n) for n in names):
        return (
            "likely cause: only Conv1D weights differ: a transpose (in, out) vs (out, in) is missing or extra"
        )
    return (
        "likely cause: the forward pass already differs upstream of these parameters (see the logits check)"
    )
