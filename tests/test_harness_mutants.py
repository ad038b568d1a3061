"""Each harness mutant (tests/harness_mutants.py) is caught: with the harness weakened, its detector fails.

A detector is either a catalog entry (tests/mutants.py), run through `pytest parity/ --impl` in-process
and judged as tests/test_mutants.py judges it, or a test of ours. Unpatched, every detector passes (the
catalog's and the report's own tests); patched, it must fail. The kill rate is printed at the end of the
run ("harness mutant kill rate: N/N (100%)").
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import test_chunked_comparison
import test_report
import torch
from front_ends import via_pytest
from harness_mutants import HARNESS_MUTANTS, HarnessMutant
from mutants import CONFIGS, ENTRIES, implementation_file
from test_mutants import assert_killed, killed_by

from parity.subject.batches import BATCH_KINDS, token_batch
from parity.subject.synthetic import write_synthetic_checkpoint

pytestmark = pytest.mark.usefixtures("one_thread")
pytest_plugins = ["pytester"]


def test_batches_cover_the_vocabulary() -> None:
    """The random batches hold many distinct tokens and sequences (a constant batch hides token bugs)."""
    config = CONFIGS["tiny"]
    for kind in BATCH_KINDS:
        idx = token_batch(kind, config)
        if idx.numel() >= 16:
            assert idx.unique().numel() >= min(config.vocab_size, idx.numel()) // 4, (
                f"{kind}: {idx.unique().numel()} distinct tokens"
            )
        if idx.size(0) > 1:
            assert not torch.equal(idx[0], idx[1]), f"{kind}: its sequences are identical"


def run_detector(name: str, tmp_path: Path, pytester: pytest.Pytester) -> None:
    """Run a detector; AssertionError when it catches something wrong."""
    if name == "test_batches_cover_the_vocabulary":
        test_batches_cover_the_vocabulary()
    elif name == "test_systematic_difference_fails_by_its_norm":
        for dtype in (torch.float32, torch.float64):
            test_chunked_comparison.test_systematic_difference_under_the_elementwise_bound_fails_by_its_norm(
                dtype
            )
    elif name == "test_failing_run_reports_the_failed_check":
        with pytest.MonkeyPatch.context() as mp:
            test_report.test_failing_run_reports_the_failed_check_its_cause_records_and_profile(
                tmp_path, mp, pytester
            )
    else:
        entry = ENTRIES[name]
        checkpoint = write_synthetic_checkpoint(tmp_path / entry.config, CONFIGS[entry.config])
        impl = implementation_file(entry, tmp_path)
        assert_killed(entry, killed_by(via_pytest(pytester, impl, checkpoint, tmp_path)))


@pytest.mark.parametrize("mutant", HARNESS_MUTANTS, ids=[m.name for m in HARNESS_MUTANTS])
def test_harness_mutant_is_caught(
    mutant: HarnessMutant, tmp_path: Path, pytester: pytest.Pytester, record_property: Any
) -> None:
    record_property("harness_mutant", mutant.name)
    caught = False
    with mutant.patch():
        try:
            run_detector(mutant.detector, tmp_path, pytester)
        except AssertionError:
            caught = True
    record_property("harness_mutant_caught", caught)
    assert caught, (
        f"harness mutant {mutant.name} ({mutant.doc}) went unnoticed: {mutant.detector} still passes"
    )


def test_every_detector_passes_on_the_real_harness(tmp_path: Path, pytester: pytest.Pytester) -> None:
    """Unpatched, the detectors pass: a harness mutant is caught by its weakness, not by a broken detector."""
    for i, name in enumerate(sorted({m.detector for m in HARNESS_MUTANTS})):
        run_detector(name, tmp_path / str(i), pytester)
