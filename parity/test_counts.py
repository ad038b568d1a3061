"""Check 4: the tied matrix is counted once: parameters, optimizer state, checkpoint bytes, memory."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from nanogpt.model import GPT2_SIZES
from parity.checks import optimizer_membership_problem, parameter_count_problem, untied_twin
from parity.goldens import TOTAL_PARAMS, expected_total_params
from parity.impl import ImplementationError
from parity.tie import EMBEDDING, HEAD, get_tensor, unique_parameter_bytes, unique_storage_bytes


class _ByteCounter:
    """A write-only file that counts bytes: measures a checkpoint's size without writing it to disk."""

    def __init__(self) -> None:
        self.n = 0

    def write(self, b: bytes) -> int:
        self.n += len(b)
        return len(b)

    def flush(self) -> None:
        pass


def test_parameter_counts_match_goldens_and_hf(
    parity_target: Any, reference_model: Any, hf_model: Any
) -> None:
    golden = TOTAL_PARAMS.get(parity_target.name) if parity_target.name in GPT2_SIZES else None
    golden = golden if golden is not None else expected_total_params(parity_target.config)
    problem = parameter_count_problem(reference_model, hf_model, golden)
    assert problem is None, problem


def test_optimizer_holds_tied_tensor_once(reference_model: Any) -> None:
    try:
        opt = reference_model.configure_optimizers(
            weight_decay=0.1, learning_rate=1e-4, betas=(0.9, 0.95), device_type="cpu"
        )
    except ImplementationError as e:  # --impl code without configure_optimizers: nothing to check
        pytest.skip(f"cannot test: {e}")
    problem = optimizer_membership_problem(opt, reference_model)
    assert problem is None, problem
    tied = get_tensor(reference_model, EMBEDDING)
    holders = sum(1 for g in opt.param_groups for p in g["params"] if p is tied)
    assert holders == 1, (
        f"the tied tensor is held {holders} times by the optimizer; AdamW would keep {holders} states"
    )


def test_checkpoint_stores_tied_tensor_once(reference_model: Any) -> None:
    state = reference_model.state_dict()
    param_bytes = unique_parameter_bytes(reference_model)
    emb = get_tensor(reference_model, EMBEDDING)
    tied_bytes = emb.numel() * emb.element_size()
    # torch.save writes each storage once, whole: the checkpoint holds these bytes of tensor data.
    stored = unique_storage_bytes(state.values())
    assert stored >= param_bytes, (
        f"state_dict holds {stored:,} bytes of tensor storage for {param_bytes:,} bytes of parameters"
    )
    # The head's entry must cost only its pickle record (a few hundred bytes), not a second copy of the matrix.
    # Measured on the two entries alone: serializing all of gpt2-xl's state dict twice took 5 s, and the
    # sharing (or not) is decided between these two tensors. (Comparing the file with the unique parameter
    # bytes instead mistakes torch.save's per-tensor overhead for a copy when the model is tiny.)
    pair, alone = _ByteCounter(), _ByteCounter()
    torch.save({k: state[k] for k in (EMBEDDING, HEAD) if k in state}, pair)
    torch.save({EMBEDDING: state[EMBEDDING]}, alone)
    head_entry = pair.n - alone.n
    assert head_entry < tied_bytes // 2, (
        f"the lm_head.weight entry adds {head_entry:,} bytes to the state_dict checkpoint: the {tied_bytes:,}-byte "
        "tied matrix is stored twice"
    )


def test_tied_model_occupies_one_matrix_less_than_untied(reference_model: Any) -> None:
    tied_bytes = unique_parameter_bytes(reference_model)
    emb = get_tensor(reference_model, EMBEDDING)
    with untied_twin(reference_model) as twin:
        untied_bytes = unique_parameter_bytes(twin)
    assert untied_bytes - tied_bytes == emb.numel() * emb.element_size()
