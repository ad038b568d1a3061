"""The report channel: every verdict, failures included, reaches the JSON report, the verdict table and the
GitHub step summary; the report is strict JSON."""

from __future__ import annotations

import json
import math
from importlib import metadata
from pathlib import Path

import pytest
import tomllib
from front_ends import run_pytest_parity
from mutants import CONFIGS, ENTRIES, implementation_file

import nanogpt.model
from parity.core.verdicts import Status, Verdict
from parity.frontends import bisect, report
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
    failures, table = text.split("parity verdicts")
    assert "first divergence at transformer.h.0.mlp" in failures, "the failed test's report says why"
    assert [line.split() for line in table.splitlines() if line.startswith("logits ")] == [["logits", "FAIL"]]
    markdown = summary.read_text()
    assert "| logits | FAIL |" in markdown and "| param-count | PASS |" in markdown, markdown


def test_a_verdict_carries_its_wall_time_and_from_json_stays_strict() -> None:
    verdict = Verdict("loss", Status.PASS, "ok", seconds=0.25)
    assert Verdict.from_json(json.loads(json.dumps(verdict.to_json()))).seconds == 0.25
    old = {k: v for k, v in verdict.to_json().items() if k != "seconds"}
    assert Verdict.from_json(old).seconds is None, "a verdict without a wall time is still one"
    for bad in ("1", -1.0, math.inf, True):
        with pytest.raises(ValueError, match="wall time"):
            Verdict.from_json(dict(verdict.to_json(), seconds=bad))
    with pytest.raises(ValueError, match="not a verdict"):
        Verdict.from_json(dict(verdict.to_json(), minutes=1.0))


def test_the_report_names_implementation_version_schema_and_timings_of_each_check(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The bisect command's report on the child's verdicts; pytest parity/ writes the same fields."""
    monkeypatch.setenv("NANOGPT_PARITY_CACHE", str(tmp_path / "cache"))
    impl = str(Path(nanogpt.model.__file__))
    for name, args in (("reference", []), (impl, ["--impl", impl])):
        out = tmp_path / "report.json"
        assert bisect.run([*args, "--checks", "param-count,loss", "--parity-report", str(out)]) == 0
        data = strict_load(out)
        assert data["schema_version"] == report.SCHEMA_VERSION == 1
        environment = data["environment"]
        assert environment["implementation"] == name and environment["package_version"] == "0.1.0"
        model = environment["models"][0]["name"]
        timed = {k: v for k, v in data["timing"].items() if k.startswith(f"{model}: check ")}
        assert set(timed) == {f"{model}: check param-count (s)", f"{model}: check loss (s)"}, data["timing"]
        assert all(0 <= s < 60 and round(s, 3) == s for s in timed.values()), timed
        assert all("seconds" not in c for c in data["checks"]), "verdicts stay free of timings (diffable)"


def test_the_package_version_falls_back_to_pyproject(monkeypatch: pytest.MonkeyPatch) -> None:
    def not_installed(name: str) -> str:
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(report.metadata, "version", not_installed)
    assert report.package_version() == tomllib.loads(report.PYPROJECT.read_text())["project"]["version"]


@pytest.mark.parametrize("profiles", [True, False])
def test_logits_profiles_are_computed_only_for_a_report(profiles: bool) -> None:
    """The per-module profiles (two hooked forwards of both models) go only into a report: a front end that
    writes none asks for none, and the verdict is the same."""
    from parity.checks.check import run_check
    from parity.checks.registry import CHECKS
    from parity.foreign.impl import reference_implementation
    from parity.subject.subject import Subject

    target = bisect.resolve_model("small", "cpu", None)
    subject = Subject(reference_implementation(), target, profiles=profiles)
    verdict = run_check(CHECKS["logits"], subject)
    assert verdict.status is Status.PASS, verdict.reason
    assert [p["comparison"] for p in verdict.profiles] == (["logits[gradient batch]"] if profiles else [])
