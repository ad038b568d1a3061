"""What `pytest parity/` prints for a failing implementation: each failure's text once, no Hugging Face bars.

A FAIL's verdict line is printed once, in the failed test's report (the verdict table at the end shows
statuses only); its details only with -v. transformers' own progress bars ("Loading weights") stay off on
every path, so they never fill a failed test's captured stderr: the tested code in a child process (the
parent loads Hugging Face's model for its witness) and in pytest's own process (--in-process). Each run is
a fresh interpreter, so no earlier test of this session has silenced the bars already.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from bisect_fixtures.variants import write_model
from front_ends import REPO_ROOT, pytest_parity_argv

TIMEOUT = 300
# Distinctive parts of two FAIL verdict lines of the exact-GELU model, and of the grads check's details.
ARCHITECTURE = "computes the exact GELU, not GPT-2's tanh approximation"
TRAIN_STEPS = "the loss of step 1 differs"
GRADS_DETAILS = "likely cause: the forward pass already differs upstream"


def _run(tmp_path: Path, *extra: str) -> str:
    impl = write_model(tmp_path, "exact-gelu")
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    env.pop("PYTEST_ADDOPTS", None)
    argv = pytest_parity_argv(impl, Path("small"), "-p", "no:randomly", *extra)
    out = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=TIMEOUT)
    assert out.returncode == pytest.ExitCode.TESTS_FAILED, out.stdout[-3000:] + out.stderr[-3000:]
    return out.stdout + out.stderr


@pytest.mark.parametrize("where", ["child", "in-process"])
def test_each_failure_prints_once_without_progress_bars(where: str, tmp_path: Path) -> None:
    text = _run(
        tmp_path, "-k", "architecture or grads or train-steps", *(["--in-process"] * (where != "child"))
    )
    assert "Loading weights" not in text and "it/s]" not in text, text[-3000:]
    assert text.count(ARCHITECTURE) == 1 and text.count(TRAIN_STEPS) == 1, text[-3000:]
    assert GRADS_DETAILS not in text and "(-v shows the details)" in text, "details only with -v"
    table = text.split("parity verdicts")[1]
    assert "architecture" in table and "FAIL" in table and ARCHITECTURE not in table


def test_verbose_adds_the_details_once(tmp_path: Path) -> None:
    text = _run(tmp_path, "-k", "grads and not tied", "-vv")  # -vv: one level above the argv's -q
    assert text.count(GRADS_DETAILS) == 1, text[-3000:]
