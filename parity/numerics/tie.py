"""Is the tie real? Storage identity of lm_head.weight and transformer.wte.weight, and its survival.

A tie "by value" (two tensors that happen to hold equal numbers) passes a logits comparison but breaks
the first time an optimizer moves one of them; a tie to the wrong tensor, or no tie at all, is the
regression this project exists for. These checks look at storage, not values, and return a message
naming the problem (None when the tie is real), so the tests and the bisect command share them.
"""

from __future__ import annotations

import copy
import dataclasses
import io
from collections.abc import Iterable
from typing import Any

import torch

from nanogpt.model import GPTConfig
from nanogpt.schema import EMBEDDING, HEAD, mapping_of

# Channels per head of the small twins that tie survival is checked on: survival is a property of each
# class's code, not of its width, and at full width (gpt2-xl: a 50257 x 1600 matrix) every random init and
# copy of a twin costs seconds.
TWIN_HEAD_DIM = 8


def twin_config(config: GPTConfig) -> GPTConfig:
    """config with one layer and TWIN_HEAD_DIM channels per head (vocabulary and head count kept)."""
    return dataclasses.replace(config, n_layer=1, n_embd=config.n_head * TWIN_HEAD_DIM)


def get_tensor(model: torch.nn.Module, dotted: str) -> torch.Tensor:
    """A parameter by its nanoGPT name, looked up through attributes under the implementation's own name
    (nanogpt.schema.mapping_of: `tok_emb.weight` for the embedding; the head of a model tied without a head
    module of its own is the embedding)."""
    obj: Any = model
    for part in mapping_of(model).target(dotted).split("."):
        obj = getattr(obj, part)
    return obj


def is_tied(model: torch.nn.Module) -> bool:
    """True when the model's head and token embedding are one Parameter object (False when it lacks one)."""
    try:
        return get_tensor(model, HEAD) is get_tensor(model, EMBEDDING)
    except AttributeError:  # a model without one of the two roles: the checks judge it
        return False


def same_storage(first: torch.Tensor, second: torch.Tensor) -> bool:
    """True when both tensors are the same memory: same storage, offset, shape and strides."""
    return (
        first.untyped_storage().data_ptr() == second.untyped_storage().data_ptr()
        and first.storage_offset() == second.storage_offset()
        and first.shape == second.shape
        and first.stride() == second.stride()
    )


def _called(model: torch.nn.Module, nano: str) -> str:
    """How messages name a nanoGPT tensor of model: its own name, with GPT-2's when they differ."""
    own = mapping_of(model).target(nano)
    return nano if own == nano else f"{own} (GPT-2's {nano})"


def tie_problem(model: torch.nn.Module, label: str, is_hf: bool = False) -> str | None:
    """Why lm_head.weight and transformer.wte.weight of model are not one tensor, or None if they are."""
    head, emb = get_tensor(model, HEAD), get_tensor(model, EMBEDDING)
    head_name, emb_name = _called(model, HEAD), _called(model, EMBEDDING)
    own = mapping_of(model).target
    fix = (
        "load it with tie_word_embeddings=True "
        "(GPT2LMHeadModel.from_pretrained(..., tie_word_embeddings=True))"
        if is_hf
        else f"assign one Parameter to both names (self.{own(EMBEDDING)} = self.{own(HEAD)})"
    )
    if same_storage(head, emb):
        if head is not emb:
            # e.g. load_state_dict(assign=True) wraps each entry in its own Parameter and nobody re-tied them.
            return (
                f"{label}: {head_name} and {emb_name} share storage but are two Parameter objects, "
                "so they are not tied: autograd gives each only its own path's gradient, parameters() counts "
                f"the matrix twice and an optimizer updates it twice; {fix}"
            )
        return None
    for name, t in model.named_parameters(remove_duplicate=False):
        if name != own(HEAD) and same_storage(head, t):
            return f"{label}: {head_name} is tied to {name}, not to {emb_name}; {fix}"
    if head.shape == emb.shape and torch.equal(head.detach().cpu(), emb.detach().cpu()):
        return (
            f"{label}: {head_name} equals {emb_name} by value but is a separate tensor "
            f"(a copy, not a tie): the first optimizer step will untie them; {fix}"
        )
    hint = " (tie_word_embeddings=False: lm_head was initialized, not loaded)" if is_hf else ""
    return f"{label}: {head_name} is not tied to {emb_name}{hint}; {fix}"


