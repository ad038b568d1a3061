"""The installed package, used as a new user would: a built wheel in a fresh environment, run elsewhere.

The wheel is built from a copy of the sources (so nothing is written into the checkout) and installed
with --no-deps into a fresh virtual environment whose only link to this one is a .pth file naming this
environment's site-packages, for torch, transformers and pytest: seconds instead of a download. Then,
from a temporary directory outside any checkout: `nanogpt-parity` runs the suite on a tiny checkpoint
with `--impl` on a model file placed there (in a child process, started from the wheel too), and a user's
own conftest that defines `--model` still works under plain `pytest`, because installing registers no
pytest plugin. The wheel holds nanogpt and parity only: benchmarks/ and pytest-benchmark stay in a checkout.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import site
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from nanogpt.model import GPTConfig
from parity.subject.synthetic import write_synthetic_checkpoint

REPO = Path(__file__).resolve().parents[1]
# benchmarks/ is copied too, to prove the build leaves it out.
SOURCES = ("pyproject.toml", "README.md", "LICENSE", "nanogpt", "parity", "benchmarks")
# The smallest checkpoint every parity check runs on: the real vocabulary (the GPT-2 sentence goes
# through the real tokenizer) and blocks long enough for the 2 x 64-token gradient batch.
TINY = GPTConfig(block_size=128, vocab_size=50257, n_layer=2, n_head=2, n_embd=32)
# An implementation under test that leaves a trace when its definitions are loaded, so the run proves it
# used this file (a class body runs when defined; module-level statements would be left out as a script's).
# The trace goes where the sandbox's read-only view of the disk lets it write (the shared_dir fixture).
IMPL_TRACE = "\nclass _Trace:\n    import pathlib\n\n    pathlib.Path({marker!r}).touch()\n"
USER_CONFTEST = """
def pytest_addoption(parser):
    parser.addoption("--model", default="mine", help="the user's own option")
"""
USER_TEST = """
def test_my_model_option(request):
    assert request.config.getoption("--model") == "resnet"
