"""Memory of a parity run: the storage plan per size, an estimate of the peak, the fit check, RSS readings.

A parity run holds two implementations of the same model and, during the gradient check, one full set of
gradients. For gpt2-xl in float32 two independent models plus their gradients are ~25 GB, which does not
fit a 24 GiB machine. Above `SHARE_WEIGHTS_ABOVE_BYTES` the harness therefore lets the reference share
Hugging Face's weight storage (after checking that it loaded bitwise the same values), compares gradients
as Hugging Face's backward produces them, and frees each pair at once. `plan_memory` says which storage a
target gets and estimates the run's peak resident memory, phase by phase (`phase_bytes`); `memory_problem`
compares that estimate with the memory this machine (or its cgroup) has available, so that a run that cannot
fit stops with a usage error and the estimate before any model is built, instead of being killed by the OOM
killer halfway through.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import re
import resource
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from nanogpt.model import GPTConfig
from nanogpt.schema import param_count
from parity.numerics.tie import twin_config
from parity.subject.batches import gradient_batch

# Above this many bytes of parameters (one model, in the run's dtype) the reference shares Hugging Face's
# weight storage. The four sizes in their CPU default dtypes: gpt2 1.0 GB (float64), gpt2-medium 2.8 GB
# (float64), gpt2-large 3.1 GB (float32), gpt2-xl 6.2 GB (float32). Below it each implementation keeps the
# weights its own loader produced, so their matmuls also run on different layouts (the stronger check).
SHARE_WEIGHTS_ABOVE_BYTES = 3_000_000_000

# The weights a run holds, in units of one model's parameter bytes: shared, Hugging Face's (the reference's
# are views of them); independent, both models' but one tied matrix, which has one layout in both and is
# shared too (an untied implementation keeps its own: one V x C matrix above the estimate).
SHARED_WEIGHTS = 1
INDEPENDENT_WEIGHTS = 2
# The interpreter with torch and transformers, allocator slack, the tokenizer: the whole run of the small
# model peaks at 0.47 GB (docs/measurements.md).
BASE_BYTES = 470_000_000
# The estimate is within this fraction of the measured peak at every size it was calibrated on (the small
# sizes and the four GPT-2 sizes, docs/measurements.md); tests/test_memory_plan.py measures the small ones.
ESTIMATE_TOLERANCE = 0.15
# Transient tensors of the phases (`phase_bytes`): the full-block forward holds both implementations' logits
# (T x V each); the tied-gradient check's backward of an untied twin ends with three V x C matrices (the kept
# gradient and the twin's two paths'); activations of the gradient batch in elements per layer, token and
# channel: Hugging Face's (its GELU keeps several 4 x n_embd intermediates), which its heap keeps resident
# until the gradient run ends.
LOGITS_COPIES = 2
TIED_MATRIX_COPIES = 3
HF_ACTIVATION_ELEMENTS = 36

# train-steps trains copies of both models with AdamW: weights, gradients and two moment buffers each, this
# many times one model's parameter bytes on top of the loaded models.
TRAINING_BYTES_FACTOR = 8
# It trains copies at full size only up to this many bytes of them (every test config); above, on the
# narrow twin (tie.twin_config). Full-size copies of gpt2 in float64 are 8 GB: they set the default run's
# peak at 10.4 GB, twice what the rest of the run needs (docs/measurements.md).
FULL_SIZE_TRAINING_MAX_BYTES = 256_000_000

IGNORE_ENV_VAR = "NANOGPT_PARITY_IGNORE_MEMORY"


@dataclass(frozen=True)
class MemoryPlan:
    """How a target's weights are stored and how much resident memory its parity run is expected to need."""

    param_bytes: int  # one model's parameters in the run's dtype
    share_weights: bool
    estimated_peak_bytes: int
    train_full_size: bool = False  # train-steps trains copies of the loaded models, not of the narrow twin

    def describe(self, with_peak: bool = True) -> str:
        """One line for the pytest header: the storage, the parameter bytes and (with_peak) the estimate."""
        storage = (
            "shared weight storage (reference parameters are views of Hugging Face's)"
            if self.share_weights
            else "independent weights (each implementation's own loader)"
        )
        line = f"{storage}; parameters {format_bytes(self.param_bytes)} per model"
        line += "" if self.train_full_size else "; train-steps on the narrow twin"
        return line + (f"; estimated peak {format_bytes(self.estimated_peak_bytes)}" if with_peak else "")


