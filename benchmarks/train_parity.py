"""Training-step parity: the reference trainer's step versus a plain Hugging Face GPT-2 training loop.

From the same weights, the same batches and the same hyper-parameters, `compare_train_steps` runs N AdamW
steps of `nanogpt.train.train_step` (the production step, with `GPT.configure_optimizers`) and N steps
of a plain loop over `GPT2LMHeadModel` with `torch.optim.AdamW`, and reports the loss at every step, the
largest absolute difference of every parameter and of its optimizer state (`exp_avg`, `exp_avg_sq`,
`step`) at the end, the weight decay each side gives each parameter, and how many optimizer groups list
it. HF stores its projections as Conv1D, (in, out): they are transposed before comparing. The reference
step may split a step's batch into k micro-batches (gradient accumulation); the HF loop always takes the
concatenated batch, so the comparison also proves that k micro-batches equal one big batch. The HF loop
decays what the HF Trainer decays (everything but biases and LayerNorm weights); both sides list the tied
embedding/head matrix once, so it is updated once per step. Both models are trained in place.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.nn import functional as F

from nanogpt.schema import to_linear_layout
from nanogpt.train import StepConfig, train_step
from parity.checks.optim_groups import decay_membership, hf_no_decay

Batch = tuple[torch.Tensor, torch.Tensor]


@dataclass(frozen=True)
class TrainHyperParams:
    """The hyper-parameters both loops share."""

    learning_rate: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.95)
    weight_decay: float = 0.1
    grad_clip: float = 0.0  # 0 disables clipping


@dataclass
class DecayRow:
    """One parameter's weight decay on each side and how many optimizer groups list it there."""

    name: str
    nanogpt_weight_decay: float | None
    hf_weight_decay: float | None
    nanogpt_groups: int
    hf_groups: int

    @property
    def consistent(self) -> bool:
        """Listed exactly once on each side, with the same weight decay."""
        return (
            self.nanogpt_groups == 1
            and self.hf_groups == 1
            and self.nanogpt_weight_decay == self.hf_weight_decay
        )


