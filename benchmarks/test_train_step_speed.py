"""Speed of one training step: the reference trainer's `train_step` versus a plain HF GPT-2 loop step.

Both sides run the same small config, batch and dtype (float32 on the CPU), both with AdamW and gradient
clipping at 1.0, and both are measured in this one test, interleaved round by round so that a busy
machine slows them alike. The ratio (HF eager median / reference median; above 1 means the reference is
faster) goes to the benchmark's extra_info and to the session's speed summary, next to the torch.compile
speed-ups; pytest-benchmark's own statistics time the reference step.
Nothing is asserted about speed: a timing assertion on a shared CI runner would only measure the runner.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import pytest
import torch
from torch.nn import functional as F
from transformers import GPT2Config, GPT2LMHeadModel

from benchmarks.plugin import record_train_step
from benchmarks.train_parity import TrainHyperParams, hf_optimizer
from nanogpt.hf import hf_config_from_gpt
from nanogpt.model import GPT, GPTConfig
from nanogpt.train import StepConfig, train_step

CONFIG = GPTConfig(block_size=64, vocab_size=256, n_layer=2, n_head=2, n_embd=64)
BATCH_SIZE = 4
ROUNDS, WARMUP_ROUNDS = 15, 3
HP = TrainHyperParams(learning_rate=6e-4, betas=(0.9, 0.95), weight_decay=0.1, grad_clip=1.0)


def reference_step_fn() -> Callable[[], None]:
    """A closure running one production train_step of the tied reference model."""
    torch.manual_seed(0)
    model = GPT(CONFIG)
    opt = model.configure_optimizers(HP.weight_decay, HP.learning_rate, HP.betas, "cpu")
    x, y = batch()
    step_cfg = StepConfig(grad_clip=HP.grad_clip)
    return lambda: train_step(model, opt, [(x, y)], step_cfg).item()


def hf_step_fn() -> Callable[[], None]:
    """A closure running one step of a plain loop over a tied GPT2LMHeadModel (eager, not compiled)."""
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(**hf_config_from_gpt(CONFIG)))
    assert model.lm_head.weight is model.transformer.wte.weight
    opt = hf_optimizer(model, HP)
    x, y = batch()

    def step() -> None:
        logits = model(input_ids=x).logits
        loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)), y.reshape(-1))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), HP.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        loss.item()

    return step


def batch() -> tuple[torch.Tensor, torch.Tensor]:
    """A fixed batch (x, y = x shifted by one)."""
    g = torch.Generator().manual_seed(1)
    seq = torch.randint(0, CONFIG.vocab_size, (BATCH_SIZE, CONFIG.block_size + 1), generator=g)
    return seq[:, :-1], seq[:, 1:]


def interleaved_medians(fns: dict[str, Callable[[], None]], rounds: int, warmup: int) -> dict[str, float]:
    """Median seconds per call of each function, timed in alternation after warm-up calls."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(ts) for name, ts in times.items()}


def test_train_step_speed_reference_vs_hf(
    benchmark: pytest.FixtureRequest, request: pytest.FixtureRequest
) -> None:
    # One thread: on a shared 2-core runner, intra-op threads waiting on each other while other processes
    # hold the cores swing tiny-model timings by orders of magnitude (the root conftest restores it).
    torch.set_num_threads(1)
    reference, hf = reference_step_fn(), hf_step_fn()
    medians = interleaved_medians({"reference": reference, "hf": hf}, ROUNDS, WARMUP_ROUNDS)
    benchmark.extra_info.update(
        config=(
            f"n_layer={CONFIG.n_layer} n_embd={CONFIG.n_embd} "
            f"block={CONFIG.block_size} vocab={CONFIG.vocab_size}"
        ),
        batch_size=BATCH_SIZE,
        dtype="float32",
        device="cpu",
        threads=1,
        reference_median_s=medians["reference"],
        hf_eager_median_s=medians["hf"],
        ratio_hf_over_reference=medians["hf"] / medians["reference"],
    )
    label = (
        f"{CONFIG.n_layer} layers x {CONFIG.n_embd}, "
        f"batch {BATCH_SIZE} x {CONFIG.block_size}, float32, 1 thread"
    )
    record_train_step(request.config, label, medians["reference"], medians["hf"])
    benchmark.pedantic(reference, rounds=ROUNDS, warmup_rounds=1)
    assert medians["reference"] > 0 and medians["hf"] > 0
