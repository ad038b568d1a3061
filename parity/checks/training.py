"""Training checks: the optimizer against the request (parity/checks/optim_groups.py), AdamW steps against
Hugging Face, and the init.

train-steps trains copies of both models with the implementation's own parameter groups mirrored onto
Hugging Face's model, so a different decay policy is reported once, by decay-groups. init and init-scheme
build the implementation from its own __init__, as a user's first training step sees it. Where a size
cannot hold what a check needs (a fresh model beside two loaded ones), and for train-steps at every GPT-2
size (the memory plan keeps full-size training copies and AdamW states to the test configs), the check runs
on the narrow twin of the same implementation (parity/subject/subject.py) and says so.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from typing import Any, NoReturn

import torch
from torch import nn

from nanogpt.hf import hf_config_from_gpt
from nanogpt.schema import EMBEDDING, HEAD, init_spec, mapping_of, to_linear_layout
from parity.checks.check import Check
from parity.checks.optim_groups import (
    BETAS,
    LEARNING_RATE,
    WEIGHT_DECAY,
    configured_optimizer,
    decay_groups_check,
    hf_no_decay,
)
from parity.core.compare import ParityFailure, without_padding_rows
from parity.core.errors import CannotTest
from parity.core.tolerances import (
    INIT_LOSS_ATOL,
    Tolerance,
    init_std_rtol,
    logits_tolerance,
    train_update_tolerance,
)
from parity.core.verdicts import Outcome
from parity.numerics.forward import hf_logits, implementation_logits, logits_and_own_loss, loss_of
from parity.numerics.tie import get_tensor, same_storage, tie_problem, twin_config
from parity.subject.batches import gradient_batch
from parity.subject.subject import Subject, twin_clause

TRAIN_STEPS = 3
# Hyper-parameters of AdamW groups that torch.optim accepts; anything else an implementation keeps in its
# groups (initial_lr of a scheduler, names) is not mirrored.
MIRRORED_OPTIONS = (
    "lr",
    "betas",
    "eps",
    "weight_decay",
    "amsgrad",
    "maximize",
    "momentum",
    "dampening",
    "nesterov",
)


def _mirrored_optimizer(optimizer: Any, model: nn.Module, hf: nn.Module) -> torch.optim.Optimizer:
    """An optimizer of the same class over HF's parameters, group for group, matched by parameter name."""
    mapping = mapping_of(model)  # a split query/key/value is HF's one c_attn, held once per group
    names = {id(p): mapping.role(n) for n, p in model.named_parameters(remove_duplicate=False)}
    theirs = dict(hf.named_parameters())
    groups, placed = [], {}
    for k, g in enumerate(optimizer.param_groups):
        params = []
        for p in g["params"]:
            name = names.get(id(p))
            name = EMBEDDING if name == HEAD else name
            if name not in theirs:
                raise CannotTest(
                    f"[train-steps] optimizer parameter {name or tuple(p.shape)} "
                    "has no Hugging Face counterpart"
                )
            if placed.setdefault(name, k) != k:
                raise CannotTest(
                    f"[train-steps] the parts of {name} are in two optimizer groups: Hugging Face's one "
                    "tensor cannot mirror them"
                )
            if all(q is not theirs[name] for q in params):
                params.append(theirs[name])
        groups.append({"params": params, **{k: g[k] for k in MIRRORED_OPTIONS if k in g}})
    return type(optimizer)(groups)


def _expected_policy(model: nn.Module, tied_decay: bool) -> torch.optim.Optimizer:
    """AdamW in the expected groups (biases, LayerNorms never decay) for code without configure_optimizers."""
    emb = get_tensor(model, EMBEDDING)
    decay, no_decay = [], []
    mapping = mapping_of(model)
    for name, p in model.named_parameters():
        skip = hf_no_decay(mapping.role(name)) or (same_storage(p, emb) and not tied_decay)
        (no_decay if skip else decay).append(p)
    groups = [{"params": decay, "weight_decay": WEIGHT_DECAY}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=LEARNING_RATE, betas=BETAS)