@dataclass
class TrainParityResult:
    """Per-step losses and end-of-run differences of the two training loops."""

    nanogpt_losses: list[float]
    hf_losses: list[float]
    hf_grad_norms: list[float]  # pre-clipping global gradient norm of each HF step
    param_max_abs_diff: dict[str, float]
    exp_avg_max_abs_diff: dict[str, float]
    exp_avg_sq_max_abs_diff: dict[str, float]
    optimizer_steps: dict[str, tuple[float, float]]  # name -> (nanogpt step, hf step)
    decay: list[DecayRow]
    nanogpt_tied: bool
    hf_tied: bool
    notes: list[str] = field(default_factory=list)

    @property
    def steps(self) -> int:
        """Number of optimizer steps taken by each loop."""
        return len(self.nanogpt_losses)

    @property
    def max_loss_abs_diff(self) -> float:
        """Largest |loss difference| over the steps."""
        return max(
            (abs(a - b) for a, b in zip(self.nanogpt_losses, self.hf_losses, strict=True)), default=0.0
        )

    def worst(self, diffs: dict[str, float]) -> tuple[str, float]:
        """The (name, diff) with the largest difference in a per-parameter table."""
        name = max(diffs, key=lambda k: diffs[k])
        return name, diffs[name]

    def decay_table(self) -> str:
        """Weight-decay membership of every parameter, as an aligned text table."""
        width = max(len(r.name) for r in self.decay)
        lines = [f"{'parameter':<{width}}  nanogpt wd (groups)  hf wd (groups)"]
        for r in self.decay:
            mark = "" if r.consistent else "   <-- differs"
            lines.append(
                f"{r.name:<{width}}  {r.nanogpt_weight_decay!s:>8} ({r.nanogpt_groups})"
                f"        {r.hf_weight_decay!s:>6} ({r.hf_groups}){mark}"
            )
        return "\n".join(lines)

    def problems(self, loss_atol: float, param_atol: float, state_atol: float) -> list[str]:
        """Every way the two runs differ beyond the given absolute tolerances (empty: they agree)."""
        out = []
        for i, (a, b) in enumerate(zip(self.nanogpt_losses, self.hf_losses, strict=True)):
            if abs(a - b) > loss_atol:
                out.append(
                    f"step {i}: loss nanogpt {a!r} vs hf {b!r} (|diff| {abs(a - b):.3e} > {loss_atol:g})"
                )
        for label, diffs, atol in (
            ("parameter", self.param_max_abs_diff, param_atol),
            ("exp_avg", self.exp_avg_max_abs_diff, state_atol),
            ("exp_avg_sq", self.exp_avg_sq_max_abs_diff, state_atol),
        ):
            bad = {k: v for k, v in diffs.items() if not v <= atol}  # `not <=` also catches NaN
            if bad:
                name, worst = max(bad.items(), key=lambda kv: kv[1])
                out.append(
                    f"{label}: {len(bad)} tensor(s) differ, worst {name} by {worst:.3e} (atol {atol:g})"
                )
        for name, (ours, theirs) in self.optimizer_steps.items():
            if ours != theirs or ours != self.steps:
                out.append(
                    f"{name}: optimizer step count nanogpt {ours:g}, hf {theirs:g}, expected {self.steps} "
                    "(a count above the number of steps means the tensor was updated more than once per step)"
                )
        inconsistent = [r.name for r in self.decay if not r.consistent]
        if inconsistent:
            out.append(
                f"weight decay or group membership differs for {', '.join(inconsistent)}:\n"
                f"{self.decay_table()}"
            )
        if not self.nanogpt_tied:
            out.append("nanogpt: lm_head.weight is no longer transformer.wte.weight after training")
        if not self.hf_tied:
            out.append("hf: lm_head.weight is no longer transformer.wte.weight after training")
        return out + self.notes


# ----------------------------------------------------------------------------------------------------------
# the two sides


def nanogpt_optimizer(model: nn.Module, hp: TrainHyperParams) -> torch.optim.Optimizer:
    """The reference trainer's optimizer: GPT.configure_optimizers (CPU, not fused)."""
    return model.configure_optimizers(hp.weight_decay, hp.learning_rate, hp.betas, "cpu")


def hf_optimizer(hf_model: nn.Module, hp: TrainHyperParams) -> torch.optim.Optimizer:
    """A plain torch.optim.AdamW over the HF model, grouped by the HF Trainer's decay rule."""
    decay, no_decay = [], []
    for name, p in hf_model.named_parameters():  # de-duplicated: the tied matrix appears once
        (no_decay if hf_no_decay(name) else decay).append(p)
    groups = [{"params": decay, "weight_decay": hp.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=hp.learning_rate, betas=hp.betas)


def run_nanogpt_steps(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    batches: Sequence[Sequence[Batch]],
    hp: TrainHyperParams,
) -> list[float]:
    """One nanogpt.train.train_step per entry of batches (each a list of micro-batches); the losses."""
    model.train()
    step_cfg = StepConfig(grad_clip=hp.grad_clip)
    return [train_step(model, optimizer, micro, step_cfg).item() for micro in batches]


def run_hf_steps(
    hf_model: nn.Module,
    optimizer: torch.optim.Optimizer,
    batches: Sequence[Sequence[Batch]],
    hp: TrainHyperParams,
) -> tuple[list[float], list[float]]:
    """A plain HF loop: one step per entry, on the concatenated micro-batches; (losses, grad norms)."""
    hf_model.train()
    losses, norms = [], []
    for micro in batches:
        x = torch.cat([b[0] for b in micro])
        y = torch.cat([b[1] for b in micro])
        logits = hf_model(input_ids=x).logits
        # Our targets are already shifted (y[t] = x[t + 1]); HF's `labels=` would shift them again.
        loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)), y.reshape(-1))
        loss.backward()
        max_norm = hp.grad_clip if hp.grad_clip > 0 else float("inf")
        norms.append(float(torch.nn.utils.clip_grad_norm_(hf_model.parameters(), max_norm)))
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
    return losses, norms


