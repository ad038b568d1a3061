"""GPT-2's tensor roles found in any implementation's module tree, and checkpoint tensors placed by role.

Real GPT-2 code names its tensors freely (`tok_emb`, `trf_blocks.0.att.W_query`, `out_head`), stores its
projections as nn.Linear (out, in) or Conv1D (in, out), and fuses or separates the query, key and value
projections. `discover_roles` reads a model built by its own __init__ by structure: the stack of n_layer
blocks, within each block the order of its norms and matrices, shapes and module types; names are hints
only (which square matrix is the query). A matrix's layout is decided by evidence: nn.Linear's is known,
any other module is probed with a known weight and input (`x @ W` or `x @ W.T`), and a module the probe
cannot decide is a departure, never a guess. The RoleMap found is a TensorMapping (nanogpt/schema.py, which
places a checkpoint in nanoGPT's names and layout into the implementation's and prints the mapping) plus
what departs from GPT-2 and how ambiguities were decided. The departures from GPT-2's architecture (no
LayerNorm parameters, no biases, no position embedding, extra parameters, another activation) are what the
`architecture` check reports.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.func import functional_call
from torch.nn import functional as F

from nanogpt.schema import (
    BLOCK_ROLES,
    EMBEDDING,
    FINAL_NORM,
    POSITIONS,
    QKV,
    Placement,
    TensorMapping,
    block_tensor,
)

# Probes run in float64 so that a match is exact up to rounding, never a near miss of a wrong formula.
PROBE_DTYPE = torch.float64
PROBE_RTOL = 1e-9
# The hints that name one of the three square matrices of a separate query/key/value attention.
QKV_HINTS = {
    "query": ("query", "q_proj", "wq", "w_q", "q"),
    "key": ("key", "k_proj", "wk", "w_k", "k"),
    "value": ("value", "v_proj", "wv", "w_v", "v"),
}


@dataclass
class Unit:
    """A module holding parameters directly: its name, the module and its own parameters."""

    name: str
    module: nn.Module
    params: dict[str, nn.Parameter]

    def full(self, attr: str) -> str:
        """The parameter's name in the model."""
        return f"{self.name}.{attr}" if self.name else attr


@dataclass
class RoleMap(TensorMapping):
    """GPT-2's roles in one implementation: the mapping, what departs from GPT-2, how it was decided."""

    departures: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # how square matrices and layouts were decided

    @property
    def complete(self) -> bool:
        """Every GPT-2 tensor has a place and nothing departs from GPT-2."""
        return not self.departures


def _units(model: nn.Module) -> list[Unit]:
    """Modules with parameters of their own, in registration order (an aliased Parameter under each name)."""
    units = []
    for name, module in model.named_modules():
        params = dict(module.named_parameters(recurse=False, remove_duplicate=False))
        if params:
            units.append(Unit(name, module, params))
    return units


def _block_stack(model: nn.Module, n_layer: int) -> str | None:
    """The name of the ModuleList or Sequential of n_layer blocks with parameters, or None."""
    for name, module in model.named_modules():
        if isinstance(module, (nn.ModuleList, nn.Sequential)) and len(module) == n_layer:
            if all(any(True for _ in child.parameters()) for child in module):
                return name
    return None


