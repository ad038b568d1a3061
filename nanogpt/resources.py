"""Bounds on what a configuration asks the machine for, checked before anything is allocated.

A mistyped `--n_embd=1000000` or `--batch_size=10**9` would otherwise allocate until the machine swaps or
the kernel kills the run. The estimates here are lower bounds (parameters, gradients and AdamW's two
moments, plus the logits of one micro-batch), compared with the machine's total memory: a refusal is
certain to be right, and anything refused could never have run.
"""

from __future__ import annotations

import os

import torch

from nanogpt.config import ConfigError
from nanogpt.model import GPTConfig
from nanogpt.schema import param_count

GIB = 2**30


def training_bytes_lower_bound(
    config: GPTConfig, batch_size: int, block_size: int, accumulation: int = 1, bytes_per: int = 4
) -> int:
    """At least this many bytes: weights, gradients, AdamW moments, one micro-batch's logits and their
    gradient, and one step's token batches (x and y in int64; a step draws all its micro-batches first)."""
    state = 4 * param_count(config, vocab_size=config.vocab_size) * bytes_per  # padded rows too
    logits = 2 * batch_size * block_size * config.vocab_size * bytes_per
    batches = 2 * 8 * accumulation * batch_size * block_size
    return state + logits + batches


def machine_memory(device: str) -> int | None:
    """Total memory of the device training runs on (host RAM for the CPU), or None when unknown."""
    if device.startswith("cuda") and torch.cuda.is_available():
        index = int(device.split(":")[1]) if ":" in device else torch.cuda.current_device()
        return int(torch.cuda.get_device_properties(index).total_memory)
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def check_training_fits(
    config: GPTConfig, batch_size: int, block_size: int, device: str, accumulation: int = 1
) -> None:
    """Raise ConfigError when training config cannot fit in the device's total memory, whatever else runs."""
    total = machine_memory("cuda" if device == "auto" and torch.cuda.is_available() else device)
    if total is None:
        return
    need = training_bytes_lower_bound(config, batch_size, block_size, accumulation)
    if need > total:
        steps = f", gradient_accumulation_steps={accumulation}" if accumulation > 1 else ""
        raise ConfigError(
            f"n_layer={config.n_layer}, n_embd={config.n_embd}, batch_size={batch_size}, "
            f"block_size={block_size}{steps}: training needs at least {need / GIB:,.1f} GiB, more than the "
            f"{total / GIB:,.1f} GiB this machine has; use a smaller model or batch"
        )
