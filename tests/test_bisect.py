"""The bisect command: exit codes for `git bisect run`, and a real bisection over a throwaway history.

The history is a sequence of commits of an upstream-style model.py (tests/bisect_fixtures/): no tie, the tie,
a commit that cannot be imported, the tie reversed, the tied matrix taken out of weight decay, and an exact
GELU that breaks Hugging Face parity. `git bisect run python -m parity.frontends.bisect ...` must name the
right commit for each question and skip the one it cannot test.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from bisect_fixtures.variants import write_model

from nanogpt.model import gpt2_config
from parity.core.errors import UsageError
from parity.core.exit_codes import EXIT_ABORT, EXIT_BAD, EXIT_GOOD, EXIT_SKIP, decide
from parity.core.verdicts import Status, Verdict
from parity.frontends import bisect
from parity.frontends.bisect import run
from parity.subject import memory

REPO_ROOT = Path(__file__).resolve().parents[1]

# (label, edits of the template, commit message), oldest first; each commit's model.py is complete.
HISTORY = [
    ("untied", ("untied",), "GPT-2 model"),
    ("tied", (), "Tie lm_head to the token embedding"),
    ("broken", ("import-error",), "Work in progress: new imports"),
    ("reversed", ("reverse-tie",), "Tie from the embedding side"),
    ("no-decay", ("reverse-tie", "tied-not-decayed"), "Do not weight-decay embeddings"),
    ("gelu", ("reverse-tie", "tied-not-decayed", "exact-gelu"), "Use PyTorch's default GELU"),
]
# (question, arguments of the bisect command, the label of the commit that answers it)
QUESTIONS = [
    ("which commit tied the head?", ["--checks", "tied-storage", "--expect", "tied-storage=fail"], "tied"),
    ("which commit stopped weight-decaying the tied matrix?", ["--checks", "decay-groups"], "no-decay"),
    ("which commit broke Hugging Face parity?", ["--checks", "logits"], "gelu"),
]


def _verdict(check: str, status: Status) -> Verdict:
    return Verdict(check, status, "reason")


@pytest.mark.parametrize(
    "statuses, expect, code",
    [
        ({"logits": Status.PASS, "grads": Status.PASS}, {}, EXIT_GOOD),
        ({"logits": Status.PASS, "grads": Status.FAIL}, {}, EXIT_BAD),
        ({"logits": Status.PASS, "grads": Status.CANNOT_TEST}, {}, EXIT_SKIP),
        # A known contradiction decides even when another check could not run.
        ({"logits": Status.FAIL, "grads": Status.CANNOT_TEST}, {}, EXIT_BAD),
        ({"tied-storage": Status.FAIL}, {"tied-storage": False}, EXIT_GOOD),
        ({"tied-storage": Status.PASS}, {"tied-storage": False}, EXIT_BAD),
    ],
)
def test_decide(statuses: dict[str, Status], expect: dict[str, bool], code: int) -> None:
    got, why = decide([_verdict(c, s) for c, s in statuses.items()], expect)
    assert got == code, why


def test_a_part_the_model_does_not_have_skips_only_when_its_check_was_named() -> None:
    verdicts = [
        _verdict("logits", Status.PASS),
        Verdict("own-count", Status.CANNOT_TEST, "has no get_num_params", applicable=False),
    ]
    assert decide(verdicts, {}) == (EXIT_GOOD, "good: logits PASS (not applicable: own-count)")
    assert decide(verdicts, {}, frozenset({"own-count"}))[0] == EXIT_SKIP
    assert decide(verdicts, {"own-count": True})[0] == EXIT_SKIP  # --expect names it too
    # Nothing judged at all is never good.
    assert decide(verdicts[1:], {})[0] == EXIT_SKIP
    # Code that could not run stays a skip whether or not it was named.
    crashed = [verdicts[0], _verdict("grads", Status.CANNOT_TEST)]
    assert decide(crashed, {})[0] == EXIT_SKIP


@pytest.mark.parametrize(
    "argv",
    [["--bogus"], ["--checks", "logits,nope"], ["--expect", "logits=maybe"], ["--tied-decay", "sometimes"]],
    ids=["unknown-option", "unknown-check", "bad-expect", "bad-choice"],
)
def test_usage_errors_abort_the_bisection(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    """A mistake in the command is never "bad" (1) or argparse's 2, which git would also read as bad."""
    try:
        code = run(argv)
    except SystemExit as e:  # argparse's own errors
        code = e.code
    assert code == EXIT_ABORT and code > 127
    assert "error" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("checks", "needs"),
    [
        ("logits,grads", "checking logits, grads needs about"),
        ("train-steps", "checking train-steps needs about"),
    ],
)
def test_model_that_cannot_fit_aborts_with_the_estimate_before_any_checkpoint(
    checks: str,
    needs: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("NANOGPT_PARITY_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))  # no pretrained gpt2-xl: the synthetic one
    monkeypatch.delenv(memory.IGNORE_ENV_VAR, raising=False)
    # The parity suite's plan: at gpt2-xl the weights are shared and train-steps runs on the narrow twin.
    plan = memory.plan_memory(gpt2_config("gpt2-xl"), torch.float32)
    monkeypatch.setattr(
        bisect, "available_memory", lambda: memory.Available(plan.estimated_peak_bytes - 1, "test")
    )
    code = run(["--model", "gpt2-xl", "--checks", checks])
    err = capsys.readouterr().err
    assert code == EXIT_ABORT, err
    assert needs in err and "error: --model gpt2-xl:" in err, err
    assert "shared weight storage" in err and not (tmp_path / "cache").exists()
    # Enough memory, or the override: the check lets the run go on.
    monkeypatch.setattr(
        bisect, "available_memory", lambda: memory.Available(plan.estimated_peak_bytes, "test")
    )
    bisect.check_memory(bisect.resolve_model("gpt2-xl", "cpu", None), checks.split(","))
    monkeypatch.setattr(bisect, "available_memory", lambda: memory.Available(0, "test"))
    monkeypatch.setenv(memory.IGNORE_ENV_VAR, "1")
    bisect.check_memory(bisect.resolve_model("gpt2-xl", "cpu", None), checks.split(","))


def test_unknown_model_aborts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("NANOGPT_PARITY_CACHE", str(tmp_path))
    assert run(["--model", str(tmp_path / "no-such-checkpoint")]) == EXIT_ABORT
    assert "--model" in capsys.readouterr().err


@pytest.mark.parametrize("model", ["nosuch", "all"])
def test_rejected_model_lists_exactly_the_accepted_choices(
    model: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(["--model", model]) == EXIT_ABORT
    err = capsys.readouterr().err
    choices = err.split("choose one of ")[1].split(" or a path")[0].strip().split(", ")
    assert choices == ["small", "gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl"], err


def test_small_means_the_same_model_in_both_front_ends() -> None:
    from parity.subject.targets import SMALL_CONFIG, resolve_targets

    (pytest_target,) = resolve_targets("small", "auto", "cpu", None)
    bisect_target = bisect.resolve_model("small", "cpu", None)
    assert pytest_target == bisect_target and pytest_target.config == SMALL_CONFIG
    assert pytest_target.weights == "synthetic" and pytest_target.config.n_layer == 2
    with pytest.raises(UsageError, match="no pretrained weights"):
        resolve_targets("small", "pretrained", "cpu", None)


def test_untestable_commit_is_skipped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("NANOGPT_PARITY_CACHE", str(tmp_path / "cache"))
    broken = write_model(tmp_path, "import-error")
    assert run(["--impl", str(broken), "--checks", "tied-storage,logits"]) == EXIT_SKIP
    out = capsys.readouterr().out
    assert out.count("CANNOT-TEST") == 2 and "a_module_that_does_not_exist" in out
    assert run(["--impl", str(tmp_path / "absent.py"), "--checks", "tied-storage"]) == EXIT_SKIP


def test_expectations_select_and_decide(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("NANOGPT_PARITY_CACHE", str(tmp_path / "cache"))
    untied = str(write_model(tmp_path, "untied"))
    assert run(["--impl", untied, "--expect", "tied-storage=fail"]) == EXIT_GOOD
    out = capsys.readouterr().out
    assert re.search(r"^FAIL\s+tied-storage\s", out, re.M) and "logits" not in out  # --expect selects
    assert run(["--impl", untied, "--checks", "tied-storage", "-v"]) == EXIT_BAD
    assert "bad: tied-storage FAIL (expected PASS)" in capsys.readouterr().out


# (edits of the template, exit code, status of tied-storage): a good, a bad and an untestable commit
REPORTED = {
    "good": ((), EXIT_GOOD, "PASS"),
    "bad": (("untied",), EXIT_BAD, "FAIL"),
    "untestable": (("import-error",), EXIT_SKIP, "CANNOT-TEST"),
}


def test_the_report_holds_the_verdicts_of_a_good_a_bad_and_an_untestable_commit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """--parity-report writes pytest parity/'s schema whatever the exit code, the verdicts the lines print."""
    monkeypatch.setenv("NANOGPT_PARITY_CACHE", str(tmp_path / "cache"))
    target = bisect.resolve_model("small", "cpu", None)
    for name, (edits, code, tied_storage) in REPORTED.items():
        impl, report = write_model(tmp_path / name, *edits), tmp_path / f"{name}.json"
        argv = ["--impl", str(impl), "--checks", "tied-storage,logits", "--parity-report", str(report)]
        assert run(argv) == code, name
        out, data = capsys.readouterr().out, json.loads(report.read_text())
        keys = {"schema_version", "environment", "load", "checks", "records", "profiles", "timing"}
        assert set(data) == keys, name
        (model,) = data["environment"]["models"]
        assert model["name"] == target.name and model["weights"] == "synthetic", model
        statuses = {c["check"]: c["status"] for c in data["checks"]}
        logits = "CANNOT-TEST" if name == "untestable" else "PASS"
        assert statuses == {"tied-storage": tied_storage, "logits": logits}, name
        for c in data["checks"]:
            assert (
                c["model"] == target.name
                and c["reason"]
                and re.search(rf"^{c['status']}\s+{c['check']}\s+{re.escape(c['reason'])}$", out, re.M)
            ), f"{name}: {c} not printed:\n{out}"
        logits_records = [r for r in data["records"] if r["check"] == "logits"]
        assert bool(logits_records) == (name != "untestable"), data["records"]


def test_a_usage_error_writes_no_report(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("NANOGPT_PARITY_CACHE", str(tmp_path / "cache"))
    report = tmp_path / "report.json"
    # The path is checked while the command line is parsed, as pytest parity/ checks it.
    assert run(["--parity-report", str(tmp_path), "--model", str(tmp_path / "absent")]) == EXIT_ABORT
    assert f"error: --parity-report {tmp_path}: is a directory" in capsys.readouterr().err
    for argv in (["--checks", "logits,nope"], ["--model", str(tmp_path / "no-such-checkpoint")]):
        assert run([*argv, "--parity-report", str(report)]) == EXIT_ABORT, argv
        assert "error" in capsys.readouterr().err and not report.exists(), argv


def _git(repo: Path, env: dict[str, str], *args: str) -> str:
    done = subprocess.run(["git", *args], cwd=repo, env=env, capture_output=True, text=True)
    assert done.returncode == 0, f"git {' '.join(args)}: {done.stdout}{done.stderr}"
    return done.stdout


@pytest.fixture(scope="module")
def history(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str], dict[str, str]]:
    """(repository, environment, {label: commit}) of the throwaway history."""
    repo = tmp_path_factory.mktemp("history")
    env = dict(
        os.environ,
        GIT_CONFIG_NOSYSTEM="1",
        GIT_CONFIG_GLOBAL=os.devnull,
        NANOGPT_PARITY_CACHE=str(tmp_path_factory.mktemp("cache")),
        PYTHONDONTWRITEBYTECODE="1",
        PYTHONPATH=os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])),
    )
    _git(repo, env, "init", "-q", "-b", "main")
    _git(repo, env, "config", "user.name", "Bisect Test")
    _git(repo, env, "config", "user.email", "bisect-test@example.com")
    commits = {}
    for day, (label, edits, message) in enumerate(HISTORY, start=1):
        write_model(repo, *edits)
        _git(repo, env, "add", "model.py")
        date = f"2024-01-{day:02d}T12:00:00+00:00"  # fixed dates: the same hashes, the same bisection
        _git(
            repo, {**env, "GIT_AUTHOR_DATE": date, "GIT_COMMITTER_DATE": date}, "commit", "-q", "-m", message
        )
        commits[label] = _git(repo, env, "rev-parse", "HEAD").strip()
    return repo, env, commits


def test_git_bisect_run_answers_each_question(
    history: tuple[Path, dict[str, str], dict[str, str]], tmp_path: Path
) -> None:
    repo, env, commits = history
    label_of = {sha: label for label, sha in commits.items()}
    # One clone per question, bisected concurrently: each step is a fresh process (imports dominate it).
    env = dict(env, OMP_NUM_THREADS="1")
    runs = []
    for i, (_, args, _) in enumerate(QUESTIONS):
        clone = tmp_path / f"question{i}"
        _git(tmp_path, env, "clone", "-q", str(repo), str(clone))
        _git(clone, env, "bisect", "start", commits["gelu"], commits["untied"])
        command = [
            "git",
            "bisect",
            "run",
            sys.executable,
            "-m",
            "parity.frontends.bisect",
            "--impl",
            "model.py",
            *args,
        ]
        runs.append(
            (
                clone,
                subprocess.Popen(
                    command, cwd=clone, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
                ),
            )
        )
    skipped = False
    for (question, _, answer), (clone, proc) in zip(QUESTIONS, runs, strict=True):
        stdout, stderr = proc.communicate(timeout=600)
        log = _git(clone, env, "bisect", "log")
        found = re.search(r"^([0-9a-f]{40}) is the first bad commit", stdout, re.M)
        assert proc.returncode == 0 and found, f"{question}\n{stdout}\n{stderr}"
        assert label_of[found.group(1)] == answer, (
            f"{question} {label_of[found.group(1)]}, not {answer}\n{log}"
        )
        skipped |= f"git bisect skip {commits['broken']}" in log
    assert skipped, "no bisection tested the commit that cannot be imported"
