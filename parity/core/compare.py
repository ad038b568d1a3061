"""Numeric comparison of two tensors, the implementation's and Hugging Face's, with diagnosing messages.

Every comparison produces a `Comparison` record (what, shape, max absolute and relative error, tolerance,
verdict) that the JSON report stores, and a failure raises `ParityFailure` whose message says which
check, which tensor, how far off, against what tolerance and, where it can tell, the likely cause. NaN or
Inf in either tensor is reported as such and never passes as "close".
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

import torch

from parity.core.tolerances import Tolerance


class ParityFailure(AssertionError):
    """The implementations differ; the message diagnoses how, and `records` holds the comparisons made."""

    def __init__(
        self,
        message: str,
        records: list[Comparison] | None = None,
        profiles: list[dict[str, Any]] | None = None,
    ) -> None:
        super().__init__(message)
        self.records = list(records or [])
        self.profiles = list(profiles or [])


@dataclass
class Comparison:
    """The outcome of comparing one tensor pair."""

    check: str
    tensor: str
    shape: tuple[int, ...]
    max_abs: float
    max_rel: float
    rtol: float
    atol: float
    mismatched: int
    total: int
    nonfinite: str | None = None
    passed: bool = True
    where: tuple[int, ...] | None = None
    rel_norm: float = 0.0  # ||actual - expected|| / ||expected|| (0 where ||expected|| is under atol's scale)
    norm_limit: float | None = None  # the tolerance's bound on rel_norm, if it has one

    @property
    def norm_exceeded(self) -> bool:
        """True when the difference is systematic: its relative norm is above the dtype's rounding noise."""
        return self.norm_limit is not None and not self.rel_norm <= self.norm_limit

    def summary(self, norm: bool = True) -> str:
        """One line: the tensor, how far off, against what tolerance (norm: and the relative-norm verdict)."""
        if self.nonfinite:
            return f"{self.tensor}: {self.nonfinite}"
        loc = f" at index {self.where}" if self.where is not None else ""
        norm_text = ""
        if norm and self.norm_limit is not None:
            verdict = "above" if self.norm_exceeded else "within"
            norm_text = (
                f"; relative difference norm {self.rel_norm:.3e}, {verdict} the limit {self.norm_limit:g}"
            )
        return (
            f"{self.tensor}: {self.mismatched}/{self.total} elements differ; "
            f"max abs diff {self.max_abs:.3e}{loc}, "
            f"max rel diff {self.max_rel:.3e} (rtol={self.rtol:g}, atol={self.atol:g}){norm_text}"
        )

    def to_json(self) -> dict[str, Any]:
        """A JSON-serializable dict of this record."""
        d = asdict(self)
        d["shape"] = list(self.shape)
        d["where"] = list(self.where) if self.where is not None else None
        return d

    @classmethod
    def from_json(cls, d: Any) -> Comparison:
        """The record to_json wrote (sent by the sandbox's child); ValueError when d is not exactly one."""
        if not isinstance(d, dict) or set(d) != {f.name for f in fields(cls)}:
            raise ValueError(f"not a comparison record: {d!r:.200}")
        where = d["where"]
        return cls(
            check=_typed(d["check"], str),
            tensor=_typed(d["tensor"], str),
            shape=tuple(_typed(n, int) for n in _typed(d["shape"], list)),
            max_abs=_number(d["max_abs"]),
            max_rel=_number(d["max_rel"]),
            rtol=_number(d["rtol"]),
            atol=_number(d["atol"]),
            mismatched=_typed(d["mismatched"], int),
            total=_typed(d["total"], int),
            nonfinite=None if d["nonfinite"] is None else _typed(d["nonfinite"], str),
            passed=_typed(d["passed"], bool),
            where=None if where is None else tuple(_typed(n, int) for n in _typed(where, list)),
            rel_norm=_number(d["rel_norm"]),
            norm_limit=None if d["norm_limit"] is None else _number(d["norm_limit"]),
        )


def _typed(value: Any, kind: type) -> Any:
    """value when it is a kind (a bool is no int here), else ValueError."""
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ValueError(f"{value!r:.100} is not a {kind.__name__}")
    return value


def _number(value: Any) -> float:
    """An int or float (NaN and Inf included: a record may hold them) as a float, else ValueError."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{value!r:.100} is not a number")
    return float(value)


def _nonfinite(t: torch.Tensor, label: str) -> str | None:
    if t.is_floating_point() and not torch.isfinite(t).all():
        n_nan = int(torch.isnan(t).sum())
        n_inf = int(torch.isinf(t).sum())
        return f"{label} contains {n_nan} NaN and {n_inf} Inf values (non-finite values never count as close)"
    return None


def compare_tensors(
    check: str, name: str, actual: torch.Tensor, expected: torch.Tensor, tol: Tolerance
) -> Comparison:
    """Compare actual (the implementation) with expected (Hugging Face) element-wise, assert_close style."""
    if actual.shape != expected.shape:
        raise ParityFailure(
            f"[{check}] {name}: shape {tuple(actual.shape)} (implementation) vs {tuple(expected.shape)} "
            "(Hugging Face)"
        )
    a = actual.detach().to(torch.float64)
    e = expected.detach().to(torch.float64)
    bad = _nonfinite(a, "the implementation") or _nonfinite(e, "Hugging Face")
    if bad:
        return Comparison(
            check,
            name,
            tuple(a.shape),
            float("nan"),
            float("nan"),
            tol.rtol,
            tol.atol,
            a.numel(),
            a.numel(),
            nonfinite=bad,
            passed=False,
        )
    diff = (a - e).abs()
    rel_norm = relative_norm(float(diff.square().sum()), float(e.square().sum()), a.numel(), tol)
    allowed = tol.atol + tol.rtol * e.abs()
    mismatch = diff > allowed
    # Relative error where it means something: entries whose expected magnitude exceeds atol.
    significant = e.abs() > tol.atol
    rel = torch.where(significant, diff / e.abs().clamp_min(tol.atol), torch.zeros_like(diff))
    max_abs = float(diff.max()) if diff.numel() else 0.0
    where = None
    if diff.numel():
        flat = int(torch.argmax(diff))
        where = tuple(int(i) for i in torch.unravel_index(torch.tensor(flat), diff.shape))
    rec = Comparison(
        check=check,
        tensor=name,
        shape=tuple(a.shape),
        max_abs=max_abs,
        max_rel=float(rel.max()) if rel.numel() else 0.0,
        rtol=tol.rtol,
        atol=tol.atol,
        mismatched=int(mismatch.sum()),
        total=a.numel(),
        where=where,
        rel_norm=rel_norm,
        norm_limit=tol.norm,
    )
    rec.passed = rec.mismatched == 0 and not rec.norm_exceeded
    return rec


def relative_norm(diff_sq: float, expected_sq: float, elements: int, tol: Tolerance) -> float:
    """||a - e|| / ||e|| from the sums of squares; 0 when ||e|| is within what atol allows for that many
    elements (a tensor that is rounding noise around zero, such as a gradient whose exact value is zero, has
    no meaningful relative difference: the element-wise bound alone judges it)."""
    if expected_sq <= tol.atol**2 * elements or expected_sq == 0.0:
        return 0.0
    return (diff_sq / expected_sq) ** 0.5


def without_padding_rows(name: str, tensor: torch.Tensor, vocab: int) -> torch.Tensor:
    """An implementation's embedding or head (or its gradient) cropped to the real vocabulary (padding
    rows are not Hugging Face's); any other tensor as it is."""
    if name in ("transformer.wte.weight", "lm_head.weight") and tensor.size(0) > vocab:
        return tensor[:vocab]
    return tensor