def matrix_layout(unit: Unit, attr: str = "weight") -> tuple[int, int, bool] | None:
    """(in, out, stored (in, out)) of a module's 2-D weight by evidence: nn.Linear's is (out, in), any other
    module's is probed.

    The module is called with a known random weight (zero bias) on a known input; `x @ W.T` is nn.Linear's
    layout, `x @ W` Conv1D's. None when neither matches (or both: never for a random weight).
    """
    w = unit.params[attr]
    if isinstance(unit.module, nn.Linear) and attr == "weight":
        return w.shape[1], w.shape[0], False
    g = torch.Generator().manual_seed(0)
    weight = torch.randn(w.shape, generator=g, dtype=PROBE_DTYPE)
    probe = {k: torch.zeros(p.shape, dtype=PROBE_DTYPE) for k, p in unit.params.items() if k != attr}
    probe[attr] = weight
    found = []
    for fan_in, conv1d in ((w.shape[1], False), (w.shape[0], True)):
        expected = (lambda x: x @ weight) if conv1d else (lambda x: x @ weight.t())
        x = torch.randn(2, 3, fan_in, generator=g, dtype=PROBE_DTYPE)
        try:
            with torch.no_grad():
                y = functional_call(unit.module, probe, (x,))
        except Exception:
            continue
        if isinstance(y, torch.Tensor) and y.shape == expected(x).shape:
            if torch.allclose(y, expected(x), rtol=PROBE_RTOL, atol=PROBE_RTOL):
                found.append((fan_in, w.numel() // fan_in, conv1d))
    return found[0] if len(found) == 1 else None


def _same_storage(a: torch.Tensor, b: torch.Tensor) -> bool:
    """The same Parameter, or two over one storage."""
    return a is b or a.untyped_storage().data_ptr() == b.untyped_storage().data_ptr()


def _is_norm(unit: Unit, C: int) -> bool:
    """A LayerNorm-like unit: one or two (C,) vectors (a gain, then perhaps a bias), nothing else."""
    return len(unit.params) <= 2 and all(tuple(p.shape) == (C,) for p in unit.params.values())


def _gain_and_bias(unit: Unit) -> tuple[str, str | None]:
    """A norm's gain and bias attributes: `weight`/`bias` by name, else in order (scale, shift)."""
    names = list(unit.params)
    if "weight" in names:
        return "weight", next((n for n in names if n != "weight"), None)
    return names[0], names[1] if len(names) > 1 else None


def _hint(name: str) -> str | None:
    """query, key or value when the last part of a matrix's name says so."""
    last = name.rsplit(".", 1)[-1].lower()
    for role, words in QKV_HINTS.items():
        if last in words or any(last.endswith(f"_{w}") or last.startswith(f"{w}_") for w in words[:1]):
            return role
    return None


class _Discovery:
    """One pass over a model's units, filling a RoleMap."""

    def __init__(self, model: nn.Module, config: Any) -> None:
        self.model, self.config = model, config
        self.C, self.L = config.n_embd, config.n_layer
        self.roles = RoleMap()
        self.used: set[int] = set()  # ids of parameters given a role
        self.conv1d: dict[int, bool] = {}  # id of a matrix unit: stored (in, out)

    def put(
        self, nano: str, unit: Unit, attr: str, rows: tuple[int, int] | None = None, t: bool = False
    ) -> None:
        self.roles.placements.setdefault(nano, []).append(Placement(unit.full(attr), rows, t))
        self.used.add(id(unit.params[attr]))

    def depart(self, text: str) -> None:
        # One line per pattern: block i's departure is written for every block as `{i}`.
        stack = self.roles.stack.removesuffix("0.")
        text = re.sub(r"\bblock \d+\b", "block {i}", text)
        if stack != "\0":
            text = re.sub(re.escape(stack) + r"\d+\.", stack.replace("{", "{{") + "{i}.", text)
        if text not in self.roles.departures:
            self.roles.departures.append(text)

    def norm(self, nano: str, unit: Unit | None, what: str) -> None:
        if unit is None:
            self.depart(f"{what}: no LayerNorm parameters (a parameter-free norm, or none)")
            return
        gain, bias = _gain_and_bias(unit)
        self.put(f"{nano}.weight", unit, gain)
        if bias is not None:
            self.put(f"{nano}.bias", unit, bias)
        else:
            self.depart(f"{what}: a norm without a bias ({unit.full(gain)} only)")

    def matrix(self, nano: str, unit: Unit, parts: tuple[int, int] | None = None) -> None:
        self.put(f"{nano}.weight", unit, "weight", parts, self.conv1d[id(unit)])
        if "bias" in unit.params:
            self.put(f"{nano}.bias", unit, "bias", parts)
        else:
            self.depart(f"no biases: {unit.full('weight')} has none")

    def block(self, i: int, units: list[Unit]) -> None:
        C = self.C
        norms = [u for u in units if _is_norm(u, C)]
        mats: list[tuple[Unit, tuple[int, int, bool]]] = []
        for u in units:
            if u in norms or "weight" not in u.params or u.params["weight"].dim() != 2:
                continue
            layout = matrix_layout(u)
            if layout is None:
                self.depart(
                    f"cannot tell whether {u.full('weight')} is stored (out, in) or (in, out): its "
                    "module's forward is neither x @ W.T nor x @ W on a probe"
                )
                continue
            mats.append((u, layout))
        where = f"block {i}"
        self.norm(block_tensor(i, "ln_1"), norms[0] if norms else None, f"{where} ln_1")
        self.norm(block_tensor(i, "ln_2"), norms[1] if len(norms) > 1 else None, f"{where} ln_2")
        by_shape: dict[tuple[int, int], list[Unit]] = {}
        for u, (fan_in, fan_out, conv1d) in mats:
            by_shape.setdefault((fan_in, fan_out), []).append(u)
            self.conv1d[id(u)] = conv1d
        squares = by_shape.pop((C, C), [])
        for _, suffix, (m_in, m_out) in (r for r in BLOCK_ROLES if len(r[2]) == 2 and r[2] != (1, 1)):
            found = by_shape.pop((m_in * C, m_out * C), [])
            if suffix == "attn.c_attn" and not found and len(squares) >= 3:
                self.separate_qkv(i, squares)
                continue
            if len(found) != 1:
                self.depart(
                    f"{where}: {len(found)} matrices of GPT-2's {suffix} shape {m_in * C}x{m_out * C}"
                )
                continue
            self.matrix(block_tensor(i, suffix), found[0])
        if len(squares) == 1:
            self.matrix(block_tensor(i, "attn.c_proj"), squares[0])
        else:
            self.depart(f"{where}: {len(squares)} {C}x{C} matrices where GPT-2 has the attention output only")
        for (m_in, m_out), us in by_shape.items():
            names = ", ".join(u.full("weight") for u in us)
            self.depart(f"{where}: {names} ({m_in} in, {m_out} out) has no GPT-2 counterpart")
        for u in norms[2:]:
            self.depart(f"{where}: a third norm {u.full('weight')} has no GPT-2 counterpart")

    def separate_qkv(self, i: int, squares: list[Unit]) -> None:
        """Three of the square matrices are the query, key and value (by name hints, else their order)."""
        C = self.C
        hinted = {_hint(u.name): u for u in squares if _hint(u.name)}
        if set(hinted) >= set(QKV):
            qkv = [hinted[r] for r in QKV]
            how = "by their names"
        else:
            qkv = squares[:3]
            how = "by their order (query, key, value first)"
        if i == 0:
            self.roles.notes.append(f"separate query/key/value: {', '.join(u.name for u in qkv)} {how}")
        for k, u in enumerate(qkv):
            self.matrix(block_tensor(i, "attn.c_attn"), u, (k * C, (k + 1) * C))
            squares.remove(u)

    def run(self) -> RoleMap:
        units = _units(self.model)
        stack = _block_stack(self.model, self.L)
        if stack is None:
            self.depart(f"no stack of {self.L} blocks (a ModuleList or Sequential of n_layer modules)")
        prefix = f"{stack}." if stack else "\0"
        self.roles.stack = f"{prefix}0."
        inside = [u for u in units if u.name.startswith(prefix)]
        for i in range(self.L if stack else 0):
            self.block(
                i, [u for u in inside if u.name.startswith(f"{prefix}{i}.") or u.name == f"{prefix}{i}"]
            )
        outside = [u for u in units if u not in inside]
        self.embeddings_and_head(outside, units, inside)
        return self.roles

    def embeddings_and_head(self, outside: list[Unit], units: list[Unit], inside: list[Unit]) -> None:
        C, V, T = self.C, self.config.vocab_size, self.config.block_size
        after_blocks = units.index(inside[-1]) if inside else len(units)
        embeddings = [u for u in outside if "weight" in u.params and u.params["weight"].dim() == 2]
        tokens = [
            u for u in embeddings if u.params["weight"].shape[1] == C and u.params["weight"].shape[0] >= V
        ]
        if not tokens:
            self.depart(f"no token embedding ({V} x {C})")
        else:
            self.put(EMBEDDING, tokens[0], "weight")
        # With as many positions as tokens (V == T) the shapes agree: the position embedding is the first
        # (T, C) matrix after the token embedding that is not its storage, and it is never the head.
        wte = tokens[0].params["weight"] if tokens else None
        positions = [
            u
            for u in embeddings
            if tuple(u.params["weight"].shape) == (T, C)
            and (wte is None or not _same_storage(u.params["weight"], wte))
        ]
        if positions:
            self.put(POSITIONS, positions[0], "weight")
        else:
            self.depart(f"no position embedding ({T} x {C} learned positions; rotary or none instead)")
        norms = [u for u in outside if _is_norm(u, C) and units.index(u) > after_blocks]
        self.norm(FINAL_NORM, norms[0] if norms else None, "ln_f")
        self.head([u for u in tokens if not positions or u is not positions[0]])
        extra = [u.full(a) for u in outside for a, p in u.params.items() if id(p) not in self.used]
        if extra:
            self.depart(f"parameters with no GPT-2 counterpart: {', '.join(extra[:6])}")

    def head(self, tokens: list[Unit]) -> None:
        if not tokens:
            return
        wte = tokens[0].params["weight"]
        for u in tokens[1:]:
            w = u.params["weight"]
            if _same_storage(w, wte):
                self.roles.tied_head = u.full("weight")
                self.used.add(id(w))
            else:
                self.roles.head = u.full("weight")
                self.used.add(id(w))
                for a in u.params:
                    if a != "weight":
                        self.depart(f"the head has a {a} ({u.full(a)}): GPT-2's head is the embedding only")
                return
        self.roles.tied = True


def discover_roles(model: nn.Module, config: Any) -> RoleMap:
    """GPT-2's roles in a model built by its own __init__ for config (nanogpt.model.GPTConfig's fields)."""
    return _Discovery(model, config).run()


def probe_norm(module: nn.Module, C: int, gain: str = "weight", bias: str | None = "bias") -> bool:
    """True when a norm module computes LayerNorm (eps 1e-5) with its gain and bias on a probe."""
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 3, C, generator=g, dtype=PROBE_DTYPE)
    w, b = (torch.randn(C, generator=g, dtype=PROBE_DTYPE) for _ in range(2))
    probe = {gain: w, **({bias: b} if bias else {})}
    try:
        with torch.no_grad():
            y = functional_call(module, probe, (x,))
    except Exception:
        return False
    expected = F.layer_norm(x, (C,), w, b if bias else None, 1e-5)
    return isinstance(y, torch.Tensor) and y.shape == x.shape and torch.allclose(y, expected, 1e-6, 1e-6)
