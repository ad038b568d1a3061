"""Deterministic synthetic GPT-2 checkpoints: the exact architecture of a size, seeded random weights.

Where no real GPT-2 weights are available (no network, empty Hugging Face cache), the harness writes a
checkpoint in the shape of OpenAI's upload to the Hugging Face hub (config.json with dropout 0.1 and
n_ctx; model.safetensors with GPT2Model keys, no `transformer.` prefix, and the `attn.bias` mask
buffers), so both implementations load it through their normal `from_pretrained` paths, exactly as
they load real weights.

Every tensor is drawn from its own generator, seeded from (seed, tensor name) with a stable hash, so a
checkpoint is byte-identical across runs, processes and machines, and independent of generation order.
Unlike a fresh init, biases and LayerNorm parameters are random too: a bias that one implementation drops
would otherwise go unnoticed because it is zero. Writes are atomic (temporary directory, then rename) and
serialized by a file lock, so an interrupted run never leaves a half-written checkpoint under the final
name, and parallel workers generate a checkpoint once; a lock held past LOCK_TIMEOUT_S is an error that
names the lock file. The safetensors file is streamed: tensors are
filled in bulk on a few threads (one generator per tensor, so threads cannot change the values) and
written as they are done, so generating gpt2-xl (6.2 GB) takes seconds and holds a few tensors in memory,
not the whole model. A SHA256SUMS file written with the checkpoint is checked whenever the cache is
reused; a checkpoint whose bytes changed on disk is regenerated, with a one-line note.
"""

from __future__ import annotations

import contextlib
import dataclasses
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
from nanogpt.hf import HF_CONFIG_FILE, SAFETENSORS_FILE, CheckpointError, hf_config_from_gpt
from nanogpt.model import GPTConfig, gpt2_config
from nanogpt.paths import resolve_output_dir
from nanogpt.schema import hf_tensor_shapes
from parity.subject.progress import Phase, note, phase

# Bump when the generation recipe changes, so old cached checkpoints are not reused.
SYNTHETIC_FORMAT_VERSION = 2
DEFAULT_SEED = 1337
CACHE_ENV_VAR = "NANOGPT_PARITY_CACHE"
CHECKSUM_FILE = "SHA256SUMS"
HASH_CHUNK_BYTES = 16 << 20
# OpenAI's upload configures dropout 0.1 (attn_pdrop, embd_pdrop, resid_pdrop); eval mode must disable it.
OPENAI_DROPOUT = 0.1
# Generation gets progress lines from this size on (gpt2 is 0.5 GB, a second or two).
PROGRESS_MIN_BYTES = 100_000_000
# How long a run waits for another process to finish writing a checkpoint (gpt2-xl takes seconds to a
# minute on a slow disk), and how often it looks.
LOCK_TIMEOUT_S = 300.0
LOCK_POLL_S = 0.2


def cache_root() -> Path:
    """Where synthetic checkpoints are cached: $NANOGPT_PARITY_CACHE, else ~/.cache/nanogpt-parity."""
    env = os.environ.get(CACHE_ENV_VAR)
    if env is not None:
        # Validated like every output path: a file, a device or an unwritable place is one clear error.
        return resolve_output_dir(env, CACHE_ENV_VAR)
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return resolve_output_dir(
        base / "nanogpt-parity", "the synthetic checkpoint cache (set NANOGPT_PARITY_CACHE)"
    )


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
    return hf_tensor_shapes(config)


def synthetic_tensor(
    name: str, shape: tuple[int, ...], n_layer: int, seed: int = DEFAULT_SEED
) -> torch.Tensor:
    """One float32 tensor, filled in bulk by its own generator seeded from (seed, name)."""
    mean, std = _init_spec(name, n_layer)
    g = torch.Generator().manual_seed(_tensor_seed(seed, name))
    return torch.empty(shape, dtype=torch.float32).normal_(mean, std, generator=g)


def synthetic_hf_weights(config: GPTConfig, seed: int = DEFAULT_SEED) -> dict[str, torch.Tensor]:
    """HF-layout float32 weights of a tied GPT-2 (no lm_head: it is the token embedding) seeded per tensor."""
    return {
        name: synthetic_tensor(name, shape, config.n_layer, seed)
        for name, shape in synthetic_shapes(config).items()
    }


def stored_name(name: str) -> str:
    """The key a `transformer.`-prefixed tensor has in OpenAI's upload (saved from GPT2Model: no prefix)."""
    return name.removeprefix("transformer.")


def causal_mask(block_size: int) -> torch.Tensor:
    """The `attn.bias` buffer of OpenAI's upload: a (1, 1, T, T) lower-triangular float32 mask of ones."""
    mask = torch.tril(torch.ones(block_size, block_size, dtype=torch.float32))
    return mask.view(1, 1, block_size, block_size)


