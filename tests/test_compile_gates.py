"""Unit tests of benchmarks/compile_gates.py: the tied-weight patterns and the warning capture.

No torch.compile here (the compiled runs live in benchmarks/): these pin what the gate flags and what
it lets through, and that capturing leaves the logging and warnings machinery as it found it.
"""

from __future__ import annotations

import logging
import warnings

import pytest
import torch

from benchmarks.compile_gates import (
    TIED_WEIGHT_PATTERNS,
    CapturedWarning,
    capture_compile_warnings,
    summarize_warnings,
    tied_weight_warnings,
)


def warning(message: str) -> CapturedWarning:
    return CapturedWarning("warnings", "UserWarning", message, "here:1")


FLAGGED = [
    # The historical nanoGPT warning (torch 2.0's stateless functional_call).
    "functional_call was passed multiple values for tied weights. This behavior is deprecated and will be "
    "an error in future versions",
    # Today's torch.nn.utils.stateless error text, should it ever be downgraded to a warning.
    "functional_call got multiple values for keys ['lm_head.weight', 'transformer.wte.weight'], which are "
    "tied. Consider using tie_weights=False",
    "The tied weights mapping and config for this model specifies to tie lm_head.weight",
    "lm_head.weight was untied from transformer.wte.weight",
    "Tying weights is not supported with tensor parallelism",
    "tie_word_embeddings=True but the checkpoint has separate weights",
    "Found shared parameters across submodules",
    "The weight is shared between two modules",
    "optimizer contains a parameter group with duplicate parameters; in future, this will cause an error",
    "Parameter transformer.wte.weight appears more than once in the state dict",
]

NOT_FLAGGED = [
    "TensorFloat32 tensor cores for float32 matrix multiplication available but not enabled",
    "torch._dynamo hit config.recompile_limit (8)",
    "Not enough SMs to use max_autotune_gemm mode",
    "using too much shared memory for this kernel",
    "Converting a tensor with requires_grad=True to a scalar may lead to unexpected behavior",
    "`torch.jit.script_method` is deprecated. Please switch to `torch.compile` or `torch.export`.",
    "duplicate guard entries were merged",
    "The attention mask is not set; this may give unexpected results",
]


@pytest.mark.parametrize("message", FLAGGED)
def test_patterns_flag_tied_shared_and_duplicate_parameter_warnings(message: str) -> None:
    assert tied_weight_warnings([warning(message)]) == [warning(message)]


@pytest.mark.parametrize("message", NOT_FLAGGED)
def test_patterns_let_unrelated_warnings_through(message: str) -> None:
    assert tied_weight_warnings([warning(message)]) == []


def test_every_pattern_has_a_reason_and_flags_something() -> None:
    import re

    for regex, why in TIED_WEIGHT_PATTERNS:
        assert why.strip(), f"pattern {regex!r} has no documented reason"
        assert any(re.search(regex, m, re.IGNORECASE) for m in FLAGGED), f"no example flagged by {regex!r}"


def test_capture_records_a_genuine_torch_duplicate_parameter_warning() -> None:
    p = torch.nn.Parameter(torch.zeros(2))
    with capture_compile_warnings() as captured:
        torch.optim.SGD([p, p], lr=0.1)  # the same Parameter twice: torch warns about duplicates
    assert len(tied_weight_warnings(captured)) == 1, captured


def test_capture_sees_non_propagating_torch_loggers_once() -> None:
    dynamo_logger = logging.getLogger("torch._dynamo")
    assert not dynamo_logger.propagate  # why a handler on "torch" alone would miss it
    with capture_compile_warnings() as captured:
        dynamo_logger.warning("from dynamo")
        logging.getLogger("torch.nn.some_module").warning("from a propagating child")
        logging.getLogger("transformers.modeling_utils").warning("from transformers")
        logging.getLogger("torch._dynamo").info("below WARNING: not recorded")
    assert sorted((w.source, w.message) for w in captured) == [
        ("torch._dynamo", "from dynamo"),
        ("torch.nn.some_module", "from a propagating child"),
        ("transformers.modeling_utils", "from transformers"),
    ]


def test_capture_records_python_warnings_already_shown_once() -> None:
    def warn() -> None:
        warnings.warn("shown once by default", UserWarning, stacklevel=1)

    with warnings.catch_warnings():
        warnings.simplefilter("once")
        warn()  # now in the "once" registry for this location
        with capture_compile_warnings() as captured:
            warn()
    assert [(w.source, w.kind, w.message) for w in captured] == [
        ("warnings", "UserWarning", "shown once by default")
    ]


def test_capture_restores_logging_state_even_on_error() -> None:
    torch_logger = logging.getLogger("torch")
    handlers = list(torch_logger.handlers)
    dynamo_handlers = list(logging.getLogger("torch._dynamo").handlers)
    level = torch_logger.level
    torch_logger.setLevel(logging.ERROR)  # a quiet configuration the capture must lower, then restore
    try:
        with pytest.raises(RuntimeError), capture_compile_warnings() as captured:
            logging.getLogger("torch.nn").warning("recorded despite the ERROR level")
            warnings.warn("a Python warning before the error", UserWarning, stacklevel=1)
            raise RuntimeError("boom")
        assert sorted(w.message for w in captured) == [
            "a Python warning before the error",
            "recorded despite the ERROR level",
        ]
        assert torch_logger.level == logging.ERROR
    finally:
        torch_logger.setLevel(level)
    assert torch_logger.handlers == handlers
    assert logging.getLogger("torch._dynamo").handlers == dynamo_handlers


def test_summary_counts_repeats_in_first_seen_order() -> None:
    captured = [warning("b"), warning("a"), warning("b")]
    assert summarize_warnings(captured) == [f"{warning('b')} (x2)", str(warning("a"))]
