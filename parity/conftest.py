"""Fixtures of the parity suite: the two loaded implementations per target, and the report.

Models are session-scoped per target (loading gpt2-xl twice would cost minutes and gigabytes); tests that
modify a model restore it before returning. Options live in parity/plugin.py. For sizes whose memory plan
says so (parity/memory.py: gpt2-large and gpt2-xl on their defaults), the reference's parameters become
views of Hugging Face's after a bitwise check, so one copy of the weights serves both; a run that would
not fit in the available memory stops with a usage error once the tests are collected, before any model
is built. One forward + backward of both models on the gradient batch (`gradient_run`) is shared by the
loss, gradient, decomposition and multi-sequence logits tests. The header shows each target's dtype
policy and memory plan; the terminal summary shows what the synthetic checkpoints cost.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import torch

from nanogpt.hf import CONV1D_SUFFIXES
from nanogpt.model import GPT
from parity.batches import gradient_batch
from parity.checks import GradientRun, run_gradients
from parity.impl import load_implementation
from parity.loading import load_hf, load_reference, share_parameters
from parity.memory import (
    available_memory,
    format_bytes,
    ignore_memory_check,
    memory_problem,
    per_worker,
    release_free_memory,
)
from parity.plugin import IMPL_KEY, REPORT_KEY, TARGETS_KEY
from parity.report import ParityReport
from parity.targets import ParityTarget

# Why the run cannot fit in memory, as found by a pytest-xdist worker (see pytest_collection_finish).
MEMORY_PROBLEM_KEY = pytest.StashKey[str]()
# Per target name: the reference parameters that kept their own storage although the plan shares weights.
UNSHARED_KEY = pytest.StashKey[dict[str, list[str]]]()


def pytest_report_header(config: pytest.Config) -> list[str]:
    """Each target's dtype policy and memory plan (the options' header lines come from parity/plugin.py)."""
    return [
        f"parity policy: {t.name}: {t.dtype_name} ({t.dtype_reason}); {t.memory.describe()}"
        for t in config.stash.get(TARGETS_KEY, [])
    ]


def pytest_collection_finish(session: pytest.Session) -> None:
    """Stop with the estimate, before any model is built, when a collected target cannot fit in memory."""
    config = session.config
    if config.option.collectonly or ignore_memory_check():
        return
    if not any("parity_target" in getattr(item, "fixturenames", ()) for item in session.items):
        return
    available = per_worker(available_memory())
    for t in config.stash.get(TARGETS_KEY, []):
        problem = memory_problem(t.name, t.memory, available) if t.device == "cpu" else None
        if problem and hasattr(config, "workerinput"):
            # A pytest-xdist worker: an exception here reaches the user as a bare "worker crashed"; the
            # `memory_fits` fixture fails every parity test with the message instead, before any load.
            config.stash[MEMORY_PROBLEM_KEY] = problem
            return
        if problem:
            raise pytest.UsageError(problem)


def fail_if_it_cannot_fit(config: pytest.Config) -> None:
    """pytest.fail with the memory problem a pytest-xdist worker found at collection, if any."""
    problem = config.stash.get(MEMORY_PROBLEM_KEY, None)
    if problem:
        pytest.fail(problem, pytrace=False)


@pytest.fixture(scope="session", autouse=True)
def memory_fits(request: pytest.FixtureRequest) -> None:
    """Fail (before any model is built) when a pytest-xdist worker found that the run cannot fit."""
    fail_if_it_cannot_fit(request.config)


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    """What the synthetic checkpoints cost (generated in this run, or reused from the cache)."""
    for t in config.stash.get(TARGETS_KEY, []):
        if t.weights != "synthetic" or t.checkpoint is None:
            continue
        size = sum(f.stat().st_size for f in t.checkpoint.iterdir() if f.is_file())
        cost = (
            f"generated in {t.generation_seconds:.1f} s"
            if t.generation_seconds is not None
            else "reused from the cache"
        )
        terminalreporter.write_line(
            f"parity synthetic checkpoint {t.name}: {cost} ({format_bytes(size)} at {t.checkpoint})"
        )
    for name, kept in config.stash.get(UNSHARED_KEY, {}).items():
        if kept:
            terminalreporter.write_line(
                f"parity {name}: {len(kept)} reference parameter(s) loaded values that differ from Hugging "
                f"Face's and kept their own storage: {', '.join(kept[:5])}"
            )


def _deterministic(device: str) -> None:
    # Parity is about the function, not kernel speed: no TF32, deterministic kernels where CUDA has them.
    if device == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False


@pytest.fixture(scope="session")
def checkpoint(parity_target: ParityTarget) -> Any:
    """The target's checkpoint directory (a synthetic one is generated on first use and cached)."""
    return parity_target.ensure_checkpoint()


