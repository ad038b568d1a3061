"""The benchmark regression workflow, end to end: autosave a baseline, then compare against it.

docs/benchmarks.md promises that `pytest benchmarks/ --benchmark-autosave` saves a baseline and that
`pytest benchmarks/ --benchmark-compare --benchmark-compare-fail=median:10%` fails on a slowdown. These
tests run exactly those options in a pytest subprocess, on a tiny sleep-based benchmark in tmp_path with
its storage in tmp_path, and inject a 5x slowdown through an environment variable. Sleeps, not
arithmetic: a sleep's duration barely depends on how loaded the machine is, so the 5x stays 5x. No
torch.compile here; the whole file takes seconds.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

SLOWDOWN_VAR = "TINY_BENCHMARK_SLOWDOWN"

# A 5 ms sleep, made longer by the slowdown factor in SLOWDOWN_VAR.
TINY_BENCHMARK = f"""
import os
import time


def test_sleep(benchmark):
    seconds = 0.005 * float(os.environ.get("{SLOWDOWN_VAR}", "1"))
    benchmark.pedantic(time.sleep, args=(seconds,), rounds=15, warmup_rounds=1)
"""

# An "eager" and a "compiled" sleep recording their medians like benchmarks/test_speed_compile.py does;
# eager sleeps twice as long, so the speed-up is about 2.
TINY_SPEEDUP = """
import time

import pytest

from benchmarks.plugin import record_speed_result


@pytest.mark.parametrize("impl", ["eager", "compiled"])
def test_sleep(benchmark, request, impl):
    seconds = 0.010 if impl == "eager" else 0.005
    benchmark.pedantic(time.sleep, args=(seconds,), rounds=15, warmup_rounds=1)
    record_speed_result(request.config, "tiny", "sleep", impl, benchmark.stats.stats.median)
"""


REPO_ROOT = Path(__file__).resolve().parents[1]


def run_pytest(
    directory: Path, *options: str, slowdown: float | None = None, plugins: tuple[str, ...] = ()
) -> subprocess.CompletedProcess:
    """Run pytest on the test files in `directory`, benchmark storage there, with `options`.

    Plugins are not auto-loaded (only pytest-benchmark and `plugins` are): it keeps each run well under
    a second where importing every installed plugin, and torch with them, would take several.
    """
    env = {k: v for k, v in os.environ.items() if k != SLOWDOWN_VAR}
    env["PYTEST_DISABLE_PLUGIN_AUTOLOAD"] = "1"
    # benchmarks/ is the checkout's, not installed: its plugin is found from the repository root.
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))
    if slowdown is not None:
        env[SLOWDOWN_VAR] = str(slowdown)
    plugin_options = [arg for plugin in ("pytest_benchmark.plugin", *plugins) for arg in ("-p", plugin)]
    command = [
        sys.executable,
        "-m",
        "pytest",
        str(directory),
        *plugin_options,
        "-p",
        "no:cacheprovider",
        f"--rootdir={directory}",
        f"--benchmark-storage=file://{directory / 'storage'}",
        *options,
    ]
    return subprocess.run(command, cwd=directory, env=env, capture_output=True, text=True, timeout=120)


def make_project(tmp_path: Path, source: str = TINY_BENCHMARK) -> Path:
    """A directory with one tiny benchmark file and an empty pytest.ini, so the repo's config stays out."""
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    (tmp_path / "test_tiny_benchmark.py").write_text(source)
    return tmp_path


def saved_runs(directory: Path) -> list[Path]:
    """The JSON files --benchmark-autosave wrote (one per run, under a machine-specific folder)."""
    return sorted((directory / "storage").rglob("*.json"))


def test_injected_slowdown_fails_the_compare_command(tmp_path: Path) -> None:
    project = make_project(tmp_path)
    baseline = run_pytest(project, "--benchmark-autosave")
    assert baseline.returncode == 0, baseline.stdout + baseline.stderr
    assert len(saved_runs(project)) == 1, "--benchmark-autosave saved no baseline"

    slowed = run_pytest(project, "--benchmark-compare", "--benchmark-compare-fail=median:10%", slowdown=5)
    output = slowed.stdout + slowed.stderr
    assert slowed.returncode != 0, f"a 5x slowdown passed the median:10% gate:\n{output}"
    assert "Performance has regressed" in output, output


def test_compare_command_passes_when_within_threshold(tmp_path: Path) -> None:
    # The control: the same command passes when the threshold is far above any noise (a 5x slowdown
    # would still fail it), so the failure above is the slowdown's doing, not the command's.
    project = make_project(tmp_path)
    assert run_pytest(project, "--benchmark-autosave").returncode == 0
    unchanged = run_pytest(project, "--benchmark-compare", "--benchmark-compare-fail=median:300%")
    assert unchanged.returncode == 0, unchanged.stdout + unchanged.stderr
    assert "Performance has regressed" not in unchanged.stdout + unchanged.stderr


def test_autosave_records_the_speedup_of_the_session(tmp_path: Path) -> None:
    project = make_project(tmp_path, TINY_SPEEDUP)
    result = run_pytest(project, "--benchmark-autosave", plugins=("benchmarks.plugin",))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "tiny/sleep:" in result.stdout, "the terminal summary lacks the speed-up line"
    saved = json.loads(saved_runs(project)[0].read_text())
    medians = {b["params"]["impl"]: b["stats"]["median"] for b in saved["benchmarks"]}
    assert saved["compile_speedups"] == {"tiny/sleep": medians["eager"] / medians["compiled"]}
