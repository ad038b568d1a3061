"""Adapters: one calling convention and one way to configure, whatever shape the implementation's code has.

Real GPT-2 code differs in shapes that do not change the model: the config class may have another name
(found from the annotation of `GPT.__init__`'s parameter, or as the class declaring the architecture
fields) or come from a factory classmethod (minGPT's `GPT.get_default_config()`, then attributes, with
`model_type` cleared); dropout may be one field or several (`embd_pdrop`, `resid_pdrop`, `attn_pdrop`);
forward may return logits, (logits, loss), a dict or an object with `.logits`, and may compute only the
last position's logits without targets; `configure_optimizers` may take extra parameters (a ZeRO stage,
filled from its default or from a table of known names), renamed ones (filled by position), or minGPT's
single training-config object. `adapted_class` subclasses the user's `GPT` so the harness calls forward
and configure_optimizers one way; `config_maker` returns how to build the implementation's config.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType, SimpleNamespace
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from nanogpt.model import GPTConfig
from parity.core.errors import ImplementationError
from parity.core.outputs import split_output
from parity.foreign.discovery import (
    architecture_values,
    declares_core,
    dict_config,
    loss_convention,
    mapped_names,
)

# The GPTConfig fields of GPT-2's architecture, as nanoGPT names them; a config gets those it declares.
ARCHITECTURE_FIELDS = ("block_size", "vocab_size", "n_layer", "n_head", "n_embd", "dropout", "bias")
# A class declaring all of these is taken for the config when no GPTConfig is found.
CORE_FIELDS = ("n_layer", "n_head", "n_embd")
# configure_optimizers' arguments in nanoGPT's order (device_type arrived later; minGPT took one object).
OPTIMIZER_ARGUMENTS = ("weight_decay", "learning_rate", "betas", "device_type")
# Other names of those arguments, and extra parameters whose single-process value is known.
ARGUMENT_ALIASES = {"lr": "learning_rate", "wd": "weight_decay", "device": "device_type"}
EXTRA_ARGUMENTS: dict[str, Any] = {
    "zero_stage": 0,
    "master_process": True,
    "rank": 0,
    "local_rank": 0,
    "world_size": 1,
    "ddp": False,
}
# Factory classmethods that return a default config object (minGPT: GPT.get_default_config()).
CONFIG_FACTORIES = ("get_default_config", "default_config")


# ----------------------------------------------------------------------------------------------------------
# one calling convention


def _accepts_targets(forward: Callable[..., Any]) -> bool:
    """True when forward takes targets (parity/foreign/discovery.py's loss_convention says how)."""
    return loss_convention(forward).parameter is not None


def _logits_by(
    mode: str, model: nn.Module, forward: Callable[..., Any], idx: torch.Tensor
) -> torch.Tensor | None:
    """Logits of one of the ways to ask for every position."""
    if mode == "plain":
        return split_output(forward(model, idx))[0]
    if mode == "dummy-targets":  # upstream computes every position's logits when it needs a loss
        return split_output(loss_convention(forward).call(forward, model, idx, torch.zeros_like(idx)))[0]
    # "head-hook": lm_head fed the final LayerNorm's output at every position (upstream slices the last
    # position between the two), and its output taken.
    hidden: list[torch.Tensor] = []
    logits: list[torch.Tensor] = []
    final_norm = getattr(getattr(model, "transformer", None), "ln_f", None)
    handles = [model.lm_head.register_forward_hook(lambda _m, _i, out: logits.append(out))]
    if isinstance(final_norm, nn.Module):
        handles.append(final_norm.register_forward_hook(lambda _m, _i, out: hidden.append(out)))
        handles.append(model.lm_head.register_forward_pre_hook(lambda _m, args: (hidden[-1], *args[1:])))
    try:
        forward(model, idx)
    finally:
        for h in handles:
            h.remove()
    return logits[-1] if logits else None


def full_logits(model: nn.Module, forward: Callable[..., Any], idx: torch.Tensor) -> torch.Tensor:
    """(B, T, V) logits of every position, whichever way this implementation gives them.

    The way is found on the first call with more than one token (one token cannot tell them apart) and
    remembered on the adapted class: plain forward, forward with dummy targets, or lm_head applied to the
    final LayerNorm's output at every position.
    """
    cls = type(model)
    known = cls.__dict__.get("_parity_logits_mode")
    if known is not None or idx.size(1) == 1:
        return _logits_by(known or "plain", model, forward, idx)
    modes = ["plain", "dummy-targets", "head-hook"] if _accepts_targets(forward) else ["plain", "head-hook"]
    if not isinstance(getattr(model, "lm_head", None), nn.Module):
        modes.remove("head-hook")
    shapes = []
    for mode in modes:
        logits = _logits_by(mode, model, forward, idx)
        if logits is not None and logits.dim() == 3 and logits.shape[:2] == idx.shape:
            cls._parity_logits_mode = mode
            return logits
        shapes.append(f"{mode}: {None if logits is None else tuple(logits.shape)}")
    raise ImplementationError(
        f"cannot get logits for every position of a {tuple(idx.shape)} batch ({'; '.join(shapes)}); "
        "forward must return (B, T, vocab) logits with targets, or lm_head must produce them"
    )


def call_configure_optimizers(
    method: Callable[..., Any], model: nn.Module, values: dict[str, Any]
) -> torch.optim.Optimizer:
    """Call an implementation's configure_optimizers, each parameter filled by name, default or position.

    By name: OPTIMIZER_ARGUMENTS, their ARGUMENT_ALIASES and the single-process EXTRA_ARGUMENTS (a ZeRO
    stage of 0); other parameters keep their defaults. A lone required parameter is minGPT's training
    config (an object with the values as attributes); 3 or 4 leading required parameters under other
    names (none of nanoGPT's) are taken in nanoGPT's order. Anything else names the parameters it cannot fill.
    """
    args, kwargs, _ = _configure_call(method, values)
    return method(model, *args, **kwargs)


def configure_arguments_taken(method: Callable[..., Any]) -> tuple[str, ...]:
    """The OPTIMIZER_ARGUMENTS that call_configure_optimizers hands to method (a value it does not take, such
    as betas a script fixes itself, cannot be asked of the optimizer it returns)."""
    return _configure_call(method, dict.fromkeys(OPTIMIZER_ARGUMENTS))[2]


def _configure_call(
    method: Callable[..., Any], values: dict[str, Any]
) -> tuple[tuple[Any, ...], dict[str, Any], tuple[str, ...]]:
    """(positional arguments, keyword arguments, the OPTIMIZER_ARGUMENTS they carry) for method."""
    sig = inspect.signature(method)
    params = [p for p in list(sig.parameters.values())[1:] if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    known = {**EXTRA_ARGUMENTS, **{a: values[k] for a, k in ARGUMENT_ALIASES.items()}, **values}
    by_name = {p.name: known[p.name] for p in params if p.name in known}
    unfilled = [p for p in params if p.name not in known and p.default is p.empty]
    if not unfilled:
        carried = {ARGUMENT_ALIASES.get(n, n) for n in by_name}
        return (), by_name, tuple(k for k in OPTIMIZER_ARGUMENTS if k in carried)
    required = [p for p in params if p.default is p.empty]
    if len(required) == 1:  # minGPT style: one training-config object with these attributes
        return (SimpleNamespace(**values),), {}, OPTIMIZER_ARGUMENTS
    core = [p for p in required if p.name not in EXTRA_ARGUMENTS]
    # Renamed arguments (wd, lr, b): taken in nanoGPT's order, but only when no argument keeps its own name.
    renamed = (
        len(core) in (3, 4)
        and params[: len(core)] == core
        and all(p.kind != p.KEYWORD_ONLY and p.name not in values for p in core)
    )
    if renamed:
        extras = {p.name: known[p.name] for p in params[len(core) :] if p.name in known}
        taken = OPTIMIZER_ARGUMENTS[: len(core)]
        return tuple(values[k] for k in taken), extras, taken
    names = ", ".join(p.name for p in unfilled)
    raise ImplementationError(
        f"configure_optimizers{sig}: cannot fill {names} (no default, and not one of "
        f"{', '.join(OPTIMIZER_ARGUMENTS)} or the known extras {', '.join(EXTRA_ARGUMENTS)}); "
        f"give {names} a default"
    )


def adapted_class(gpt_cls: type[nn.Module]) -> type[nn.Module]:
    """A subclass of gpt_cls with the harness's calling convention; parameter names are unchanged."""
    base_forward = gpt_cls.forward
    base_configure = getattr(gpt_cls, "configure_optimizers", None)
    convention = loss_convention(base_forward)

    def forward(
        self: nn.Module, idx: torch.Tensor, targets: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(logits of every position, loss or None); the loss is the implementation's own when it has one."""
        if targets is None:
            return full_logits(self, base_forward, idx), None
        logits, loss = convention.logits_and_loss(
            base_forward, self, idx, targets, lambda: full_logits(self, base_forward, idx)
        )
        if loss is None:  # nanoGPT's loss: mean cross-entropy, targets of -1 ignored
            loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-1)
        return logits, loss

    def configure_optimizers(
        self: nn.Module,
        weight_decay: float,
        learning_rate: float,
        betas: tuple[float, float],
        device_type: str = "cpu",
    ) -> torch.optim.Optimizer:
        """The implementation's own optimizer, whatever subset of these arguments its signature takes."""
        if base_configure is None:
            raise ImplementationError(f"{gpt_cls.__name__} has no configure_optimizers")
        values = dict(
            weight_decay=weight_decay, learning_rate=learning_rate, betas=betas, device_type=device_type
        )
        return call_configure_optimizers(base_configure, self, values)

    namespace = {
        "forward": forward,
        "configure_optimizers": configure_optimizers,
        "_parity_logits_mode": None,
        "_parity_loss": convention,
        "__module__": gpt_cls.__module__,
        "__qualname__": gpt_cls.__qualname__,
        "__doc__": gpt_cls.__doc__,
    }
    return type(gpt_cls.__name__, (gpt_cls,), namespace)


# ----------------------------------------------------------------------------------------------------------
# the implementation's config


def _field_values(config: GPTConfig, names: list[str] | set[str]) -> dict[str, Any]:
    """The architecture values for the declared names, nanoGPT's or their synonyms (every dropout field
    gets config.dropout)."""
    return architecture_values(config, names)


def implementation_config(config_cls: type, config: GPTConfig) -> Any:
    """config_cls built from config's architecture fields, only those its dataclass or signature declares."""
    if dataclasses.is_dataclass(config_cls):
        declared = {f.name: f for f in dataclasses.fields(config_cls) if f.init}
        required = [
            n
            for n, f in declared.items()
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        ]
    else:
        params = list(inspect.signature(config_cls).parameters.values())
        if any(p.kind == p.VAR_KEYWORD for p in params):
            declared = dict.fromkeys(ARCHITECTURE_FIELDS)
        else:
            declared = {p.name: p for p in params if p.kind != p.VAR_POSITIONAL}
        required = [
            p.name
            for p in params
            if p.default is p.empty and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
        ]
    values = _field_values(config, set(declared))
    unknown = [n for n in required if n not in values]
    if unknown:
        raise ImplementationError(
            f"{config_cls.__name__} requires {', '.join(unknown)}, which a GPT-2 checkpoint does not define; "
            "give it a default"
        )
    try:
        made = config_cls(**{k: v for k, v in values.items() if k in declared})
        if not dataclasses.is_dataclass(config_cls):  # class attributes (`n_layer = 12`) set on the instance
            for name, value in _field_values(config, _declared_fields(config_cls) - set(declared)).items():
                setattr(made, name, value)
        return made
    except Exception as e:
        raise ImplementationError(f"{config_cls.__name__}(...) raised {type(e).__name__}: {e}") from e


def _declared_fields(cls: type) -> set[str]:
    """Names a class declares: dataclass fields, annotations, class attributes, __init__ parameters."""
    names = set(getattr(cls, "__annotations__", {})) | {n for n in vars(cls) if not n.startswith("_")}
    if dataclasses.is_dataclass(cls):
        names |= {f.name for f in dataclasses.fields(cls)}
    with_init = cls.__dict__.get("__init__")
    if callable(with_init):
        try:
            names |= set(inspect.signature(with_init).parameters)
        except (TypeError, ValueError):
            pass
    return names


def _annotated_config(module: ModuleType, gpt_cls: type) -> type | None:
    """The class annotating GPT.__init__'s first parameter (`def __init__(self, config: ModelArgs)`)."""
    try:
        params = list(inspect.signature(gpt_cls.__init__).parameters.values())[1:]
    except (TypeError, ValueError):
        return None
    if not params or params[0].kind not in (params[0].POSITIONAL_ONLY, params[0].POSITIONAL_OR_KEYWORD):
        return None  # nn.Module's own __init__(*args: Any, **kwargs: Any)
    annotation = params[0].annotation
    if annotation is inspect.Parameter.empty:
        return None
    if isinstance(annotation, str):  # from __future__ import annotations
        annotation = getattr(module, annotation.strip("'\""), None)
    plain = isinstance(annotation, type) and annotation.__module__ not in ("builtins", "typing")
    return annotation if plain else None


def _fill_factory_config(cfg: Any, config: GPTConfig) -> Any:
    """A factory's default config with the architecture set; model_type cleared so the fields decide."""
    present = set(vars(cfg)) if hasattr(cfg, "__dict__") else set()
    for name, value in _field_values(
        config, present | set(ARCHITECTURE_FIELDS) - {"dropout", "bias"}
    ).items():
        setattr(cfg, name, value)
    if "model_type" in present:
        cfg.model_type = None  # minGPT: a model_type would override the explicit sizes
    return cfg


def _mapped(how: str, config_cls: type) -> str:
    """how, plus the fields fed under other names than nanoGPT's (`n_positions<-block_size`)."""
    mapped = mapped_names(_declared_fields(config_cls))
    return f"{how}, fields mapped: {mapped}" if mapped else how


@dataclass
class ConfigMaker:
    """How an implementation's config is built from the target's architecture."""

    how: str  # for the load summary: "GPTConfig", "ModelArgs (GPT.__init__'s annotation)", ...
    config_cls: type | None  # None for a factory or a dict
    factory: Callable[[], Any] | None = None
    build: Callable[[GPTConfig], Any] | None = None  # a plain dict config, keys mapped

    def make(self, config: GPTConfig) -> Any:
        """The implementation's config for this architecture."""
        if self.build is not None:
            return self.build(config)
        if self.factory is not None:
            try:
                return _fill_factory_config(self.factory(), config)
            except Exception as e:
                raise ImplementationError(f"{self.how} raised {type(e).__name__}: {e}") from e
        assert self.config_cls is not None
        return implementation_config(self.config_cls, config)


def config_maker(module: ModuleType, gpt_cls: type, where: str) -> ConfigMaker:
    """Find the implementation's config: GPTConfig, GPT.__init__'s annotation, a factory, or the fields."""
    named = getattr(module, "GPTConfig", None)
    if isinstance(named, type):
        return ConfigMaker(_mapped("GPTConfig", named), named)
    annotated = _annotated_config(module, gpt_cls)
    model = gpt_cls.__name__
    if annotated is not None:
        how = f"{annotated.__name__} (the annotation of {model}.__init__'s config)"
        return ConfigMaker(_mapped(how, annotated), annotated)
    for name in CONFIG_FACTORIES:
        factory = getattr(gpt_cls, name, None)
        if callable(factory):
            return ConfigMaker(f"{model}.{name}() (a factory; model_type cleared)", None, factory)
    candidates = [
        (len(architecture_values(GPTConfig(), _declared_fields(c))), name, c)
        for name, c in vars(module).items()
        if isinstance(c, type)
        and not issubclass(c, nn.Module)
        and c.__module__ == module.__name__
        and declares_core(_declared_fields(c))
    ]
    if candidates:
        _, name, cls = max(candidates, key=lambda t: t[0])
        return ConfigMaker(_mapped(f"{name} (the class declaring {', '.join(CORE_FIELDS)})", cls), cls)
    found = dict_config(module, gpt_cls)
    if found is not None:
        return ConfigMaker(found[1], None, build=found[0])
    raise ImplementationError(
        f"{where} defines no GPTConfig class, and no other config was found (GPT.__init__'s annotation, "
        f"GPT.get_default_config(), a class declaring {', '.join(CORE_FIELDS)}); the nanoGPT convention is "
        "`@dataclass class GPTConfig`"
    )