def optimizer_tie_problem(param_groups: Iterable[dict[str, Any]], model: torch.nn.Module) -> str | None:
    """Why the optimizer does not hold the tied matrix as one Parameter, or None when it does (or is untied).

    Two Parameter objects over the embedding's storage (a tie_weights that returned early after
    load_state_dict(assign=True)) each get their own gradient, and AdamW keeps a state for each and updates
    the one storage twice per step.
    """
    emb = get_tensor(model, EMBEDDING)
    names: dict[int, str] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        names.setdefault(id(p), name)
    held = {id(p): p for g in param_groups for p in g["params"] if same_storage(p, emb)}
    if len(held) < 2:
        return None
    listed = ", ".join(names.get(i, f"<unnamed {tuple(p.shape)}>") for i, p in held.items())
    return (
        f"the optimizer holds {len(held)} Parameter objects over the one storage of {EMBEDDING} ({listed}): "
        "they share memory but are not one Parameter, so each gets its own partial gradient and every step "
        "updates the storage once per Parameter (two AdamW states, two updates); tie them by assigning one "
        "Parameter to both names (see tied-storage)"
    )


def inplace_update_problem(model: torch.nn.Module, label: str) -> str | None:
    """Write through one name and read through the other; restore the element afterwards."""
    head, emb = get_tensor(model, HEAD), get_tensor(model, EMBEDDING)
    with torch.no_grad():
        saved = head[0, 0].clone()
        try:
            head[0, 0] = saved + 1.0
            seen = emb[0, 0].clone()
        finally:
            head[0, 0] = saved
    if seen != saved + 1.0:
        return f"{label}: an in-place write to lm_head.weight is not visible through {EMBEDDING}"
    return None


def optimizer_step_problem(model: torch.nn.Module, label: str) -> str | None:
    """One SGD step on the tied tensor must move both names identically; the model is restored after."""
    head = get_tensor(model, HEAD)
    emb = get_tensor(model, EMBEDDING)
    one_storage = same_storage(head, emb)
    # One saved copy when the names share storage (a V x C matrix: 0.3 GB at gpt2 in float64), and a
    # gradient of ones that is a broadcast view, not another matrix.
    before_head = head.detach().clone()
    before_emb = before_head if one_storage else emb.detach().clone()
    params = [head] if one_storage else [head, emb]
    opt = torch.optim.SGD(params, lr=0.1)
    saved_grads = [p.grad for p in params]
    try:
        for p in params:
            p.grad = torch.ones((), dtype=p.dtype, device=p.device).expand_as(p)
        opt.step()
        moved_head = not torch.equal(head.detach(), before_head)
        moved_emb = not torch.equal(emb.detach(), before_emb)
        same = torch.equal(head.detach(), emb.detach())
    finally:
        with torch.no_grad():
            head.copy_(before_head)
            if not one_storage:
                emb.copy_(before_emb)
        for p, g in zip(params, saved_grads, strict=True):
            p.grad = g
    if not (moved_head and moved_emb and same):
        return (
            f"{label}: one optimizer step did not move lm_head.weight and {EMBEDDING} identically "
            f"(head moved: {moved_head}, embedding moved: {moved_emb}, equal after: {same})"
        )
    return None


def survival_problems(model: torch.nn.Module, label: str, rebuild: Any, is_hf: bool = False) -> list[str]:
    """Does the tie survive .to(dtype), copy.deepcopy and a state_dict save/load round trip?

    rebuild() must return a fresh model of the same class and config, which the saved state is loaded into.
    """
    problems = []
    other = torch.float32 if get_tensor(model, HEAD).dtype == torch.float64 else torch.float64
    for what, transform in (
        (f".to({other})", lambda m: m.to(other)),
        ("copy.deepcopy", copy.deepcopy),
    ):
        p = tie_problem(transform(copy.deepcopy(model) if what.startswith(".to") else model), label, is_hf)
        if p:
            problems.append(f"after {what}: {p}")
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    buffer.seek(0)
    fresh = rebuild()
    fresh.load_state_dict(torch.load(buffer, weights_only=True))
    p = tie_problem(fresh, label, is_hf)
    if p:
        problems.append(f"after a state_dict save/load round trip: {p}")
    p = inplace_update_problem(fresh, label)
    if p:
        problems.append(f"after a state_dict save/load round trip: {p}")
    return problems


def unique_storage_bytes(tensors: Iterable[torch.Tensor]) -> int:
    """Bytes of the tensors' storages, each storage counted once (as torch.save writes them)."""
    sizes = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in tensors}
    return sum(sizes.values())


def unique_parameter_bytes(model: torch.nn.Module) -> int:
    """Bytes of parameter storage, each shared tensor counted once."""
    return unique_storage_bytes(model.parameters())
