"""Finding and reading HF GPT-2 checkpoints: the directory, its weight files, config.json, tensor shapes.

Everything here reads without materializing weights: config.json and shard indexes are parsed with strict,
bounded checks (nanogpt/hf_checks.py), shapes come from safetensors headers, and `LazyWeights` hands out
one tensor at a time. The conversion to nanoGPT's layout is in nanogpt/hf.py.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch

from nanogpt.errors import CheckpointError
from nanogpt.hf_checks import (
    MAX_CONFIG_BYTES,
    architecture_problems,
    config_field_problems,
    is_zip_checkpoint,
    safetensors_header_shapes,
    shard_names,
)
from nanogpt.hub import HUB_REPOS, find_cached_snapshot, hf_cache_dir
from nanogpt.json_files import JsonFileError, read_json_object

HF_CONFIG_FILE = "config.json"
SAFETENSORS_FILE = "model.safetensors"
SAFETENSORS_INDEX_FILE = "model.safetensors.index.json"
PYTORCH_BIN_FILE = "pytorch_model.bin"
MAX_INDEX_BYTES = 64 << 20  # a shard index lists tensor names: ~20 KB for gpt2-xl


def check_config_fields(hf_config: Mapping[str, Any], where: str = "config.json") -> None:
    """CheckpointError naming every field of a GPT-2 config with the wrong type or range."""
    problems = config_field_problems(hf_config)
    if problems:
        raise CheckpointError(
            f"{where}: {'; '.join(problems)}. Fix these fields of config.json, or re-download the checkpoint"
        )


def resolve_checkpoint_dir(name_or_path: str | os.PathLike[str]) -> Path:
    """The directory of an HF GPT-2 checkpoint: a size name found in the local HF cache, or a local path.

    A size name always means the cache, as `pytest parity/ --model gpt2` does; a local folder of that
    name is reached as a path (./gpt2).
    """
    path = Path(name_or_path).expanduser()
    name = str(name_or_path)
    if path.is_dir() and name not in HUB_REPOS:
        return path
    if name in HUB_REPOS:
        found = find_cached_snapshot(name)
        if found is None:
            raise CheckpointError(
                f"{name}: the pretrained checkpoint is not in the local Hugging Face cache "
                f"({hf_cache_dir()}) and cannot be downloaded here. Download it where the network allows "
                f"(`huggingface-cli download {HUB_REPOS[name][0]}`) or use synthetic weights"
                + (f"; for the local folder {name}, pass ./{name}" if path.is_dir() else "")
            )
        return found
    if path.exists():
        raise CheckpointError(f"{path}: is a file; pass the checkpoint directory that holds config.json")
    raise CheckpointError(
        f"{name!r} is neither a GPT-2 size ({', '.join(HUB_REPOS)}) nor an existing checkpoint directory"
    )


def weight_files(directory: Path, required: bool = True) -> list[Path]:
    """The weight files of a checkpoint directory: safetensors (single or sharded) preferred, else .bin."""
    if (directory / SAFETENSORS_FILE).is_file():
        return [directory / SAFETENSORS_FILE]
    index = directory / SAFETENSORS_INDEX_FILE
    if index.is_file():
        try:
            shards = shard_names(read_json_object(index, "a shard index", MAX_INDEX_BYTES), str(index))
        except ValueError as e:
            raise CheckpointError(f"{e}; re-download the checkpoint or rewrite its index") from None
        paths = [directory / s for s in shards]
        missing = [p.name for p in paths if not p.is_file()]
        if missing:
            raise CheckpointError(
                f"{directory}: shard(s) {', '.join(missing)} listed in the index are missing"
            )
        return paths
    if (directory / PYTORCH_BIN_FILE).is_file():
        return [directory / PYTORCH_BIN_FILE]
    if required:
        raise CheckpointError(
            f"{directory}: no weights found (expected {SAFETENSORS_FILE}, {SAFETENSORS_INDEX_FILE} or "
            f"{PYTORCH_BIN_FILE}); is this a complete Hugging Face checkpoint directory?"
        )
    return []


def read_hf_config(directory: Path) -> dict[str, Any]:
    """The parsed config.json of a checkpoint directory, checked against the shapes its weights hold.

    Only file headers are read (safetensors headers, or a memory map of a zip-format .bin), so a config
    whose n_layer or widths contradict the weights (n_layer: 1000000000 with tiny weights) is refused
    before anything of that size is allocated.
    """
    path = directory / HF_CONFIG_FILE
    if not path.is_file():
        raise CheckpointError(f"{directory}: no {HF_CONFIG_FILE}; pass a Hugging Face checkpoint directory")
    try:
        cfg = read_json_object(path, "a GPT-2 config", MAX_CONFIG_BYTES)
    except JsonFileError as e:
        raise CheckpointError(f"{e}; re-create or re-download the checkpoint") from None
    check_config_fields(cfg, str(path))  # types and ranges first: the comparison below reads them
    files = weight_files(directory, required=False)
    shapes = stored_shapes(files)
    problems = architecture_problems(cfg, shapes) if shapes else []
    if problems:
        raise CheckpointError(
            f"{path}: shape mismatch with the weights: {'; '.join(problems)}. config.json and the weights do "
            "not belong together: "
            "use the config.json saved with these weights"
        )
    return cfg


def stored_shapes(files: list[Path]) -> dict[str, tuple[int, ...]]:
    """Tensor name -> shape over weight files, from headers only; {} where that needs a full load."""
    shapes: dict[str, tuple[int, ...]] = {}
    for f in files:
        if f.suffix == ".safetensors":
            try:
                shapes.update(safetensors_header_shapes(f))
            except (OSError, ValueError) as e:
                raise CheckpointError(f"{e}; delete it and re-create or re-download it") from None
        elif is_zip_checkpoint(f):
            shapes.update(LazyWeights([f])._shapes)
        else:
            return {}  # a legacy .bin has no header: the converter checks the key set before building
    return shapes


class LazyWeights(Mapping[str, torch.Tensor]):
    """Read-only mapping of tensor name -> tensor over checkpoint files; safetensors are read on access."""

    def __init__(self, files: list[Path]) -> None:
        self._where: dict[str, Any] = {}
        self._shapes: dict[str, tuple[int, ...]] = {}
        for f in files:
            if f.suffix == ".safetensors":
                self._index_safetensors(f)
            else:
                self._index_bin(f)

    def _index_safetensors(self, f: Path) -> None:
        from safetensors import safe_open

        try:
            handle = safe_open(str(f), framework="pt")
            keys = list(handle.keys())
            for k in keys:
                self._shapes[k] = tuple(handle.get_slice(k).get_shape())
                self._where[k] = handle
        except Exception as e:  # safetensors raises its own error types for corrupt headers
            raise CheckpointError(
                f"{f}: corrupt or truncated safetensors file ({e}); delete it and re-create or re-download it"
            ) from e
        # A truncated file can have an intact header; its data must still be as long as the header says.
        with f.open("rb") as fh:
            header_len = int.from_bytes(fh.read(8), "little")
            header = json.loads(fh.read(header_len))
        end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
        if f.stat().st_size < 8 + header_len + end:
            raise CheckpointError(
                f"{f}: truncated safetensors file ({f.stat().st_size} bytes, header promises "
                f"{8 + header_len + end}); delete it and re-create or re-download it"
            )

    def _index_bin(self, f: Path) -> None:
        try:
            # mmap needs torch.save's zip format; a legacy (pickle) .bin,
            # which transformers loads, is read whole.
            sd = torch.load(str(f), map_location="cpu", weights_only=True, mmap=is_zip_checkpoint(f))
        except Exception as e:
            detail = " ".join(str(e).split())[:200] or type(e).__name__
            raise CheckpointError(
                f"{f}: unreadable PyTorch checkpoint ({detail}); re-create or re-download it"
            ) from None
        if not isinstance(sd, dict):
            raise CheckpointError(f"{f}: expected a state dict, got {type(sd).__name__}")
        for k, v in sd.items():
            if isinstance(v, torch.Tensor):
                self._shapes[k] = tuple(v.shape)
                self._where[k] = v

    def shape(self, key: str) -> tuple[int, ...]:
        """Shape of a stored tensor, without reading it."""
        return self._shapes[key]

    def __getitem__(self, key: str) -> torch.Tensor:
        src = self._where[key]
        return src if isinstance(src, torch.Tensor) else src.get_tensor(key)

    def __iter__(self) -> Iterator[str]:
        return iter(self._where)

    def __len__(self) -> int:
        return len(self._where)