@pytest.fixture(scope="session")
def reference_model(
    request: pytest.FixtureRequest, parity_target: ParityTarget, checkpoint: Any
) -> Iterator[GPT | torch.nn.Module]:
    """The implementation under test: the reference nanoGPT through GPT.from_pretrained, or --impl's model
    (built by its own __init__, weights loaded by our converter, see parity/impl.py)."""
    _deterministic(parity_target.device)
    if IMPL_KEY in request.config.stash:
        impl = request.config.stash[IMPL_KEY]
        model, _ = load_implementation(impl, checkpoint, parity_target.dtype, parity_target.device)
    else:
        model = load_reference(checkpoint, parity_target.dtype, parity_target.device)
    if parity_target.memory.share_weights:
        hf = request.getfixturevalue("hf_model")
        kept = share_parameters(model, hf, transposed=CONV1D_SUFFIXES)
        request.config.stash.setdefault(UNSHARED_KEY, {})[parity_target.name] = kept
    yield model
    del model


@pytest.fixture(scope="session")
def hf_model(parity_target: ParityTarget, checkpoint: Any) -> Iterator[Any]:
    """transformers' GPT2LMHeadModel with tie_word_embeddings=True, loaded through from_pretrained."""
    _deterministic(parity_target.device)
    model = load_hf(checkpoint, parity_target.dtype, parity_target.device, tie_word_embeddings=True)
    yield model
    del model


@pytest.fixture(scope="session")
def gradient_run(parity_target: ParityTarget, reference_model: Any, hf_model: Any) -> GradientRun:
    """One forward + backward of both models on the gradient batch, read by four checks.

    The multi-sequence logits, the loss, the gradients and the tied-gradient decomposition all need the
    same pass (at gpt2-xl on a CPU ~10 s per model); the run keeps a copy of the reference's tied gradient
    for the decomposition, which takes it. Both models are left without gradients.
    """
    idx, targets = (t.to(parity_target.device) for t in gradient_batch(parity_target.config))
    vocab = parity_target.config.output_vocab_size
    reference_model.zero_grad(set_to_none=True)
    hf_model.zero_grad(set_to_none=True)
    try:
        return run_gradients(reference_model, hf_model, idx, targets, vocab, keep_tied_gradient=True)
    finally:
        reference_model.zero_grad(set_to_none=True)
        hf_model.zero_grad(set_to_none=True)


@pytest.fixture(autouse=True)
def release_memory_after_test() -> Iterator[None]:
    """Hand freed memory back to the OS after each test, so the next test's peak starts from the models."""
    yield
    release_free_memory()


@pytest.fixture(scope="session")
def parity_report(request: pytest.FixtureRequest) -> ParityReport:
    """The run's JSON report collector (written only with --parity-report)."""
    return request.config.stash[REPORT_KEY]


@pytest.fixture
def clean_grads(reference_model: GPT, hf_model: Any) -> Iterator[None]:
    """Both models start and end a test without gradients (they are shared across tests)."""
    reference_model.zero_grad(set_to_none=True)
    hf_model.zero_grad(set_to_none=True)
    yield
    reference_model.zero_grad(set_to_none=True)
    hf_model.zero_grad(set_to_none=True)
