"""Optimizer groups: the implementation's, recorded as configure_optimizers builds them, read by name.

torch.optim refuses a tensor listed in two groups before an optimizer exists, so the groups are recorded
from `torch.optim.Optimizer.__init__` while configure_optimizers runs (on the calling thread only, and
restored on exit): a check can then say *which* parameter is in two groups and with which weight decays,
instead of repeating torch's error. Also here: which groups hold each parameter (`decay_membership`), and
the Hugging Face Trainer's rule of what does not decay, and what decay-groups asks of the optimizer as
configured: the hyperparameters it was called with read back from every group, each parameter in the
group its shape says (matrices decay, biases and norm gains do not), and one step equal to
`torch.optim.AdamW`'s from the same groups (decoupled decay, not Adam's L2 in the gradient).
"""

from __future__ import annotations

import contextlib
import math
import threading
import warnings
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import torch
from torch import nn

from nanogpt.schema import EMBEDDING, HEAD, POSITIONS, mapping_of
from parity.core.compare import ParityFailure
from parity.core.errors import NotApplicable
from parity.core.tolerances import OPTIMIZER_STEP_RTOL
from parity.core.verdicts import Outcome
from parity.foreign.adapters import configure_arguments_taken
from parity.numerics.tie import get_tensor, same_storage, twin_config
from parity.subject.subject import Subject

# The hyper-parameters configure_optimizers is called with (nanoGPT's signature).
WEIGHT_DECAY = 0.1
LEARNING_RATE = 1e-3
BETAS = (0.9, 0.95)
# What decay-groups asks for: none of them torch's defaults (AdamW: lr 1e-3, betas (0.9, 0.999), weight
# decay 0.01), nor nanoGPT's usual betas, so that a value the implementation fixes itself shows.
REQUEST = {"weight_decay": WEIGHT_DECAY, "learning_rate": 6e-4, "betas": (0.85, 0.97)}
# Group options of torch.optim.AdamW that a mirrored AdamW takes from the implementation's groups.
ADAMW_OPTIONS = ("lr", "betas", "eps", "weight_decay", "amsgrad", "maximize")


# One recording at a time: two interleaved ones would each restore the other's wrapper.
_RECORDING = threading.Lock()


def _as_list(params: Any) -> list[torch.Tensor]:
    return [params] if isinstance(params, torch.Tensor) else list(params)


@contextlib.contextmanager
def _recorded_param_groups(record: list[dict[str, Any]]) -> Iterator[None]:
    """Record the parameter groups of every torch optimizer this thread constructs (even one torch refuses).

    Optimizer.__init__ is wrapped for the duration and restored on exit, whatever is raised; optimizers
    that other threads construct meanwhile pass through unrecorded.
    """
    owner = threading.get_ident()
    with _RECORDING:
        original = torch.optim.Optimizer.__init__

        def recording_init(self: torch.optim.Optimizer, params: Any, defaults: dict[str, Any]) -> None:
            if threading.get_ident() == owner and not isinstance(params, torch.Tensor):
                params = list(params)  # a generator would be consumed by the recording
                if params and isinstance(params[0], dict):
                    params = [dict(g, params=_as_list(g["params"])) for g in params]
                    record[:] = [{**defaults, **g} for g in params]
                else:
                    record[:] = [{**defaults, "params": params}]
            original(self, params, defaults)

        torch.optim.Optimizer.__init__ = recording_init  # type: ignore[method-assign]
        try:
            yield
        finally:
            torch.optim.Optimizer.__init__ = original  # type: ignore[method-assign]


def configured_optimizer(model: nn.Module, device: str, request: dict[str, Any] | None = None) -> Any:
    """The implementation's optimizer; or, when torch refuses its groups (a tensor in two), those groups.

    request: weight_decay, learning_rate and betas to call it with (nanoGPT's usual values by default).
    NotApplicable when the implementation has no configure_optimizers.
    """
    asked = {"weight_decay": WEIGHT_DECAY, "learning_rate": LEARNING_RATE, "betas": BETAS, **(request or {})}
    if not callable(getattr(model, "configure_optimizers", None)):
        raise NotApplicable(
            f"{type(model).__name__} has no configure_optimizers: there are no groups to check"
        )
    record: list[dict[str, Any]] = []
    try:
        with _recorded_param_groups(record), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch warns about duplicates in one group; the checks say more
            return model.configure_optimizers(**asked, device_type=device)
    except ValueError as e:
        if not record or "more than one parameter group" not in str(e):
            raise
        return SimpleNamespace(param_groups=record, refused=str(e))


