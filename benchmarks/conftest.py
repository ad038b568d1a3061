"""Fixtures for the torch.compile suite: tiny tied models, compiled once per session and shared.

A first torch.compile costs tens of seconds on a CPU, so each model family (the reference nanoGPT and
Hugging Face's GPT2LMHeadModel, both tied) is compiled once, in a session fixture that also does
everything that needs the compiled graph: a few training steps under warning capture and graph counting
(`run_compiled_training`), then one step side by side with an eager twin (`compare_step_with_eager`).
The tests only read the results, so they stay independent of order even though other tests reset dynamo
(torch._dynamo.explain does) in between.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass

import pytest
import torch
from torch import nn
from transformers import GPT2Config, GPT2LMHeadModel

from benchmarks.compile_gates import (
    CompiledTrainingRun,
    EagerComparison,
    Forward,
    MakeOptimizer,
    compare_step_with_eager,
    run_compiled_training,
)
from nanogpt.hf import hf_config_from_gpt
from nanogpt.model import GPT, GPTConfig

# The gate model: big enough to have every layer type twice, small enough to compile in seconds on CPU.
GATE_CONFIG = dict(block_size=64, vocab_size=256, n_layer=2, n_head=2, n_embd=64)
GATE_BATCH_SIZE = 4
# Training steps under the gates: the first compiles, the rest must reuse the graph with updated weights.
GATE_STEPS = 4


def forward_with_targets(
    model: nn.Module, idx: torch.Tensor, targets: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Run a model that takes (idx, targets) and returns (logits, loss), like nanoGPT, eager or compiled."""
    return model(idx, targets)


def hf_forward(
    model: nn.Module, idx: torch.Tensor, targets: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Run an HF GPT2LMHeadModel with labels=idx (HF shifts labels itself): (logits, loss)."""
    out = model(input_ids=idx, labels=idx, use_cache=False)
    return out.logits, out.loss


def gpt_optimizer(model: nn.Module) -> torch.optim.Optimizer:
    """nanoGPT's own AdamW (decay groups, the tied matrix once), at upstream's GPT-2 learning rate."""
    return model.configure_optimizers(weight_decay=0.1, learning_rate=6e-4, betas=(0.9, 0.95))


def hf_optimizer(model: nn.Module) -> torch.optim.Optimizer:
    """AdamW over model.parameters(), which yields the tied matrix once."""
    return torch.optim.AdamW(model.parameters(), lr=6e-4, betas=(0.9, 0.95), weight_decay=0.1)


def make_gate_gpt() -> GPT:
    """The tied reference nanoGPT at GATE_CONFIG, float32, seeded without touching the global RNG."""
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return GPT(GPTConfig(**GATE_CONFIG))


def make_gate_hf() -> GPT2LMHeadModel:
    """HF's tied GPT2LMHeadModel with the same shape as make_gate_gpt()."""
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return GPT2LMHeadModel(GPT2Config(**hf_config_from_gpt(GPTConfig(**GATE_CONFIG))))


def is_tied(model: nn.Module) -> bool:
    """True when lm_head.weight and transformer.wte.weight are one Parameter (same names in both models)."""
    return model.lm_head.weight is model.transformer.wte.weight


@dataclass
class CompiledCase:
    """One tied model family, compiled and trained under the gates, and compared with eager."""

    name: str
    run: CompiledTrainingRun
    comparison: EagerComparison

    @property
    def module(self) -> nn.Module:
        """The trained module behind the torch.compile wrapper."""
        return self.run.compiled._orig_mod


@dataclass(frozen=True)
class ModelFamily:
    """How to build, run and optimize one model family."""

    make: Callable[[], nn.Module]
    forward: Forward
    make_optimizer: MakeOptimizer


MODEL_FAMILIES: dict[str, ModelFamily] = {
    "nanogpt": ModelFamily(make_gate_gpt, forward_with_targets, gpt_optimizer),
    "hf-gpt2": ModelFamily(make_gate_hf, hf_forward, hf_optimizer),
}


@pytest.fixture(scope="session")
def gate_batch() -> tuple[torch.Tensor, torch.Tensor]:
    """A fixed (idx, targets) batch of GATE_BATCH_SIZE x block_size tokens."""
    generator = torch.Generator().manual_seed(1)
    shape = (GATE_BATCH_SIZE, GATE_CONFIG["block_size"])
    idx = torch.randint(0, GATE_CONFIG["vocab_size"], shape, generator=generator)
    targets = torch.randint(0, GATE_CONFIG["vocab_size"], shape, generator=generator)
    return idx, targets


@pytest.fixture(scope="session", params=list(MODEL_FAMILIES))
def compiled_case(
    request: pytest.FixtureRequest, gate_batch: tuple[torch.Tensor, torch.Tensor]
) -> CompiledCase:
    """A tied model compiled with the default backend (inductor), trained GATE_STEPS steps, then compared."""
    family = MODEL_FAMILIES[request.param]
    run = run_compiled_training(
        family.make(), gate_batch, family.forward, family.make_optimizer, steps=GATE_STEPS
    )
    # The eager twin copies the trained weights, so the comparison also covers weights that moved.
    comparison = compare_step_with_eager(
        run.compiled, copy.deepcopy(run.compiled._orig_mod), gate_batch, family.forward
    )
    return CompiledCase(request.param, run, comparison)
