"""pytest plugin for device requirements: the `gpu` marker and `--require-gpu`.

A test marked `@pytest.mark.gpu` needs CUDA. On a machine without it the test is skipped with a reason
that says so, unless `--require-gpu` is given: then it fails, so a misconfigured GPU CI runner (no driver,
CPU-only torch) cannot pass by skipping everything. Loaded from the root conftest.py.
"""

from __future__ import annotations

import pytest
import torch


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("nanogpt-parity devices")
    group.addoption(
        "--require-gpu",
        action="store_true",
        default=False,
        help="fail, instead of skip, tests marked gpu when CUDA is not available (for GPU CI runners)",
    )


def cuda_unavailable_reason() -> str | None:
    """Why CUDA cannot be used here, or None when it can."""
    if not torch.cuda.is_available():
        build = (
            "a CPU-only torch build"
            if torch.version.cuda is None
            else f"torch built for CUDA {torch.version.cuda}"
        )
        return f"needs a CUDA device; none is available ({build}, torch {torch.__version__})"
    return None


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("gpu") is None:
        return
    reason = cuda_unavailable_reason()
    if reason is None:
        return
    if item.config.getoption("--require-gpu"):
        pytest.fail(f"--require-gpu: {reason}", pytrace=False)
    pytest.skip(reason)
