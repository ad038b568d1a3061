"""Checking an implementation writes nothing into the user's repository, through both installed commands.

A scratch git repository holds a training script that imports a sibling module at import time (whose
bytecode Python would cache in `__pycache__/`), with a .gitignore as users have one; both commands run
from inside it. `git status --ignored --porcelain` must read the same before and after: no
`.pytest_cache/` (pytest's cache lives in the harness's cache directory), no `__pycache__/`.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from bisect_fixtures.corpus import script_importing

# The installed commands' entry points (pyproject.toml's [project.scripts]), run as `python -m`.
ENTRY = {"nanogpt-parity": "parity.frontends.cli", "nanogpt-parity-bisect": "parity.frontends.bisect"}
SCRIPT = script_importing(
    "from hellaswag import VOCAB_SIZE",
    config_edit=("vocab_size: int = 50257", "vocab_size: int = VOCAB_SIZE"),
)


def _git(repo: Path, *args: str) -> str:
    done = subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True, check=True)
    return done.stdout


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A git repository holding the implementation, committed, with a usual .gitignore."""
    repo = tmp_path / "user-repo"
    SCRIPT(repo)
    (repo / ".gitignore").write_text("__pycache__/\n*.pyc\n.pytest_cache/\n")
    _git(repo, "init", "-q")
    _git(repo, "add", ".")
    _git(repo, "-c", "user.name=u", "-c", "user.email=u@example.com", "commit", "-qm", "model")
    return repo


def _env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env.setdefault("NANOGPT_PARITY_CACHE", str(tmp_path / "cache"))
    return env


@pytest.mark.parametrize(
    "command",
    [
        ["nanogpt-parity", "--impl", "train_gpt2.py", "-q", "-k", "logits"],
        ["nanogpt-parity", "--impl", "train_gpt2.py", "-q", "-k", "logits", "-p", "no:cacheprovider"],
        ["nanogpt-parity-bisect", "--impl", "train_gpt2.py", "--checks", "logits"],
    ],
    ids=["nanogpt-parity", "nanogpt-parity-no-cacheprovider", "nanogpt-parity-bisect"],
)
def test_a_run_leaves_the_repository_as_it_was(command: list[str], repo: Path, tmp_path: Path) -> None:
    if command[0] == "nanogpt-parity":
        from parity.frontends.bisect import resolve_model

        command = [*command, "--model", str(resolve_model("small", "cpu", None).ensure_checkpoint())]
    before = _git(repo, "status", "--ignored", "--porcelain")
    done = subprocess.run(
        [sys.executable, "-m", ENTRY[command[0]], *command[1:]],
        cwd=repo,
        env=_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=600,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-3000:]
    assert "PASS" in output or "passed" in output, output[-3000:]
    assert "cache_dir" not in output, output[-3000:]  # no PytestConfigWarning about the option
    assert _git(repo, "status", "--ignored", "--porcelain") == before
    files = sorted(p.name for p in repo.iterdir())
    assert files == [".git", ".gitignore", "fineweb.py", "hellaswag.py", "train_gpt2.py"]
