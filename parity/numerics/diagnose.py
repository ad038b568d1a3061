"""Localize where two GPT-2 implementations first diverge in the forward pass.

Both implementations use the same module names (`transformer.drop`, `transformer.h.{i}.ln_1`, `.attn`,
`.ln_2`, `.mlp`, `transformer.h.{i}`, `transformer.ln_f`), so forward hooks on the same names capture
comparable activations. Walking them in execution order, the first that differs beyond tolerance names the
first diverging block or sub-module; which of its inputs still matched says what to suspect. A module
diverges where its output fails the tolerance element-wise or differs by more than the dtype's noise in
relative norm (the `norm` of parity/core/tolerances.py `LOGITS`), which places small systematic bugs exactly.
A first divergence that a known departure explains (an MLP computing the other GELU than Hugging Face's,
as upstream nanoGPT's exact `nn.GELU()` against GPT-2's tanh approximation) is named in one line, with the
option that sets it aside (`--hf-activation gelu` builds Hugging Face's model with the same GELU).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from parity.core.compare import Comparison, compare_tensors
from parity.core.tolerances import Tolerance, hidden_divergence

# What to suspect when a module's output is the first to differ while its inputs matched.
SUSPECTS = {
    "drop": "the embeddings: token (wte) or position (wpe) embeddings, or position embeddings not added",
    "ln_1": "LayerNorm ln_1 (epsilon must be 1e-5; weight/bias loaded?)",
    "attn": "attention: the 1/sqrt(head_dim) scale, the causal mask, the q/k/v split order, or a "
    "c_attn/c_proj weight not transposed from HF's Conv1D layout",
    "ln_2": "LayerNorm ln_2 (epsilon must be 1e-5), or the residual connection around attention",
    "mlp": "the MLP: GELU must be the tanh approximation (gelu_new), a c_fc/c_proj weight not transposed "
    "from Conv1D, or a dropped bias",
    "block": "the residual connection around the MLP",
    "ln_f": "the final LayerNorm ln_f (missing, or epsilon not 1e-5)",
    "lm_head": "the output head: lm_head not tied to transformer.wte.weight (load HF with "
    "tie_word_embeddings=True), tied to another tensor, a bias added, or padded vocabulary rows "
    "in the logits",
}


# The GELU an MLP computes where it departs from Hugging Face's (F.gelu's `approximate`), and what to say.
GELU_DEPARTURES = {
    "none": "a known departure: the MLP computes the exact GELU (nn.GELU(), as upstream nanoGPT does) where "
    "GPT-2 uses its tanh approximation; --hf-activation gelu checks everything else against Hugging Face "
    "with the same GELU",
    "tanh": "the MLP computes GPT-2's tanh GELU, Hugging Face's model the exact one (--hf-activation gelu): "
    "drop --hf-activation",
}


def probe_points(n_layer: int) -> list[tuple[str, str]]:
    """(module name, kind) in forward execution order."""
    points = [("transformer.drop", "drop")]
    for i in range(n_layer):
        p = f"transformer.h.{i}"
        points += [
            (f"{p}.ln_1", "ln_1"),
            (f"{p}.attn", "attn"),
            (f"{p}.ln_2", "ln_2"),
            (f"{p}.mlp", "mlp"),
            (p, "block"),
        ]
    points.append(("transformer.ln_f", "ln_f"))
    return points


def _first_tensor(output: Any) -> torch.Tensor | None:
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    return None


def _run_hooked(run: Any, handles: list[Any]) -> None:
    """run() without gradients, then remove the hooks it ran with (also when it raises)."""
    try:
        with torch.no_grad():
            run()
    finally:
        for h in handles:
            h.remove()


def capture_activations(model: torch.nn.Module, names: list[str], run: Any) -> dict[str, torch.Tensor]:
    """Run run() with forward hooks on the named modules; return their (first) outputs, detached."""
    modules = dict(model.named_modules())
    captured: dict[str, torch.Tensor] = {}
    handles = []
    for name in names:
        module = modules.get(name)
        if module is None:
            continue

        def hook(_m: torch.nn.Module, _inp: Any, out: Any, name: str = name) -> None:
            t = _first_tensor(out)
            if t is not None:
                captured[name] = t.detach().clone()

        handles.append(module.register_forward_hook(hook))
    _run_hooked(run, handles)
    return captured


def ran_modules(model: torch.nn.Module, run: Any) -> set[str]:
    """The names of every module whose forward ran during run() (a pre-hook on each)."""
    ran: set[str] = set()
    handles = [
        m.register_forward_pre_hook(lambda _m, _i, name=name: ran.add(name))
        for name, m in model.named_modules()
    ]
    _run_hooked(run, handles)
    return ran


def _not_called(name: str, sides: dict[str, tuple[torch.nn.Module, set[str]]]) -> str | None:
    """Which side has the module but ran neither it nor anything inside it, while the other side ran it.

    A module whose own forward is bypassed but whose sub-modules run (a block calling its MLP's layers
    through a lambda over an nn.ModuleDict) was not skipped: it is only unobserved, and says nothing.
    """

    def touched(model: torch.nn.Module, ran: set[str]) -> bool:
        return any(r == name or r.startswith(name + ".") for r in ran)

    ran = [side for side, (_, r) in sides.items() if name in r]
    skipped = [
        side for side, (m, r) in sides.items() if name in dict(m.named_modules()) and not touched(m, r)
    ]
    if ran and skipped:
        return f"the {skipped[0]} model has {name} but its forward never runs it (the {ran[0]} model's does)"
    return None


def relative_norm(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """||actual - expected|| / ||expected|| in float64 (inf when expected is zero and actual is not)."""
    a, e = actual.detach().double(), expected.detach().double()
    num, den = float((a - e).norm()), float(e.norm())
    return num / den if den > 0 else (0.0 if num == 0 else float("inf"))


def difference_profile(
    model: torch.nn.Module, hf_model: torch.nn.Module, idx: torch.Tensor, n_layer: int
) -> list[tuple[str, float | None]]:
    """(module, ||ours - theirs|| / ||theirs||) at each probe point in forward order; None if unobserved."""
    names = [n for n, _ in probe_points(n_layer)]
    ours = capture_activations(model, names, lambda: model(idx))
    theirs = capture_activations(hf_model, names, lambda: hf_model(idx))
    profile: list[tuple[str, float | None]] = []
    for name in names:
        a, e = ours.get(name), theirs.get(name)
        profile.append(
            (name, relative_norm(a, e) if a is not None and e is not None and a.shape == e.shape else None)
        )
    return profile


def profile_record(
    label: str, profile: list[tuple[str, float | None]], dtype: torch.dtype, tol: Tolerance, passed: bool
) -> dict[str, Any]:
    """A profile as the JSON report keeps it (read by `python -m parity.frontends.plot`)."""
    return {
        "comparison": label,
        "dtype": str(dtype).removeprefix("torch."),
        "modules": [name for name, _ in profile],
        "relative_difference": [value for _, value in profile],
        "noise": hidden_divergence(dtype),
        "tolerance": {"rtol": tol.rtol, "atol": tol.atol},
        "passed": passed,
    }


def gelu_departure(
    name: str, ours: torch.Tensor, hf_model: torch.nn.Module, mlp_input: torch.Tensor | None
) -> str | None:
    """What GELU_DEPARTURES says when the MLP `name`'s output (ours) is Hugging Face's MLP on the same input
    with the other GELU, within the dtype's noise; None otherwise."""
    try:
        mlp = hf_model.get_submodule(name)
        c_fc, c_proj, act = mlp.c_fc, mlp.c_proj, mlp.act
    except AttributeError:
        return None
    if mlp_input is None:
        return None
    limit = hidden_divergence(ours.dtype)
    with torch.no_grad():
        h = c_fc(mlp_input)
        theirs = c_proj(act(h))
        for approximate, departure in GELU_DEPARTURES.items():
            other = c_proj(F.gelu(h, approximate=approximate))
            if relative_norm(other, theirs) > limit and relative_norm(ours, other) <= limit:
                return departure
    return None


