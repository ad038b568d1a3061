"""The parity checks as plain functions: the tests in parity/ and the bisect command both call these.

Each check takes the two loaded implementations (the reference nanoGPT-style model and transformers'
GPT2LMHeadModel), runs one comparison, and either returns its `Comparison` records or raises
`ParityFailure` with a diagnosis. The reference model is called through `reference_logits`, which
accepts the `(logits, loss)` convention of nanoGPT. The checks are written to fit gpt2-xl twice in memory:
large tensors are compared in chunks (`compare_chunked`: a float64 copy of 50257 x 1600 gradients is
0.6 GB, and a comparison needs several), and gradients are compared and freed while Hugging Face's backward
produces them, so a run holds one set of gradients, not two.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import torch
from torch.nn import functional as F

from nanogpt.hf import CONV1D_SUFFIXES
from parity.compare import (
    Comparison,
    ParityFailure,
    compare_tensors,
    gradient_failure_message,
    reference_layout,
)
from parity.diagnose import first_divergence
from parity.tie import EMBEDDING, HEAD, get_tensor, same_storage
from parity.tolerances import (
    SCREEN_MARGIN,
    Tolerance,
    decomposition_tolerance,
    gradients_tolerance,
    logits_tolerance,
)


def reference_logits(model: torch.nn.Module, idx: torch.Tensor) -> torch.Tensor:
    """Full-sequence logits of a nanoGPT-style model whose forward returns (logits, loss) or logits."""
    out = model(idx)
    return out[0] if isinstance(out, tuple) else out


def hf_logits(model: Any, idx: torch.Tensor) -> torch.Tensor:
    """Logits of a transformers causal LM."""
    return model(idx, use_cache=False).logits


# Elements per chunk of `compare_chunked`: 0.5 MB of float64 temporaries, which the allocator reuses (one
# call on a 50257 x 768 float64 tensor spends 3x longer page-faulting fresh 300 MB temporaries).
CHUNK_ELEMENTS = 1 << 16
# Dtypes whose values float32 holds exactly: these are screened in float32 (half the bytes, twice the
# vector width of float64) before any element is compared exactly.
SCREENED_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """Run torch ops on one intra-op thread for the duration; restore the setting after."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _transposed(t: torch.Tensor) -> bool:
    """A 2-D tensor laid out column-major: the transpose of a contiguous one (a Conv1D weight seen as Linear)."""
    return t.dim() == 2 and t.size(0) > 1 and t.size(1) > 1 and t.t().is_contiguous()


