"""Training checkpoints: what a resumed run needs to continue exactly, written so a crash cannot lose it.

A checkpoint (`out_dir/ckpt.pt`) holds the model weights and architecture, the optimizer and grad-scaler
states, the iteration, the best validation loss, the training config, and every random-number state the
run consumes: torch CPU and CUDA, the data sampler's generator, numpy's and Python's. Weights and optimizer
states are gathered through `torch.distributed.checkpoint.state_dict` as full (unsharded) tensors keyed
by parameter name, so a checkpoint from a compiled, DDP or FSDP2 model loads into a plain one and vice
versa, and no `_orig_mod.`/`module.` prefix ever reaches the file. Files are written to a temporary name
in the same directory, fsynced, then renamed over the old one: the previous checkpoint stays intact until
the new one is complete. Loading uses `torch.load(weights_only=True)` and validates the contents before
any of it is used, so a corrupt, truncated or mismatched file is a CheckpointError that names the fix.
"""

from __future__ import annotations

import os
import random
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from nanogpt.atomic import atomic_file
from nanogpt.checkpoint_fields import check_training_state, payload_checksum, verify_checksum
from nanogpt.hf import CheckpointError
from nanogpt.mismatch import mismatch_clauses
from nanogpt.model import GPT, GPTConfig
from nanogpt.paths import resolve_output_file

CHECKPOINT_FILE = "ckpt.pt"
FORMAT = "nanogpt-parity/train-checkpoint-v1"
REQUIRED_KEYS = ("model", "model_config", "optimizer", "iter_num", "best_val_loss", "rng", "train_config")
# Prefixes wrappers add to state-dict keys: torch.compile's OptimizedModule and DDP.
WRAPPER_PREFIXES = ("_orig_mod.", "module.")


# ----------------------------------------------------------------------------------------------------------
# writing


def save_checkpoint(payload: dict[str, Any], path: str | os.PathLike[str]) -> Path:
    """Atomically write payload to path: a temporary file in the same directory, fsync, os.replace.

    Temporaries left by a save that was killed (`.ckpt.pt.tmp-PID-*` of a process that no longer runs)
    are removed first. The payload gets a content hash of every tensor (see payload_checksum).
    """
    path = resolve_output_file(path, "checkpoint")  # a symlinked ckpt.pt is written through, not replaced
    payload = dict(payload, checksum=payload_checksum(payload))
    with atomic_file(path, "wb") as fh:
        torch.save(payload, fh)
    return path


def gather_training_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> tuple[dict, dict]:
    """Full (unsharded, CPU) model and optimizer state dicts keyed by clean parameter names.

    Collective under FSDP2: every rank must call it.
    """
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

    from nanogpt.distributed import unwrap_model

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    return get_state_dict(unwrap_model(model), optimizer, options=options)


def capture_rng_state() -> dict[str, Any]:
    """This process's global random states: torch CPU (and CUDA), numpy, Python."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "torch_cpu": torch.get_rng_state(),
        # numpy's key array as a tensor: weights_only loading accepts tensors, not numpy arrays
        "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)),
        "python": random.getstate(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["torch_cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Restore the states captured by capture_rng_state."""
    torch.set_rng_state(state["torch_cpu"])
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "torch_cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["torch_cuda"])


# ----------------------------------------------------------------------------------------------------------
# reading


