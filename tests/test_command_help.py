"""Both commands' help and usage lines name the command; `nanogpt-parity --help` lists its own options first.

`nanogpt-parity` is pytest run on the installed suite: its help is the harness's options under the
command's own usage line, then pytest's, whose usage line names the command too (pytest.main's own says
`pytest.main()`). pytest's cache can be turned off with `-p no:cacheprovider` without a warning about the
`cache_dir` the command would otherwise set, even under `--strict-config`.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from parity.frontends.bisect import build_parser
from parity.frontends.options import PYTEST, options_of

REPO = Path(__file__).resolve().parents[1]
TIMEOUT = 300


def _command(module: str, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO), "COLUMNS": "100"}
    env.pop("PYTEST_ADDOPTS", None)
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )


def test_the_harness_options_come_first_under_the_commands_own_usage_line(tmp_path: Path) -> None:
    out = _command("parity.frontends.cli", "--help", cwd=tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].startswith("usage: nanogpt-parity [options]"), lines[0]
    usages = [line for line in lines if line.startswith("usage:")]
    assert len(usages) == 2 and all(u.startswith("usage: nanogpt-parity ") for u in usages), usages
    assert "pytest.main()" not in out.stdout
    pytest_part = lines.index("pytest's own options, passed through to pytest:")
    own, theirs = "\n".join(lines[:pytest_part]), "\n".join(lines[pytest_part:])
    for option in options_of(PYTEST):
        flag = option.flags[-1]
        assert f"  {flag}" in own, f"{flag} is not among the harness's options"
        assert f"{flag}=" not in theirs and f"  {flag} " not in theirs, f"{flag} is listed twice"
    assert "-k EXPRESSION" in theirs and "-k EXPRESSION" not in own, "pytest's options follow"


def test_the_bisect_commands_usage_names_the_installed_command(capsys: pytest.CaptureFixture[str]) -> None:
    parser = build_parser()
    assert parser.format_usage().startswith("usage: nanogpt-parity-bisect ")
    with pytest.raises(SystemExit):
        parser.parse_args(["--no-such-option"])
    err = capsys.readouterr().err
    assert err.startswith("usage: nanogpt-parity-bisect ") and "nanogpt-parity-bisect: error:" in err, err
    assert "python -m" not in err


def test_no_cacheprovider_needs_no_cache_dir_and_passes_strict_config(tmp_path: Path) -> None:
    out = _command(
        "parity.frontends.cli",
        *(
            "-p",
            "no:cacheprovider",
            "--strict-config",
            "-W",
            "error",
            "--model",
            "small",
            "-k",
            "param-count",
        ),
        cwd=tmp_path,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "cache_dir" not in out.stdout + out.stderr and "1 passed" in out.stdout
    assert list(tmp_path.iterdir()) == [], "nothing written where the command runs"
