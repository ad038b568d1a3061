"""Named parity checks with independent verdicts: PASS, FAIL or CANNOT-TEST, each with its reason.

The bisect command asks questions one check at a time ("is the head tied?", "is the tied matrix
weight-decayed?"), so every check here is self-contained: it loads what it needs through a shared
`Subject` (the implementation under test and Hugging Face's GPT2LMHeadModel, each loaded once, lazily),
runs the functions of parity/checks.py, parity/tie.py and parity/train_parity.py, and turns their outcome
into a `Verdict`. A `ParityFailure` is FAIL; an implementation that cannot be loaded, lacks what the
check needs, or crashes inside the check is CANNOT-TEST (git bisect's "skip"), with the reason.
"""

from __future__ import annotations

import contextlib
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from enum import Enum
from types import SimpleNamespace
from typing import Any

import torch
from torch import nn

from nanogpt.hf import CheckpointError
from nanogpt.model import GPT2_SIZES, GPTConfig, gpt2_config
from parity.batches import gradient_batch, targets_for, token_batch
from parity.checks import (
    check_gradient_decomposition,
    check_gradients,
    check_logits,
    check_loss,
    compare_chunked,
    optimizer_membership_problem,
    parameter_count_problem,
)
from parity.compare import ParityFailure, reference_layout
from parity.goldens import TOTAL_PARAMS, expected_total_params
from parity.impl import Implementation, ImplementationError, LoadReport, load_implementation
from parity.loading import load_hf
from parity.targets import ParityTarget
from parity.tie import (
    EMBEDDING,
    HEAD,
    get_tensor,
    inplace_update_problem,
    optimizer_step_problem,
    same_storage,
    survival_problems,
    tie_problem,
    twin_config,
)
from parity.tolerances import gradients_tolerance, logits_tolerance

CHECKS = ("logits", "grads", "tied-storage", "param-count", "decay-groups", "train-steps")
DESCRIPTIONS = {
    "logits": "logits and loss equal Hugging Face's GPT2LMHeadModel (tie_word_embeddings=True)",
    "grads": "every parameter's gradient equals Hugging Face's; the tied gradient is the sum of its two paths",
    "tied-storage": "lm_head.weight and transformer.wte.weight are one storage, and stay one",
    "param-count": "parameters() totals the golden count of the size, the tied matrix counted once",
    "decay-groups": "configure_optimizers holds the tied matrix in one group, weight-decayed as --tied-decay says",
    "train-steps": "a few AdamW steps give the same losses and parameters as Hugging Face + torch.optim.AdamW",
}
# Batches of the logits check: several sequences, one token, a full block (parity/batches.py).
LOGITS_BATCHES = ("several_sequences", "length_1", "full_block")
TRAIN_STEPS = 3


class Status(str, Enum):
    """The verdict of one check."""

    PASS = "PASS"
    FAIL = "FAIL"
    CANNOT_TEST = "CANNOT-TEST"


@dataclass
class Verdict:
    """One check's status, a one-line reason, and details for --details."""

    check: str
    status: Status
    reason: str
    details: str = ""


class CannotTest(Exception):
    """The check cannot run on this implementation (something it needs is absent); the message says why."""


@dataclass
class Subject:
    """The implementation under test on one target; both models are loaded once, on first use."""

    impl: Implementation
    target: ParityTarget
    tied_decay: bool = True  # the expected answer of decay-groups: is the tied matrix weight-decayed?
    report: LoadReport | None = None
    _model: nn.Module | None = field(default=None, repr=False)
    _load_error: ImplementationError | None = field(default=None, repr=False)
    _hf: Any = field(default=None, repr=False)

    @property
    def config(self) -> GPTConfig:
        """The target's architecture."""
        return self.target.config

    @property
    def label(self) -> str:
        """How messages name the implementation."""
        return self.impl.label

    def model(self) -> nn.Module:
        """The implementation, loaded from the target's checkpoint (a load failure is remembered)."""
        if self._load_error is not None:
            raise self._load_error
        if self._model is None:
            try:
                self._model, self.report = load_implementation(
                    self.impl, self.target.ensure_checkpoint(), self.target.dtype, self.target.device
                )
            except ImplementationError as e:
                self._load_error = e
                raise
        return self._model

    def hf(self) -> Any:
        """Hugging Face's GPT2LMHeadModel with tie_word_embeddings=True, from the same checkpoint."""
        if self._hf is None:
            self._hf = load_hf(self.target.ensure_checkpoint(), self.target.dtype, self.target.device)
        return self._hf

    @property
    def golden(self) -> int:
        """The tied parameter count: published for the four GPT-2 sizes, else from the architecture."""
        size = next((n for n in GPT2_SIZES if gpt2_config(n) == self.config), None)
        return TOTAL_PARAMS[size] if size is not None else expected_total_params(self.config)


