"""The implementation under test: any nanoGPT-style `GPT`/`GPTConfig`, imported in isolation and adapted.

Users bisect their own model code, so the harness must run on a model.py (or a package) at any commit of
its history without editing it. `import_implementation` imports the file under a unique module name
derived from its path and contents, with its directory on sys.path only while importing, and takes
sibling modules it imported back out of sys.modules, so two implementations (or two commits of one) can
live in one process. `adapted_class` subclasses the user's `GPT` so that the harness sees one calling
convention whatever the history did: forward returns (logits, loss) with logits for every position
(upstream nanoGPT computes only the last position without targets), and `configure_optimizers` takes
(weight_decay, learning_rate, betas, device_type) whichever subset the implementation accepts.
`load_implementation` builds the model with the implementation's own __init__ and its own config class
(fed only the fields it declares), then loads the checkpoint through our converter
(`nanogpt.hf.hf_to_nanogpt_state_dict`), never through the implementation's `from_pretrained` (which
would download): buffers such as causal masks (`attn.bias`) stay as the implementation built them, every
parameter must receive a value, and a tied checkpoint fills both `wte` and `lm_head` of an untied model.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import importlib
import importlib.util
import inspect
import io
import os
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from nanogpt.hf import LazyWeights, config_from_hf, hf_to_nanogpt_state_dict, read_hf_config, weight_files
from nanogpt.model import GPTConfig

# Every module imported by import_implementation lives under this prefix (plus a hash) in sys.modules.
MODULE_PREFIX = "_nanogpt_parity_impl_"
# The GPTConfig fields of GPT-2's architecture, as nanoGPT names them; a config gets those it declares.
ARCHITECTURE_FIELDS = ("block_size", "vocab_size", "n_layer", "n_head", "n_embd", "dropout", "bias")
# configure_optimizers' arguments in nanoGPT's order (device_type arrived later; minGPT took one object).
OPTIMIZER_ARGUMENTS = ("weight_decay", "learning_rate", "betas", "device_type")


class ImplementationError(Exception):
    """The implementation cannot be imported, built or loaded (the commit cannot be tested); says why."""


# ----------------------------------------------------------------------------------------------------------
# importing in isolation


def _local_module_names(directory: Path) -> set[str]:
    """Top-level names a directory on sys.path provides: its .py files, packages and namespace dirs."""
    names = set()
    with contextlib.suppress(OSError):
        for entry in directory.iterdir():
            name = entry.stem if entry.suffix == ".py" else entry.name
            if (
                (entry.is_dir() or entry.suffix == ".py")
                and name.isidentifier()
                and not name.startswith("__")
            ):
                names.add(name)
    return names


def _source_digest(path: Path) -> str:
    """A hash of the implementation's source: the package's .py files, or the file and its .py siblings."""
    h = hashlib.sha256(str(path).encode())
    files = sorted(path.rglob("*.py")) if path.is_dir() else sorted(path.parent.glob("*.py"))
    for f in files:
        h.update(str(f.relative_to(path if path.is_dir() else path.parent)).encode())
        with contextlib.suppress(OSError):
            h.update(f.read_bytes())
    return h.hexdigest()[:16]


@contextlib.contextmanager
def _isolated_import(search_dir: Path, unique: str) -> Iterator[None]:
    """search_dir on sys.path while importing; afterwards sys.path and sys.modules as before, plus `unique`.

    Modules of search_dir already imported under the same names (another implementation's `model`, say)
    are hidden during the import and put back afterwards; the implementation's own sibling modules are
    removed from sys.modules afterwards (the implementation keeps its references to them).
    """
    saved_path = list(sys.path)
    local = _local_module_names(search_dir)
    shadowed = {k: sys.modules.pop(k) for k in list(sys.modules) if k.split(".")[0] in local}
    before = set(sys.modules)
    sys.path.insert(0, str(search_dir))
    try:
        yield
    finally:
        sys.path[:] = saved_path
        for name in set(sys.modules) - before:
            if name != unique and not name.startswith(unique + ".") and name.split(".")[0] in local:
                del sys.modules[name]
        sys.modules.update(shadowed)


def _forget(unique: str) -> None:
    """Remove a failed import's entries from sys.modules."""
    for name in [n for n in sys.modules if n == unique or n.startswith(unique + ".")]:
        del sys.modules[name]


def _exec_module(unique: str, init_file: Path, package_dir: Path | None) -> ModuleType:
    """Create and execute a module (a package when package_dir is given) registered as `unique`."""
    spec = importlib.util.spec_from_file_location(
        unique, init_file, submodule_search_locations=[str(package_dir)] if package_dir else None
    )
    if spec is None or spec.loader is None:
        raise ImplementationError(f"{init_file}: not importable as Python source")
    module = importlib.util.module_from_spec(spec)
    sys.modules[unique] = module  # dataclasses and relative imports look the module up by name
    spec.loader.exec_module(module)
    return module


def _take_classes(module: ModuleType, where: str) -> tuple[type[nn.Module], type]:
    gpt, config = getattr(module, "GPT", None), getattr(module, "GPTConfig", None)
    if not (isinstance(gpt, type) and issubclass(gpt, nn.Module)):
        raise ImplementationError(
            f"{where} defines no GPT class (a torch.nn.Module); the nanoGPT convention is `class GPT(nn.Module)`"
        )
    if not isinstance(config, type):
        raise ImplementationError(
            f"{where} defines no GPTConfig class; the nanoGPT convention is `@dataclass class GPTConfig`"
        )
    return gpt, config


def _import_classes(path: Path) -> tuple[ModuleType, type[nn.Module], type]:
    """Import path (a .py file or a package directory) under a unique name; return (module, GPT, GPTConfig)."""
    is_package = path.is_dir() and (path / "__init__.py").is_file()
    if path.is_dir() and not is_package:
        if not (path / "model.py").is_file():
            raise ImplementationError(
                f"{path}: a directory without __init__.py or model.py; pass a model.py file or a package "
                "directory exposing GPT and GPTConfig"
            )
        path = path / "model.py"
    if not is_package and path.suffix != ".py":
        raise ImplementationError(f"{path}: not a .py file; pass a model.py file or a package directory")
    unique = MODULE_PREFIX + _source_digest(path)
    search_dir = path.parent
    where = str(path)
    try:
        with _isolated_import(search_dir, unique):
            module = sys.modules.get(unique)  # same path, same sources: already imported in this process
            if module is None:
                module = _exec_module(
                    unique, path / "__init__.py" if is_package else path, path if is_package else None
                )
            if is_package and not hasattr(module, "GPT") and (path / "model.py").is_file():
                module = importlib.import_module(unique + ".model")
                where = str(path / "model.py")
        gpt, config = _take_classes(module, where)
    except ImplementationError:
        _forget(unique)
        raise
    except (Exception, SystemExit) as e:  # any failure of the user's code at import time
        _forget(unique)
        raise ImplementationError(f"cannot import {path}: {type(e).__name__}: {e}") from e
    return module, gpt, config


# ----------------------------------------------------------------------------------------------------------
# one calling convention


def _split_output(out: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(logits, loss) from forward's output: a (logits, loss) tuple, bare logits, or an object with .logits."""
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
        return out[0], out[1] if len(out) > 1 and isinstance(out[1], torch.Tensor) else None
    if isinstance(out, torch.Tensor):
        return out, None
    if isinstance(getattr(out, "logits", None), torch.Tensor):
        return out.logits, getattr(out, "loss", None)
    raise ImplementationError(
        f"forward returned {type(out).__name__}; expected (logits, loss), logits, or an object with .logits"
    )


def _accepts_targets(forward: Callable[..., Any]) -> bool:
    """True when forward(self, idx, targets) can be called: a second positional parameter or *args."""
    params = list(inspect.signature(forward).parameters.values())[1:]
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    return len(positional) >= 2 or any(p.kind == p.VAR_POSITIONAL for p in params)


def _logits_by(
    mode: str, model: nn.Module, forward: Callable[..., Any], idx: torch.Tensor
) -> torch.Tensor | None:
    """Logits of one of the ways to ask for every position."""
    if mode == "plain":
        return _split_output(forward(model, idx))[0]
    if mode == "dummy-targets":  # upstream computes every position's logits when it needs a loss
        return _split_output(forward(model, idx, torch.zeros_like(idx)))[0]
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
    """Call an implementation's configure_optimizers with the subset of OPTIMIZER_ARGUMENTS it takes."""
    sig = inspect.signature(method)
    params = [p for p in list(sig.parameters.values())[1:] if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    required = [p for p in params if p.default is p.empty]
    if all(p.name in values for p in required):
        return method(model, **{p.name: values[p.name] for p in params if p.name in values})
    if len(required) == 1:  # minGPT style: one training-config object with these attributes
        return method(model, SimpleNamespace(**values))
    if len(required) in (3, 4) and all(p.kind != p.KEYWORD_ONLY for p in required):
        return method(model, *(values[k] for k in OPTIMIZER_ARGUMENTS[: len(required)]))
    raise ImplementationError(
        f"configure_optimizers{sig}: cannot tell which argument is which; nanoGPT's is "
        "configure_optimizers(self, weight_decay, learning_rate, betas, device_type)"
    )


def adapted_class(gpt_cls: type[nn.Module]) -> type[nn.Module]:
    """A subclass of gpt_cls with the harness's calling convention; parameter names are unchanged."""
    base_forward = gpt_cls.forward
    base_configure = getattr(gpt_cls, "configure_optimizers", None)

    def forward(
        self: nn.Module, idx: torch.Tensor, targets: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(logits of every position, loss or None); the loss is the implementation's own when it has one."""
        if targets is None:
            return full_logits(self, base_forward, idx), None
        loss = None
        if _accepts_targets(base_forward):
            logits, loss = _split_output(base_forward(self, idx, targets))
            if logits.dim() != 3 or logits.shape[:2] != idx.shape:
                logits = full_logits(self, base_forward, idx)
        else:
            logits = full_logits(self, base_forward, idx)
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
        "__module__": gpt_cls.__module__,
        "__qualname__": gpt_cls.__qualname__,
        "__doc__": gpt_cls.__doc__,
    }
    return type(gpt_cls.__name__, (gpt_cls,), namespace)


# ----------------------------------------------------------------------------------------------------------
# building and loading


def implementation_config(config_cls: type, config: GPTConfig) -> Any:
    """config_cls built from config's architecture fields, only those its dataclass or signature declares."""
    values = {name: getattr(config, name) for name in ARCHITECTURE_FIELDS}
    if dataclasses.is_dataclass(config_cls):
        declared = {f.name: f for f in dataclasses.fields(config_cls) if f.init}
        required = [
            n for n, f in declared.items()
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        ]  # fmt: skip
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
    unknown = [n for n in required if n not in values]
    if unknown:
        raise ImplementationError(
            f"{config_cls.__name__} requires {', '.join(unknown)}, which a GPT-2 checkpoint does not define; "
            "give it a default"
        )
    try:
        return config_cls(**{k: v for k, v in values.items() if k in declared})
    except Exception as e:
        raise ImplementationError(f"{config_cls.__name__}(...) raised {type(e).__name__}: {e}") from e


@dataclass
class LoadReport:
    """What loading a checkpoint into an implementation did."""

    checkpoint: Path
    kept_buffers: list[str]  # buffers left as the implementation built them (causal masks and the like)
    output: str  # what the implementation printed while being built


@dataclass
class Implementation:
    """A nanoGPT-style implementation: its module, GPT and GPTConfig, and the adapted GPT the harness uses."""

    label: str
    source: Path
    module: ModuleType
    gpt_cls: type[nn.Module]
    config_cls: type
    adapted_cls: type[nn.Module] = field(init=False)

    def __post_init__(self) -> None:
        self.adapted_cls = adapted_class(self.gpt_cls)

    @property
    def has_configure_optimizers(self) -> bool:
        """True when the implementation defines configure_optimizers."""
        return callable(getattr(self.gpt_cls, "configure_optimizers", None))

    def build(self, config: GPTConfig) -> tuple[nn.Module, str]:
        """A fresh adapted model from the implementation's own __init__; (model, what it printed)."""
        cfg = implementation_config(self.config_cls, config)
        printed = io.StringIO()
        try:
            with contextlib.redirect_stdout(printed):  # upstream prints its parameter count
                model = self.adapted_cls(cfg)
        except Exception as e:
            raise ImplementationError(
                f"{self.gpt_cls.__name__}(config) raised {type(e).__name__}: {e}"
            ) from e
        return model, printed.getvalue()


def reference_implementation() -> Implementation:
    """The reference nanoGPT (nanogpt.model), the default implementation under test."""
    import nanogpt.model as module

    return Implementation("nanogpt (reference)", Path(module.__file__), module, module.GPT, module.GPTConfig)


def import_implementation(path: str | os.PathLike[str]) -> Implementation:
    """Import a model.py file or a package directory exposing GPT and GPTConfig, in isolation."""
    resolved = Path(path).expanduser().resolve()
    if not resolved.exists():
        raise ImplementationError(
            f"{path}: no such file or directory here (at this commit); pass a model.py file or a package "
            "directory exposing GPT and GPTConfig"
        )
    module, gpt, config = _import_classes(resolved)
    return Implementation(str(path), resolved, module, gpt, config)


def _loaded_problems(model: nn.Module, sd: dict[str, torch.Tensor]) -> tuple[list[str], list[str]]:
    """(parameters the checkpoint gives no value, checkpoint tensors the model has no parameter for)."""
    params = {n for n, _ in model.named_parameters(remove_duplicate=False)}
    return sorted(params - set(sd)), sorted(set(sd) - params)


def load_implementation(
    impl: Implementation, checkpoint: Path, dtype: torch.dtype, device: str
) -> tuple[nn.Module, LoadReport]:
    """impl's model built by its own __init__, with the checkpoint's weights loaded by our converter, in eval mode.

    Raises CheckpointError for a bad checkpoint and ImplementationError when the implementation cannot be
    built or some parameter gets no value (the message lists the keys on each side).
    """
    checkpoint = Path(checkpoint)
    config = config_from_hf(read_hf_config(checkpoint))
    weights = LazyWeights(weight_files(checkpoint))
    model, printed = impl.build(config)
    # An implementation that pads its vocabulary (50257 -> 50304) gets the checkpoint's rows and zero padding.
    rows = dict(model.named_parameters()).get("transformer.wte.weight")
    if rows is not None and rows.dim() == 2 and rows.size(0) > config.vocab_size:
        config = dataclasses.replace(config, vocab_size=rows.size(0), logical_vocab_size=config.vocab_size)
    sd, _ = hf_to_nanogpt_state_dict(weights, config, dtype=dtype, source=str(checkpoint))
    # A tied checkpoint stores the matrix once; an untied implementation gets the same values in both.
    sd.setdefault("lm_head.weight", sd["transformer.wte.weight"])
    buffers = sorted(n for n, _ in model.named_buffers())
    missing, unexpected = _loaded_problems(model, sd)
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(
                f"{len(missing)} parameter(s) get no value from the checkpoint: {', '.join(missing[:6])}"
            )
        if unexpected:
            parts.append(
                f"{len(unexpected)} checkpoint tensor(s) have no parameter: {', '.join(unexpected[:6])}"
            )
        raise ImplementationError(
            f"{impl.label} is not GPT-2's architecture under nanoGPT's names: {'; '.join(parts)}"
        )
    try:
        model.to(dtype=dtype)
        with torch.no_grad():
            # Parameters only: buffers (causal masks) stay as the implementation built them.
            model.load_state_dict(sd, strict=False)
        model.to(device)
    except Exception as e:
        raise ImplementationError(f"loading {checkpoint} into {impl.label}: {type(e).__name__}: {e}") from e
    return model.eval(), LoadReport(checkpoint, buffers, printed)
