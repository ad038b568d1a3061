"""The tie and the counts: one storage that stays one, and the tied matrix counted, held and stored once.

tied-storage looks at storage, not values (a tie "by value" passes a logits comparison and breaks at the
first optimizer step); the counts compare the implementation's parameters, its own reported count, its
optimizer and its checkpoint with the golden counts of GPT-2 and with Hugging Face's.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch
from torch import nn

from nanogpt.schema import EMBEDDING, HEAD, golden_param_count, mapping_of
from parity.checks.check import Check
from parity.checks.optim_groups import configured_optimizer, decay_membership
from parity.core.compare import ParityFailure
from parity.core.errors import CannotTest, ImplementationError, NotApplicable
from parity.core.verdicts import Outcome
from parity.numerics.gradients import untied_twin
from parity.numerics.tie import (
    get_tensor,
    inplace_update_problem,
    optimizer_step_problem,
    optimizer_tie_problem,
    same_storage,
    survival_problems,
    tie_problem,
    twin_config,
    unique_parameter_bytes,
    unique_storage_bytes,
)
from parity.subject.subject import Subject


def tied_storage_check(subject: Subject) -> Outcome:
    """One storage after loading, an in-place write, an optimizer step, .to(), deepcopy and a round trip.

    When the weights cannot be loaded, the model its own __init__ builds is judged instead: the tie (or
    its absence) is made there, so an untied model still FAILs; a tied one is CANNOT-TEST, as what loading
    does to the tie is unknown.
    """
    label = subject.label
    try:
        model, load_error = subject.model(), None
    except ImplementationError as e:
        model, load_error = subject.built_model(), e
        label = f"{label} (as its own __init__ builds it; its weights could not be loaded)"
    problem = tie_problem(model, label)
    if problem:
        raise ParityFailure(f"[tied-storage] {problem}")
    problems = [p for p in (inplace_update_problem(model, label), optimizer_step_problem(model, label)) if p]
    # .to(), deepcopy and the round trip on a fresh 1-layer, narrow twin of the same class (tie.twin_config).
    small = twin_config(subject.config)

    def rebuild() -> nn.Module:
        return subject.impl.build(small)[0].to(subject.dtype)

    problems += survival_problems(rebuild(), f"{label} (fresh 1-layer model)", rebuild)
    if problems:
        raise ParityFailure("[tied-storage] " + "\n".join(problems))
    if load_error is not None:
        raise CannotTest(
            "[tied-storage] built by its own __init__, lm_head.weight and transformer.wte.weight are one "
            "storage through an in-place write, an optimizer step, .to(), deepcopy and a state_dict round "
            f"trip; whether loading keeps the tie cannot be checked: {load_error}"
        )
    return Outcome(
        "lm_head.weight and transformer.wte.weight are one storage: after loading, an in-place write, an "
        "optimizer step, .to(), deepcopy and a state_dict round trip"
    )


def _padding(model: nn.Module, hf: Any) -> int:
    """Parameters of the implementation's padded vocabulary rows (Hugging Face has none)."""
    emb = get_tensor(model, EMBEDDING)
    return (emb.size(0) - get_tensor(hf, EMBEDDING).size(0)) * emb.size(1)


def _twice_hint(model: nn.Module, counted: int, expected: int) -> str:
    emb = get_tensor(model, EMBEDDING)
    if counted - expected != emb.numel():
        return ""
    if get_tensor(model, HEAD) is emb:
        return (
            f"; the difference is exactly one {tuple(emb.shape)} matrix and the head is tied: "
            "the tied matrix is counted twice (count each shared tensor once, as parameters() and "
            "named_parameters() do)"
        )
    return f"; the difference is exactly one {tuple(emb.shape)} matrix: the head is untied"


def param_count_check(subject: Subject) -> Outcome:
    """parameters() totals the golden count of the size and Hugging Face's num_parameters()."""
    model, hf = subject.model(), subject.hf()
    golden = golden_param_count(subject.config)
    padding = _padding(model, hf)
    ours = sum(p.numel() for p in model.parameters())
    theirs = int(hf.num_parameters())
    padded = f" ({padding:,} of them vocabulary padding)" if padding else ""
    problems = []
    if ours - padding != golden:
        problems.append(
            f"parameters() counts {ours:,} parameters{padded}, the golden count of this size is {golden:,}"
        )
    if ours - padding != theirs:
        problems.append(f"Hugging Face's num_parameters() says {theirs:,}")
    if problems:
        role, theirs = mapping_of(model).role, dict(hf.named_parameters())
        only_ours = sorted(n for n, _ in model.named_parameters() if role(n) not in theirs)
        extra = f"; parameters Hugging Face does not have: {', '.join(only_ours[:5])}" if only_ours else ""
        raise ParityFailure(
            "[param-count] " + "; ".join(problems) + extra + _twice_hint(model, ours - padding, golden)
        )
    return Outcome(
        f"{ours:,} parameters{padded}: the golden count of {subject.target.name} and HF's num_parameters()"
    )


