"""The memory plan and the fit check: what a model needs, what the machine has, and a run that cannot fit.

The plan's estimate follows the dtype and shared weight storage; available memory is read from fake
/proc/meminfo and cgroup files under tmp_path, so the fit check is tested without a machine of any
particular size; a run that cannot fit stops at collection, and pytest-xdist workers share the memory.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch

from nanogpt.model import GPTConfig, gpt2_config
from parity.numerics.tie import twin_config
from parity.subject import memory
from parity.subject.memory import Available, available_memory, memory_problem, plan_memory
from parity.subject.synthetic import write_synthetic_checkpoint
from parity.subject.targets import SMALL_CONFIG, resolve_targets

GB = 1_000_000_000


def test_plan_shares_weights_exactly_above_the_threshold() -> None:
    for name, dtype in [
        ("gpt2", torch.float64),
        ("gpt2-medium", torch.float64),
        ("gpt2-large", torch.float32),
        ("gpt2-xl", torch.float32),
    ]:
        plan = plan_memory(gpt2_config(name), dtype)
        assert plan.share_weights == (plan.param_bytes > memory.SHARE_WEIGHTS_ABOVE_BYTES), name
    assert not plan_memory(gpt2_config("gpt2"), torch.float64).share_weights
    assert plan_memory(gpt2_config("gpt2-xl"), torch.float32).share_weights


def test_estimate_follows_the_dtype_and_the_storage() -> None:
    xl = gpt2_config("gpt2-xl")
    f32, f64 = plan_memory(xl, torch.float32), plan_memory(xl, torch.float64)
    assert f64.param_bytes == 2 * f32.param_bytes
    assert f64.estimated_peak_bytes > f32.estimated_peak_bytes
    # Shared storage: Hugging Face's weights plus one set of gradients (or another model), plus transients.
    assert f32.estimated_peak_bytes >= (memory.SHARED_WEIGHTS + 1) * f32.param_bytes + memory.BASE_BYTES
    small = plan_memory(gpt2_config("gpt2"), torch.float64)
    assert small.estimated_peak_bytes >= (memory.INDEPENDENT_WEIGHTS + 1) * small.param_bytes


def test_the_estimate_covers_train_steps_and_full_size_training_stays_small() -> None:
    """train-steps trains full-size copies only where they are small (every test config); at the GPT-2 sizes
    it trains the narrow twin, whose two models and copies the estimate includes."""
    small = plan_memory(SMALL_CONFIG, torch.float64)
    assert small.train_full_size
    tied = SMALL_CONFIG.vocab_size * SMALL_CONFIG.n_embd * 8  # one V x C float64 matrix, shared
    weights = memory.INDEPENDENT_WEIGHTS * small.param_bytes - tied
    training = memory.TRAINING_BYTES_FACTOR * small.param_bytes
    phases = memory.phase_bytes(SMALL_CONFIG, torch.float64, False, training)
    assert phases["train-steps"] == weights + training
    assert small.estimated_peak_bytes == max(phases.values()) + memory.BASE_BYTES >= weights + training
    for name in ("gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl"):
        plan = plan_memory(gpt2_config(name), torch.float64)
        assert not plan.train_full_size and "train-steps on the narrow twin" in plan.describe(), name
        twin = (memory.TRAINING_BYTES_FACTOR + 2) * memory.param_bytes(
            twin_config(gpt2_config(name)), torch.float64
        )
        phases = memory.phase_bytes(gpt2_config(name), torch.float64, plan.share_weights, twin, False)
        assert plan.estimated_peak_bytes == max(phases.values()) + memory.BASE_BYTES, name
        assert phases["train-steps"] < max(phases.values()), f"{name}: the twin's training is not the peak"


# The peak of a parity run in this process's child: VmHWM, its own (ru_maxrss would carry the pytest
# process's peak across the vfork + exec that starts it).
MEASURE_PEAK = """
import re, sys
import pytest
code = pytest.main(["parity/", "--model", sys.argv[1], "-q", "-p", "no:cacheprovider", "-p", "no:randomly"])
status = open("/proc/self/status").read()
print("VmHWM", int(re.search(r"VmHWM:\\s+(\\d+) kB", status).group(1)) * 1024, int(code))
"""


@pytest.mark.parametrize("size", ["small", "4-layers-256-channels"])
def test_the_estimate_is_within_its_tolerance_of_the_measured_peak(size: str, tmp_path: Path) -> None:
    """The whole default run (every check) on two small sizes, measured against the plan's estimate."""
    model = "small"
    if size != "small":
        config = GPTConfig(n_layer=4, n_head=4, n_embd=256, vocab_size=8192, block_size=256)
        model = str(write_synthetic_checkpoint(tmp_path / size, config))
    env = {k: v for k, v in os.environ.items() if k != "PYTEST_ADDOPTS"}
    done = subprocess.run(
        [sys.executable, "-c", MEASURE_PEAK, model],
        cwd=Path(__file__).resolve().parents[1],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    peak, code = (int(x) for x in done.stdout.rsplit("VmHWM", 1)[1].split())
    assert code == 0, done.stdout[-3000:] + done.stderr[-3000:]
    target = resolve_targets(model, "auto", "cpu", None)[0]
    estimate = target.memory.estimated_peak_bytes
    assert abs(estimate / peak - 1) <= memory.ESTIMATE_TOLERANCE, (
        f"{size}: estimated {estimate / GB:.3f} GB, measured {peak / GB:.3f} GB"
    )


def _meminfo(tmp_path: Path, available_kb: int) -> Path:
    path = tmp_path / "meminfo"
    path.write_text(f"MemTotal:       24731708 kB\nMemFree:  1000 kB\nMemAvailable:   {available_kb} kB\n")
    return path


def test_available_memory_reads_memavailable(tmp_path: Path) -> None:
    got = available_memory(_meminfo(tmp_path, 20_000_000), tmp_path / "no-cgroup")
    assert got == Available(20_000_000 * 1024, "MemAvailable in /proc/meminfo")


def test_available_memory_takes_a_smaller_cgroup_v2_limit(tmp_path: Path) -> None:
    cgroup = tmp_path / "cgroup"
    cgroup.mkdir()
    (cgroup / "memory.max").write_text(f"{8 * GB}\n")
    (cgroup / "memory.current").write_text(f"{3 * GB}\n")
    got = available_memory(_meminfo(tmp_path, 20_000_000), cgroup)
    assert got is not None and got.bytes == 5 * GB and "memory.max" in got.source


def test_available_memory_ignores_unlimited_cgroups(tmp_path: Path) -> None:
    v2 = tmp_path / "v2"
    v2.mkdir()
    (v2 / "memory.max").write_text("max\n")
    (v2 / "memory.current").write_text(f"{3 * GB}\n")
    v1 = tmp_path / "v1"
    (v1 / "memory").mkdir(parents=True)
    (v1 / "memory" / "memory.limit_in_bytes").write_text("9223372036854771712\n")
    (v1 / "memory" / "memory.usage_in_bytes").write_text(f"{3 * GB}\n")
    meminfo = _meminfo(tmp_path, 10_000_000)
    for cgroup in (v2, v1):
        assert available_memory(meminfo, cgroup) == Available(
            10_000_000 * 1024, "MemAvailable in /proc/meminfo"
        )


def test_available_memory_is_none_when_unreadable(tmp_path: Path) -> None:
    assert available_memory(tmp_path / "missing", tmp_path / "missing-cgroup") is None


def test_memory_problem_names_the_estimate_the_available_memory_and_the_override() -> None:
    plan = plan_memory(gpt2_config("gpt2-xl"), torch.float32)
    short = Available(plan.estimated_peak_bytes - 1, "MemAvailable in /proc/meminfo")
    problem = memory_problem("gpt2-xl", plan, short)
    assert problem is not None
    for part in (
        "gpt2-xl",
        memory.format_bytes(plan.estimated_peak_bytes),
        memory.format_bytes(short.bytes),
        "MemAvailable",
        memory.IGNORE_ENV_VAR,
        "shared weight storage",
    ):
        assert part in problem, (part, problem)
    assert memory_problem("gpt2-xl", plan, Available(plan.estimated_peak_bytes, "x")) is None
    assert memory_problem("gpt2-xl", plan, None) is None  # nothing to compare with: run


@pytest.mark.parametrize(("value", "ignored"), [("1", True), ("yes", True), ("0", False), ("", False)])
def test_override_env_var(monkeypatch: pytest.MonkeyPatch, value: str, ignored: bool) -> None:
    monkeypatch.setenv(memory.IGNORE_ENV_VAR, value)
    assert memory.ignore_memory_check() is ignored


def _session(targets: list[Any], uses_parity: bool = True) -> Any:
    from parity.frontends.pytest_frontend.plugin import TARGETS_KEY

    config = SimpleNamespace(option=SimpleNamespace(collectonly=False), stash={TARGETS_KEY: targets})
    item = SimpleNamespace(fixturenames=["parity_target"] if uses_parity else ["tmp_path"])
    return SimpleNamespace(config=config, items=[item])


def test_collection_stops_a_run_that_cannot_fit(monkeypatch: pytest.MonkeyPatch) -> None:
    import parity.conftest as parity_conftest

    monkeypatch.delenv(memory.IGNORE_ENV_VAR, raising=False)
    targets = resolve_targets("gpt2-xl", "synthetic", "cpu", None)
    need = targets[0].memory.estimated_peak_bytes
    monkeypatch.setattr(parity_conftest, "available_memory", lambda: Available(need // 2, "MemAvailable"))
    with pytest.raises(pytest.UsageError, match="gpt2-xl: the parity run needs about"):
        parity_conftest.pytest_collection_finish(_session(targets))
    parity_conftest.pytest_collection_finish(_session(targets, uses_parity=False))  # no parity test: no check
    monkeypatch.setenv(memory.IGNORE_ENV_VAR, "1")
    parity_conftest.pytest_collection_finish(_session(targets))  # forced


def test_peak_rss_is_at_least_a_fresh_allocation() -> None:
    before = memory.peak_rss_bytes()
    block = torch.ones(64 * 1024 * 1024 // 8, dtype=torch.float64)  # 64 MiB, touched
    assert memory.peak_rss_bytes() >= before > 0
    assert memory.peak_rss_bytes() >= block.numel() * 8
    # A waited-for child that touches 128 MiB raises the children's peak to at least that.
    code = "import torch; torch.ones(128 * 1024 * 1024 // 8, dtype=torch.float64)"
    subprocess.run([sys.executable, "-c", code], check=True)
    assert memory.peak_rss_bytes(children=True) >= 128 * 1024 * 1024


def test_xdist_workers_share_the_available_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    import parity.conftest as parity_conftest

    monkeypatch.delenv(memory.IGNORE_ENV_VAR, raising=False)
    targets = resolve_targets("gpt2-xl", "synthetic", "cpu", None)
    need = targets[0].memory.estimated_peak_bytes
    monkeypatch.setattr(parity_conftest, "available_memory", lambda: Available(need * 3 // 2, "MemAvailable"))
    monkeypatch.delenv("PYTEST_XDIST_WORKER_COUNT", raising=False)
    parity_conftest.pytest_collection_finish(_session(targets))  # one process: fits
    monkeypatch.setenv("PYTEST_XDIST_WORKER_COUNT", "2")  # what xdist sets in each worker
    with pytest.raises(pytest.UsageError, match="shared by 2 pytest-xdist workers"):
        parity_conftest.pytest_collection_finish(_session(targets))
    # In a worker (config.workerinput) the problem fails every parity test's setup instead of crashing it.
    session = _session(targets)
    session.config.workerinput = {"workerid": "gw0"}
    parity_conftest.pytest_collection_finish(session)
    with pytest.raises(pytest.fail.Exception, match="shared by 2 pytest-xdist workers"):
        parity_conftest.fail_if_it_cannot_fit(session.config)


def test_memory_plan_is_the_targets() -> None:
    (target,) = resolve_targets("gpt2", "synthetic", "cpu", None)
    assert target.memory == plan_memory(target.config, target.dtype)
    assert (
        not target.memory.share_weights and target.memory.estimated_peak_bytes > 2 * target.memory.param_bytes
    )
    assert target.dtype_reason.startswith("CPU default for gpt2")