def compare_chunked(
    check: str,
    name: str,
    actual: torch.Tensor,
    expected: torch.Tensor,
    tol: Tolerance,
    chunk_elements: int = CHUNK_ELEMENTS,
) -> Comparison:
    """`compare_tensors`, row-chunk by row-chunk, merged into the record a single call would return.

    compare_tensors converts both sides to float64 and builds several temporaries of that size; for the
    full-block logits or the tied matrix's gradient of gpt2-xl that is gigabytes. Chunks are compared on
    as many Python threads as torch has intra-op threads, each op single-threaded: measured on 2 shared
    cores, 2-thread parallel regions on 64K-element chunks ran 80x slower than one thread whenever another
    process held a core (each region waits for the descheduled thread), while independent chunks on two
    threads are 2x faster than one. Non-finite values take the single-call path, so that their message
    counts every NaN and Inf.

    Float64 inputs are compared exactly as compare_tensors does (every field bitwise equal). Float32 and
    half-precision pairs are screened in float32 first (`_finite_record`): the verdict and the mismatch
    count stay exact, and max_abs, max_rel and where are those of float32 arithmetic (relative error
    <= 2**-22; with near-equal maxima `where` may name either). gpt2-xl's 1.56e9 gradient elements take
    ~6 s that way instead of ~16 s. Two column-major 2-D tensors (a reference Linear weight that is a view
    of Hugging Face's Conv1D weight, and their gradients) are compared through their transposes, so that
    each chunk reads contiguous memory: chunking rows of a column-major tensor reads one float per cache
    line and ran twice as slowly.
    """
    if actual.shape != expected.shape or actual.dim() == 0 or actual.numel() <= chunk_elements:
        with one_thread():
            return compare_tensors(check, name, actual, expected, tol)
    if _transposed(actual) and _transposed(expected):
        rec = compare_chunked(check, name, actual.t(), expected.t(), tol, chunk_elements)
        rec.shape = tuple(actual.shape)
        rec.where = tuple(reversed(rec.where)) if rec.where is not None else None
        return rec
    screened = actual.dtype in SCREENED_DTYPES and expected.dtype in SCREENED_DTYPES and tol.atol > 2.0**-100
    dtype = torch.float32 if screened else torch.float64
    # Rows of the last dimension, whatever the leading dimensions (a (1, 1024, V) logits tensor has one
    # index in dim 0); reshape is a view for the contiguous logits and for a transposed 2-D gradient.
    cols = actual.size(-1)
    rows_a, rows_e = actual.reshape(-1, cols), expected.reshape(-1, cols)
    step = max(1, chunk_elements // cols)
    starts = range(0, rows_a.size(0), step)
    workers = max(1, torch.get_num_threads())
    with one_thread(), ThreadPoolExecutor(max_workers=workers) as pool:
        parts = list(
            pool.map(
                lambda i: _finite_record(check, name, rows_a[i : i + step], rows_e[i : i + step], tol, dtype),
                starts,
            )
        )
    if any(part is None for part in parts):
        return compare_tensors(check, name, actual, expected, tol)
    merged = parts[0]
    assert merged is not None
    for start, part in zip(starts, parts, strict=True):
        assert part is not None
        if part.where is not None:
            part.where = _unravel((start + part.where[0]) * cols + part.where[1], tuple(actual.shape))
        if part is merged:
            continue
        if part.max_abs > merged.max_abs:  # strictly greater: the first maximum wins, as in torch.argmax
            merged.max_abs, merged.where = part.max_abs, part.where
        merged.max_rel = max(merged.max_rel, part.max_rel)
        merged.mismatched += part.mismatched
        merged.passed = merged.passed and part.passed
    merged.shape, merged.total = tuple(actual.shape), actual.numel()
    return merged


def _finite_record(
    check: str,
    name: str,
    actual: torch.Tensor,
    expected: torch.Tensor,
    tol: Tolerance,
    dtype: torch.dtype = torch.float64,
) -> Comparison | None:
    """compare_tensors' record of a 2-D chunk in 14 passes instead of ~25; None if a value is not finite.

    In float64 (the default): the same arithmetic as compare_tensors, operation for operation (|a - e|;
    atol + rtol * |e|; |a - e| / |e| where |e| > atol, where compare_tensors' clamp is a no-op), so every
    field is bitwise what compare_tensors returns (tests/test_memory.py checks it). Finiteness comes free:
    a NaN or Inf on either side makes |a - e| non-finite there, and its maximum with it; the caller then
    takes compare_tensors' path.

    In float32 (float32 or half-precision inputs): a screen. Every element whose |a - e| passes
    atol + rtol * |e| with the bound shrunk by SCREEN_MARGIN passes in exact arithmetic too (see
    parity/tolerances.py). If all of the chunk's elements do, it passed with 0 mismatches, and its max_abs,
    max_rel and where are read from the float32 arithmetic; if any does not, the chunk is compared again
    in float64, so a failing chunk's record is compare_tensors' own.
    """
    a = actual.detach().to(dtype, memory_format=torch.contiguous_format)
    e = expected.detach().to(dtype, memory_format=torch.contiguous_format)
    diff = torch.sub(a, e).abs_()
    max_abs, index = diff.view(-1).max(0)  # the first maximum, as torch.argmax; NaN propagates
    if not torch.isfinite(max_abs):
        return None
    e_abs = e.abs()
    bound = e_abs.mul(tol.rtol).add_(tol.atol)
    if dtype == torch.float64:
        mismatched = int(diff.gt(bound).sum())
    elif bool(diff.gt(bound.mul_(1.0 - SCREEN_MARGIN)).any()):
        return _finite_record(check, name, actual, expected, tol)
    else:
        mismatched = 0
    rel = diff.div_(e_abs).masked_fill_(e_abs <= tol.atol, 0.0)  # diff is not needed after this
    return Comparison(
        check=check,
        tensor=name,
        shape=tuple(actual.shape),
        max_abs=float(max_abs),
        max_rel=float(rel.max()),
        rtol=tol.rtol,
        atol=tol.atol,
        mismatched=mismatched,
        total=actual.numel(),
        passed=mismatched == 0,
        where=divmod(int(index), diff.size(1)),
    )


def _unravel(flat: int, shape: tuple[int, ...]) -> tuple[int, ...]:
    """The multi-index of a flat (row-major) index."""
    index = []
    for size in reversed(shape):
        flat, i = divmod(flat, size)
        index.append(i)
    return tuple(reversed(index))


def check_logits(
    reference: torch.nn.Module,
    hf_model: Any,
    idx: torch.Tensor,
    n_layer: int,
    label: str,
    hf_out: torch.Tensor | None = None,
) -> Comparison:
    """Same logits for idx, or ParityFailure naming the first diverging module.

    hf_out: Hugging Face's logits for idx if the caller already has them (saves a forward pass).
    """
    with torch.no_grad():
        ours = reference_logits(reference, idx)
        theirs = hf_logits(hf_model, idx) if hf_out is None else hf_out
    if ours.shape[:-1] == theirs.shape[:-1] and ours.size(-1) > theirs.size(-1):
        raise ParityFailure(
            f"[logits] logits[{label}]: the reference returns {ours.size(-1)} vocabulary columns, Hugging Face "
            f"{theirs.size(-1)}: padded vocabulary rows leak into the logits and every softmax (crop the logits "
            "to the real vocabulary, logical_vocab_size)"
        )
    tol = logits_tolerance(ours.dtype)
    rec = compare_chunked("logits", f"logits[{label}]", ours, theirs, tol)
    if not rec.passed:
        where, _ = first_divergence(reference, hf_model, idx, n_layer, tol)
        with torch.no_grad():
            again = reference_logits(reference, idx)
        if not torch.equal(again, ours):
            where += (
                "\n  the reference's logits differ between two identical calls: dropout (or other randomness) "
                "is active, though the model should be in eval mode"
            )
        raise ParityFailure(f"[logits] {rec.summary()}\n  {where}")
    return rec


def loss_of(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy, computed the same way for both sides."""
    flat = logits.reshape(-1, logits.size(-1))
    if flat.dtype in (torch.float16, torch.bfloat16):
        flat = flat.float()  # softmax over 50k classes in half precision loses the loss's low bits
    return F.cross_entropy(flat, targets.reshape(-1))


def check_loss(
    reference: torch.nn.Module, hf_model: Any, idx: torch.Tensor, targets: torch.Tensor
) -> Comparison:
    """The reference's own loss (forward with targets) equals HF's loss for the same labels."""
    with torch.no_grad():
        ours = _logits_and_own_loss(reference, idx, targets)[1]
        theirs = loss_of(hf_logits(hf_model, idx), targets)
    return loss_comparison(ours, theirs)


def _logits_and_own_loss(
    reference: torch.nn.Module, idx: torch.Tensor, targets: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The reference's forward with targets: its logits and its own loss (ours if it returns none)."""
    out = reference(idx, targets)
    if isinstance(out, tuple):
        logits, loss = out[0], out[1]
        return logits, loss if loss is not None else loss_of(logits, targets)
    return out, loss_of(out, targets)


def loss_comparison(ours: torch.Tensor, theirs: torch.Tensor) -> Comparison:
    """The reference's own loss against HF's, or ParityFailure."""
    rec = compare_tensors("loss", "loss", ours.detach(), theirs.detach(), logits_tolerance(theirs.dtype))
    if not rec.passed:
        raise ParityFailure(f"[loss] {rec.summary()}")
    return rec


def backward_both(
    reference: torch.nn.Module, hf_model: Any, idx: torch.Tensor, targets: torch.Tensor
) -> None:
    """Backward of the same loss in both models (gradients accumulate into .grad)."""
    loss_of(reference_logits(reference, idx), targets).backward()
    loss_of(hf_logits(hf_model, idx), targets).backward()


@dataclass
class GradientRun:
    """One forward + backward of both implementations on one batch, and what it showed.

    The parity suite runs it once per target and reads four checks from it (parity/conftest.py): the
    logits of the batch, the losses, the gradient comparison, and the reference's tied gradient for the
    decomposition check.
    """

    logits: Comparison | ParityFailure  # the two forwards' logits compared, or why they cannot be
    reference_loss: torch.Tensor  # the reference's own loss (its forward with targets), detached
    hf_loss: torch.Tensor  # loss_of(HF's logits), detached
    records: list[Comparison]  # every compared gradient pair, in parameter-name order
    failure: ParityFailure | None  # what check_gradients raises, or None
    tied_gradient: torch.Tensor | None = None  # a copy of the reference's tied gradient, when kept

    def take_tied_gradient(self) -> torch.Tensor | None:
        """The kept tied gradient, handed over once (the run stops holding its memory)."""
        kept, self.tied_gradient = self.tied_gradient, None
        return kept


def check_gradients(
    reference: torch.nn.Module, hf_model: Any, idx: torch.Tensor, targets: torch.Tensor, vocab: int
) -> list[Comparison]:
    """Every parameter's gradient matches its HF counterpart (Conv1D transposes accounted for).

    The records of `run_gradients`, or its ParityFailure raised.
    """
    run = run_gradients(reference, hf_model, idx, targets, vocab)
    if run.failure is not None:
        raise run.failure
    return run.records


def run_gradients(
    reference: torch.nn.Module,
    hf_model: Any,
    idx: torch.Tensor,
    targets: torch.Tensor,
    vocab: int,
    keep_tied_gradient: bool = False,
) -> GradientRun:
    """Backward of the same loss in both models; every gradient compared with its HF counterpart.

    HF's backward runs first; then each reference parameter's gradient is compared the moment the
    reference's backward has accumulated it (a post-accumulate-grad hook), and a matching pair is freed at
    once, so the run never holds two full sets of gradients. A pair that differs keeps both for diagnosis.
    Same records and the same failure message (`gradient_failure_message`) as comparing after both
    backward passes. (HF first: while one side's gradients wait, the other side's activations are alive,
    and nanoGPT's are the smaller: HF's GELU keeps several 4 x n_embd intermediates per token and layer.)
    The reference runs its forward with targets, so that the same pass also gives its own loss; the
    backward is of loss_of(its logits), the loss HF's side uses, so that a reference whose own loss is
    wrong fails the loss check, not this one. The two forwards' logits are compared as well (`logits`),
    which makes this batch one of the logits checks at no extra cost. keep_tied_gradient: keep a copy of
    the reference's gradient of the tied matrix (the decomposition check's "actual").
    """
    ref = dict(reference.named_parameters())
    hf = dict(hf_model.named_parameters())
    tied = None
    if keep_tied_gradient:  # a model without the name still gets its gradient comparison
        with contextlib.suppress(AttributeError):
            tied = get_tensor(reference, EMBEDDING)
    tol = gradients_tolerance(get_tensor(hf_model, EMBEDDING).dtype)
    problems: list[str] = []
    missing, extra = sorted(set(ref) - set(hf)), sorted(set(hf) - set(ref))
    if missing or extra:
        problems.append(
            f"parameter sets differ: only in reference {missing[:5]}, only in HF {extra[:5]} "
            "(an lm_head.weight on one side only means one model is untied)"
        )
    common = sorted(set(ref) & set(hf))
    records: dict[str, Comparison] = {}
    padding_leaks: set[str] = set()
    kept: list[torch.Tensor] = []

    def compare(name: str) -> None:
        g_ref, g_hf = ref[name].grad, hf[name].grad
        if tied is not None and ref[name] is tied and g_ref is not None:
            kept.append(g_ref.detach().clone())
        if g_ref is None or g_hf is None:
            return  # reported after backward, with the side that has none
        if name.endswith(CONV1D_SUFFIXES):
            g_hf = g_hf.t()
        g_ref_cropped = reference_layout(name, g_ref, vocab)
        try:
            rec = compare_chunked("grads", name, g_ref_cropped, g_hf, tol)
        except ParityFailure as e:  # a shape mismatch; raising inside autograd's hook would lose the context
            problems.append(str(e))
            return
        records[name] = rec
        if g_ref.size(0) > g_ref_cropped.size(0) and g_ref[vocab:].abs().max() != 0:
            padding_leaks.add(name)
        elif rec.passed:
            ref[name].grad = None
            hf[name].grad = None

    theirs = hf_logits(hf_model, idx)
    hf_loss = loss_of(theirs, targets)
    hf_loss.backward()
    theirs = theirs.detach()
    handles = [ref[n].register_post_accumulate_grad_hook(lambda _p, n=n: compare(n)) for n in common]
    try:
        ours, own_loss = _logits_and_own_loss(reference, idx, targets)
        try:
            logits: Comparison | ParityFailure = compare_chunked(
                "logits", "logits[gradient batch]", ours.detach(), theirs, logits_tolerance(theirs.dtype)
            )
        except ParityFailure as e:  # shapes differ; the loss and gradient checks still run
            logits = e
        del theirs
        loss_of(ours, targets).backward()
    finally:
        for h in handles:
            h.remove()
    for name in common:
        if name not in records and (ref[name].grad is None or hf[name].grad is None):
            problems.append(
                f"{name}: no gradient on the {'reference' if ref[name].grad is None else 'HF'} side"
            )
    problems += [
        f"{name}: padding rows (>= {vocab}) received gradient; padded vocabulary leaks"
        for name in sorted(padding_leaks)
    ]
    ordered = [records[n] for n in common if n in records]
    failure = None
    if problems or not all(r.passed for r in ordered):
        failure = ParityFailure(gradient_failure_message(ordered, problems))
    return GradientRun(
        logits, own_loss.detach(), hf_loss.detach(), ordered, failure, kept[0] if kept else None
    )


@contextlib.contextmanager
def untied_twin(model: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """The same model with lm_head given its own copy of the tied matrix; re-tied on exit.

    Every other parameter stays shared, so the twin costs one V x C matrix, not a second model.
    """
    head_module = model.lm_head
    tied = head_module.weight
    if not same_storage(tied, get_tensor(model, EMBEDDING)):
        raise ParityFailure(
            f"[grads] the model is not tied, so it has no untied twin to compare with ({HEAD})"
        )
    head_module.weight = torch.nn.Parameter(tied.detach().clone())
    try:
        yield model
    finally:
        head_module.weight = tied


@contextlib.contextmanager
def only_tied_matrix_requires_grad(model: torch.nn.Module) -> Iterator[None]:
    """Freeze every parameter but the tied matrix (and a twin's head) for the duration; restore after.

    Backward still runs through every block (the embedding path needs it) but computes no weight gradient
    there: the decomposition check then costs three V x C matrices of memory instead of a set of gradients.
    """
    tied = get_tensor(model, EMBEDDING)
    saved = {p: p.requires_grad for p in model.parameters()}
    for p in saved:
        p.requires_grad_(p is tied)
    try:
        yield
    finally:
        for p, flag in saved.items():
            p.requires_grad_(flag)


def check_gradient_decomposition(
    reference: torch.nn.Module,
    idx: torch.Tensor,
    targets: torch.Tensor,
    tied_gradient: torch.Tensor | None = None,
) -> Comparison:
    """The tied gradient equals embedding-path gradient + head-path gradient of an untied twin.

    tied_gradient: the reference's gradient of the tied matrix for this batch and loss, if a full backward
    already produced it (`GradientRun.tied_gradient`); otherwise a backward computes it here.
    """
    reference.zero_grad(set_to_none=True)
    with only_tied_matrix_requires_grad(reference):
        if tied_gradient is None:
            loss_of(reference_logits(reference, idx), targets).backward()
            tied_gradient = get_tensor(reference, EMBEDDING).grad.detach().clone()
            reference.zero_grad(set_to_none=True)
        with untied_twin(reference) as twin:
            loss_of(reference_logits(twin, idx), targets).backward()
            emb_grad = get_tensor(twin, EMBEDDING).grad
            head_grad = get_tensor(twin, HEAD).grad
            if emb_grad is None or head_grad is None:
                raise ParityFailure("[grads] the untied twin has no gradient on one of the two paths")
            summed = emb_grad.detach().add_(head_grad)  # in place: one V x C matrix fewer at gpt2-xl
            rec = compare_chunked("grads", "tied = embedding path + head path", tied_gradient, summed,
                                  decomposition_tolerance(tied_gradient.dtype))  # fmt: skip
            head_alone = not rec.passed and torch.allclose(tied_gradient, head_grad)
            del emb_grad, head_grad, summed
    reference.zero_grad(set_to_none=True)
    if not rec.passed:
        raise ParityFailure(
            f"[grads] the tied gradient is not the sum of its two paths: {rec.summary()}. "
            + (
                "It equals the head path alone: the embedding path is lost (the tie is broken during forward)."
                if head_alone
                else ""
            )  # fmt: skip
        )
    return rec


def parameter_count_problem(reference: torch.nn.Module, hf_model: Any, golden: int | None) -> str | None:
    """Counts: parameters() (and get_num_params(non_embedding=False)) equal the golden and HF's num_parameters().

    The rows of a padded vocabulary are reference parameters that HF does not have; they are allowed for.
    """
    emb = get_tensor(reference, EMBEDDING)
    padding = (emb.size(0) - get_tensor(hf_model, EMBEDDING).size(0)) * emb.size(1)
    theirs = int(hf_model.num_parameters())
    counts = {"parameters()": sum(p.numel() for p in reference.parameters())}
    num_params = getattr(reference, "get_num_params", None)
    if callable(num_params):
        with contextlib.suppress(TypeError):  # an implementation whose get_num_params has no non_embedding
            counts["get_num_params(non_embedding=False)"] = int(num_params(non_embedding=False))
    padded = f" ({padding:,} of them vocabulary padding)" if padding else ""
    problems = []
    for what, ours in counts.items():
        if golden is not None and ours != golden:
            problems.append(
                f"reference {what} counts {ours:,} parameters, the golden for this size is {golden:,}"
            )
        if ours - padding != theirs:
            problems.append(
                f"reference {what} counts {ours:,} parameters{padded}, HF num_parameters() says {theirs:,}"
            )
    if not problems:
        return None
    only_ours = sorted(set(dict(reference.named_parameters())) - set(dict(hf_model.named_parameters())))
    if only_ours:
        problems.append(f"parameters Hugging Face does not have: {', '.join(only_ours[:5])}")
    expected = golden if golden is not None else theirs + padding
    if any(ours - expected == emb.numel() for ours in counts.values()):
        if get_tensor(reference, HEAD) is emb:
            problems.append(
                f"the difference is exactly one {tuple(emb.shape)} matrix and the head is tied: the tied matrix is "
                "counted twice (count each shared tensor once, as parameters() and named_parameters() do)"
            )
        else:
            problems.append(f"the difference is exactly one {tuple(emb.shape)} matrix: the head is untied")
    return "[param-count] " + "; ".join(problems)


def decay_membership(optimizer: torch.optim.Optimizer, model: torch.nn.Module) -> dict[str, list[float]]:
    """For every parameter name, the weight decays of the optimizer groups that hold it."""
    names: dict[int, str] = {}
    for name, p in model.named_parameters():
        names.setdefault(id(p), name)
    membership: dict[str, list[float]] = {name: [] for name in names.values()}
    for group in optimizer.param_groups:
        for p in group["params"]:
            membership.setdefault(names.get(id(p), f"<unnamed {tuple(p.shape)}>"), []).append(
                group["weight_decay"]
            )
    return membership


def optimizer_membership_problem(optimizer: torch.optim.Optimizer, model: torch.nn.Module) -> str | None:
    """Every parameter in exactly one group (the tied one once); a table of offenders otherwise."""
    membership = decay_membership(optimizer, model)
    bad = {n: wds for n, wds in membership.items() if len(wds) != 1}
    if not bad:
        return None
    rows = "\n".join(f"  {n:<40} groups with weight_decay {wds}" for n, wds in sorted(bad.items()))
    return (
        f"[decay-groups] {len(bad)} parameter(s) are not in exactly one optimizer group "
        f"(a tied matrix in two groups is decayed and updated twice per step):\n{rows}"
    )