def parameter_names(model: nn.Module) -> dict[int, str]:
    """id(parameter) -> its first name (a tied tensor has one entry)."""
    names: dict[int, str] = {}
    for name, p in model.named_parameters():
        names.setdefault(id(p), name)
    return names


def decay_membership(optimizer: Any, model: nn.Module) -> dict[str, list[float]]:
    """For each parameter name, the weight decays of the optimizer groups holding it (one per listing)."""
    names = parameter_names(model)
    membership: dict[str, list[float]] = {name: [] for name in names.values()}
    for group in optimizer.param_groups:
        for p in group["params"]:
            membership.setdefault(names.get(id(p), f"<unnamed {tuple(p.shape)}>"), []).append(
                group.get("weight_decay", 0.0)
            )
    return membership


def hf_no_decay(name: str) -> bool:
    """The HF Trainer's rule: biases and LayerNorm weights do not decay."""
    return name.endswith(".bias") or ".ln_" in name or name.startswith("transformer.ln_f")


def request_departures(optimizer: Any, taken: tuple[str, ...], request: dict[str, Any]) -> list[str]:
    """Each group's lr, betas and (non-zero) weight decay against the request, for the arguments it takes."""
    problems = []
    for k, g in enumerate(optimizer.param_groups):
        found = {
            "learning_rate": float(g.get("lr", math.nan)),
            "betas": tuple(float(b) for b in g.get("betas", ())),
            "weight_decay": float(g.get("weight_decay", 0.0)),
        }
        for arg, want in request.items():
            got = found[arg]
            if arg not in taken or got == want or (arg == "weight_decay" and got == 0.0):
                continue
            key = {"learning_rate": "lr"}.get(arg, arg)
            problems.append(
                f"group {k} ({len(g['params'])} tensors) has {key}={got}, configure_optimizers was called "
                f"with {arg}={want}"
                + (" (torch's default betas: the argument is dropped)" if got == (0.9, 0.999) else "")
            )
    return problems


def _kind(name: str, p: torch.Tensor) -> str:
    """What a parameter is, in the words of the decay policy."""
    if p.dim() >= 2:
        return f"a {p.dim()}-D matrix"
    return "a bias" if name.endswith("bias") else "a norm gain" if name.endswith("weight") else "1-D"


def policy_departures(optimizer: Any, model: nn.Module) -> tuple[list[str], list[str]]:
    """(departures, notes): every parameter but the tied matrix (and its untied halves) decays when it is
    2-D or more, and not otherwise; the position embedding may do either (nanoGPT decays it, minGPT not)."""
    decays = decay_membership(optimizer, model)
    skip = [get_tensor(model, EMBEDDING), get_tensor(model, HEAD)]
    mapping = mapping_of(model)
    problems, notes = [], []
    for name, p in model.named_parameters():
        listed = decays.get(name, [])
        if any(same_storage(p, t) for t in skip) or not listed:
            continue  # the tied matrix is judged by its policy; a parameter in no group by optimizer-once
        decayed = [d > 0 for d in listed]
        if mapping.role(name) == POSITIONS:
            notes.append(f"{name}: {'weight-decayed' if all(decayed) else 'not weight-decayed'}")
            continue
        if any(d != (p.dim() >= 2) for d in decayed):
            want = "matrices decay" if p.dim() >= 2 else "biases and LayerNorm gains do not decay"
            problems.append(f"{name} ({_kind(name, p)}) has weight_decay {listed}: {want}")
    return problems, notes


