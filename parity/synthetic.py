"""Deterministic synthetic GPT-2 checkpoints: the exact architecture of a size, seeded random weights.

Where no real GPT-2 weights are available (no network, empty Hugging Face cache), the harness writes a
checkpoint in the Hugging Face format (config.json + model.safetensors, tie_word_embeddings=True) and both
implementations load it through their normal `from_pretrained` paths, exactly like real weights.

Every tensor is drawn from its own generator, seeded from (seed, tensor name) with a stable hash, so a
checkpoint is byte-identical across runs, processes and machines, and independent of generation order.
Unlike a fresh init, biases and LayerNorm parameters are random too: a bias that one implementation drops
would otherwise go unnoticed because it is zero. Writes are atomic (temporary directory, then rename) and
serialized by a file lock, so an interrupted run never leaves a half-written checkpoint under the final
name, and parallel workers generate a checkpoint once. The safetensors file is streamed: tensors are
filled in bulk on a few threads (one generator per tensor, so threads cannot change the values) and
written as they are done, so generating gpt2-xl (6.2 GB) takes seconds and holds a few tensors in memory,
not the whole model.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import math
import os
import shutil
import sys
import time
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch

from nanogpt.atomic import atomic_directory
from nanogpt.hf import HF_CONFIG_FILE, SAFETENSORS_FILE, hf_config_from_gpt
from nanogpt.model import GPTConfig, gpt2_config

# Bump when the generation recipe changes, so old cached checkpoints are not reused.
SYNTHETIC_FORMAT_VERSION = 1
DEFAULT_SEED = 1337
CACHE_ENV_VAR = "NANOGPT_PARITY_CACHE"


def cache_root() -> Path:
    """Where synthetic checkpoints are cached: $NANOGPT_PARITY_CACHE, else ~/.cache/nanogpt-parity."""
    env = os.environ.get(CACHE_ENV_VAR)
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "nanogpt-parity"


def checkpoint_name(label: str, seed: int) -> str:
    """The cache directory name of a synthetic checkpoint."""
    return f"synthetic-{label}-seed{seed}-v{SYNTHETIC_FORMAT_VERSION}"


def _tensor_seed(seed: int, name: str) -> int:
    digest = hashlib.sha256(f"{seed}:{name}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def _init_spec(name: str, n_layer: int) -> tuple[float, float]:
    """(mean, std) of a synthetic tensor: GPT-2's init for weights, non-trivial values elsewhere."""
    if name.endswith(("ln_1.weight", "ln_2.weight", "ln_f.weight")):
        return 1.0, 0.1  # LayerNorm gains near one, but not exactly: a dropped gain must show
    if name.endswith(".bias"):
        return 0.0, 0.02  # non-zero biases: a dropped bias must show
    if name.endswith("c_proj.weight"):
        return 0.0, 0.02 / math.sqrt(2 * n_layer)
    if name.endswith("wpe.weight"):
        return 0.0, 0.01
    return 0.0, 0.02


def synthetic_shapes(config: GPTConfig) -> dict[str, tuple[int, ...]]:
    """Name -> shape of every tensor of a tied GPT-2 checkpoint in HF layout (no lm_head: it is wte)."""
    C, V, L = config.n_embd, config.vocab_size, config.n_layer
    shapes: dict[str, tuple[int, ...]] = {
        "transformer.wte.weight": (V, C),
        "transformer.wpe.weight": (config.block_size, C),
    }
    for i in range(L):
        p = f"transformer.h.{i}."
        shapes.update(
            {
                p + "ln_1.weight": (C,),
                p + "ln_1.bias": (C,),
                p + "attn.c_attn.weight": (C, 3 * C),  # Conv1D layout: (in, out)
                p + "attn.c_attn.bias": (3 * C,),
                p + "attn.c_proj.weight": (C, C),
                p + "attn.c_proj.bias": (C,),
                p + "ln_2.weight": (C,),
                p + "ln_2.bias": (C,),
                p + "mlp.c_fc.weight": (C, 4 * C),
                p + "mlp.c_fc.bias": (4 * C,),
                p + "mlp.c_proj.weight": (4 * C, C),
                p + "mlp.c_proj.bias": (C,),
            }
        )
    shapes["transformer.ln_f.weight"] = (C,)
    shapes["transformer.ln_f.bias"] = (C,)
    return shapes


