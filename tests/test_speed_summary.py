"""The benchmark summary prints the reference-vs-HF train-step ratio next to the torch.compile speed-ups.

Run in a pytest subprocess on tiny sleep-based benchmarks (no torch work), as the benchmark workflow
tests do: the "reference" step sleeps 4 ms and the "HF" step 6 ms, so the ratio is about 1.5.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

TINY = """
import time

import pytest

from benchmarks.plugin import record_speed_result, record_train_step


def test_train_step(benchmark, request):
    record_train_step(request.config, "tiny sleep", 0.004, 0.006)
    benchmark.pedantic(time.sleep, args=(0.001,), rounds=3)


@pytest.mark.parametrize("impl", ["eager", "compiled"])
def test_compile(benchmark, request, impl):
    benchmark.pedantic(time.sleep, args=(0.002 if impl == "eager" else 0.001,), rounds=5)
    record_speed_result(request.config, "tiny", "sleep", impl, benchmark.stats.stats.median)
"""


def test_summary_shows_the_train_step_ratio_beside_the_speedups_and_saves_it(tmp_path: Path) -> None:
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    (tmp_path / "test_tiny.py").write_text(TINY)
    env = {**os.environ, "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1"}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    env.pop("PYTEST_ADDOPTS", None)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-p",
            "pytest_benchmark.plugin",
            "-p",
            "benchmarks.plugin",
            "-p",
            "no:cacheprovider",
            f"--rootdir={tmp_path}",
            f"--benchmark-storage=file://{tmp_path / 's'}",
            "--benchmark-autosave",
            "test_tiny.py",
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    section = proc.stdout.split("speed: torch.compile speed-up")[1]
    lines = section.splitlines()
    speedup = next(i for i, line in enumerate(lines) if line.startswith("tiny/sleep: "))
    ratio = next(
        i for i, line in enumerate(lines) if line.startswith("train step, reference vs HF (tiny sleep)")
    )
    assert ratio == speedup + 1, "the ratio is printed right after the speed-ups"
    assert "HF / reference = 1.50x" in lines[ratio] and "reference 4.00 ms, HF eager 6.00 ms" in lines[ratio]
    (saved,) = (tmp_path / "s").rglob("*.json")
    assert json.loads(saved.read_text())["train_step_ratios"] == {"tiny sleep": 0.006 / 0.004}