def decoupled_step_problem(model: nn.Module, request: dict[str, Any]) -> str | None:
    """One float64 step of the optimizer configure_optimizers returns for model, against torch.optim.AdamW
    from the same groups on the same gradients; None when they agree (or torch refused the groups)."""
    model = model.to(torch.float64)
    optimizer = configured_optimizer(model, "cpu", request)
    if not isinstance(optimizer, torch.optim.Optimizer):
        return None  # a tensor in two groups: optimizer-once says which
    names = parameter_names(model)
    g = torch.Generator().manual_seed(0)
    copies: dict[int, torch.Tensor] = {}
    for group in optimizer.param_groups:
        for p in group["params"]:
            if id(p) not in copies:  # gradients of a decayed weight's scale, so L2 decay would show
                p.grad = torch.randn(p.shape, generator=g, dtype=p.dtype) * 1e-3
                copies[id(p)] = p.detach().clone().requires_grad_(True)
                copies[id(p)].grad = p.grad.clone()
    before = {k: c.detach().clone() for k, c in copies.items()}
    reference = torch.optim.AdamW(
        [
            {
                "params": [copies[id(p)] for p in grp["params"]],
                **{k: grp[k] for k in ADAMW_OPTIONS if k in grp},
            }
            for grp in optimizer.param_groups
        ]
    )
    optimizer.step()
    reference.step()
    worst, where = 0.0, ""
    for group in optimizer.param_groups:
        for p in group["params"]:
            ref = copies[id(p)].detach()
            moved = float((ref - before[id(p)]).norm())
            apart = float((p.detach() - ref).norm())
            off = apart / moved if moved > 0 else (0.0 if apart == 0 else math.inf)
            if off > worst:
                worst, where = off, names.get(id(p), f"<unnamed {tuple(p.shape)}>")
    if worst <= OPTIMIZER_STEP_RTOL:
        return None
    kind = type(optimizer)
    hint = (
        "torch.optim.Adam adds the weight decay to the gradient (L2), AdamW decays the weights directly"
        if issubclass(kind, torch.optim.Adam)
        and not any(g.get("decoupled_weight_decay") for g in optimizer.param_groups)
        else "the update is not AdamW's"
    )
    return (
        f"one step of {kind.__module__}.{kind.__qualname__} differs from torch.optim.AdamW built from the "
        f"same groups on the same gradients: {where} by {worst:.2e} of AdamW's update "
        f"(limit {OPTIMIZER_STEP_RTOL:g}); {hint}"
    )


def decay_groups_check(subject: Subject) -> Outcome:
    """The optimizer as asked for: the request's hyperparameters in every group, each parameter decayed as
    its shape says and the tied matrix as the policy says, and AdamW's decoupled decay in one step."""
    model = subject.model()
    optimizer = configured_optimizer(model, subject.device, REQUEST)
    emb, head = get_tensor(model, EMBEDDING), get_tensor(model, HEAD)
    matrices = [("the tied matrix (transformer.wte.weight = lm_head.weight)", emb)]
    if not same_storage(emb, head):
        matrices = [(f"{EMBEDDING} (untied)", emb), (f"{HEAD} (untied)", head)]
    want = "weight-decayed" if subject.tied_decay else "not weight-decayed"
    problems, found = [], []
    for what, tensor in matrices:
        decays = [
            g.get("weight_decay", 0.0)
            for g in optimizer.param_groups
            for p in g["params"]
            if same_storage(p, tensor)
        ]
        found.append(f"{what}: weight_decay {decays}")
        if not decays:
            problems.append(f"{what} is in no optimizer group: it is never trained")
        elif any((d > 0) != subject.tied_decay for d in decays):
            problems.append(
                f"{what} has weight_decay {decays}, expected {want} "
                f"(policy: --tied-decay={'yes' if subject.tied_decay else 'no'})"
            )
    taken = configure_arguments_taken(subject.impl.gpt_cls.configure_optimizers)
    problems += request_departures(optimizer, taken, REQUEST)
    policy, notes = policy_departures(optimizer, model)
    problems += policy
    step = decoupled_step_problem(subject.impl.build(twin_config(subject.config))[0], REQUEST)
    problems += [f"{step} (on a fresh 1-layer model of the same code)"] if step else []
    if problems:
        raise ParityFailure("[decay-groups] " + "\n".join(problems))
    asked = ", ".join(f"{k}={REQUEST[k]}" for k in taken if k in REQUEST) or "none of the request"
    return Outcome(
        f"{'; '.join(found)}: {want}, as the policy says; every other matrix decays and no bias or norm "
        f"gain does; every group reads back {asked}; one step equals torch.optim.AdamW's",
        "; ".join(f"position embedding {n}" for n in notes),
    )
