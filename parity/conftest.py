"""Fixtures of the parity suite: the two loaded implementations per target, and the report.

Models are session-scoped per target (loading gpt2-xl twice would cost minutes and gigabytes); tests that
modify a model restore it before returning. Options live in parity/plugin.py.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import torch

from nanogpt.model import GPT
from parity.impl import load_implementation
from parity.loading import load_hf, load_reference
from parity.plugin import IMPL_KEY, REPORT_KEY
from parity.report import ParityReport
from parity.targets import ParityTarget


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
