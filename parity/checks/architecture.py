"""The `architecture` check: is the implementation GPT-2's architecture at all, judged before any loading?

A model built by the implementation's own __init__ for the target's config is read by role
(parity/foreign/roles.py): every GPT-2 tensor must have a place with GPT-2's shape, nothing else may have
parameters, each norm must compute LayerNorm with its gain and bias (an RMSNorm with a bias does not), and
the MLP must compute GELU's tanh approximation between its two matrices (probed with the model's own
weights on a known input; the exact GELU with --hf-activation gelu, and without it the exact GELU is named
as the known departure it is). A departure is a FAIL that lists every departure found, so code that is simply
not GPT-2 (RMSNorm, no biases, rotary positions, ReLU², multi-query attention) is judged, not untestable.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from nanogpt.schema import FINAL_NORM, block_tensor
from parity.checks.check import Check
from parity.core.compare import ParityFailure
from parity.core.verdicts import Outcome
from parity.foreign.roles import PROBE_DTYPE, RoleMap, discover_roles, probe_norm
from parity.subject.loading import GPT2_ACTIVATION, HF_ACTIVATIONS
from parity.subject.subject import Subject


def _common_parent(a: str, b: str) -> str:
    """The deepest module name that contains both parameters."""
    parts = []
    for x, y in zip(a.split(".")[:-1], b.split(".")[:-1], strict=False):
        if x != y:
            break
        parts.append(x)
    return ".".join(parts)


def _matrix(model: nn.Module, roles: RoleMap, nano: str, x: torch.Tensor) -> torch.Tensor:
    """x through the implementation's matrix of a GPT-2 role, in its own layout, with its bias."""
    (place,) = roles.placements[f"{nano}.weight"]
    w = model.get_parameter(place.target).detach().to(PROBE_DTYPE)
    y = x @ w if place.transpose else x @ w.t()
    bias = roles.placements.get(f"{nano}.bias")
    return y + model.get_parameter(bias[0].target).detach().to(PROBE_DTYPE) if bias else y


def activation_departure(
    model: nn.Module, roles: RoleMap, C: int, hf_activation: str = GPT2_ACTIVATION
) -> str | None:
    """Why block 0's MLP does not compute hf_activation's GELU (GPT-2's: tanh) between its matrices, or None
    (also when not probed)."""
    fc, proj = block_tensor(0, "mlp.c_fc"), block_tensor(0, "mlp.c_proj")
    if f"{fc}.weight" not in roles.placements or f"{proj}.weight" not in roles.placements:
        return None
    targets = roles.placements[f"{fc}.weight"][0].target, roles.placements[f"{proj}.weight"][0].target
    mlp = _common_parent(*targets)
    if (
        not mlp
        or roles.stack.startswith(mlp + ".")
        or any(
            p.target.startswith(mlp + ".")
            for p in roles.placements[f"{block_tensor(0, 'attn.c_proj')}.weight"]
        )
    ):
        return None  # the two matrices share no module of their own: nothing to call on its own
    module = model.get_submodule(mlp)
    if type(module).forward is nn.Module.forward:
        return None  # a container (minGPT's ModuleDict) has no forward of its own: the logits check judges it
    module.to(PROBE_DTYPE)  # the probe runs in float64; the rest of the model keeps the dtype it was built in
    x = torch.randn(2, 3, C, generator=torch.Generator().manual_seed(2), dtype=PROBE_DTYPE)
    with torch.no_grad():
        y = module(x)
        h = _matrix(model, roles, fc, x)
        expected, exact = (
            _matrix(model, roles, proj, F.gelu(h, approximate=a))
            for a in (HF_ACTIVATIONS[hf_activation], "none")
        )
    if isinstance(y, torch.Tensor) and y.shape == expected.shape:
        if torch.allclose(y, expected, rtol=1e-6, atol=1e-6):
            return None
        if hf_activation == GPT2_ACTIVATION and torch.allclose(y, exact, rtol=1e-6, atol=1e-6):
            return (
                f"the MLP ({mlp}) computes the exact GELU, not GPT-2's tanh approximation: a known departure "
                "(--hf-activation gelu checks everything else)"
            )
        gelu = "GELU-tanh" if hf_activation == GPT2_ACTIVATION else f"{hf_activation} (--hf-activation)"
        return f"the MLP ({mlp}) is not c_proj({gelu}(c_fc(x))) on a probe: another activation"
    return f"the MLP ({mlp}) returns {type(y).__name__} of another shape than GPT-2's MLP"


def architecture_departures(
    model: nn.Module, config: Any, hf_activation: str = GPT2_ACTIVATION
) -> tuple[RoleMap, list[str]]:
    """The role map of a freshly built model and every way it departs from GPT-2's architecture (its MLP's
    GELU judged against hf_activation's, with the MLP converted to float64 for the probe)."""
    roles = discover_roles(model, config)
    departures = list(roles.departures)
    C = config.n_embd
    norms = [block_tensor(0, "ln_1"), block_tensor(0, "ln_2"), FINAL_NORM]
    for nano in norms:
        gain, bias = roles.placements.get(f"{nano}.weight"), roles.placements.get(f"{nano}.bias")
        if not gain:
            continue
        module, _, attr = gain[0].target.rpartition(".")
        bias_attr = bias[0].target.rpartition(".")[2] if bias else None
        if not probe_norm(model.get_submodule(module), C, attr, bias_attr):
            departures.append(f"{module} is not LayerNorm (eps 1e-5) on a probe")
    activation = activation_departure(model, roles, C, hf_activation)
    if activation:
        departures.append(activation)
    return roles, departures


def check_architecture(subject: Subject) -> Outcome:
    """PASS when a model built by the implementation's __init__ has GPT-2's roles, shapes and functions."""
    model, _ = subject.impl.build(subject.config)
    model.eval()  # not converted: the probes bring float64 tensors (a full-size copy took 0.4 s at gpt2)
    roles, departures = architecture_departures(model, subject.config, subject.target.hf_activation)
    if departures:
        shown = "; ".join(departures[:8]) + (
            f"; and {len(departures) - 8} more" if len(departures) > 8 else ""
        )
        raise ParityFailure(f"[architecture] {subject.label} departs from GPT-2's architecture: {shown}")
    head = "tied head" if roles.tied else f"untied head {roles.head}"
    return Outcome(
        f"every GPT-2 tensor found by role with GPT-2's shape ({head}); LayerNorm norms and GELU-tanh MLP "
        "on probes; no other parameters",
        "\n".join(roles.notes + roles.mapping_lines()),
    )


ARCHITECTURE_CHECKS = (
    Check(
        "architecture",
        "a model built by the implementation's own __init__ has every GPT-2 tensor by role with GPT-2's "
        "shape, LayerNorm norms, a GELU-tanh MLP and no other parameters",
        "builds the implementation at the target's config; loads nothing",
        check_architecture,
    ),
)
