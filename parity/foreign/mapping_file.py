"""A mapping file (`--mapping FILE`): the user's word on where GPT-2's tensors live, over discovered roles.

The file is a JSON object. Each key is a Hugging Face GPT-2 checkpoint name (`wte.weight`, `ln_f.bias`,
`h.{i}.attn.c_attn.weight`, `lm_head.weight`), `{i}` standing for every block; each value says where that
tensor goes in the implementation: its parameter name (`{i}` again for the block), or an object
`{"target": NAME, "rows": "query" | "key" | "value" | [start, end], "transposed": true}` (rows of the
tensor in nn.Linear's (out, in) layout; transposed: the parameter is stored (in, out), as Conv1D), or a
list of such objects (a fused tensor split over several parameters). `lm_head.weight` names the head:
the embedding's own Parameter under another name is the tie, any other parameter an untied head. Entries
replace the discovered mapping's for their tensors; the result is validated against the model its
__init__ built (every target a parameter, every shape GPT-2's, every GPT-2 tensor placed) before any
weight is loaded.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from torch import nn

from nanogpt.schema import (
    EMBEDDING,
    HEAD,
    PREFIX,
    QKV,
    Placement,
    TensorMapping,
    checkpoint_name,
    tensor_shapes,
)
from parity.core.errors import ImplementationError, UsageError
from parity.foreign.roles import RoleMap

BLOCK = "{i}"
# The row blocks a "rows" word names, in multiples of n_embd (c_attn's query, key and value).
ROW_WORDS = {word: k for k, word in enumerate(QKV)}
EXAMPLE = '{"wte.weight": "tok_emb.weight", "h.{i}.attn.c_proj.weight": "blocks.{i}.att.out_proj.weight"}'


@dataclass(frozen=True)
class Entry:
    """One place of a mapping file's value: the target pattern, its rows (a word or numbers), its layout."""

    target: str
    rows: str | tuple[int, int] | None = None
    transposed: bool = False


@dataclass(frozen=True)
class MappingFile:
    """A parsed mapping file: checkpoint name pattern -> the places of that tensor in the implementation."""

    path: Path
    entries: dict[str, tuple[Entry, ...]]


def _known_patterns() -> set[str]:
    """Every checkpoint name a key may have, blocks written `h.{i}.`, the head included."""
    from nanogpt.model import GPTConfig

    one_block = tensor_shapes(GPTConfig(n_layer=1, n_head=1, n_embd=8, vocab_size=8, block_size=8))
    return {checkpoint_name(n).replace("h.0.", "h.{i}.") for n in one_block} | {HEAD}


def _entry(key: str, value: Any) -> Entry:
    """One place of key's value, or ImplementationError saying what is wrong with it."""
    if isinstance(value, str):
        value = {"target": value}
    if not isinstance(value, dict) or not isinstance(value.get("target"), str) or not value["target"]:
        raise ImplementationError(
            f'{key!r}: a place is a parameter name or an object with a "target" name, not {value!r}'
        )
    unknown = sorted(set(value) - {"target", "rows", "transposed"})
    if unknown:
        raise ImplementationError(f"{key!r}: unknown field(s) {unknown} (target, rows, transposed)")
    rows = value.get("rows")
    if isinstance(rows, list) and len(rows) == 2 and all(isinstance(r, int) and r >= 0 for r in rows):
        rows = (rows[0], rows[1])
    elif rows is not None and rows not in ROW_WORDS:
        raise ImplementationError(f"{key!r}: rows is query, key, value or [start, end], not {rows!r}")
    if not isinstance(value.get("transposed", False), bool):
        raise ImplementationError(f"{key!r}: transposed is true or false, not {value['transposed']!r}")
    if (BLOCK in value["target"]) != (BLOCK in key):
        raise ImplementationError(f"{key!r}: a block tensor's target has {BLOCK} too, others none")
    return Entry(value["target"], rows, value.get("transposed", False))


