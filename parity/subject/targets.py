"""What the harness runs on: the model, where its weights come from, the device and the dtype.

`resolve_targets` turns the command-line choices into a list of `ParityTarget`s and validates everything
that can be validated cheaply (names, paths, config.json, device, dtype) before any model is built,
raising `UsageError` with the valid choices. Whether a target fits in memory is checked once the parity
tests are collected (parity/conftest.py, with `ParityTarget.memory`), still before any model is built.
Synthetic checkpoints are generated lazily, by the fixture that first needs one.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

from nanogpt.hf import CheckpointError, config_from_hf, read_hf_config
from nanogpt.hub import HUB_REPOS, find_cached_snapshot, hf_cache_dir
from nanogpt.model import GPT2_SIZES, GPTConfig, gpt2_config
from nanogpt.paths import OutputPathError
from parity.core.errors import UsageError
from parity.numerics.tie import twin_config
from parity.subject.loading import GPT2_ACTIVATION
from parity.subject.memory import MemoryPlan, param_bytes, plan_memory
from parity.subject.synthetic import DEFAULT_SEED, cache_root, checkpoint_name, ensure_synthetic_checkpoint

SMALL = "small"  # GPT-2's architecture at a size where every check takes under a second
SMALL_CONFIG = GPTConfig(block_size=64, vocab_size=512, n_layer=2, n_head=2, n_embd=64)
MODEL_CHOICES = (SMALL, *GPT2_SIZES, "all")
WEIGHTS_CHOICES = ("auto", "pretrained", "synthetic")
DEVICE_CHOICES = ("cpu", "cuda")
DTYPES = {
    "float64": torch.float64,
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}

# Dtype policy on CPU: float64 where two models and their gradients fit comfortably (it makes the
# tolerances ~1e-9 and every real bug obvious), float32 above. bf16/fp16 are never CPU defaults: bf16
# matmul on CPUs without AVX-512-BF16 is ~200x slower than fp32, and fp16 has no fast CPU kernels.
# gpt2-large in float64 would hold as much as gpt2-xl in float32 (measured: docs/measurements.md).
CPU_DEFAULT_DTYPE = {
    "gpt2": torch.float64,
    "gpt2-medium": torch.float64,
    "gpt2-large": torch.float32,
    "gpt2-xl": torch.float32,
}
# A checkpoint of no known size runs in float64 on CPU when its float64 parameters are no larger than
# gpt2-medium's (2.8 GB), else in float32.
CPU_FLOAT64_MAX_PARAM_BYTES = 2_900_000_000
# On GPU, float32 with TF32 disabled: exact enough to be a parity check, fast enough for gpt2-xl.
CUDA_DEFAULT_DTYPE = torch.float32


@dataclass
class ParityTarget:
    """One model under test: name, config, checkpoint source, device and dtype."""

    name: str
    config: GPTConfig
    weights: str  # "pretrained", "synthetic" or "local"
    reason: str
    device: str
    dtype: torch.dtype
    checkpoint: Path | None = None  # None until a synthetic checkpoint is generated
    seed: int = DEFAULT_SEED
    generation_seconds: float | None = field(default=None, compare=False)
    dtype_reason: str = ""
    hf_activation: str = GPT2_ACTIVATION  # Hugging Face's activation_function (--hf-activation)
    twin_checkpoint: Path | None = field(default=None, compare=False)  # None until first used

    @property
    def dtype_name(self) -> str:
        """The dtype without the torch. prefix."""
        return str(self.dtype).removeprefix("torch.")

    @property
    def memory(self) -> MemoryPlan:
        """How the run stores the weights and how much memory it is expected to need."""
        return plan_memory(self.config, self.dtype)

    def ensure_checkpoint(self) -> Path:
        """The checkpoint directory, generating the synthetic checkpoint on first use."""
        if self.checkpoint is None:
            self.checkpoint, self.generation_seconds = ensure_synthetic_checkpoint(
                self.config, self.name, self.seed
            )
        return self.checkpoint

    def ensure_twin_checkpoint(self) -> Path:
        """The synthetic checkpoint of the narrow twin (parity/numerics/tie.py), generated on first use. The
        sandbox's parent makes it before the child starts: the child's view of the cache is read-only."""
        if self.twin_checkpoint is None:
            self.twin_checkpoint, _ = ensure_synthetic_checkpoint(
                twin_config(self.config), f"{self.name}-twin"
            )
        return self.twin_checkpoint


def default_device() -> str:
    """cuda when a CUDA device is available, else cpu."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def resolve_device(device: str | None) -> str:
    """Validate --device."""
    device = device or default_device()
    if device not in DEVICE_CHOICES:
        raise UsageError(f"--device {device!r}: choose one of {', '.join(DEVICE_CHOICES)}")
    if device == "cuda" and not torch.cuda.is_available():
        raise UsageError(
            "--device cuda: no CUDA device is available "
            f"(torch {torch.__version__}, built for CUDA {torch.version.cuda}); use --device cpu"
        )
    return device