def format_bytes(n: float) -> str:
    """Bytes as GB with one decimal (decimal units, as the issue and `free -g` style reports use)."""
    return f"{n / 1e9:.1f} GB"


def param_bytes(config: GPTConfig, dtype: torch.dtype) -> int:
    """Bytes of one tied model's parameters in dtype."""
    return param_count(config) * torch.empty((), dtype=dtype).element_size()


def phase_bytes(
    config: GPTConfig, dtype: torch.dtype, share: bool, training: int, full_size: bool = True
) -> dict[str, int]:
    """Resident bytes of each memory-heavy phase of a parity run, above the interpreter's base.

    training: the bytes train-steps adds to the loaded models (its copies, or the narrow twin and its copies).
    full_size: extra passes (the full block, the tied gradient's decomposition) run on the loaded models,
    not on the narrow twin, whose tensors are small but for its T x V logits.
    """
    size = torch.empty((), dtype=dtype).element_size()
    params = param_bytes(config, dtype)
    tied = config.vocab_size * config.n_embd * size
    loaded = (SHARED_WEIGHTS if share else INDEPENDENT_WEIGHTS) * params  # before any tensor is shared
    weights = loaded if share else loaded - tied
    tokens = gradient_batch(config)[0].numel()
    activations = HF_ACTIVATION_ELEMENTS * config.n_layer * tokens * config.n_embd * size
    return {
        # the implementation's own copy before it becomes views; own-loader's model and the Hugging Face
        # model an upstream-style from_pretrained copies from (the implementation's loaded model dropped)
        "loading": loaded + params,
        # the end of HF's backward: its gradients, the tied matrix's two paths apart (params + tied); the
        # implementation's backward then frees them as it goes, holding its head path's V x C meanwhile
        "gradients": weights + params + tied + activations,
        # at full size the kept tied gradient waits for tied-gradient; the twin's T x V logits are as large
        "full block": weights
        + (tied if full_size else 0)
        + LOGITS_COPIES * config.block_size * config.output_vocab_size * size,
        "train-steps": weights + training,
    } | ({"tied gradient": weights + TIED_MATRIX_COPIES * tied + activations} if full_size else {})


def plan_memory(config: GPTConfig, dtype: torch.dtype) -> MemoryPlan:
    """The storage plan and the estimated peak resident memory of a parity run of config in dtype: its
    heaviest phase (`phase_bytes`) and the interpreter's base.

    The estimate covers train-steps too: its training copies at full size (up to
    FULL_SIZE_TRAINING_MAX_BYTES), else the narrow twin's two models and their training copies.
    """
    params = param_bytes(config, dtype)
    share = params > SHARE_WEIGHTS_ABOVE_BYTES
    training = TRAINING_BYTES_FACTOR * params
    full_size = not share and training <= FULL_SIZE_TRAINING_MAX_BYTES
    if not full_size:
        training = (TRAINING_BYTES_FACTOR + 2) * param_bytes(twin_config(config), dtype)
    peak = max(phase_bytes(config, dtype, share, training, full_size).values()) + BASE_BYTES
    return MemoryPlan(params, share, peak, full_size)


@dataclass(frozen=True)
class Available:
    """Memory available to new allocations, and where the number comes from."""

    bytes: int
    source: str


