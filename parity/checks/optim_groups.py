"""Optimizer groups: the implementation's, recorded as configure_optimizers builds them, read by name.

torch.optim refuses a tensor listed in two groups before an optimizer exists, so the groups are recorded
from `torch.optim.Optimizer.__init__` while configure_optimizers runs (on the calling thread only, and
restored on exit): a check can then say *which* parameter is in two groups and with which weight decays,
instead of repeating torch's error. Also here: which groups hold each parameter (`decay_membership`), and
the Hugging Face Trainer's rule of what does not decay.
"""

from __future__ import annotations

import contextlib
import threading
import warnings
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import torch
from torch import nn

from parity.core.errors import NotApplicable

# The hyper-parameters configure_optimizers is called with (nanoGPT's signature).
WEIGHT_DECAY = 0.1
LEARNING_RATE = 1e-3
BETAS = (0.9, 0.95)


# One recording at a time: two interleaved ones would each restore the other's wrapper.
_RECORDING = threading.Lock()


def _as_list(params: Any) -> list[torch.Tensor]:
    return [params] if isinstance(params, torch.Tensor) else list(params)


@contextlib.contextmanager
def _recorded_param_groups(record: list[dict[str, Any]]) -> Iterator[None]:
    """Record the parameter groups of every torch optimizer this thread constructs (even one torch refuses).

    Optimizer.__init__ is wrapped for the duration and restored on exit, whatever is raised; optimizers
    that other threads construct meanwhile pass through unrecorded.
    """
    owner = threading.get_ident()
    with _RECORDING:
        original = torch.optim.Optimizer.__init__

        def recording_init(self: torch.optim.Optimizer, params: Any, defaults: dict[str, Any]) -> None:
            if threading.get_ident() == owner and not isinstance(params, torch.Tensor):
                params = list(params)  # a generator would be consumed by the recording
                if params and isinstance(params[0], dict):
                    params = [dict(g, params=_as_list(g["params"])) for g in params]
                    record[:] = [{**defaults, **g} for g in params]
                else:
                    record[:] = [{**defaults, "params": params}]
            original(self, params, defaults)

        torch.optim.Optimizer.__init__ = recording_init  # type: ignore[method-assign]
        try:
            yield
        finally:
            torch.optim.Optimizer.__init__ = original  # type: ignore[method-assign]


def configured_optimizer(model: nn.Module, device: str) -> Any:
    """The implementation's optimizer; or, when torch refuses its groups (a tensor in two), those groups.

    CannotTest when the implementation has no configure_optimizers.
    """
    if not callable(getattr(model, "configure_optimizers", None)):
        raise NotApplicable(
            f"{type(model).__name__} has no configure_optimizers: there are no groups to check"
        )
    record: list[dict[str, Any]] = []
    try:
        with _recorded_param_groups(record), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch warns about duplicates in one group; the checks say more
            return model.configure_optimizers(
                weight_decay=WEIGHT_DECAY, learning_rate=LEARNING_RATE, betas=BETAS, device_type=device
            )
    except ValueError as e:
        if not record or "more than one parameter group" not in str(e):
            raise
        return SimpleNamespace(param_groups=record, refused=str(e))


def parameter_names(model: nn.Module) -> dict[int, str]:
    """id(parameter) -> its first name (a tied tensor has one entry)."""
    names: dict[int, str] = {}
    for name, p in model.named_parameters():
        names.setdefault(id(p), name)
    return names


def decay_membership(optimizer: Any, model: nn.Module) -> dict[str, list[float]]:
    """For each parameter name, the weight decays of the optimizer groups holding it (one per listing)."""
    names = parameter_names(model)
    membership: dict[str, list[float]] = {name: [] for name in names.values()}
    for group in optimizer.param_groups:
        for p in group["params"]:
            membership.setdefault(names.get(id(p), f"<unnamed {tuple(p.shape)}>"), []).append(
                group.get("weight_decay", 0.0)
            )
    return membership


def hf_no_decay(name: str) -> bool:
    """The HF Trainer's rule: biases and LayerNorm weights do not decay."""
    return name.endswith(".bias") or ".ln_" in name or name.startswith("transformer.ln_f")