def synthetic_tensor(
    name: str, shape: tuple[int, ...], n_layer: int, seed: int = DEFAULT_SEED
) -> torch.Tensor:
    """One float32 tensor, filled in bulk by its own generator seeded from (seed, name)."""
    mean, std = _init_spec(name, n_layer)
    g = torch.Generator().manual_seed(_tensor_seed(seed, name))
    return torch.empty(shape, dtype=torch.float32).normal_(mean, std, generator=g)


def synthetic_hf_weights(config: GPTConfig, seed: int = DEFAULT_SEED) -> dict[str, torch.Tensor]:
    """HF-layout float32 weights of a tied GPT-2 (no lm_head: it is the token embedding), seeded per tensor."""
    return {
        name: synthetic_tensor(name, shape, config.n_layer, seed)
        for name, shape in synthetic_shapes(config).items()
    }


def write_synthetic_safetensors(path: Path, config: GPTConfig, seed: int = DEFAULT_SEED) -> None:
    """Stream the synthetic weights into a safetensors file: the same tensors as `synthetic_hf_weights`.

    The format is an 8-byte little-endian header length, a JSON header (dtype, shape and byte range of each
    tensor), padded with spaces to 8 bytes, then the raw tensors back to back in header order.
    """
    if sys.byteorder != "little":
        raise RuntimeError(
            "safetensors stores little-endian data; write synthetic checkpoints on such a machine"
        )
    shapes = synthetic_shapes(config)
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, shape in shapes.items():
        nbytes = math.prod(shape) * 4
        header[name] = {"dtype": "F32", "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)
    workers = max(1, min(4, os.cpu_count() or 1))
    pending: deque[Future[torch.Tensor]] = deque()
    names = iter(shapes.items())
    with path.open("wb") as fh, ThreadPoolExecutor(max_workers=workers) as pool:
        fh.write(len(blob).to_bytes(8, "little") + blob)
        # A window of workers + 1 tensors in flight: the threads fill (torch releases the GIL) while this
        # thread writes, and memory stays a few tensors however large the model.
        while True:
            while len(pending) <= workers:
                item = next(names, None)
                if item is None:
                    break
                pending.append(pool.submit(synthetic_tensor, item[0], item[1], config.n_layer, seed))
            if not pending:
                break
            tensor = pending.popleft().result()
            fh.write(memoryview(tensor.numpy()).cast("B"))
            del tensor
        fh.flush()
        os.fsync(fh.fileno())


def write_synthetic_checkpoint(out: Path, config: GPTConfig, seed: int = DEFAULT_SEED) -> Path:
    """Write config.json + model.safetensors into a temporary sibling directory, then rename it to out."""
    hf_config = hf_config_from_gpt(config)
    hf_config["nanogpt_parity_synthetic"] = {"seed": seed, "version": SYNTHETIC_FORMAT_VERSION}
    with atomic_directory(out) as tmp:
        (tmp / HF_CONFIG_FILE).write_text(json.dumps(hf_config, indent=2, sort_keys=True) + "\n")
        write_synthetic_safetensors(tmp / SAFETENSORS_FILE, config, seed)
    return out


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def _remove_stale_temporaries(root: Path, name: str) -> None:
    """Delete leftovers of interrupted writes (temporary and replaced directories) of this checkpoint."""
    for leftover in root.glob(f".{name}.*"):
        if leftover.is_dir():
            shutil.rmtree(leftover, ignore_errors=True)


def ensure_synthetic_checkpoint(
    config: GPTConfig, label: str, seed: int = DEFAULT_SEED, root: Path | None = None
) -> tuple[Path, float | None]:
    """The cached synthetic checkpoint for config, written first if absent; returns (dir, seconds spent writing).

    seconds is None when the checkpoint was already cached.
    """
    root = cache_root() if root is None else root
    name = checkpoint_name(label, seed)
    out = root / name
    if (out / "config.json").is_file() and (out / "model.safetensors").is_file():
        return out, None
    with _file_lock(root / f"{name}.lock"):
        if (out / "config.json").is_file() and (out / "model.safetensors").is_file():
            return out, None  # another process finished it while we waited for the lock
        _remove_stale_temporaries(root, name)
        start = time.perf_counter()
        write_synthetic_checkpoint(out, config, seed)
        _remove_stale_temporaries(root, name)  # the directory moved aside, if any
        return out, time.perf_counter() - start


def ensure_synthetic_gpt2(
    name: str, seed: int = DEFAULT_SEED, root: Path | None = None
) -> tuple[Path, float | None]:
    """The synthetic checkpoint of an OpenAI GPT-2 size (gpt2 ... gpt2-xl)."""
    return ensure_synthetic_checkpoint(gpt2_config(name), name, seed, root)
