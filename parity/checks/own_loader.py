"""own-loader: the implementation's own weight loading, run as its users run it, offline.

Every other check loads the weights through our converter; users load them with the implementation's
`GPT.from_pretrained("gpt2")` (or a loader of their own, named with `--loader module:function`), which
upstream nanoGPT runs through `transformers.GPT2LMHeadModel.from_pretrained`. This check lays the
checkpoint under test out as a Hugging Face hub cache in a temporary directory
(parity/subject/hub_cache.py), calls the loader with the checkpoint's size name with only that cache
reachable and the network off, and judges what it returns: one tied storage (parity/numerics/tie.py) and
Hugging Face's logits on the gradient batch (parity/numerics/forward.py, the logits tolerance). An
exception of the loader is a FAIL naming its type, message and the line of the implementation's code
that raised it; an implementation without a loader makes the check not applicable.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from nanogpt.schema import MAPPING_ATTRIBUTE, record_mapping
from parity.checks.check import Check
from parity.core.compare import ParityFailure
from parity.core.errors import CannotTest, ImplementationError, NotApplicable
from parity.core.tolerances import logits_tolerance
from parity.core.verdicts import Outcome
from parity.foreign.adapters import adapted_class
from parity.foreign.raised import describe_exception
from parity.foreign.roles import discover_roles
from parity.numerics.chunked import compare_chunked
from parity.numerics.forward import compare_logits, implementation_logits
from parity.numerics.tie import tie_problem
from parity.subject.batches import gradient_batch
from parity.subject.hub_cache import build_hub_cache, hub_model_name, offline_hub
from parity.subject.subject import Subject

NAME = "own-loader"
TAG = f"[{NAME}] "


def _attribute(obj: Any, dotted: str, where: str) -> Any:
    """obj's attribute at a dotted path (`GPT.from_pretrained`), or CannotTest naming what is missing."""
    for part in dotted.split("."):
        if not hasattr(obj, part):
            raise CannotTest(f"{TAG}--loader: {where} has no {dotted} ({part} is missing)")
        obj = getattr(obj, part)
    return obj


def _import_loader_module(subject: Subject, module_name: str) -> Any:
    """The module of --loader: the implementation's own module by its file name, else imported beside it."""
    impl = subject.impl
    if module_name in ("", impl.source.stem, impl.module.__name__):
        return impl.module
    folder = impl.source if impl.source.is_dir() else impl.source.parent
    saved = list(sys.path)
    sys.path.insert(0, str(folder))
    try:
        return importlib.import_module(module_name)
    except Exception as e:  # the user's module failed to import: the loader cannot run
        raise CannotTest(f"{TAG}--loader: cannot import {module_name}: {type(e).__name__}: {e}") from e
    finally:
        sys.path[:] = saved


def find_loader(subject: Subject) -> tuple[Callable[[str], Any], str]:
    """(the implementation's loader, how to name it): --loader, else GPT.from_pretrained; NotApplicable."""
    spec = subject.loader
    if spec:
        module_name, _, function = spec.rpartition(":")
        module = _import_loader_module(subject, module_name)
        loader = _attribute(module, function, module_name or subject.impl.source.name)
        if not callable(loader):
            raise CannotTest(f"{TAG}--loader {spec}: {function} is not callable")
        return loader, function
    cls = subject.impl.gpt_cls
    loader = getattr(cls, "from_pretrained", None)
    if not callable(loader):
        raise NotApplicable(
            f"{TAG}{subject.label} has no loader of its own (no {cls.__name__}.from_pretrained; "
            "--loader MODULE:FUNCTION names one)"
        )
    return loader, f"{cls.__name__}.from_pretrained"


def _as_model(returned: Any, subject: Subject, call: str) -> nn.Module:
    """The module the loader returned (the first one of a tuple), with the harness's calling convention."""
    if isinstance(returned, (tuple, list)):
        returned = next((x for x in returned if isinstance(x, nn.Module)), returned)
    if not isinstance(returned, nn.Module):
        raise ParityFailure(f"{TAG}{call} returned a {type(returned).__name__}, not a torch.nn.Module")
    if type(returned) is subject.impl.gpt_cls:
        returned.__class__ = subject.impl.adapted_cls  # a subclass adding no state: every position's logits
    elif "_parity_logits_mode" not in type(returned).__dict__:  # not yet an adapted class
        returned.__class__ = adapted_class(type(returned))
    return returned


