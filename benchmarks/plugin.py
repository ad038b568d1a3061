"""pytest plugin for the benchmarks' options and the torch.compile report.

The `gpu` marker and `--require-gpu` belong to the parity harness's pytest plugin
(parity/frontends/pytest_frontend/plugin.py), which the root conftest.py loads before this one. This
plugin adds `--speed-rounds` and carries the session-level report of the torch.compile suite: the
speed-up of compiled over eager (eager median / compiled median, both measured in this session), printed
in the terminal summary and saved with `--benchmark-autosave` under "compile_speedups"; and the
non-failing warnings the compile gates saw, listed so nobody has to rerun with -s to read them.
"""

from __future__ import annotations

import os
from typing import Any

import pytest
import torch

# (case, mode) -> {"eager": median s, "compiled": median s, "compile_time_s": s}, from the speed benchmarks.
SPEED_RESULTS = pytest.StashKey[dict[tuple[str, str], dict[str, float]]]()
# label -> the warnings a compile gate saw that did not fail it.
COMPILE_WARNINGS = pytest.StashKey[dict[str, list[str]]]()
# label -> {"reference": median s, "hf": median s} of one training step, from the train-step benchmark.
TRAIN_STEP_MEDIANS = pytest.StashKey[dict[str, dict[str, float]]]()


def pytest_addoption(parser: pytest.Parser) -> None:
    bench = parser.getgroup("nanogpt-parity benchmarks")
    bench.addoption(
        "--speed-rounds",
        type=int,
        default=None,
        metavar="N",
        help="timed rounds per eager/compiled speed benchmark (default: 100 on CPU, 10 on GPU)",
    )


def pytest_configure(config: pytest.Config) -> None:
    config.stash[SPEED_RESULTS] = {}
    config.stash[COMPILE_WARNINGS] = {}
    config.stash[TRAIN_STEP_MEDIANS] = {}


def reproducibility_settings() -> dict[str, Any]:
    """The settings that decide whether GPU numbers are reproducible, for a benchmark's extra_info.

    CI sets them in .github/workflows/gpu.yml: NVIDIA_TF32_OVERRIDE=0 turns TF32 off below torch (the
    parity tolerances assume true float32 matmuls), and CUBLAS_WORKSPACE_CONFIG=:4096:8 makes cuBLAS
    deterministic. Recorded here so a saved benchmark says what it ran under.
    """
    return {
        "tf32_matmul": torch.backends.cuda.matmul.allow_tf32,
        "tf32_cudnn": torch.backends.cudnn.allow_tf32,
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
        "NVIDIA_TF32_OVERRIDE": os.environ.get("NVIDIA_TF32_OVERRIDE"),
        "CUBLAS_WORKSPACE_CONFIG": os.environ.get("CUBLAS_WORKSPACE_CONFIG"),
        "deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
        "cudnn_benchmark": torch.backends.cudnn.benchmark,
    }


def record_speed_result(
    config: pytest.Config,
    case: str,
    mode: str,
    impl: str,
    median_s: float,
    compile_time_s: float | None = None,
) -> None:
    """Remember one benchmark's median (and compile time) so the session can report speed-ups."""
    entry = config.stash[SPEED_RESULTS].setdefault((case, mode), {})
    entry[impl] = median_s
    if compile_time_s is not None:
        entry["compile_time_s"] = compile_time_s


def compile_speedups(config: pytest.Config) -> dict[str, float]:
    """ "case/mode" -> eager median / compiled median, for every pair measured in this session."""
    return {
        f"{case}/{mode}": medians["eager"] / medians["compiled"]
        for (case, mode), medians in sorted(config.stash[SPEED_RESULTS].items())
        if "eager" in medians and "compiled" in medians and medians["compiled"] > 0
    }


def record_train_step(
    config: pytest.Config, label: str, reference_median_s: float, hf_median_s: float
) -> None:
    """Remember the reference's and HF's median train-step times, for the summary and the saved JSON."""
    config.stash[TRAIN_STEP_MEDIANS][label] = {"reference": reference_median_s, "hf": hf_median_s}


def train_step_ratios(config: pytest.Config) -> dict[str, float]:
    """label -> HF eager median / reference median of one training step (above 1: the reference is faster)."""
    return {
        label: m["hf"] / m["reference"]
        for label, m in sorted(config.stash.get(TRAIN_STEP_MEDIANS, {}).items())
        if m["reference"] > 0
    }


def report_compile_warnings(config: pytest.Config, label: str, messages: list[str]) -> None:
    """List warnings that a compile gate saw but does not fail on, for the terminal summary."""
    config.stash[COMPILE_WARNINGS][label] = messages


# tryfirst: pytest-benchmark's own summary raises on a --benchmark-compare-fail regression, and the
# speed-ups are most wanted exactly then.
@pytest.hookimpl(tryfirst=True)
def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    seen = config.stash.get(COMPILE_WARNINGS, {})
    if seen:
        terminalreporter.section("torch.compile warnings (listed, not failing)")
        for label, messages in seen.items():
            terminalreporter.write_line(f"{label}: {len(messages)} distinct warning(s)")
            for message in messages:
                terminalreporter.write_line(f"  {message}")
    ratios = train_step_ratios(config)
    if config.stash.get(SPEED_RESULTS, None) or ratios:
        speedups = compile_speedups(config)
        terminalreporter.section("speed: torch.compile speed-up (eager median / compiled median), train step")
        for (case, mode), entry in sorted(config.stash[SPEED_RESULTS].items()):
            key = f"{case}/{mode}"
            if key in speedups:
                compile_time = entry.get("compile_time_s")
                suffix = (
                    f" (compile {compile_time:.1f} s, not in the medians)" if compile_time is not None else ""
                )
                terminalreporter.write_line(f"{key}: {speedups[key]:.2f}x{suffix}")
        if not speedups:
            terminalreporter.write_line("no eager/compiled pair was measured in this session")
        # Next to the speed-ups, not hidden in a benchmark's extra_info: is the reference slower than HF?
        for label, ratio in ratios.items():
            m = config.stash[TRAIN_STEP_MEDIANS][label]
            terminalreporter.write_line(
                f"train step, reference vs HF ({label}): HF / reference = {ratio:.2f}x (reference "
                f"{m['reference'] * 1e3:.2f} ms, HF eager {m['hf'] * 1e3:.2f} ms; "
                "above 1: the reference is faster)"
            )


@pytest.hookimpl(optionalhook=True)
def pytest_benchmark_update_json(config: pytest.Config, benchmarks: list, output_json: dict) -> None:
    output_json["compile_speedups"] = compile_speedups(config)
    output_json["train_step_ratios"] = train_step_ratios(config)