def resolve_dtype(dtype: str | None, device: str, model: str, config: GPTConfig | None = None) -> torch.dtype:
    """Validate --dtype for the device, or choose the default for the device and size."""
    if dtype is None:
        if device == "cuda":
            return CUDA_DEFAULT_DTYPE
        if model in CPU_DEFAULT_DTYPE or config is None:
            return CPU_DEFAULT_DTYPE.get(model, torch.float64)
        fits = param_bytes(config, torch.float64) <= CPU_FLOAT64_MAX_PARAM_BYTES
        return torch.float64 if fits else torch.float32
    if dtype not in DTYPES:
        raise UsageError(f"--dtype {dtype!r}: choose one of {', '.join(DTYPES)}")
    if device == "cpu" and dtype == "float16":
        raise UsageError(
            "--dtype float16 is not supported on CPU (no fast fp16 kernels); use float64 or float32"
        )
    return DTYPES[dtype]


def dtype_reason(dtype: str | None, device: str, model: str) -> str:
    """Why a target runs in its dtype, for the header: the option, or the default policy that chose it."""
    if dtype is not None:
        return f"--dtype {dtype}"
    if device == "cuda":
        return "CUDA default (TF32 off)"
    rule = "float64 while two models and a set of gradients fit comfortably, float32 above"
    if model in CPU_DEFAULT_DTYPE:
        return f"CPU default for {model}: {rule} (float64 up to gpt2-medium)"
    return f"CPU default for a checkpoint of its size: {rule}"


def _local_target(path: Path, device: str, dtype: str | None) -> ParityTarget:
    try:
        config = config_from_hf(read_hf_config(path))
    except CheckpointError as e:
        raise UsageError(f"--model {path}: {e}") from e
    size = next((n for n in GPT2_SIZES if gpt2_config(n) == config), str(path))
    return ParityTarget(
        name=path.name or str(path),
        config=config,
        weights="local",
        reason=f"local checkpoint directory {path}",
        device=device,
        dtype=resolve_dtype(dtype, device, size, config),
        checkpoint=path,
        dtype_reason=dtype_reason(dtype, device, size),
    )