def _relative_update_difference(ours: torch.Tensor, theirs: torch.Tensor, before: torch.Tensor) -> float:
    """||ours - theirs|| / ||theirs - before||: two trained copies' distance, against how far they moved."""
    moved = float((theirs.double() - before.double()).norm())
    apart = float((ours.double() - theirs.double()).norm())
    return apart / moved if moved > 0 else (0.0 if apart == 0 else math.inf)


def _without_key_bias(bias: torch.Tensor, n_embd: int) -> torch.Tensor:
    """c_attn's bias without its key part: softmax is invariant to adding q . b_k to every score of a query,
    so the key bias's gradient is exactly zero and AdamW, dividing by sqrt(v), turns its rounding noise
    into updates of +-lr on either side. Its update says nothing about the implementation."""
    return torch.cat([bias[:n_embd], bias[2 * n_embd :]])


def _step(optimizer: Any, loss_of_batch: Any, batch: tuple[torch.Tensor, torch.Tensor]) -> float:
    """One optimizer step on one batch; its loss."""
    optimizer.zero_grad(set_to_none=True)
    loss = loss_of_batch(*batch)
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss.item()


def train_steps_check(subject: Subject) -> Outcome:
    """TRAIN_STEPS AdamW steps in the implementation's groups, mirrored on HF: same losses and parameters."""
    why = subject.training_fits()
    if why is None:
        model, hf, config = subject.fresh_implementation(), copy.deepcopy(subject.hf()), subject.config
        where = ""
        before = dict(subject.hf().named_parameters())
    else:
        twin = subject.twin(why)
        model, hf, config = subject.fresh_implementation(twin.checkpoint), copy.deepcopy(twin.hf), twin.config
        before = dict(twin.hf.named_parameters())
        where = f" {twin_clause(config, why)}"
    if callable(getattr(type(model), "configure_optimizers", None)) and subject.impl.has_configure_optimizers:
        optimizer = configured_optimizer(model, subject.device)
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise CannotTest(
                "[train-steps] configure_optimizers puts a parameter in two groups, which torch refuses; "
                "see optimizer-once"
            )
        grouping = f"the implementation's configure_optimizers ({type(optimizer).__name__}), mirrored onto HF"
    else:
        optimizer = _expected_policy(model, subject.tied_decay)
        grouping = "no configure_optimizers: the expected grouping"
    hf_optimizer = _mirrored_optimizer(optimizer, model, hf)
    g = torch.Generator().manual_seed(7)
    t = min(32, config.block_size)
    batches = []
    for _ in range(TRAIN_STEPS):
        seq = torch.randint(0, config.output_vocab_size, (2, t + 1), generator=g)
        x, y = seq[:, :-1].contiguous(), seq[:, 1:].contiguous()
        batches.append((x.to(subject.device), y.to(subject.device)))
    model.eval(), hf.eval()
    for m in (model, hf):  # dropout off: the two sides must see the same function
        for mod in m.modules():
            if isinstance(mod, nn.Dropout):
                mod.p = 0.0
    ours_losses = [_step(optimizer, lambda x, y: logits_and_own_loss(model, x, y)[1], b) for b in batches]
    theirs_losses = [_step(hf_optimizer, lambda x, y: loss_of(hf_logits(hf, x), y), b) for b in batches]
    for m in (model, hf):
        m.zero_grad(set_to_none=True)
    full = logits_tolerance(subject.dtype)  # element-wise only: three scalars, whose norm says nothing more
    loss_tol = Tolerance(full.rtol, full.atol, full.reason)
    for step, (a, b) in enumerate(zip(ours_losses, theirs_losses, strict=True)):
        if not abs(a - b) <= loss_tol.atol + loss_tol.rtol * abs(b):
            raise ParityFailure(
                f"[train-steps] the loss of step {step + 1} differs{where}: "
                f"{a:.8f} vs Hugging Face {b:.8f} ({loss_tol}); "
                f"losses {ours_losses} vs {theirs_losses}"
                + (
                    "; see logits and grads"
                    if step == 0
                    else "; the first step's update differs: see grads and optimizer-once"
                )
            )
    limit = train_update_tolerance(subject.dtype)
    theirs = dict(hf.named_parameters())
    diffs = {}
    mapping = mapping_of(model)  # HF's tensors in the implementation's names and layouts
    for name, p in model.named_parameters():
        role, place = mapping.source(name)
        key = EMBEDDING if role == HEAD else role
        q = mapping.view(name, to_linear_layout(key, theirs[key].detach()))
        q0 = mapping.view(name, to_linear_layout(key, before[key].detach()))
        ours = without_padding_rows(key, p.detach(), config.output_vocab_size)
        if role.endswith("attn.c_attn.bias"):
            if place.rows is not None:  # a separate key projection's bias: nothing but noise (see below)
                if place.rows[0] == config.n_embd:
                    continue
            else:
                ours, q, q0 = (_without_key_bias(t, config.n_embd) for t in (ours, q, q0))
        diffs[name] = _relative_update_difference(ours, q, q0)
    worst = max(diffs, key=lambda n: diffs[n])
    if diffs[worst] > limit:
        bad = sorted((n for n in diffs if diffs[n] > limit), key=lambda n: -diffs[n])
        raise ParityFailure(
            f"[train-steps] after {TRAIN_STEPS} steps ({grouping}){where}, {len(bad)} parameter(s) moved "
            f"differently from Hugging Face's: {worst} by {diffs[worst]:.2e} of its update "
            f"(limit {limit:g}); {', '.join(bad[:4])}; losses agree, so the update itself differs "
            "(a tensor updated twice, a lost gradient path)"
        )
    return Outcome(
        f"{TRAIN_STEPS} steps ({grouping}){where}: losses agree within {loss_tol}, every parameter's "
        f"difference <= {diffs[worst]:.1e} of its update ({worst})",
        f"losses {ours_losses} vs Hugging Face {theirs_losses}",
    )


