"""One registry, all front ends: `pytest parity/` and the bisect command list exactly the registry checks."""

from __future__ import annotations

import dataclasses
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from nanogpt.model import GPT2_SIZES
from parity.checks.architecture import ARCHITECTURE_CHECKS
from parity.checks.backward import BACKWARD_CHECKS
from parity.checks.counts import COUNT_CHECKS
from parity.checks.dropout import DROPOUT_CHECKS
from parity.checks.forward import FORWARD_CHECKS
from parity.checks.own_loader import OWN_LOADER_CHECKS
from parity.checks.registry import CHECK_NAMES, CHECKS, build_registry, run_checks
from parity.checks.training import TRAINING_CHECKS
from parity.core.verdicts import Status
from parity.foreign.impl import reference_implementation
from parity.frontends.bisect import SMALL_CONFIG, build_parser, parse_checks
from parity.subject.subject import Subject
from parity.subject.synthetic import ensure_synthetic_checkpoint
from parity.subject.targets import ParityTarget

ROOT = Path(__file__).resolve().parent.parent


def test_the_registry_refuses_a_duplicate_name() -> None:
    twin = dataclasses.replace(CHECKS["grads"], name="logits")
    with pytest.raises(ValueError, match="two checks are named 'logits'"):
        build_registry([CHECKS["logits"], CHECKS["loss"], twin])
    assert list(build_registry([CHECKS["loss"], CHECKS["logits"]])) == ["loss", "logits"]


def test_every_check_is_defined_once_with_its_meaning_and_needs() -> None:
    modules = (
        ARCHITECTURE_CHECKS,
        FORWARD_CHECKS,
        DROPOUT_CHECKS,
        BACKWARD_CHECKS,
        COUNT_CHECKS,
        TRAINING_CHECKS,
    )
    assert list(CHECKS.values()) == [c for checks in (*modules, OWN_LOADER_CHECKS) for c in checks]
    for name, check in CHECKS.items():
        assert check.name == name and re.fullmatch(r"[a-z]+(-[a-z]+)*", name), name
        assert check.meaning and check.needs and callable(check.run), name
    required = {
        "logits",
        "loss",
        "grads",
        "tied-gradient",
        "tied-storage",
        "param-count",
        "own-count",
        "optimizer-once",
        "checkpoint-once",
        "decay-groups",
        "train-steps",
        "init",
        "init-scheme",
        "inference",
        "dropout-sites",
    }
    assert required <= set(CHECK_NAMES), sorted(required - set(CHECK_NAMES))


def test_bisect_help_lists_exactly_the_registry() -> None:
    parser = build_parser()
    checks = next(a for a in parser._actions if "--checks" in a.option_strings)
    listed = re.findall(r"(?:^|\. |; )([a-z]+(?:-[a-z]+)*): ", checks.help)
    assert listed == list(CHECK_NAMES), listed
    assert parse_checks(",".join(CHECK_NAMES)) == list(CHECK_NAMES)
    assert parse_checks("all") == list(CHECK_NAMES)


def test_parity_collects_one_test_per_check_and_model() -> None:
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "parity/",
            "--co",
            "-q",
            "-p",
            "no:cacheprovider",
            "--model",
            "all",
            "--weights",
            "synthetic",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    ids = set(re.findall(r"test_check\[([^\]]+)\]", out.stdout))
    assert ids == {f"{size}-{check}" for size in GPT2_SIZES for check in CHECK_NAMES}, sorted(ids)[:10]


# Every dtype the CPU runs. float16 runs only on CUDA (refused on CPU: no fast kernels), so its tolerances
# stay reasoned, not measured, until a GPU run measures them. bfloat16 on CPU is slow (~200x float32 per
# matmul), but the bisect command's small model makes it seconds.
CPU_DTYPES = (torch.float64, torch.float32, torch.bfloat16)


@pytest.mark.parametrize("dtype", CPU_DTYPES, ids=lambda d: str(d).removeprefix("torch."))
def test_reference_passes_every_check_at_every_cpu_dtype(dtype: torch.dtype, tmp_path: Path) -> None:
    checkpoint, _ = ensure_synthetic_checkpoint(SMALL_CONFIG, "small", root=tmp_path)
    target = ParityTarget("small", SMALL_CONFIG, "synthetic", "test", "cpu", dtype, checkpoint=checkpoint)
    subject = Subject(reference_implementation(), target, reference_loader=True)
    verdicts = run_checks(list(CHECK_NAMES), subject)
    assert [v.check for v in verdicts] == list(CHECK_NAMES)
    bad = [v.line() for v in verdicts if v.status is not Status.PASS]
    assert not bad, "\n".join(bad)
