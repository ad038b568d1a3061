"""The report channel: every verdict, failures included, reaches the JSON report, the verdict table and the
GitHub step summary; the report is strict JSON."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from front_ends import run_pytest_parity
from mutants import CONFIGS, ENTRIES, implementation_file

from parity.frontends.report import strict_json
from parity.subject.synthetic import write_synthetic_checkpoint

pytestmark = pytest.mark.usefixtures("one_thread")
pytest_plugins = ["pytester"]


def _reject_constant(name: str) -> None:
    raise ValueError(f"non-standard JSON constant {name}")


def strict_load(path: Path) -> dict:
    """json.load that refuses NaN and Infinity, as strict parsers (JavaScript's JSON.parse, jq) do."""
    return json.loads(path.read_text(), parse_constant=_reject_constant)


def test_non_finite_numbers_become_strings() -> None:
    value = {"a": [math.nan, math.inf, -math.inf, 1.5], "b": {"c": (math.nan,)}}
    assert strict_json(value) == {"a": ["nan", "inf", "-inf", 1.5], "b": {"c": ["nan"]}}
    json.dumps(strict_json(value), allow_nan=False)  # raises if anything non-finite is left


def test_failing_run_reports_the_failed_check_its_cause_records_and_profile(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, pytester: pytest.Pytester
) -> None:
    """pytest parity/ on an exact-GELU implementation: the report, the table and the GitHub summary say so."""
    checkpoint = write_synthetic_checkpoint(tmp_path / "tiny", CONFIGS["tiny"])
    impl = implementation_file(ENTRIES["exact-gelu"], tmp_path)
    report, summary = tmp_path / "r.json", tmp_path / "summary.md"
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(summary))
    # In-process: this test detects a harness mutant (tests/harness_mutants.py), patched into this process;
    # a child process would run the harness unpatched.
    only = ("-k", "logits or loss or param-count")
    code, text, _ = run_pytest_parity(pytester, impl, checkpoint, report, *only)
    assert code == pytest.ExitCode.TESTS_FAILED, text[-3000:]
    data = strict_load(report)
    checks = {c["check"]: c for c in data["checks"]}
    assert (
        checks["logits"]["status"] == "FAIL"
        and "first divergence at transformer.h.0.mlp" in checks["logits"]["reason"]
    )
    assert (
        checks["loss"]["status"] == "FAIL" and "h.0.mlp" in checks["loss"]["reason"]
    )  # the loss names the cause
    assert checks["param-count"]["status"] == "PASS"
    failed = [r for r in data["records"] if r["check"] == "logits" and not r["passed"]]
    assert failed and failed[0]["mismatched"] > 0, "the failing comparison's record is missing"
    profile = data["profiles"][0]
    rel = dict(zip(profile["modules"], profile["relative_difference"], strict=True))
    assert rel["transformer.h.0.attn"] < profile["noise"] < rel["transformer.h.0.mlp"], rel
    assert "parity verdicts" in text and "tiny: FAIL logits: first divergence at transformer.h.0.mlp" in text
    markdown = summary.read_text()
    assert "| logits | FAIL |" in markdown and "| param-count | PASS |" in markdown, markdown