def _fresh(subject: Subject) -> tuple[nn.Module, Any, str]:
    """The implementation from its own __init__ (seed 0, dropout off), its config, and where it runs."""
    config, where = subject.config, ""
    why = subject.full_size_extras()
    if why is not None:
        config = twin_config(subject.config)
        where = f" {twin_clause(config, why)}"
    config = dataclasses.replace(config, dropout=0.0)
    torch.manual_seed(0)
    model = subject.impl.build(config)[0].to(subject.dtype).to(subject.device).eval()
    return model, config, where


def init_check(subject: Subject) -> Outcome:
    """Built from scratch, the loss at init is that of GPT-2's init (about ln(vocab)), and the tied matrix has
    the scale of an output projection."""
    from transformers import GPT2Config, GPT2LMHeadModel

    model, config, where = _fresh(subject)
    idx, targets = (t.to(subject.device) for t in gradient_batch(config))
    torch.manual_seed(0)
    hf_cfg = {k: v for k, v in hf_config_from_gpt(config).items() if k != "architectures"}
    hf = GPT2LMHeadModel(GPT2Config(**hf_cfg)).to(subject.dtype).to(subject.device).eval()
    with torch.no_grad():
        ours = float(loss_of(implementation_logits(model, idx), targets))
        theirs = float(loss_of(hf_logits(hf, idx), targets))
    ln_v = math.log(config.output_vocab_size)
    if tie_problem(model, subject.label):
        _untied_init(ours, theirs, ln_v, where)
    tied = get_tensor(model, EMBEDDING).detach()
    std = float(tied.double().std())
    summary = (
        f"loss at init {ours:.4f}, Hugging Face's init {theirs:.4f}, ln(vocab) {ln_v:.4f}; "
        f"tied matrix std {std:.4f}"
    )
    if std > 0.1:
        direction = (
            "lm_head.weight = transformer.wte.weight keeps the embedding's Parameter, "
            "with nn.Embedding's default N(0, 1) init"
            if abs(std - 1.0) < 0.2
            else "the tie kept a Parameter whose init is not GPT-2's"
        )
        raise ParityFailure(
            f"[init] the tied matrix has std {std:.3f} at init, not an output projection's {0.02}: "
            f"the tie was made in the wrong direction after initialising ({direction}); "
            f"tie with transformer.wte.weight = lm_head.weight, or initialise after tying{where}. {summary}"
        )
    if abs(ours - theirs) > INIT_LOSS_ATOL:
        raise ParityFailure(
            f"[init] {summary}{where}: the loss at init is {ours - theirs:+.3f} nats from GPT-2's init (atol "
            f"{INIT_LOSS_ATOL}); see init-scheme for which parameter's init differs"
        )
    return Outcome(f"{summary}{where}")


