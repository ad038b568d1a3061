"""Speed of eager vs torch.compile for the tied reference model: forward, forward+backward, train step.

Each benchmark builds the same seeded model; the compiled ones compile it afresh (`fresh_compile`) and
time that first call separately as extra_info["compile_time_s"], so the statistics hold only the steady
state (pedantic rounds after warm-up rounds). On CUDA every timed call ends with
torch.cuda.synchronize(), so the host clock measures the GPU's work, not the launch queue. The session's
speed-ups (eager median / compiled median, both measured in this run) are printed in the terminal summary
and saved with --benchmark-autosave (benchmarks/plugin.py). Compare against a saved baseline with
`pytest benchmarks/ --benchmark-compare --benchmark-compare-fail=median:10%`.
"""

from __future__ import annotations

import platform
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch

from benchmarks.compile_gates import compiled_graph_count, fresh_compile
from benchmarks.conftest import GATE_BATCH_SIZE, GATE_CONFIG
from benchmarks.plugin import record_speed_result, reproducibility_settings
from nanogpt.flops import peak_flops
from nanogpt.model import GPT, GPTConfig, gpt2_config
from parity.subject.memory import peak_rss_bytes


@dataclass(frozen=True)
class SpeedCase:
    """A benchmark shape: model config, batch, device, precision, and how many rounds to time."""

    device: str
    config: GPTConfig
    batch_size: int
    autocast_dtype: torch.dtype | None  # None: plain float32
    rounds: int
    warmup_rounds: int
    description: str
    threads: int | None = None  # intra-op threads; None: torch's default

    @property
    def dtype_name(self) -> str:
        """The precision the matmuls run in, for extra_info."""
        return str(self.autocast_dtype or torch.float32).removeprefix("torch.")

    def autocast(self) -> AbstractContextManager:
        """bf16 autocast as upstream nanoGPT trains (float32 master weights), or nothing."""
        if self.autocast_dtype is None:
            return nullcontext()
        return torch.autocast(device_type=self.device, dtype=self.autocast_dtype)


SPEED_CASES: dict[str, SpeedCase] = {
    # The gate model and batch (benchmarks/conftest.py): a step takes milliseconds on a 2-core CPU and a
    # compile seconds (tens with a cold kernel cache). bf16 is never used on CPU: without native support
    # it is two orders of magnitude slower than float32.
    "cpu-small": SpeedCase(
        device="cpu",
        config=GPTConfig(**GATE_CONFIG),
        batch_size=GATE_BATCH_SIZE,
        autocast_dtype=None,
        rounds=100,  # a round is milliseconds; many rounds steady the median on a shared machine
        warmup_rounds=5,
        description="nanogpt 2 layers x 64 channels, vocab 256",
        # One thread: on a shared runner, intra-op threads that wait on each other while other processes
        # hold the cores made medians swing by 100x (1.8 ms to 250 ms for the same forward); one thread
        # keeps them within ~3x, which a median over the rounds absorbs.
        threads=1,
    ),
    # Upstream nanoGPT's bench.py shape: GPT-2 124M (vocab padded to 50304, as upstream trains it),
    # 12 x 1024 tokens, bf16 autocast.
    "cuda-gpt2": SpeedCase(
        device="cuda",
        config=gpt2_config("gpt2", vocab_size=50304),
        batch_size=12,
        autocast_dtype=torch.bfloat16,
        rounds=10,
        warmup_rounds=5,
        description="gpt2 (124M), vocab 50304",
    ),
}
CASE_PARAMS = [
    pytest.param("cpu-small"),
    pytest.param("cuda-gpt2", marks=pytest.mark.gpu),
]
MODES = ["forward", "forward_backward", "train_step"]


def synchronize(device: str) -> None:
    """Wait for the device's queued work, so a host-clock reading includes it."""
    if device == "cuda":
        torch.cuda.synchronize()


def make_step(
    model: torch.nn.Module, case: SpeedCase, mode: str, batch: tuple[torch.Tensor, ...]
) -> Callable[[], None]:
    """The function to time: one forward, forward+backward or full AdamW step, ending synchronized."""
    idx, targets = batch

    def forward() -> None:
        with torch.no_grad(), case.autocast():
            model(idx, targets)
        synchronize(case.device)

    def forward_backward() -> None:
        model.zero_grad(set_to_none=True)
        with case.autocast():
            _, loss = model(idx, targets)
        loss.backward()
        synchronize(case.device)

    optimizer = model.configure_optimizers(0.1, 6e-4, (0.9, 0.95), device_type=case.device)

    def train_step() -> None:
        with case.autocast():
            _, loss = model(idx, targets)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        synchronize(case.device)

    return {"forward": forward, "forward_backward": forward_backward, "train_step": train_step}[mode]