@dataclass
class Outcome:
    """What a passing check says about itself."""

    reason: str
    details: str = ""


# ----------------------------------------------------------------------------------------------------------
# the checks


def _is_tied(model: nn.Module) -> bool:
    return same_storage(get_tensor(model, HEAD), get_tensor(model, EMBEDDING))


@contextlib.contextmanager
def _clean_grads(*models: nn.Module) -> Iterator[None]:
    for m in models:
        m.zero_grad(set_to_none=True)
    try:
        yield
    finally:
        for m in models:
            m.zero_grad(set_to_none=True)


def logits_verdict(s: Subject) -> Outcome:
    """Logits of several batches, and the implementation's own loss, against Hugging Face."""
    model, hf = s.model(), s.hf()
    records = []
    for kind in LOGITS_BATCHES:
        idx = token_batch(kind, s.config).to(s.target.device)
        records.append(check_logits(model, hf, idx, s.config.n_layer, kind))
    idx = token_batch("several_sequences", s.config).to(s.target.device)
    records.append(check_loss(model, hf, idx, targets_for(idx, s.config.output_vocab_size).to(idx.device)))
    worst = max(r.max_abs for r in records)
    return Outcome(
        f"{len(LOGITS_BATCHES)} batches and the loss match Hugging Face (tied); max abs diff {worst:.1e}, "
        f"tolerance {logits_tolerance(s.target.dtype)}",
        "\n".join(r.summary() for r in records),
    )


def _untied_gradient_note(model: nn.Module, hf: Any, vocab: int) -> str | None:
    """For an untied implementation: do its two matrices' gradients add up to HF's tied gradient?"""
    head, emb = get_tensor(model, HEAD), get_tensor(model, EMBEDDING)
    if same_storage(head, emb):
        return None
    hf_grad = get_tensor(hf, EMBEDDING).grad
    if head.grad is None or emb.grad is None or hf_grad is None:
        return "the implementation is untied (lm_head.weight is not transformer.wte.weight); see tied-storage"
    summed = reference_layout(EMBEDDING, emb.grad + head.grad, vocab)
    rec = compare_chunked(
        "grads", "wte.grad + lm_head.grad", summed, hf_grad, gradients_tolerance(hf_grad.dtype)
    )
    if rec.passed:
        return (
            "the implementation is untied: transformer.wte.weight and lm_head.weight each get one of the tied "
            "gradient's two paths (their sum equals Hugging Face's tied gradient); see tied-storage"
        )
    return f"the implementation is untied, and even wte.grad + lm_head.grad differs from Hugging Face's: {rec.summary()}"


def grads_verdict(s: Subject) -> Outcome:
    """Every gradient against Hugging Face's, and the tied gradient against its two paths."""
    model, hf = s.model(), s.hf()
    vocab = s.config.output_vocab_size
    idx, targets = (t.to(s.target.device) for t in gradient_batch(s.config))
    with _clean_grads(model, hf):
        try:
            records = check_gradients(model, hf, idx, targets, vocab)
        except ParityFailure as e:
            note = _untied_gradient_note(model, hf, vocab)
            if note:
                raise ParityFailure(f"[grads] {note}\n{e}") from None
            raise
        records.append(check_gradient_decomposition(model, idx, targets))
    worst = max(r.max_abs for r in records)
    return Outcome(
        f"{len(records) - 1} parameter gradients match Hugging Face (max abs diff {worst:.1e}); the tied "
        "gradient is the sum of its embedding and head paths",
        "\n".join(r.summary() for r in records),
    )


def tied_storage_verdict(s: Subject) -> Outcome:
    """One storage after loading, through writes, an optimizer step, .to(), deepcopy and a state_dict round trip."""
    model, label = s.model(), s.label
    problem = tie_problem(model, label)
    if problem:
        raise ParityFailure(f"[tied-storage] {problem}")
    problems = [p for p in (inplace_update_problem(model, label), optimizer_step_problem(model, label)) if p]
    # .to(), deepcopy and the round trip on a fresh 1-layer, narrow twin of the same class (tie.twin_config).
    small = twin_config(s.config)

    def rebuild() -> nn.Module:
        return s.impl.build(small)[0].to(s.target.dtype)

    problems += survival_problems(rebuild(), f"{label} (fresh 1-layer model)", rebuild)
    if problems:
        raise ParityFailure("[tied-storage] " + "\n".join(problems))
    return Outcome(
        "lm_head.weight and transformer.wte.weight are one storage: after loading, an in-place write, an "
        "optimizer step, .to(), deepcopy and a state_dict round trip"
    )