def _untied_init(ours: float, theirs: float, ln_v: float, where: str) -> NoReturn:
    """init of a model built without a tie: the loss at init is judged, the tied matrix's scale cannot be."""
    summary = f"loss at init {ours:.4f}, Hugging Face's init {theirs:.4f}, ln(vocab) {ln_v:.4f}{where}"
    if abs(ours - theirs) > INIT_LOSS_ATOL:
        raise ParityFailure(
            f"[init] {summary}: the loss at init is {ours - theirs:+.3f} nats from GPT-2's init (atol "
            f"{INIT_LOSS_ATOL}); see init-scheme for which parameter's init differs (the model is also "
            "built without the tie: see tied-storage)"
        )
    raise CannotTest(
        f"[init] {summary}; its own __init__ does not tie lm_head.weight to transformer.wte.weight "
        "(tied-storage FAILs it), so the tied matrix's init scale cannot be judged"
    )


def init_scheme_check(subject: Subject) -> Outcome:
    """Each parameter's init statistics follow GPT-2's scheme (N(0, 0.02), residual projections /
    sqrt(2 n_layer), zero biases, unit LayerNorm gains)."""
    model, config, where = _fresh(subject)
    problems, checked = [], 0
    mapping = mapping_of(model)
    for name, p in model.named_parameters():
        mean_want, std_want = init_spec(mapping.role(name), config.n_layer)
        x = p.detach().double().flatten()
        checked += 1
        if std_want == 0.0:
            if not torch.all(x == mean_want):
                problems.append(
                    f"{name}: expected the constant {mean_want:g}, "
                    f"found mean {float(x.mean()):.4g}, std {float(x.std()):.3g}"
                )
            continue
        std, mean = float(x.std()), float(x.mean())
        rtol = init_std_rtol(x.numel())
        if abs(std / std_want - 1.0) > rtol or abs(mean) > 6 * std_want / math.sqrt(x.numel()):
            problems.append(
                f"{name}: mean {mean:.2e}, std {std:.4g}; "
                f"GPT-2's init: mean 0, std {std_want:.4g} (+-{rtol:.0%})"
            )
    if problems:
        raise ParityFailure(
            f"[init-scheme] {len(problems)} of {checked} parameters differ from GPT-2's init{where}:\n  "
            + "\n  ".join(problems)
        )
    return Outcome(f"{checked} parameters follow GPT-2's init scheme{where}")


TRAINING_CHECKS = (
    Check(
        "decay-groups",
        "configure_optimizers(weight_decay, learning_rate, betas) returns AdamW (one step compared) whose "
        "groups read back those values; matrices decay, biases and norm gains do not, the tied matrix as the "
        "policy says (--tied-decay, default yes)",
        "the implementation's configure_optimizers; its step on a fresh 1-layer model",
        decay_groups_check,
    ),
    Check(
        "train-steps",
        f"{TRAIN_STEPS} steps of the implementation's optimizer, mirrored onto HF, give the same "
        "losses and parameters",
        "training copies of both models where they are small (test configs), else of the narrow twin",
        train_steps_check,
    ),
    Check(
        "init",
        "built from scratch, the loss at init matches GPT-2's init (about ln(vocab)) and the tied matrix "
        "has an output projection's scale",
        "a fresh model from its own __init__ (the narrow twin at GPT-2 sizes)",
        init_check,
    ),
    Check(
        "init-scheme",
        "every parameter's init follows GPT-2's scheme (N(0, 0.02), residual projections / "
        "sqrt(2 n_layer), zero biases, unit LayerNorm gains)",
        "a fresh model (the narrow twin at GPT-2 sizes)",
        init_scheme_check,
    ),
)
