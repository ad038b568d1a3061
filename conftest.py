"""Shared pytest options and fixtures for the whole repository.

Command-line options are registered by small plugin modules that live next to the code they configure
(the parity harness and the benchmarks), loaded here so that `pytest parity/ --model ...` and
`pytest benchmarks/ ...` work from the repository root; `parity.subject.progress` routes progress lines of
long phases past output capture. Installed, the package registers no pytest11 entry point: these plugins
load only here and in the `nanogpt-parity` command, never in a user's own pytest runs. This file adds the
global-state guard that every test gets: torch's default dtype, RNG states, thread count,
deterministic-algorithm flags and TF32 flags are restored after each test, so tests stay independent of
order.
"""

from __future__ import annotations

import random
from collections.abc import Iterator

import numpy as np
import pytest
import torch

from parity.frontends.cli import PLUGINS

# The installed `nanogpt-parity` command's plugins, and the benchmarks' options and reports (a checkout only:
# the command never imports benchmarks).
pytest_plugins = [*PLUGINS, "benchmarks.plugin"]


@pytest.fixture(autouse=True)
def restore_torch_global_state() -> Iterator[None]:
    """Snapshot and restore process-wide torch/numpy/random state around every test."""
    dtype = torch.get_default_dtype()
    threads = torch.get_num_threads()
    deterministic = torch.are_deterministic_algorithms_enabled()
    deterministic_warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    grad_enabled = torch.is_grad_enabled()
    cpu_rng = torch.get_rng_state()
    np_rng = np.random.get_state()
    py_rng = random.getstate()
    tf32 = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    cuda_rng = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
    try:
        yield
    finally:
        torch.set_default_dtype(dtype)
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(deterministic, warn_only=deterministic_warn_only)
        torch.set_grad_enabled(grad_enabled)
        torch.set_rng_state(cpu_rng)
        np.random.set_state(np_rng)
        random.setstate(py_rng)
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32
        if cuda_rng is not None:
            torch.cuda.set_rng_state_all(cuda_rng)
