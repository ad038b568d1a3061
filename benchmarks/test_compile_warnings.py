"""The warning gate: compiling and training a tied model must not warn about tied or shared parameters.

The compiled runs come from the session fixture `compiled_case` (nanoGPT and HF GPT-2, inductor, a few
AdamW steps under `capture_compile_warnings`). Other warnings are listed in the terminal summary and the
JUnit properties without failing. The last tests show that the gate would fire: tiny tied models emit
the historical nanoGPT warning from a compiled forward and from a compile backend's log record.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from benchmarks.compile_gates import (
    TIED_WEIGHT_PATTERNS,
    CapturedWarning,
    run_compiled_training,
    summarize_warnings,
    tied_weight_warnings,
)
from benchmarks.conftest import CompiledCase, forward_with_targets
from benchmarks.plugin import report_compile_warnings

# The warning torch 2.0 printed when nanoGPT compiled its tied model.
HISTORICAL_WARNING = (
    "functional_call was passed multiple values for tied weights. This behavior is deprecated and will be "
    "an error in future versions"
)


def describe_flagged(flagged: list[CapturedWarning]) -> str:
    """A failure message: the flagged warnings, the pattern list, and what to check next."""
    patterns = "\n".join(f"  {regex}  ({why})" for regex, why in TIED_WEIGHT_PATTERNS)
    lines = "\n".join(f"  {w}" for w in flagged)
    return (
        f"{len(flagged)} tied/shared-parameter warning(s) during compiled training:\n{lines}\n"
        f"patterns (benchmarks/compile_gates.py TIED_WEIGHT_PATTERNS):\n{patterns}\n"
        "a compile that warns about tied weights may train the two uses of the matrix as separate "
        "tensors: check that lm_head.weight is transformer.wte.weight inside the compiled module, and "
        "that the gradient of the tied matrix matches eager (test_compile_numerics.py)"
    )


def test_compiled_training_emits_no_tied_weight_warnings(
    compiled_case: CompiledCase, request: pytest.FixtureRequest, record_property: Callable
) -> None:
    listed = summarize_warnings(compiled_case.run.warnings)
    report_compile_warnings(request.config, f"compiled {compiled_case.name} training", listed)
    record_property("compile_warnings", listed)
    flagged = tied_weight_warnings(compiled_case.run.warnings)
    assert not flagged, describe_flagged(flagged)


class TiedToy(nn.Module):
    """An embedding and an output head sharing one Parameter, like GPT-2; optionally warns in forward."""

    def __init__(self, message: str | None = None, vocab: int = 16, dim: int = 8) -> None:
        super().__init__()
        self.message = message
        self.wte = nn.Embedding(vocab, dim)
        self.lm_head = nn.Linear(dim, vocab, bias=False)
        self.lm_head.weight = self.wte.weight

    def forward(self, idx: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.message is not None:
            warnings.warn(self.message, stacklevel=2)  # dynamo traces warnings.warn without a graph break
        logits = self.lm_head(self.wte(idx))
        return logits, F.cross_entropy(logits.flatten(0, 1), targets.flatten())


def toy_optimizer(model: nn.Module) -> torch.optim.Optimizer:
    return torch.optim.SGD(model.parameters(), lr=0.1)


TOY_BATCH = (torch.arange(12).view(2, 6) % 16, torch.arange(1, 13).view(2, 6) % 16)


def aot_eager_logging(message: str) -> Callable:
    """A compile backend that logs `message` where torch 2.0 printed the historical warning, then runs."""
    from torch._dynamo.backends.registry import lookup_backend

    def backend(gm: torch.fx.GraphModule, example_inputs: list[torch.Tensor]) -> Callable:
        # A non-propagating torch logger: a handler on "torch" alone would never see this record.
        logging.getLogger("torch._functorch.aot_autograd").warning(message)
        return lookup_backend("aot_eager")(gm, example_inputs)

    return backend


def test_gate_catches_warning_from_compiled_forward() -> None:
    run = run_compiled_training(
        TiedToy(HISTORICAL_WARNING),
        TOY_BATCH,
        forward_with_targets,
        toy_optimizer,
        steps=2,
        backend="aot_eager",
    )
    flagged = tied_weight_warnings(run.warnings)
    assert [w.message for w in flagged] == [HISTORICAL_WARNING] * 2, run.warnings  # once per step
    assert all(w.source == "warnings" and w.kind == "UserWarning" for w in flagged)


def test_gate_catches_torch_log_record_at_compile_time() -> None:
    run = run_compiled_training(
        TiedToy(),
        TOY_BATCH,
        forward_with_targets,
        toy_optimizer,
        steps=2,
        backend=aot_eager_logging(HISTORICAL_WARNING),
    )
    flagged = tied_weight_warnings(run.warnings)
    # Logged once, when the backend compiled the graph; the second step reused it.
    assert [(w.source, w.message) for w in flagged] == [("torch._functorch.aot_autograd", HISTORICAL_WARNING)]


def test_gate_lists_unrelated_warnings_without_flagging_them() -> None:
    message = "TensorFloat32 tensor cores for float32 matrix multiplication available but not enabled"
    run = run_compiled_training(
        TiedToy(message), TOY_BATCH, forward_with_targets, toy_optimizer, steps=1, backend="aot_eager"
    )
    assert message in [w.message for w in run.warnings]  # listed...
    assert tied_weight_warnings(run.warnings) == []  # ...but not flagged