def strip_wrapper_prefixes(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """State-dict keys without torch.compile/DDP prefixes (for checkpoints written by other tools)."""
    clean = {}
    for key, value in state_dict.items():
        stripped = True
        while stripped:
            stripped = False
            for prefix in WRAPPER_PREFIXES:
                if key.startswith(prefix):
                    key, stripped = key[len(prefix) :], True
        clean[key] = value
    return clean


def load_checkpoint(path: str | os.PathLike[str], require_training_state: bool = True) -> dict[str, Any]:
    """Read and validate a checkpoint; CheckpointError (naming the file and the fix) if it is unusable.

    With require_training_state=False, a weights-only checkpoint (model + config, e.g. from upstream
    nanoGPT, whose `model_args` is accepted for `model_config`) is enough, as for sampling.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(
            f"{path}: no checkpoint here; train first, or start with --init_from=scratch (or a GPT-2 model)"
        )
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises RuntimeError, EOFError, UnpicklingError... for damaged files
        text = str(e).strip()
        detail = text.splitlines()[0] if text else type(e).__name__
        if "WeightsUnpickler error:" in text:
            detail = text.split("WeightsUnpickler error:")[1].strip().splitlines()[0]
            if detail.startswith("Unsupported global"):
                # readable, but it holds Python objects beyond tensors and plain data: not ours, not safe
                raise CheckpointError(
                    f"{path}: not a nanogpt checkpoint ({detail}); only tensors and plain data are loaded"
                ) from None
        raise CheckpointError(
            f"{path}: corrupt or truncated checkpoint ({detail}); delete it or restore a good copy"
        ) from None
    if not isinstance(ckpt, dict):
        raise CheckpointError(f"{path}: not a nanogpt checkpoint (a {type(ckpt).__name__}, not a dict)")
    verify_checksum(ckpt, path)
    if "model_config" not in ckpt and "model_args" in ckpt:
        ckpt["model_config"] = ckpt["model_args"]  # upstream nanoGPT's name
    required = REQUIRED_KEYS if require_training_state else ("model", "model_config")
    missing = [k for k in required if k not in ckpt]
    if missing:
        raise CheckpointError(f"{path}: not a complete training checkpoint (missing {', '.join(missing)})")
    if not isinstance(ckpt["model"], dict):
        raise CheckpointError(f"{path}: field 'model' is not a state dict; not a nanogpt checkpoint")
    ckpt["model"] = strip_wrapper_prefixes(ckpt["model"])
    config = model_config_of(ckpt, path)
    check_model_state(ckpt["model"], config, path)
    if require_training_state:
        with torch.device("meta"):
            params = {n: p.shape for n, p in GPT(config).named_parameters()}
        check_training_state(ckpt, params, path)
    return ckpt


def model_config_of(ckpt: dict[str, Any], path: str | os.PathLike[str] = "checkpoint") -> GPTConfig:
    """The GPTConfig stored in a checkpoint, validated."""
    args = ckpt["model_config"]
    valid = set(GPTConfig.__dataclass_fields__)
    if not isinstance(args, dict) or not set(args) <= valid:
        unknown = sorted(set(args) - valid) if isinstance(args, dict) else []
        raise CheckpointError(
            f"{path}: unreadable model_config (unknown keys {unknown}); not a GPT checkpoint"
        )
    try:
        return GPTConfig(**args)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: invalid model_config ({e})") from None


def check_model_state(
    state_dict: dict[str, torch.Tensor], config: GPTConfig, path: Any = "checkpoint"
) -> None:
    """Raise CheckpointError unless state_dict has exactly the keys and shapes of a GPT with config."""
    # The layer count first: building even a meta model of a hostile n_layer=10**9 would never finish.
    layers = {k.split(".")[2] for k in state_dict if k.startswith("transformer.h.")}
    if len(layers) != config.n_layer or layers != {str(i) for i in range(config.n_layer)}:
        gap = next(i for i in range(len(layers) + 1) if str(i) not in layers)
        problem = (
            f"missing transformer.h.{gap}.*" if gap < config.n_layer else f"unexpected transformer.h.{gap}.*"
        )
        raise CheckpointError(
            f"{path}: weights do not fit the model config stored with them (n_layer={config.n_layer}, "
            f"n_embd={config.n_embd}): {problem} (the weights hold {len(layers)} layers)"
        )
    with torch.device("meta"):
        expected = {k: tuple(v.shape) for k, v in GPT(config).state_dict().items()}
    got = {k: tuple(v.shape) for k, v in state_dict.items() if isinstance(v, torch.Tensor)}
    missing = sorted(set(expected) - set(got))
    unexpected = sorted(set(got) - set(expected))
    wrong = [f"{k} {got[k]} (expected {expected[k]})" for k in expected if k in got and got[k] != expected[k]]
    if missing or unexpected or wrong:
        raise CheckpointError(
            f"{path}: weights do not fit the model config stored with them (n_layer={config.n_layer}, "
            f"n_embd={config.n_embd}): {mismatch_clauses(missing, unexpected, wrong)}"
        )


def build_model(ckpt: dict[str, Any]) -> GPT:
    """A GPT with the checkpoint's architecture and weights (tied again when the config says tied)."""
    config = model_config_of(ckpt)
    with torch.device("meta"):
        model = GPT(config)  # no init: every tensor comes from the checkpoint
    state = dict(ckpt["model"])
    if config.tie_weights:
        state["lm_head.weight"] = state["transformer.wte.weight"]
    model.load_state_dict(state, strict=True, assign=True)
    if config.tie_weights:
        model.tie_weights()  # assign=True gives each key its own Parameter: share one again
    return model


def load_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
    """Load a name-keyed (full) optimizer state into optimizer, sharding it under FSDP2."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    from nanogpt.distributed import unwrap_model

    try:
        set_optimizer_state_dict(
            unwrap_model(model), optimizer, state, options=StateDictOptions(full_state_dict=True)
        )
    except (KeyError, RuntimeError, ValueError) as e:
        raise CheckpointError(f"optimizer state does not fit this model/optimizer ({e})") from None


def training_payload(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    *,
    iter_num: int,
    best_val_loss: float,
    train_config: Any,
    rng: list[dict[str, Any]],
    sampler_state: dict[str, torch.Tensor],
    scaler: torch.amp.GradScaler | None = None,
) -> dict[str, Any]:
    """Everything a resumed run needs, as one dict for save_checkpoint (collective under FSDP2)."""
    from nanogpt.distributed import unwrap_model

    model_sd, optim_sd = gather_training_state(model, optimizer)
    return {
        "format": FORMAT,
        "model": model_sd,
        "model_config": asdict(unwrap_model(model).config),
        "optimizer": optim_sd,
        "scaler": scaler.state_dict() if scaler is not None and scaler.is_enabled() else None,
        "iter_num": iter_num,
        "best_val_loss": best_val_loss,
        "train_config": asdict(train_config),
        "rng": rng,
        "sampler": sampler_state,
        "torch_version": str(torch.__version__),  # a plain str: TorchVersion is not weights_only-safe
    }