def param_count_verdict(s: Subject) -> Outcome:
    """parameters() totals the golden count and Hugging Face's num_parameters()."""
    model, hf = s.model(), s.hf()
    problem = parameter_count_problem(model, hf, s.golden)
    if problem:
        raise ParityFailure(problem)
    n = sum(p.numel() for p in model.parameters())
    return Outcome(
        f"{n:,} parameters, the golden count for {s.target.name} and Hugging Face's num_parameters()"
    )


def _as_list(params: Any) -> list[torch.Tensor]:
    return [params] if isinstance(params, torch.Tensor) else list(params)


@contextlib.contextmanager
def _recorded_param_groups(record: list[dict[str, Any]]) -> Iterator[None]:
    """Record the parameter groups every torch optimizer is constructed with (even one torch refuses)."""
    original = torch.optim.Optimizer.__init__

    def recording_init(self: torch.optim.Optimizer, params: Any, defaults: dict[str, Any]) -> None:
        if not isinstance(params, torch.Tensor):
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


def configured_param_groups(model: nn.Module, device: str) -> Any:
    """The implementation's optimizer; or, when torch refuses its groups (a tensor in two), those groups."""
    record: list[dict[str, Any]] = []
    try:
        with _recorded_param_groups(record):
            return model.configure_optimizers(
                weight_decay=0.1, learning_rate=6e-4, betas=(0.9, 0.95), device_type=device
            )
    except ValueError as e:
        if not record or "more than one parameter group" not in str(e):
            raise
        return SimpleNamespace(param_groups=record)


def decay_groups_verdict(s: Subject) -> Outcome:
    """The tied matrix is in exactly one optimizer group, decayed or not as --tied-decay expects."""
    if not s.impl.has_configure_optimizers:
        raise CannotTest(
            f"{s.impl.gpt_cls.__name__} has no configure_optimizers: there is no grouping to check"
        )
    model = s.model()
    optimizer = configured_param_groups(model, s.target.device)
    emb, head = get_tensor(model, EMBEDDING), get_tensor(model, HEAD)
    matrices = [("the tied matrix (transformer.wte.weight = lm_head.weight)", emb)]
    if not same_storage(emb, head):
        matrices = [(f"{EMBEDDING} (untied)", emb), (f"{HEAD} (untied)", head)]
    want = "weight-decayed" if s.tied_decay else "not weight-decayed"
    problems, found = [], []
    for what, tensor in matrices:
        decays = [
            g["weight_decay"] for g in optimizer.param_groups for p in g["params"] if same_storage(p, tensor)
        ]
        found.append(f"{what}: weight_decay {decays}")
        if len(decays) != 1:
            problems.append(
                f"{what} is in {len(decays)} optimizer groups (weight_decay {decays}); it must be in exactly "
                "one (in two it is decayed and updated twice per step, and torch.optim refuses it)"
            )
        elif (decays[0] > 0) != s.tied_decay:
            problems.append(
                f"{what} has weight_decay {decays[0]}, expected {want} "
                f"(--tied-decay={'yes' if s.tied_decay else 'no'})"
            )
    membership = optimizer_membership_problem(optimizer, model)
    if problems:
        raise ParityFailure("[decay-groups] " + "\n".join(problems + ([membership] if membership else [])))
    if membership:
        raise ParityFailure(membership)
    return Outcome(f"{'; '.join(found)}: {want} as expected, every parameter in exactly one group")


def training_batches(
    config: GPTConfig, steps: int, device: str
) -> list[list[tuple[torch.Tensor, torch.Tensor]]]:
    """One (x, y) micro-batch per step: 2 sequences of up to 32 tokens, y = x shifted by one, seeded."""
    g = torch.Generator().manual_seed(7)
    t = min(32, config.block_size)
    out = []
    for _ in range(steps):
        seq = torch.randint(0, config.output_vocab_size, (2, t + 1), generator=g)
        out.append([(seq[:, :-1].contiguous().to(device), seq[:, 1:].contiguous().to(device))])
    return out


