"""What the tested code must leave alone in the sandboxed child: the harness's own code and the torch API.

Code under test runs in the same process as the checks that judge it, so it could replace a comparison
(`parity.core.compare.compare_tensors = lambda *a: PASS`), loosen a tolerance, or swap a torch function the
comparisons call, and be judged good. The child takes a `snapshot` after importing the harness and building
a Hugging Face model once (transformers rebinds a few torch names on first use) and before importing the
tested code, and `changes` lists what differs after the checks: an attribute of a harness
module (parity.*, nanogpt.*) or of a class defined there rebound, added to a class or removed, a function's
code or defaults swapped, an entry of a tolerance table replaced, or a function of torch's namespaces
(torch, torch.Tensor, torch.nn.functional, torch.linalg, torch.nn.Module) rebound. Any change makes every
verdict CANNOT-TEST. It raises the bar, no more: code in the same process can still change what this does
not watch; Hugging Face's side is watched by the fingerprint and the witness (parity/sandbox/parent.py).
"""

from __future__ import annotations

import sys
import types
from typing import Any

import torch

HARNESS_PACKAGES = ("parity", "nanogpt")
# Names Python itself adds to a class at run time: copyreg caches __slotnames__ on the first deepcopy.
RUNTIME_NAMES = frozenset({"__slotnames__"})
# Mutable tables whose entries the checks read at run time: an entry replaced in place keeps the table's id.
WATCHED_TABLES = (
    ("parity.core.tolerances", "LOGITS"),
    ("parity.core.tolerances", "GRADIENTS"),
    ("parity.core.tolerances", "DECOMPOSITION"),
    ("parity.core.tolerances", "TRAIN_UPDATE"),
    ("parity.checks.registry", "CHECKS"),
)


def _identity(value: Any) -> tuple[int, ...]:
    """What must stay the same about a value: the object, and for a function its code and defaults."""
    if isinstance(value, types.FunctionType):
        return (id(value), id(value.__code__), id(value.__defaults__), id(value.__kwdefaults__))
    if isinstance(value, classmethod | staticmethod):
        return (id(value), *_identity(value.__func__))
    if isinstance(value, property):
        return (id(value), id(value.fget), id(value.fset))
    return (id(value),)


def _torch_namespaces() -> dict[str, Any]:
    return {
        "torch": torch,
        "torch.nn.functional": torch.nn.functional,
        "torch.linalg": torch.linalg,
        "torch.Tensor": torch.Tensor,
        "torch.nn.Module": torch.nn.Module,
    }


def snapshot() -> dict[str, tuple[int, ...]]:
    """Every watched name, with the identity of what it is bound to now."""
    out: dict[str, tuple[int, ...]] = {}
    for name, module in list(sys.modules.items()):
        if module is None or name.split(".")[0] not in HARNESS_PACKAGES:
            continue
        for attr, value in list(vars(module).items()):
            out[f"{name}.{attr}"] = _identity(value)
            if isinstance(value, type) and value.__module__ == name:
                out[f"{name}.{attr} (its names)"] = _names(value)
                for key, member in vars(value).items():
                    if key not in RUNTIME_NAMES:
                        out[f"{name}.{attr}.{key}"] = _identity(member)
    for module_name, table in WATCHED_TABLES:
        module = sys.modules.get(module_name)
        if module is not None:
            for key, value in getattr(module, table).items():
                out[f"{module_name}.{table}[{key}]"] = _identity(value)
    for label, namespace in _torch_namespaces().items():
        for attr, value in list(vars(namespace).items()):
            if callable(value) or isinstance(value, classmethod | staticmethod | property):
                out[f"{label}.{attr}"] = _identity(value)
        if isinstance(namespace, type):
            out[f"{label} (its names)"] = _names(namespace)
    return out


def _names(cls: type) -> tuple[int, ...]:
    """The set of names a class defines itself (one added shadows an inherited method)."""
    return (hash(tuple(sorted(set(vars(cls)) - RUNTIME_NAMES))),)


def changes(before: dict[str, tuple[int, ...]], limit: int = 3) -> list[str]:
    """The watched names rebound or removed since `before` (names added to a watched class show as its
    names changing); at most limit of them, then how many more."""
    now = snapshot()
    changed = sorted(name for name, identity in before.items() if now.get(name) != identity)
    return changed[:limit] + ([f"and {len(changed) - limit} more"] if len(changed) > limit else [])