"""
TIMEOUT = 900


def _run(cmd: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=TIMEOUT)


def _dependency_dirs() -> list[str]:
    """This environment's site-packages directories (where torch, transformers and pytest live)."""
    dirs = [*site.getsitepackages(), sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]]
    return sorted({d for d in dirs if Path(d).is_dir()})


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A fresh virtual environment with the wheel installed; returns its bin directory and a user dir."""
    tmp = tmp_path_factory.mktemp("installed")
    src = tmp / "src"
    src.mkdir()
    for name in SOURCES:
        path = REPO / name
        if path.is_dir():
            shutil.copytree(path, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(path, src / name)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTEST_ADDOPTS")}
    dist = tmp / "dist"
    built = _run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(dist),
            str(src),
        ],
        tmp,
        env,
    )
    assert built.returncode == 0, built.stdout + built.stderr
    (wheel,) = dist.glob("nanogpt_parity-*.whl")
    venv = tmp / "venv"
    made = _run([sys.executable, "-m", "venv", "--without-pip", str(venv)], tmp, env)
    assert made.returncode == 0, made.stderr
    python = venv / "bin" / "python"
    purelib = _run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], tmp, env)
    # A path line, not a nested site dir: this environment's own .pth files (an editable install of this
    # checkout among them) stay inactive there, so only the wheel provides nanogpt and parity.
    Path(purelib.stdout.strip(), "reuse-dependencies.pth").write_text("\n".join(_dependency_dirs()) + "\n")
    inst = _run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "-q", str(wheel)],
        tmp,
        env,
    )
    assert inst.returncode == 0, inst.stdout + inst.stderr
    user = tmp / "user-project"
    user.mkdir()
    purelib_dir = Path(purelib.stdout.strip())
    return {"bin": venv / "bin", "user": user, "purelib": purelib_dir, "tmp": tmp, "wheel": wheel}


def _env(installed: dict[str, Path]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTEST_ADDOPTS", "VIRTUAL_ENV")}
    env["PATH"] = f"{installed['bin']}{os.pathsep}{env.get('PATH', '')}"
    env["NANOGPT_PARITY_CACHE"] = str(installed["tmp"] / "parity-cache")
    return env


def test_the_wheel_provides_the_packages_and_no_pytest_plugin(installed: dict[str, Path]) -> None:
    probe = (
        "import importlib.metadata as m, importlib.util, parity, nanogpt; "
        "print(parity.__file__); print(nanogpt.__file__); "
        "print([e.value for e in m.distribution('nanogpt-parity').entry_points]); "
        "print(importlib.util.find_spec('benchmarks'))"
    )
    out = _run([str(installed["bin"] / "python"), "-c", probe], installed["user"], _env(installed))
    assert out.returncode == 0, out.stderr
    parity_file, nanogpt_file, entry_points, benchmarks_spec = out.stdout.splitlines()
    assert benchmarks_spec == "None", f"benchmarks is installed: {benchmarks_spec}"
    assert Path(parity_file).is_relative_to(installed["purelib"]), "parity imported from outside the wheel"
    assert Path(nanogpt_file).is_relative_to(installed["purelib"])
    assert entry_points == "['parity.frontends.cli:main', 'parity.frontends.bisect:main']", (
        "console scripts only, no pytest11"
    )
    assert (installed["purelib"] / "parity" / "frontends" / "suite.ini").is_file()


def test_the_wheel_ships_no_benchmarks_and_needs_no_pytest_benchmark(installed: dict[str, Path]) -> None:
    with zipfile.ZipFile(installed["wheel"]) as wheel:
        names = wheel.namelist()
        (metadata,) = [n for n in names if n.endswith(".dist-info/METADATA")]
        lines = wheel.read(metadata).decode().splitlines()
    packages = {n.split("/")[0] for n in names} - {metadata.split("/")[0]}
    assert packages == {"nanogpt", "parity"}, packages
    requires = [line.split(":", 1)[1].strip() for line in lines if line.startswith("Requires-Dist:")]
    runtime = [r for r in requires if "extra ==" not in r]
    assert any(r.startswith("pytest>=") for r in runtime), requires
    assert not [r for r in runtime if r.startswith("pytest-benchmark")], f"a runtime dependency: {runtime}"
    assert any(r.startswith("pytest-benchmark") and 'extra == "bench"' in r for r in requires), requires
    assert "License-Expression: MIT" in lines and "License-File: LICENSE" in lines, lines[:20]
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names), names


def test_nanogpt_parity_runs_from_any_directory_with_impl_relative_to_it(
    installed: dict[str, Path], shared_dir: Path
) -> None:
    user = installed["user"]
    write_synthetic_checkpoint(user / "tiny-checkpoint", TINY)
    trace = shared_dir / "imported-by-parity"
    (user / "my_model.py").write_text(
        (REPO / "nanogpt" / "model.py").read_text() + IMPL_TRACE.format(marker=str(trace))
    )
    # A settings file of the user's that would break our run if it were read.
    (user / "pytest.ini").write_text("[pytest]\naddopts = --option-of-the-users-own-plugin\n")
    out = _run(
        [
            "nanogpt-parity",
            "--model",
            "tiny-checkpoint",
            "--impl",
            "my_model.py",
            "--impl-timeout",
            "300",
            "-q",
            "--parity-report",
            "report.json",
        ],
        user,
        _env(installed),
    )
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-4000:]
    assert " passed" in out.stdout and "failed" not in out.stdout and "error" not in out.stdout
    # The installed harness starts its child process from the wheel too.
    assert "checked in a child process, timeout 300 s" in out.stdout, out.stdout[-4000:]
    assert trace.exists(), "--impl my_model.py was not imported"
    assert (user / "report.json").is_file(), "--parity-report is relative to where the command runs"
    assert not (user / ".benchmarks").exists(), "nothing but what the user asked for is written there"
    # The report of this tiny run, drawn by the installed plot command (once reports carry profiles).
    if "profiles" in json.loads((user / "report.json").read_text()) and importlib.util.find_spec(
        "matplotlib"
    ):
        drawn = _run(
            [
                str(installed["bin"] / "python"),
                "-m",
                "parity.frontends.plot",
                "report.json",
                "-o",
                "profile.png",
            ],
            user,
            _env(installed),
        )
        assert drawn.returncode == 0, drawn.stderr
        assert (user / "profile.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_users_own_conftest_defining_model_keeps_working(installed: dict[str, Path]) -> None:
    project = installed["tmp"] / "own-project"
    project.mkdir()
    (project / "pytest.ini").write_text("[pytest]\n")
    (project / "conftest.py").write_text(USER_CONFTEST)
    (project / "test_mine.py").write_text(USER_TEST)
    out = _run(
        [
            str(installed["bin"] / "python"),
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "--model",
            "resnet",
        ],
        project,
        _env(installed),
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "1 passed" in out.stdout


def test_a_bad_option_is_one_usage_error_line(installed: dict[str, Path]) -> None:
    out = _run(["nanogpt-parity", "--model", "no-such-dir", "-q"], installed["user"], _env(installed))
    assert out.returncode == 4, out.stdout + out.stderr
    errors = [line for line in out.stderr.splitlines() if line.strip()]
    assert len(errors) == 1 and "--model 'no-such-dir'" in errors[0], out.stderr


def test_path_options_become_absolute_against_the_callers_directory(tmp_path: Path) -> None:
    from parity.frontends.cli import absolute_path_options

    args = ["--impl", "m.py", "--parity-report=out/r.json", "--model", "gpt2", "-k", "--impl"]
    assert absolute_path_options(args, tmp_path) == [
        "--impl",
        str(tmp_path / "m.py"),
        f"--parity-report={tmp_path / 'out/r.json'}",
        "--model",
        "gpt2",
        "-k",
        "--impl",
    ]
