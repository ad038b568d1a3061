"""Numeric comparison of two implementations: tensors, logits, gradients, with diagnosing messages.

Every comparison produces a `Comparison` record (what, shape, max absolute and relative error, tolerance,
verdict) that the JSON report stores, and a failure raises `ParityFailure` whose message says which
check, which tensor, how far off, against what tolerance and, where it can tell, the likely cause. NaN or
Inf in either tensor is reported as such and never passes as "close".
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass, fields
from typing import Any

import torch

from nanogpt.schema import CONV1D_SUFFIXES
from parity.core.tolerances import Tolerance


class ParityFailure(AssertionError):
    """The implementations differ; the message diagnoses how, and `records` holds the comparisons made."""

    def __init__(
        self, message: str, records: list[Comparison] | None = None, profiles: list[dict[str, Any]] | None = None
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
        """One line: which tensor, how far off, against what tolerance (norm: and the relative norm's verdict)."""
        if self.nonfinite:
            return f"{self.tensor}: {self.nonfinite}"
        loc = f" at index {self.where}" if self.where is not None else ""
        norm_text = ""
        if norm and self.norm_limit is not None:
            verdict = "above" if self.norm_exceeded else "within"
            norm_text = f"; relative difference norm {self.rel_norm:.3e}, {verdict} the limit {self.norm_limit:g}"
        return (
            f"{self.tensor}: {self.mismatched}/{self.total} elements differ; max abs diff {self.max_abs:.3e}{loc}, "
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
        """The record that to_json wrote (sent by the sandbox's child); ValueError when d is not exactly one."""
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
    """Compare actual (reference nanoGPT) with expected (Hugging Face) element-wise, assert_close style."""
    if actual.shape != expected.shape:
        raise ParityFailure(
            f"[{check}] {name}: shape {tuple(actual.shape)} (reference) vs {tuple(expected.shape)} (Hugging Face)"
        )
    a = actual.detach().to(torch.float64)
    e = expected.detach().to(torch.float64)
    bad = _nonfinite(a, "reference nanoGPT") or _nonfinite(e, "Hugging Face")
    if bad:
        return Comparison(check, name, tuple(a.shape), float("nan"), float("nan"), tol.rtol, tol.atol,
                          a.numel(), a.numel(), nonfinite=bad, passed=False)  # fmt: skip
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


def relative_norm(diff_sq: float, expected_sq: float, n: int, tol: Tolerance) -> float:
    """||a - e|| / ||e|| from the sums of squares; 0 when ||e|| is within what atol allows for n elements
    (a tensor that is rounding noise around zero, such as a gradient whose exact value is zero, has no
    meaningful relative difference: the element-wise bound alone judges it)."""
    if expected_sq <= tol.atol**2 * n or expected_sq == 0.0:
        return 0.0
    return (diff_sq / expected_sq) ** 0.5


def hf_counterpart(hf_params: dict[str, torch.Tensor], name: str, vocab: int) -> torch.Tensor | None:
    """The HF tensor for a reference parameter name, in nanoGPT layout (Conv1D transposed), or None."""
    t = hf_params.get(name)
    if t is None:
        return None
    if name.endswith(CONV1D_SUFFIXES):
        t = t.t()
    return t


def reference_layout(name: str, t: torch.Tensor, vocab: int) -> torch.Tensor:
    """A reference tensor cropped to the real vocabulary (padding rows are not HF's)."""
    if name in ("transformer.wte.weight", "lm_head.weight") and t.size(0) > vocab:
        return t[:vocab]
    return t


def compare_gradients(
    reference: torch.nn.Module, hf_model: torch.nn.Module, vocab: int, tol: Tolerance
) -> list[Comparison]:
    """Compare every parameter's .grad with its HF counterpart; raise ParityFailure with the worst ones."""
    ref = dict(reference.named_parameters())
    hf = dict(hf_model.named_parameters())
    problems: list[str] = []
    missing = sorted(set(ref) - set(hf))
    extra = sorted(set(hf) - set(ref))
    if missing or extra:
        problems.append(
            f"parameter sets differ: only in reference {missing[:5]}, only in HF {extra[:5]} "
            "(an lm_head.weight on one side only means one model is untied)"
        )
    records = []
    for name in sorted(set(ref) & set(hf)):
        g_ref, g_hf = ref[name].grad, hf[name].grad
        if g_ref is None or g_hf is None:
            problems.append(f"{name}: no gradient on the {'reference' if g_ref is None else 'HF'} side")
            continue
        if name.endswith(CONV1D_SUFFIXES):
            g_hf = g_hf.t()
        g_ref_cropped = reference_layout(name, g_ref, vocab)
        records.append(compare_tensors("grads", name, g_ref_cropped, g_hf, tol))
        if g_ref.size(0) > g_ref_cropped.size(0) and g_ref[vocab:].abs().max() != 0:
            problems.append(f"{name}: padding rows (>= {vocab}) received gradient; padded vocabulary leaks")
    failed = [r for r in records if not r.passed]
    if failed or problems:
        raise ParityFailure(gradient_failure_message(records, problems))
    return records


def gradient_failure_message(records: Iterable[Comparison], problems: list[str], top: int = 8) -> str:
    """A table of the worst-matching parameters, worst first."""
    records = list(records)
    failed = sorted((r for r in records if not r.passed), key=lambda r: (r.nonfinite is None, -_severity(r)))
    first = f"; {problems[0]}" if problems else ""  # the verdict line names the cause
    lines = [f"[grads] {len(failed)} of {len(records)} parameter gradients differ{first}"]
    lines += [f"  - {p}" for p in problems[1:]]
    if failed:
        lines.append(f"  {'parameter':<40} {'max abs':>10} {'max rel':>10} {'rel norm':>10} {'mismatch':>14}")
        for r in failed[:top]:
            if r.nonfinite:
                lines.append(f"  {r.tensor:<40} {r.nonfinite}")
            else:
                lines.append(
                    f"  {r.tensor:<40} {r.max_abs:>10.3e} {r.max_rel:>10.3e} {r.rel_norm:>10.3e} "
                    f"{r.mismatched:>7}/{r.total:<7}"
                )
        if len(failed) > top:
            lines.append(f"  ... and {len(failed) - top} more")
        norm = f", relative difference norm {failed[0].norm_limit:g}" if failed[0].norm_limit is not None else ""
        lines.append(f"  tolerance: rtol={failed[0].rtol:g}, atol={failed[0].atol:g}{norm}")
        lines.append("  " + gradient_hint([r.tensor for r in failed]))
    return "\n".join(lines)


def _severity(r: Comparison) -> float:
    """How far past its tolerance a record is: the worse of its element-wise and its norm criterion."""
    elementwise = r.max_abs / (r.atol + 1e-300) if r.mismatched else 0.0
    return max(elementwise, r.rel_norm / r.norm_limit if r.norm_limit else 0.0)


def gradient_hint(names: list[str]) -> str:
    """The likely cause of a set of mismatching gradients."""
    if names == ["transformer.wte.weight"] or names == ["lm_head.weight"]:
        return (
            "likely cause: only the tied matrix differs, so one side is missing one of its two gradient "
            "paths (embedding or output head): the tie is broken or points at another tensor"
        )
    if all(n.endswith(CONV1D_SUFFIXES) for n in names):
        return (
            "likely cause: only Conv1D weights differ: a transpose (in, out) vs (out, in) is missing or extra"
        )
    return (
        "likely cause: the forward pass already differs upstream of these parameters (see the logits check)"
    )