def device_name(device: str) -> str:
    """The accelerator's name (e.g. 'NVIDIA H100 80GB HBM3'), or the CPU's model name where Linux tells it."""
    if device == "cuda":
        return torch.cuda.get_device_name()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def process_peak_rss_mib() -> float:
    """This process's peak resident memory so far (a high-water mark: it includes earlier tests)."""
    return peak_rss_bytes() / 2**20


def mfu(model: GPT, case: SpeedCase, mode: str, seconds: float) -> float | None:
    """Model FLOPs utilization of one call, or None where the device's peak is unknown."""
    peak = peak_flops(device_name(case.device), case.autocast_dtype or torch.float32)
    if peak is None:
        return None
    utilization = model.estimate_mfu(fwdbwd_per_iter=case.batch_size, dt=seconds, peak_flops=peak)
    # estimate_mfu counts forward + backward (6N per token); a forward alone is a third of that (2N).
    return utilization / 3 if mode == "forward" else utilization


def build(case: SpeedCase) -> tuple[GPT, tuple[torch.Tensor, torch.Tensor]]:
    """The seeded model and a fixed (idx, targets) batch for a case, on its device."""
    with torch.random.fork_rng(devices=[torch.cuda.current_device()] if case.device == "cuda" else []):
        torch.manual_seed(0)
        model = GPT(case.config).to(case.device)
    generator = torch.Generator().manual_seed(1)
    shape = (case.batch_size, case.config.block_size)
    idx, targets = (torch.randint(0, case.config.vocab_size, shape, generator=generator) for _ in range(2))
    return model, (idx.to(case.device), targets.to(case.device))


def describe(case: SpeedCase, mode: str, impl: str) -> dict[str, Any]:
    """The extra_info every speed benchmark saves: what ran, where, with which software."""
    cfg = case.config
    info: dict[str, Any] = dict(
        model=case.description,
        config=dict(n_layer=cfg.n_layer, n_head=cfg.n_head, n_embd=cfg.n_embd, vocab_size=cfg.vocab_size),
        batch=f"{case.batch_size}x{cfg.block_size}",
        dtype=case.dtype_name,
        device=device_name(case.device),
        torch=torch.__version__,
        threads=torch.get_num_threads(),
        mode=mode,
        impl=impl,
    )
    if case.device == "cuda":
        info["reproducibility"] = reproducibility_settings()
    return info


def compile_step(
    model: GPT, case: SpeedCase, mode: str, batch: tuple[torch.Tensor, torch.Tensor]
) -> tuple[Callable[[], None], dict[str, Any]]:
    """Compile the model afresh and run the step once; return the step and what the compile cost."""
    with fresh_compile():
        step = make_step(torch.compile(model), case, mode, batch)
        before = compiled_graph_count()
        start = time.perf_counter()
        step()  # compiles (the forward now, the backward at the first backward), then runs once
        compile_time = time.perf_counter() - start
    return step, dict(
        compile_time_s=compile_time,
        graphs_compiled=compiled_graph_count() - before,
        compile_caches="FX-graph and AOT-autograd caches bypassed; kernel cache as found",
    )


@pytest.mark.parametrize("impl", ["eager", "compiled"])
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("case_name", CASE_PARAMS)
def test_speed(benchmark: Any, request: pytest.FixtureRequest, case_name: str, mode: str, impl: str) -> None:
    case = SPEED_CASES[case_name]
    if case.threads is not None:
        torch.set_num_threads(case.threads)  # before compiling: inductor bakes the count into its kernels
    model, batch = build(case)
    info = describe(case, mode, impl)
    if impl == "compiled":
        step, compile_info = compile_step(model, case, mode, batch)
        info.update(compile_info)
    else:
        step = make_step(model, case, mode, batch)

    benchmark.group = f"{case_name} {mode}"
    benchmark.extra_info.update(info)
    if case.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    graphs = compiled_graph_count()
    rounds = request.config.getoption("--speed-rounds") or case.rounds
    benchmark.pedantic(step, rounds=rounds, warmup_rounds=case.warmup_rounds, iterations=1)

    assert compiled_graph_count() == graphs, "recompiled while being timed: the statistics include a compile"
    assert model.is_tied(), "the benchmark's model lost its tie while being timed"
    if benchmark.stats is None:  # --benchmark-disable: the step ran once, nothing was timed
        return
    median = benchmark.stats.stats.median
    record_speed_result(request.config, case_name, mode, impl, median, info.get("compile_time_s"))
    if case.device == "cuda":
        benchmark.extra_info["peak_memory_mib"] = torch.cuda.max_memory_allocated() / 2**20
        benchmark.extra_info["mfu"] = mfu(model, case, mode, median)
    else:
        benchmark.extra_info["process_peak_rss_mib"] = process_peak_rss_mib()