def own_count_check(subject: Subject) -> Outcome:
    """The implementation's own count (get_num_params) equals the golden one (minus wpe for non_embedding)."""
    model, hf = subject.model(), subject.hf()
    count = getattr(model, "get_num_params", None)
    if not callable(count):
        raise NotApplicable(
            f"[own-count] {subject.label} has no get_num_params: it reports no count of its own"
        )
    golden = golden_param_count(subject.config) + _padding(model, hf)
    wpe = get_tensor(model, "transformer.wpe.weight").numel()
    asked = {}
    with contextlib.suppress(TypeError):  # an implementation whose get_num_params has no non_embedding
        asked["get_num_params(non_embedding=False)"] = (int(count(non_embedding=False)), golden)
    asked["get_num_params()"] = (int(count()), None)
    problems = []
    for call, (got, want) in asked.items():
        allowed = {want} if want is not None else {golden, golden - wpe}
        if got not in allowed:
            hint = _twice_hint(model, got, golden) or _twice_hint(model, got, golden - wpe)
            problems.append(
                f"{call} = {got:,}, expected {' or '.join(f'{a:,}' for a in sorted(allowed))}{hint}"
            )
    if problems:
        raise ParityFailure("[own-count] " + "; ".join(problems))
    return Outcome(
        "; ".join(f"{call} = {got:,}" for call, (got, _) in asked.items()) + " as the golden count says"
    )


def optimizer_once_check(subject: Subject) -> Outcome:
    """configure_optimizers puts each parameter in one group only: the tied matrix once, one AdamW state."""
    model = subject.model()
    optimizer = configured_optimizer(model, subject.device)
    membership = decay_membership(optimizer, model)
    bad = {n: wds for n, wds in membership.items() if len(wds) != 1}
    if bad:
        rows = "\n".join(f"  {n:<40} groups with weight_decay {wds}" for n, wds in sorted(bad.items()))
        refused = getattr(optimizer, "refused", "")
        raise ParityFailure(
            f"[optimizer-once] {len(bad)} parameter(s) are not in exactly one optimizer group "
            "(a tied matrix in two groups is decayed and updated twice per step)"
            f"{f'; torch refused: {refused}' if refused else ''}:\n{rows}"
        )
    problem = optimizer_tie_problem(optimizer.param_groups, model)
    if problem:
        raise ParityFailure(f"[optimizer-once] {problem}")
    tied = get_tensor(model, EMBEDDING)
    held = sum(1 for g in optimizer.param_groups for p in g["params"] if p is tied)
    return Outcome(f"{len(membership)} parameters, each in one group; the tied matrix held {held} time(s)")


class _ByteCounter:
    """A write-only file that counts bytes: measures a checkpoint's size without writing it to disk."""

    def __init__(self) -> None:
        self.n = 0

    def write(self, b: bytes) -> int:
        self.n += len(b)
        return len(b)

    def flush(self) -> None:
        pass


def checkpoint_once_check(subject: Subject) -> Outcome:
    """state_dict() stores the tied matrix once; the tied model occupies one V x C matrix less than untied."""
    model = subject.model()
    state = model.state_dict()
    emb = get_tensor(model, EMBEDDING)
    tied_bytes = emb.numel() * emb.element_size()
    if not same_storage(emb, get_tensor(model, HEAD)):
        raise ParityFailure(
            "[checkpoint-once] the head is not tied, so its checkpoint stores two matrices; see tied-storage"
        )
    stored = unique_storage_bytes(state.values())
    param_bytes = unique_parameter_bytes(model)
    if stored < param_bytes:
        raise ParityFailure(
            f"[checkpoint-once] state_dict holds {stored:,} bytes of storage "
            f"for {param_bytes:,} bytes of parameters"
        )
    # The head's entry must cost only its pickle record, not a second copy of the matrix: measured on the two
    # entries alone (serializing all of gpt2-xl twice takes seconds, and the sharing is decided between them).
    pair, alone = _ByteCounter(), _ByteCounter()
    emb_name, head_name = (mapping_of(model).target(k) for k in (EMBEDDING, HEAD))  # its own names
    torch.save({k: state[k] for k in (emb_name, head_name) if k in state}, pair)
    torch.save({emb_name: state[emb_name]}, alone)
    head_entry = pair.n - alone.n
    if head_entry >= tied_bytes // 2:
        raise ParityFailure(
            f"[checkpoint-once] the lm_head.weight entry adds {head_entry:,} bytes to the state_dict "
            f"checkpoint: the {tied_bytes:,}-byte tied matrix is stored twice"
        )
    with untied_twin(model) as twin:
        untied_bytes = unique_parameter_bytes(twin)
    if untied_bytes - param_bytes != tied_bytes:
        raise ParityFailure(
            f"[checkpoint-once] the tied model occupies {untied_bytes - param_bytes:,} bytes less than its "
            f"untied twin, expected one {tuple(emb.shape)} matrix ({tied_bytes:,} bytes)"
        )
    return Outcome(
        f"the head's state_dict entry adds {head_entry} bytes; the tie saves {tied_bytes:,} bytes of memory"
    )


COUNT_CHECKS = (
    Check(
        "tied-storage",
        "lm_head.weight and transformer.wte.weight are one storage, and stay one (in-place "
        "write, optimizer step, .to(), deepcopy, state_dict round trip)",
        "the implementation (as its own __init__ builds it when its weights cannot be loaded); a fresh "
        "narrow twin",
        tied_storage_check,
    ),
    Check(
        "param-count",
        "parameters() totals the golden count of the size and HF's num_parameters(), the tied "
        "matrix counted once",
        "both models",
        param_count_check,
    ),
    Check(
        "own-count",
        "the implementation's get_num_params() reports the golden count",
        "the implementation",
        own_count_check,
    ),
    Check(
        "optimizer-once",
        "configure_optimizers lists every parameter, the tied matrix included, in exactly one group, and "
        "holds the tied matrix as one Parameter",
        "the implementation's configure_optimizers",
        optimizer_once_check,
    ),
    Check(
        "checkpoint-once",
        "a state_dict checkpoint stores the tied matrix once; the tie saves one V x C matrix of memory",
        "the implementation",
        checkpoint_once_check,
    ),
)