def stored_layout(config: GPTConfig) -> dict[str, tuple[str | None, tuple[int, ...]]]:
    """Stored key -> (synthetic tensor it holds, or None for a causal mask; shape), in file order."""
    layout: dict[str, tuple[str | None, tuple[int, ...]]] = {}
    T = config.block_size
    for name, shape in synthetic_shapes(config).items():
        layout[stored_name(name)] = (name, shape)
        if name.endswith(".attn.c_proj.bias"):
            # Each block's mask buffer, as transformers saved them when OpenAI's checkpoint was uploaded.
            layout[stored_name(name).removesuffix("c_proj.bias") + "bias"] = (None, (1, 1, T, T))
    return layout


def synthetic_openai_weights(config: GPTConfig, seed: int = DEFAULT_SEED) -> dict[str, torch.Tensor]:
    """Every tensor of the written model.safetensors under its stored key (GPT2Model keys, masks included)."""
    mask = causal_mask(config.block_size)
    return {
        key: mask if source is None else synthetic_tensor(source, shape, config.n_layer, seed)
        for key, (source, shape) in stored_layout(config).items()
    }


def synthetic_hf_config(config: GPTConfig, seed: int = DEFAULT_SEED) -> dict[str, Any]:
    """config.json in the shape of OpenAI's upload: dropout 0.1, n_ctx, the summary fields, no tie key.

    transformers' GPT-2 ties the head by default, as it does for the real checkpoint, whose config does
    not say so either; the configured dropout makes every eval-mode check prove that eval disables it.
    """
    cfg = hf_config_from_gpt(dataclasses.replace(config, dropout=OPENAI_DROPOUT))
    cfg.pop("tie_word_embeddings", None)
    for key in (
        "n_inner",
        "scale_attn_weights",
        "scale_attn_by_inverse_layer_idx",
        "reorder_and_upcast_attn",
        "use_cache",
    ):
        cfg.pop(key, None)  # absent from OpenAI's config.json: transformers' defaults apply
    cfg.update(
        summary_activation=None,
        summary_first_dropout=OPENAI_DROPOUT,
        summary_proj_to_labels=True,
        summary_type="cls_index",
        summary_use_proj=True,
        task_specific_params={"text-generation": {"do_sample": True, "max_length": 50}},
        nanogpt_parity_synthetic={"seed": seed, "version": SYNTHETIC_FORMAT_VERSION},
    )
    return cfg


def synthetic_checkpoint_bytes(config: GPTConfig) -> int:
    """The size of the tensors of a synthetic checkpoint (float32, masks included)."""
    return sum(math.prod(shape) * 4 for _, shape in stored_layout(config).values())


