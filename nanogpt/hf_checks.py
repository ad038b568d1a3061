"""Strict, bounded checks of a Hugging Face GPT-2 checkpoint's config.json and weight headers.

A config field of the wrong type (`"n_layer": "12"`, `2.7`, `null`, a list), out of range (`resid_pdrop:
5`) or missing (`n_ctx` without `n_positions`, which transformers silently replaces by 1024) used to
reach torch or transformers and fail there with a long traceback, or, for `n_layer: 1000000000` with tiny
weights, allocate without limit. Here every field the loaders read is checked for type and range, and
the architecture is compared with the tensors the files actually hold (read from the safetensors
headers, never the data) before anything is allocated. The functions return problems as strings or
raise ValueError; `nanogpt.hf` turns them into CheckpointError. The JSON files themselves are read by
`nanogpt.json_files`.
"""

from __future__ import annotations

import math
import re
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from nanogpt.json_files import JsonFileError, parse_json_object

# A GPT-2 config.json is about 1 KB; a safetensors header of gpt2-xl about 50 KB.
MAX_CONFIG_BYTES = 1 << 20
MAX_HEADER_BYTES = 100 << 20  # the limit safetensors itself enforces
# Generous upper bounds (gpt2-xl: 48 layers, 1600 wide, 25 heads, 50257 tokens, 1024 positions).
BOUNDS = {
    "n_layer": 4096,
    "n_embd": 1 << 16,
    "n_head": 1 << 12,
    "vocab_size": 1 << 22,
    "n_positions": 1 << 20,
}
DROPOUTS = ("resid_pdrop", "embd_pdrop", "attn_pdrop")
BOOLEANS = (
    "scale_attn_weights",
    "scale_attn_by_inverse_layer_idx",
    "add_cross_attention",
    "reorder_and_upcast_attn",
    "tie_word_embeddings",
    "use_cache",
)
LAYER_KEY = re.compile(r"^(?:transformer\.)?h\.(\d+)\.")


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def config_field_problems(cfg: Mapping[str, Any]) -> list[str]:
    """`field: problem; fix` for every field of a GPT-2 config that has the wrong type or range."""
    problems = []
    for key, high in BOUNDS.items():
        if key not in cfg:
            continue
        v = cfg[key]
        if not _is_int(v):
            problems.append(f"{key} is {_shown(v)}, not an integer; write a whole number")
        elif not 1 <= v <= high:
            problems.append(f"{key} is {v}, outside [1, {high}]")
    if "n_positions" not in cfg and "n_ctx" in cfg:
        problems.append(
            "n_positions is missing (transformers ignores n_ctx and would use 1024); add "
            f'"n_positions": {_shown(cfg["n_ctx"])}'
        )
    for key in DROPOUTS:
        if key in cfg and not (_is_number(cfg[key]) and 0.0 <= cfg[key] < 1.0):
            problems.append(f"{key} is {_shown(cfg[key])}, not a probability in [0, 1)")
    for key in BOOLEANS:
        if key in cfg and not isinstance(cfg[key], bool):
            problems.append(f"{key} is {_shown(cfg[key])}, not true or false")
    if "activation_function" in cfg and not isinstance(cfg["activation_function"], str):
        problems.append(f"activation_function is {_shown(cfg['activation_function'])}, not a string")
    for key in ("layer_norm_epsilon", "initializer_range"):
        if key in cfg and not (_is_number(cfg[key]) and cfg[key] >= 0):
            problems.append(f"{key} is {_shown(cfg[key])}, not a finite number >= 0")
    if cfg.get("n_inner") is not None and not _is_int(cfg["n_inner"]):
        problems.append(f"n_inner is {_shown(cfg['n_inner'])}, not an integer or null")
    for key in ("bos_token_id", "eos_token_id"):
        if cfg.get(key) is not None and not (_is_int(cfg[key]) and cfg[key] >= 0):
            problems.append(f"{key} is {_shown(cfg[key])}, not a token id or null")
    n_embd, n_head = cfg.get("n_embd"), cfg.get("n_head")
    if _is_int(n_embd) and _is_int(n_head) and n_head >= 1 and n_embd % n_head:
        problems.append(f"n_embd ({n_embd}) is not divisible by n_head ({n_head})")
    return problems


def shard_names(index: Mapping[str, Any], where: str) -> list[str]:
    """The sorted shard file names of a parsed model.safetensors.index.json; ValueError says what is wrong."""
    weight_map = index.get("weight_map")
    if not isinstance(weight_map, dict) or not weight_map:
        raise ValueError(f"{where}: weight_map is missing or not a non-empty object of tensor -> shard file")
    shards = set()
    for tensor, shard in weight_map.items():
        if not isinstance(shard, str) or not shard or "/" in shard or "\\" in shard or shard in (".", ".."):
            raise ValueError(
                f"{where}: weight_map[{_shown(tensor)}] is {_shown(shard)}, "
                "not a shard file name in the checkpoint directory"
            )
        shards.add(shard)
    return sorted(shards)


def safetensors_header_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """Tensor name -> shape from a safetensors file's JSON header, reading only the header."""
    size = path.stat().st_size
    with path.open("rb") as fh:
        head = fh.read(8)
        if len(head) < 8:
            raise ValueError(
                f"{path}: corrupt or truncated safetensors file (shorter than its header length)"
            )
        n = int.from_bytes(head, "little")
        if n > min(MAX_HEADER_BYTES, size - 8):
            raise ValueError(
                f"{path}: corrupt or truncated safetensors file (header length {n} exceeds the file)"
            )
        try:
            header = parse_json_object(fh.read(n), str(path), "a safetensors header")
        except JsonFileError:
            raise ValueError(f"{path}: corrupt or truncated safetensors file (unreadable header)") from None
    shapes = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        shape = info.get("shape") if isinstance(info, dict) else None
        if not isinstance(shape, list) or not all(_is_int(d) and d >= 0 for d in shape):
            raise ValueError(
                f"{path}: corrupt or truncated safetensors file (tensor {_shown(name)} has no valid shape)"
            )
        shapes[name] = tuple(shape)
    return shapes


def is_zip_checkpoint(path: Path) -> bool:
    """True for torch.save's zip format (memory-mappable); False for the legacy pickle format."""
    return zipfile.is_zipfile(path)


def architecture_problems(cfg: Mapping[str, Any], shapes: Mapping[str, tuple[int, ...]]) -> list[str]:
    """Where config.json's architecture contradicts the stored tensors (checked before building anything)."""
    layers = {int(m.group(1)) for k in shapes if (m := LAYER_KEY.match(k))}
    problems = []
    n_layer = cfg.get("n_layer")
    if _is_int(n_layer) and (len(layers) != n_layer or (layers and max(layers) != n_layer - 1)):
        problems.append(f"n_layer is {n_layer}, but the weights hold {len(layers)} layer(s)")

    def shape_of(name: str) -> tuple[int, ...] | None:
        return shapes.get(f"transformer.{name}", shapes.get(name))

    wte, wpe = shape_of("wte.weight"), shape_of("wpe.weight")
    if wte is not None and len(wte) == 2:
        for key, stored in (("vocab_size", wte[0]), ("n_embd", wte[1])):
            if _is_int(cfg.get(key)) and cfg[key] != stored:
                problems.append(f"{key} is {cfg[key]}, but transformer.wte.weight is {wte}")
    if wpe is not None and len(wpe) == 2:
        n_pos = cfg.get("n_positions")
        if _is_int(n_pos) and n_pos != wpe[0]:
            problems.append(f"n_positions is {n_pos}, but transformer.wpe.weight is {wpe}")
    return problems