# ----------------------------------------------------------------------------------------------------------
# comparing


def _step_count(state: dict) -> float:
    step = state.get("step", 0)
    return float(step.item() if isinstance(step, torch.Tensor) else step)


def decay_rows(
    nanogpt_model: nn.Module,
    nano_opt: torch.optim.Optimizer,
    hf_model: nn.Module,
    hf_opt: torch.optim.Optimizer,
) -> list[DecayRow]:
    """Weight decay and group count of every parameter on both sides, by nanoGPT name."""
    ours, theirs = decay_membership(nano_opt, nanogpt_model), decay_membership(hf_opt, hf_model)
    rows = []
    for name, _ in nanogpt_model.named_parameters():
        wd_ours, wd_hf = ours.get(name, []), theirs.get(name, [])
        rows.append(
            DecayRow(
                name, wd_ours[0] if wd_ours else None, wd_hf[0] if wd_hf else None, len(wd_ours), len(wd_hf)
            )
        )
    return rows


def compare_train_steps(
    nanogpt_model: nn.Module,
    hf_model: nn.Module,
    batches: Sequence[Sequence[Batch]],
    hp: TrainHyperParams,
) -> TrainParityResult:
    """Train both models in place on the same batches; return losses and end-of-run differences.

    batches[i] is the list of micro-batches (x, y) of step i; y is x shifted by one token. The models must
    start from the same weights (e.g. GPT.from_pretrained(hf_model)) in the same dtype and device, with
    dropout off.
    """
    nano_opt = nanogpt_optimizer(nanogpt_model, hp)
    hf_opt = hf_optimizer(hf_model, hp)
    decay = decay_rows(nanogpt_model, nano_opt, hf_model, hf_opt)

    nano_losses = run_nanogpt_steps(nanogpt_model, nano_opt, batches, hp)
    hf_losses, hf_norms = run_hf_steps(hf_model, hf_opt, batches, hp)

    hf_params = dict(hf_model.named_parameters())
    param_diff, avg_diff, sq_diff, steps = {}, {}, {}, {}
    notes = []
    for name, p in nanogpt_model.named_parameters():
        q = hf_params.get(name)
        if q is None:
            notes.append(f"{name}: no HF parameter of this name")
            param_diff[name] = float("inf")
            continue
        param_diff[name] = (p.detach() - to_linear_layout(name, q.detach())).abs().max().item()
        s_ours, s_hf = nano_opt.state.get(p, {}), hf_opt.state.get(q, {})
        for key, table in (("exp_avg", avg_diff), ("exp_avg_sq", sq_diff)):
            if key in s_ours and key in s_hf:
                table[name] = (s_ours[key] - to_linear_layout(name, s_hf[key])).abs().max().item()
            else:
                table[name] = float("inf")
                notes.append(f"{name}: no {key} state on {'nanogpt' if key not in s_ours else 'hf'} side")
        steps[name] = (_step_count(s_ours), _step_count(s_hf))
    return TrainParityResult(
        nanogpt_losses=nano_losses,
        hf_losses=hf_losses,
        hf_grad_norms=hf_norms,
        param_max_abs_diff=param_diff,
        exp_avg_max_abs_diff=avg_diff,
        exp_avg_sq_max_abs_diff=sq_diff,
        optimizer_steps=steps,
        decay=decay,
        nanogpt_tied=nanogpt_model.lm_head.weight is nanogpt_model.transformer.wte.weight,
        hf_tied=hf_model.lm_head.weight is hf_model.transformer.wte.weight,
        notes=notes,
    )