def read_mapping_file(path: str | os.PathLike[str]) -> MappingFile:
    """The mapping file at path, its format checked; ImplementationError naming the problem otherwise."""
    where = Path(path).expanduser()
    try:
        data = json.loads(where.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ImplementationError(f"--mapping {path}: cannot read a JSON object: {e}") from None
    if not isinstance(data, dict) or not data:
        raise ImplementationError(
            f"--mapping {path}: write a JSON object of checkpoint names, e.g. {EXAMPLE}"
        )
    known = _known_patterns()
    entries = {}
    try:
        for key, value in data.items():
            if key not in known:
                raise ImplementationError(
                    f"{key!r} is not a GPT-2 checkpoint name (wte.weight, h.{{i}}.attn.c_attn.weight, "
                    "lm_head.weight, ...)"
                )
            places = value if isinstance(value, list) else [value]
            if not places:
                raise ImplementationError(f"{key!r}: an empty list places nothing")
            entries[key] = tuple(_entry(key, v) for v in places)
    except ImplementationError as e:
        raise ImplementationError(f"--mapping {path}: {e}") from None
    return MappingFile(where.resolve(), entries)


def mapping_option(text: str) -> str:
    """--mapping as typed, once the file reads as a mapping file (UsageError naming the problem)."""
    try:
        read_mapping_file(text)
    except ImplementationError as e:
        raise UsageError(str(e)) from None
    return text


def _rows(entry: Entry, C: int) -> tuple[int, int] | None:
    """An entry's rows as numbers (a word is its block of n_embd rows)."""
    if isinstance(entry.rows, str):
        k = ROW_WORDS[entry.rows]
        return k * C, (k + 1) * C
    return entry.rows


def _expected_shape(nano: str, shapes: dict[str, tuple[int, ...]], p: Placement) -> tuple[int, ...]:
    """The shape the placement's parameter must have: the nanoGPT tensor's rows, transposed if stored so."""
    shape = list(shapes[nano])
    if p.rows is not None:
        shape[0] = p.rows[1] - p.rows[0]
    return tuple(reversed(shape)) if p.transpose else tuple(shape)


def apply_mapping_file(file: MappingFile, roles: RoleMap, model: nn.Module, config: Any) -> RoleMap:
    """The discovered roles with the file's entries in their place, validated against the built model."""
    C = config.n_embd
    params = dict(model.named_parameters(remove_duplicate=False))
    placements = dict(roles.placements)
    mapping = replace(roles, placements=placements, departures=[])
    for key, places in file.entries.items():
        blocks = range(config.n_layer) if BLOCK in key else [None]
        for i in blocks:
            nano = PREFIX + key.replace(BLOCK, str(i)) if key != HEAD else HEAD
            placed = [Placement(e.target.replace(BLOCK, str(i)), _rows(e, C), e.transposed) for e in places]
            if nano == HEAD:
                mapping.head = mapping.tied_head = None
                mapping.tied = False
                target = placed[0].target
                if target not in params:
                    continue  # reported below with the other unknown targets
                emb = placements.get(EMBEDDING, [Placement(EMBEDDING)])[0].target
                if emb in params and params[target] is params[emb]:
                    mapping.tied, mapping.tied_head = True, target
                else:
                    mapping.head = target
            else:
                placements[nano] = placed
    problems = _problems(mapping, params, config)
    if problems:
        shown = "; ".join(problems[:6]) + (f"; and {len(problems) - 6} more" if len(problems) > 6 else "")
        raise ImplementationError(f"--mapping {file.path}: {shown}")
    mapping.notes = [*roles.notes, f"mapping: {len(file.entries)} entries from {file.path}"]
    return mapping


def _problems(mapping: TensorMapping, params: dict[str, nn.Parameter], config: Any) -> list[str]:
    """What is wrong with a mapping on a model: unknown targets, shapes unlike GPT-2's, tensors unplaced."""
    problems = []
    emb = mapping.placements.get(EMBEDDING)
    vocab = params[emb[0].target].shape[0] if emb and emb[0].target in params else config.vocab_size
    shapes = tensor_shapes(config, vocab_size=max(vocab, config.vocab_size))
    for nano in shapes:
        if nano not in mapping.placements:
            problems.append(f"missing role: {checkpoint_name(nano)} has no place")
    named = [(nano, p) for nano, ps in mapping.placements.items() for p in ps]
    if mapping.head:
        named.append((EMBEDDING, Placement(mapping.head)))
    if mapping.tied_head:
        named.append((EMBEDDING, Placement(mapping.tied_head)))
    for nano, p in named:
        if p.target not in params:
            near = [n for n in params if n.rsplit(".", 1)[-1] == p.target.rsplit(".", 1)[-1]][:3]
            problems.append(
                f"unknown target parameter {p.target}" + (f" (the model has {near})" if near else "")
            )
            continue
        if nano in shapes:
            want, have = _expected_shape(nano, shapes, p), tuple(params[p.target].shape)
            if want != have:
                problems.append(
                    f"shape mismatch: {checkpoint_name(nano)} -> {p.describe()} gives {want}, "
                    f"the parameter is {have}"
                )
    return problems