def _size_target(
    name: str, weights: str, device: str, dtype: str | None, revision: str | None = None
) -> ParityTarget:
    config = gpt2_config(name)
    cached = find_cached_snapshot(name, revision) if weights in ("auto", "pretrained") else None
    if revision is not None and cached is None:
        raise UsageError(
            f"--revision {revision}: no snapshot of {name} at that revision (branch, tag or commit) in the "
            f"local Hugging Face cache ({hf_cache_dir()}; repositories {', '.join(HUB_REPOS[name])}); "
            "download it there where the network allows, or drop --revision"
        )
    if weights == "pretrained" and cached is None:
        raise UsageError(
            f"--weights pretrained: the real {name} checkpoint is not in the local Hugging Face cache "
            f"({hf_cache_dir()}) and cannot be downloaded here; download it where the network allows "
            f"(`hf download {HUB_REPOS[name][0]} config.json model.safetensors`), or use --weights synthetic"
        )
    if cached is not None:
        why = "requested" if weights == "pretrained" else "found in the local Hugging Face cache"
        return ParityTarget(
            name,
            config,
            "pretrained",
            f"OpenAI weights {why} ({cached})",
            device,
            resolve_dtype(dtype, device, name),
            checkpoint=cached,
            dtype_reason=dtype_reason(dtype, device, name),
        )
    why = "requested" if weights == "synthetic" else "no pretrained weights in the local Hugging Face cache"
    try:
        where = cache_root() / checkpoint_name(name, DEFAULT_SEED)
    except OutputPathError as e:
        raise UsageError(str(e)) from None
    return ParityTarget(
        name,
        config,
        "synthetic",
        f"{why}; seeded synthetic checkpoint at {where}",
        device,
        resolve_dtype(dtype, device, name),
        dtype_reason=dtype_reason(dtype, device, name),
    )


def _small_target(weights: str, device: str, dtype: str | None, revision: str | None) -> ParityTarget:
    if weights == "pretrained" or revision is not None:
        option = "--weights pretrained" if weights == "pretrained" else f"--revision {revision}"
        raise UsageError(
            f"{option}: the {SMALL} model has no pretrained weights; drop it or name a GPT-2 size"
        )
    c = SMALL_CONFIG
    label = f"{SMALL}-L{c.n_layer}-H{c.n_head}-C{c.n_embd}-V{c.vocab_size}-T{c.block_size}"
    return ParityTarget(
        label,
        c,
        "synthetic",
        "seeded synthetic checkpoint",
        device,
        resolve_dtype(dtype, device, SMALL),
        dtype_reason=dtype_reason(dtype, device, SMALL),
    )


def resolve_targets(
    model: str,
    weights: str,
    device: str | None,
    dtype: str | None,
    revision: str | None = None,
    allow_all: bool = True,
    hf_activation: str = GPT2_ACTIVATION,
) -> list[ParityTarget]:
    """Validate the command-line choices and return the targets, before any model is built.

    revision pins the cached hub snapshot of a named size (a branch, tag or commit; default refs/main);
    allow_all=False is for a front end that checks one model, which rejects `all`; hf_activation is
    --hf-activation, the activation_function Hugging Face's model is built with.
    """
    choices = MODEL_CHOICES if allow_all else tuple(m for m in MODEL_CHOICES if m != "all")
    if weights not in WEIGHTS_CHOICES:
        raise UsageError(f"--weights {weights!r}: choose one of {', '.join(WEIGHTS_CHOICES)}")
    if revision is not None and weights == "synthetic":
        raise UsageError("--revision pins pretrained weights; drop it or use --weights pretrained")
    if model == "all" and not allow_all:
        raise UsageError(f"--model all: this command checks one model; choose one of {', '.join(choices)}")
    device = resolve_device(device)
    if model == SMALL:
        targets = [_small_target(weights, device, dtype, revision)]
    elif model in GPT2_SIZES or model == "all":
        names = list(GPT2_SIZES) if model == "all" else [model]
        targets = [_size_target(n, weights, device, dtype, revision) for n in names]
    else:
        path = Path(os.path.expanduser(model))
        if not path.is_dir():
            raise UsageError(
                f"--model {model!r}: not a model name and not a checkpoint directory; choose one of "
                f"{', '.join(choices)} or a path to a local Hugging Face GPT-2 checkpoint directory"
            )
        if weights == "synthetic":
            raise UsageError(
                "--weights synthetic applies to named sizes; a checkpoint directory is its own weights"
            )
        if revision is not None:
            raise UsageError("--revision applies to named sizes; a checkpoint directory is its own weights")
        targets = [_local_target(path, device, dtype)]
    for t in targets:
        t.hf_activation = hf_activation
    return targets