def _read_int(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None  # cgroup v2 writes "max" for no limit


def available_memory(
    meminfo: Path = Path("/proc/meminfo"), cgroup: Path = Path("/sys/fs/cgroup")
) -> Available | None:
    """MemAvailable, or the cgroup's remaining limit when that is smaller; None when neither is readable."""
    candidates: list[Available] = []
    try:
        match = re.search(r"^MemAvailable:\s+(\d+) kB", meminfo.read_text(), re.MULTILINE)
    except OSError:
        match = None
    if match:
        candidates.append(Available(int(match.group(1)) * 1024, "MemAvailable in /proc/meminfo"))
    # cgroup v2 (memory.max, memory.current), then v1 (memory/memory.limit_in_bytes, usage_in_bytes).
    for limit_file, usage_file in (
        ("memory.max", "memory.current"),
        ("memory/memory.limit_in_bytes", "memory/memory.usage_in_bytes"),
    ):
        limit, usage = _read_int(cgroup / limit_file), _read_int(cgroup / usage_file)
        # v1 reports "no limit" as a huge number (2**63 rounded down to a page).
        if limit is not None and usage is not None and limit < 2**60:
            candidates.append(Available(max(limit - usage, 0), f"cgroup limit {cgroup / limit_file}"))
            break
    return min(candidates, key=lambda a: a.bytes) if candidates else None


def per_worker(available: Available | None) -> Available | None:
    """The memory each pytest-xdist worker may count on: every worker loads both models of its targets."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1") or 1)
    if available is None or workers <= 1:
        return available
    return Available(
        available.bytes // workers,
        f"{available.source}, shared by {workers} pytest-xdist workers that each load both models; "
        "run without -n for large sizes",
    )


def memory_problem(
    label: str, plan: MemoryPlan, available: Available | None, what: str = "the parity run"
) -> str | None:
    """Why label's parity run (or `what`) would not fit in available memory (with the estimate), or None."""
    if available is None or plan.estimated_peak_bytes <= available.bytes:
        return None
    return (
        f"--model {label}: {what} needs about {format_bytes(plan.estimated_peak_bytes)} of memory "
        f"({plan.describe(with_peak=False)}), but only {format_bytes(available.bytes)} is available "
        f"({available.source}). Free memory, choose a smaller --model, "
        f"or set {IGNORE_ENV_VAR}=1 to run anyway"
    )


def ignore_memory_check() -> bool:
    """True when the user forces a run whatever the estimate says."""
    return os.environ.get(IGNORE_ENV_VAR, "").strip().lower() not in ("", "0", "false", "no")


def peak_rss_bytes(children: bool = False) -> int:
    """Peak resident set size of this process (or of its waited-for children), in bytes."""
    who = resource.RUSAGE_CHILDREN if children else resource.RUSAGE_SELF
    peak = resource.getrusage(who).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # bytes on macOS, KiB on Linux


# glibc's malloc serves allocations under its mmap threshold from its heap, and raises the threshold (up to
# 32 MB) whenever it frees a larger mmapped block; per-layer gradients (5-19 MB at gpt2) then come from the
# heap, and freed ones stay resident between live ones (gpt2's float64 gradient run peaked at 3.9 GB, not
# 3.5). A fixed threshold hands every freed weight-sized tensor back at once. At 4 MB the activations of the
# gradient batch (0.8-3 MB) are reused from the heap instead of page-faulted afresh (gpt2's run: 15% fewer
# faults, 4 s less), and Subject.gradient_run trims what they leave (docs/measurements.md).
MMAP_THRESHOLD_BYTES = 4 << 20
M_MMAP_THRESHOLD = -3  # mallopt's parameter number (malloc.h)


def _glibc_function(name: str) -> Any:
    """The C library's function `name`, or None without glibc (macOS, musl)."""
    library = ctypes.util.find_library("c")
    if not library:
        return None
    try:
        return getattr(ctypes.CDLL(library), name)
    except (OSError, AttributeError):
        return None


def fixed_mmap_threshold() -> None:
    """Keep glibc's mmap threshold at MMAP_THRESHOLD_BYTES for this process; a no-op without glibc."""
    mallopt = _glibc_function("mallopt")
    if mallopt is not None:
        mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)


def release_free_memory() -> None:
    """Return the C allocator's free pages to the OS (glibc's malloc_trim); a no-op without glibc.

    Freed tensors below glibc's mmap threshold (up to 32 MB: most per-layer gradients) go back to its heap
    and stay resident (2 GB after gpt2-medium's float64 gradient check), under every later test's peak.
    """
    trim = _glibc_function("malloc_trim")
    if trim is not None:
        trim(0)