def first_divergence(
    model: torch.nn.Module, hf_model: torch.nn.Module, idx: torch.Tensor, n_layer: int, tol: Tolerance
) -> tuple[str, list[Comparison]]:
    """A diagnosis naming the first module whose output differs, and all per-module comparisons."""
    points = probe_points(n_layer)
    names = [n for n, _ in points]
    ours = capture_activations(model, names, lambda: model(idx))
    theirs = capture_activations(hf_model, names, lambda: hf_model(idx))
    records: list[Comparison] = []
    unobserved: list[str] = []
    ran: dict[str, set[str]] = {}
    for name, kind in points:
        if name not in ours or name not in theirs:
            if not ran:
                ran = {
                    "implementation": ran_modules(model, lambda: model(idx)),
                    "Hugging Face": ran_modules(hf_model, lambda: hf_model(idx)),
                }
            skipped = _not_called(
                name,
                {
                    "implementation": (model, ran["implementation"]),
                    "Hugging Face": (hf_model, ran["Hugging Face"]),
                },
            )
            if skipped:
                return f"first divergence at {name}: {skipped}; suspect {SUSPECTS[kind]}", records
            if name in dict(model.named_modules()) or name in dict(hf_model.named_modules()):
                unobserved.append(name)
            continue
        if ours[name].shape != theirs[name].shape:
            return (
                f"{name}: output shapes differ {tuple(ours[name].shape)} vs {tuple(theirs[name].shape)}",
                records,
            )
        rec = compare_tensors("hidden", name, ours[name], theirs[name], tol)
        records.append(rec)
        rel_norm = relative_norm(ours[name], theirs[name])
        limit = hidden_divergence(theirs[name].dtype)
        if not rec.passed or rel_norm > limit:
            norm = f"relative difference norm {rel_norm:.2e} (diverged above {limit:g})"
            known = kind == "mlp" and gelu_departure(
                name, ours[name], hf_model, theirs.get(f"{name.removesuffix('.mlp')}.ln_2")
            )
            if known:
                return (
                    f"first divergence at {name}: {known} (relative difference norm {rel_norm:.2e})",
                    records,
                )
            where = f"first divergence at {name}: {norm}; {rec.summary(norm=False)}; suspect {SUSPECTS[kind]}"
            return where + _unobserved_note(unobserved), records
    if not records:
        return "no comparable modules found (module names differ from GPT-2's); cannot localize", records
    if unobserved:
        return "every observed hidden state matches; cannot localize" + _unobserved_note(unobserved), records
    return f"all hidden states up to ln_f match; suspect {SUSPECTS['lm_head']}", records


def _unobserved_note(unobserved: list[str]) -> str:
    """What the diagnosis cannot see: modules whose own forward never ran (their layers run inside others)."""
    if not unobserved:
        return ""
    more = f" and {len(unobserved) - 3} more" if len(unobserved) > 3 else ""
    return f" (not observed, their forward is bypassed: {', '.join(unobserved[:3])}{more})"