def write_synthetic_safetensors(
    path: Path, config: GPTConfig, seed: int = DEFAULT_SEED, progress: Phase | None = None
) -> str:
    """Stream the synthetic checkpoint's tensors into a safetensors file; return the file's sha256.

    The format is an 8-byte little-endian header length, a JSON header (dtype, shape and byte range of each
    tensor), padded with spaces to 8 bytes, then the raw tensors back to back in header order.
    """
    if sys.byteorder != "little":
        raise RuntimeError(
            "safetensors stores little-endian data; write synthetic checkpoints on such a machine"
        )
    layout = stored_layout(config)
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for key, (_, shape) in layout.items():
        nbytes = math.prod(shape) * 4
        header[key] = {"dtype": "F32", "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)
    blob = len(blob).to_bytes(8, "little") + blob
    digest = hashlib.sha256(blob)
    mask = causal_mask(config.block_size)
    workers = max(1, min(4, os.cpu_count() or 1))
    pending: deque[Future[torch.Tensor]] = deque()
    items = iter(layout.values())
    written = 0
    with path.open("wb") as fh, ThreadPoolExecutor(max_workers=workers) as pool:
        fh.write(blob)
        # A window of workers + 1 tensors in flight: the threads fill (torch releases the GIL) while this
        # thread hashes and writes, and memory stays a few tensors however large the model.
        while True:
            while len(pending) <= workers:
                item = next(items, None)
                if item is None:
                    break
                source, shape = item
                if source is None:
                    pending.append(pool.submit(lambda: mask))
                else:
                    pending.append(pool.submit(synthetic_tensor, source, shape, config.n_layer, seed))
            if not pending:
                break
            data = memoryview(pending.popleft().result().numpy()).cast("B")
            digest.update(data)
            fh.write(data)
            written += len(data)
            if progress is not None:
                progress.update(written / 1e9)
            del data
        fh.flush()
        os.fsync(fh.fileno())
    return digest.hexdigest()


def write_synthetic_checkpoint(
    out: Path, config: GPTConfig, seed: int = DEFAULT_SEED, progress: Phase | None = None
) -> Path:
    """Write config.json, model.safetensors and SHA256SUMS into a temporary sibling, then rename it to out."""
    config_bytes = (json.dumps(synthetic_hf_config(config, seed), indent=2, sort_keys=True) + "\n").encode()
    with atomic_directory(out) as tmp:
        (tmp / HF_CONFIG_FILE).write_bytes(config_bytes)
        weights_sha = write_synthetic_safetensors(tmp / SAFETENSORS_FILE, config, seed, progress)
        sums = {HF_CONFIG_FILE: hashlib.sha256(config_bytes).hexdigest(), SAFETENSORS_FILE: weights_sha}
        # The format of `sha256sum`, so that `sha256sum -c SHA256SUMS` checks a checkpoint by hand too.
        (tmp / CHECKSUM_FILE).write_text("".join(f"{h}  {name}\n" for name, h in sums.items()))
    return out


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(HASH_CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


# Checkpoints this process has hashed, by their files' identity (inode, size, modification time): a run asks
# for the same checkpoint several times, and hashing gpt2's (0.5 GB) takes 0.35 s each time.
_VERIFIED: set[tuple[tuple[int, int, int], ...]] = set()


def _identity(directory: Path) -> tuple[tuple[int, int, int], ...]:
    stats = (os.stat(directory / name) for name in (CHECKSUM_FILE, HF_CONFIG_FILE, SAFETENSORS_FILE))
    return tuple((st.st_ino, st.st_size, st.st_mtime_ns) for st in stats)


def checkpoint_problem(directory: Path) -> str | None:
    """Why a cached synthetic checkpoint cannot be reused (missing, or not the bytes written), or None.

    The files are hashed once per process: again only when their inode, size or modification time changed.
    """
    sums_file = directory / CHECKSUM_FILE
    if not directory.is_dir():
        return "absent"
    if not sums_file.is_file():
        return f"no {CHECKSUM_FILE} (written by an older version, or incomplete)"
    try:
        identity = _identity(directory)
    except OSError:
        identity = None
    if identity in _VERIFIED:
        return None
    sums: dict[str, str] = {}
    for line in sums_file.read_text(errors="replace").splitlines():
        digest, _, name = line.partition("  ")
        sums[name] = digest
    for name in (HF_CONFIG_FILE, SAFETENSORS_FILE):
        if name not in sums:
            return f"{CHECKSUM_FILE} does not list {name}"
        if not (directory / name).is_file():
            return f"{name} is missing"
        if _file_sha256(directory / name) != sums[name]:
            return f"{name} does not match its sha256 in {CHECKSUM_FILE} (modified or corrupted on disk)"
    if identity is not None:
        _VERIFIED.add(identity)
    return None


@contextlib.contextmanager
def _no_phase() -> Iterator[None]:
    yield None


@contextlib.contextmanager
def _file_lock(path: Path, timeout_s: float | None = None) -> Iterator[None]:
    """Hold an exclusive lock on path; CheckpointError naming it and the fix if it is not free in time."""
    timeout_s = LOCK_TIMEOUT_S if timeout_s is None else timeout_s
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as fh:
        deadline, noted = time.monotonic() + timeout_s, False
        while True:
            try:
                fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise CheckpointError(
                        f"{path}: another process has held this lock for {timeout_s:g} s (another run "
                        "generating the synthetic checkpoint, or a stuck one); if no run is writing it, end "
                        f"that process (fuser {path}) or remove {path}"
                    ) from None
                if not noted:
                    note(f"waiting for {path}: another process is writing the synthetic checkpoint")
                    noted = True
                time.sleep(LOCK_POLL_S)
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
    """The cached synthetic checkpoint for config, verified against its sha256 sums or (re)written.

    Returns (dir, seconds spent writing); seconds is None when the cached checkpoint was reused.
    """
    root = cache_root() if root is None else root
    name = checkpoint_name(label, seed)
    out = root / name
    if checkpoint_problem(out) is None:
        return out, None
    with _file_lock(root / f"{name}.lock"):
        problem = checkpoint_problem(out)  # another process may have (re)written it while we waited
        if problem is None:
            return out, None
        if problem != "absent":
            note(f"synthetic checkpoint {out}: {problem}; regenerating it")
        _remove_stale_temporaries(root, name)
        start = time.perf_counter()
        gb = synthetic_checkpoint_bytes(config) / 1e9
        announce = gb * 1e9 >= PROGRESS_MIN_BYTES  # tiny test checkpoints take milliseconds: no lines
        with (
            phase(f"generating the synthetic {label} checkpoint", gb, "GB") if announce else _no_phase() as p
        ):
            write_synthetic_checkpoint(out, config, seed, p)
        _remove_stale_temporaries(root, name)  # the directory moved aside, if any
        return out, time.perf_counter() - start


def ensure_synthetic_gpt2(
    name: str, seed: int = DEFAULT_SEED, root: Path | None = None
) -> tuple[Path, float | None]:
    """The synthetic checkpoint of an OpenAI GPT-2 size (gpt2 ... gpt2-xl)."""
    return ensure_synthetic_checkpoint(gpt2_config(name), name, seed, root)