def expected_policy_optimizer(tied_decay: bool) -> Callable[[nn.Module, Any], torch.optim.Optimizer]:
    """A factory of torch.optim.AdamW grouped by the expected policy: biases and LayerNorms never decay,
    other matrices do, the tied matrix as --tied-decay says. Names are GPT-2's, so it fits HF and nanoGPT."""
    from parity.train_parity import hf_no_decay

    def make(model: nn.Module, hp: Any) -> torch.optim.Optimizer:
        emb, head = get_tensor(model, EMBEDDING), get_tensor(model, HEAD)
        decay, no_decay = [], []
        for name, p in model.named_parameters():
            tied = same_storage(p, emb) or same_storage(p, head)
            (no_decay if hf_no_decay(name) or (tied and not tied_decay) else decay).append(p)
        groups = [
            {"params": decay, "weight_decay": hp.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ]
        return torch.optim.AdamW(groups, lr=hp.learning_rate, betas=hp.betas)

    return make


@contextlib.contextmanager
def _restored(model: nn.Module) -> Iterator[None]:
    """Put back the parameters, no gradients and the train/eval mode after training in place."""
    saved = {name: p.detach().clone() for name, p in model.named_parameters()}
    training = model.training
    try:
        yield
    finally:
        with torch.no_grad():
            for name, p in model.named_parameters():
                p.copy_(saved[name])
        model.zero_grad(set_to_none=True)
        model.train(training)


def train_steps_verdict(s: Subject) -> Outcome:
    """A few AdamW steps of the implementation (its own configure_optimizers) against HF + torch.optim.AdamW."""
    from parity.train_parity import TrainHyperParams, compare_train_steps

    model, hf = s.model(), s.hf()
    hp = TrainHyperParams()
    expected = expected_policy_optimizer(s.tied_decay)
    device = s.target.device
    if s.impl.has_configure_optimizers:
        grouping = "the implementation's configure_optimizers"

        def ours(m: nn.Module, hp: Any) -> torch.optim.Optimizer:
            try:
                return m.configure_optimizers(hp.weight_decay, hp.learning_rate, hp.betas, device)
            except ValueError as e:
                if "more than one parameter group" not in str(e):
                    raise
                raise ParityFailure(
                    f"[train-steps] configure_optimizers puts a parameter in two groups, which torch refuses "
                    f"({e}); see decay-groups"
                ) from None
    else:
        grouping, ours = "no configure_optimizers: the expected grouping on both sides", expected
    with _restored(model), _restored(hf):
        result = compare_train_steps(
            model, hf, training_batches(s.config, TRAIN_STEPS, device), hp,
            make_nanogpt_optimizer=ours, make_hf_optimizer=expected,
        )  # fmt: skip
    # Losses are forward outputs; parameters and Adam states move by gradient-sized amounts per step.
    loss_atol = logits_tolerance(s.target.dtype).atol
    state_atol = gradients_tolerance(s.target.dtype).atol
    problems = result.problems(loss_atol, state_atol, state_atol)
    # A grouping difference is the cause of every loss and parameter difference after it: name it first.
    problems.sort(key=lambda p: not p.startswith("weight decay or group membership"))
    details = f"losses {result.nanogpt_losses} vs Hugging Face {result.hf_losses}\n{result.decay_table()}"
    if problems:
        first, _, rest = problems[0].partition("\n")
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise ParityFailure(
            f"[train-steps] after {TRAIN_STEPS} AdamW steps ({grouping}): {first}{more}\n"
            + "\n".join([rest, *problems[1:], details]).strip()
        )
    name, worst = result.worst(result.param_max_abs_diff)
    return Outcome(
        f"{TRAIN_STEPS} AdamW steps ({grouping}) match Hugging Face + torch.optim.AdamW: max loss diff "
        f"{result.max_loss_abs_diff:.1e}, max parameter diff {worst:.1e} ({name})",
        details,
    )


CHECK_FUNCTIONS: dict[str, Callable[[Subject], Outcome]] = {
    "logits": logits_verdict,
    "grads": grads_verdict,
    "tied-storage": tied_storage_verdict,
    "param-count": param_count_verdict,
    "decay-groups": decay_groups_verdict,
    "train-steps": train_steps_verdict,
}


# ----------------------------------------------------------------------------------------------------------
# running


def _split_message(check: str, message: str) -> tuple[str, str]:
    """(first line without the [check] tag, the remaining lines)."""
    first, _, rest = message.strip().partition("\n")
    return first.removeprefix(f"[{check}] "), rest


def run_check(name: str, subject: Subject) -> Verdict:
    """One check's verdict. CheckpointError propagates: a bad checkpoint is the caller's mistake, not the commit's."""
    try:
        outcome = CHECK_FUNCTIONS[name](subject)
    except ParityFailure as e:
        return Verdict(name, Status.FAIL, *_split_message(name, str(e)))
    except (CannotTest, ImplementationError) as e:
        return Verdict(name, Status.CANNOT_TEST, *_split_message(name, str(e)))
    except CheckpointError:
        raise
    except Exception as e:  # the implementation crashed inside the check: it cannot be judged on this
        return Verdict(
            name,
            Status.CANNOT_TEST,
            f"crashed: {type(e).__name__}: {e}".splitlines()[0],
            traceback.format_exc(),
        )
    return Verdict(name, Status.PASS, outcome.reason, outcome.details)


def run_checks(names: list[str], subject: Subject) -> list[Verdict]:
    """Verdicts of the named checks, in CHECKS order (train-steps last; every check restores what it changes)."""
    return [run_check(name, subject) for name in CHECKS if name in names]