def _first_differing_tensor(model: nn.Module, subject: Subject) -> str:
    """The first parameter that differs from the converter's load of the same checkpoint, as a clause."""
    try:
        reference = dict(subject.model().named_parameters())
    except ImplementationError:
        return ""
    for name, p in model.named_parameters():
        ours = reference.get(name)
        if ours is None:
            continue
        if ours.shape != p.shape:
            shapes = f"has shape {tuple(p.shape)}, the checkpoint's {tuple(ours.shape)}"
            return f"\n  first differing tensor: {name} {shapes}"
        if not torch.equal(p.detach(), ours.detach()):
            diff = (p.detach() - ours.detach()).abs().max().item()
            return f"\n  first differing tensor: {name} (max abs diff {diff:.3e} from the checkpoint)"
    return ""


def own_loader_check(subject: Subject) -> Outcome:
    """The implementation's own loader, offline against a hub cache of the checkpoint: tied, HF's logits."""
    loader, how = find_loader(subject)
    name, fallback = hub_model_name(subject.config)
    call = f"{how}({name!r})"
    idx, _ = (t.to(subject.device) for t in gradient_batch(subject.config))
    expected = subject.hf_gradient_logits()
    # The loader builds a full-size model (upstream nanoGPT's builds Hugging Face's as well, to copy from):
    # without the loaded models beside it, gpt2-xl peaked at 3.07x its parameter bytes, not 2.5x.
    subject.free_for_another_model()
    printed = io.StringIO()
    with tempfile.TemporaryDirectory(prefix="nanogpt-parity-hub-") as home:
        hub = build_hub_cache(subject.checkpoint(), subject.config, Path(home))
        try:
            with offline_hub(hub), contextlib.redirect_stdout(printed):
                returned = loader(name)
        except Exception as e:
            message = describe_exception(e, subject.impl.root).splitlines()[0]
            raise ParityFailure(
                f"{TAG}{call} raised {message}\n"
                f"  (offline, from a hub cache holding {subject.checkpoint()} as {', '.join(hub.repos)})"
            ) from e
    model = _as_model(returned, subject, call)
    if model.__dict__.get(MAPPING_ATTRIBUTE) is None:  # built by its own loader, not by the harness
        with contextlib.suppress(Exception):
            record_mapping(model, discover_roles(model, subject.config))
    problem = tie_problem(model, f"the model {call} returned")
    if problem:
        raise ParityFailure(f"{TAG}{problem}")
    model = model.to(dtype=subject.dtype, device=subject.device).eval()
    with torch.no_grad():
        ours = implementation_logits(model, idx)
    try:
        rec = None
        if ours.shape == expected.shape:
            tol = logits_tolerance(subject.dtype)
            rec = compare_chunked("logits", "logits[gradient batch]", ours, expected, tol)
        del ours
        if rec is None or not rec.passed:  # the logits check's message and diagnosis, HF loaded again
            rec = compare_logits(model, subject.hf(), idx, subject.config.n_layer, "gradient batch", expected)
    except ParityFailure as e:
        where = str(e).removeprefix("[logits] ")
        raise ParityFailure(
            f"{TAG}the model {call} returned: {where}{_first_differing_tensor(model, subject)}", e.records
        ) from e
    note = f"; {fallback}" if fallback else ""
    return Outcome(
        f"{call} loads offline from a Hugging Face hub cache ({', '.join(hub.repos)}): tied, and its logits "
        f"match Hugging Face's (max abs diff {rec.max_abs:.1e}, tolerance rtol={rec.rtol:g}, "
        f"atol={rec.atol:g}){note}",
        records=[rec],
    )


OWN_LOADER_CHECKS = (
    Check(
        NAME,
        "the implementation's own loader (GPT.from_pretrained or --loader), run offline on a Hugging Face "
        "hub cache of the checkpoint, returns a tied model with HF's logits",
        "the implementation's loader and HF's model; a temporary hub cache of links to the checkpoint",
        own_loader_check,
    ),
)
