"""Loading the two implementations under test from one checkpoint directory.

Both sides go through their normal public loading path: `GPT.from_pretrained(dir)` for the reference
nanoGPT, `GPT2LMHeadModel.from_pretrained(dir, tie_word_embeddings=...)` for Hugging Face. This module
also hides the difference between transformers 4.x and 5.x that matters to the harness (the dtype
keyword), and lets one loaded model share another's weight
storage (`share_parameters`), which is how gpt2-large and gpt2-xl fit in memory twice.
"""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Collection
from pathlib import Path
from typing import Any

import torch
import transformers

from nanogpt.model import GPT
from nanogpt.schema import TensorMapping, is_conv1d, mapping_of

TRANSFORMERS_MAJOR = int(transformers.__version__.split(".")[0])
# Hugging Face's activation_function values --hf-activation takes: GPT-2's own (GELU's tanh approximation),
# and the exact GELU, upstream nanoGPT's nn.GELU() (a known departure, parity/numerics/diagnose.py).
# Each with F.gelu's `approximate` that computes it.
GPT2_ACTIVATION = "gelu_new"
HF_ACTIVATIONS = {GPT2_ACTIVATION: "tanh", "gelu": "none"}


def load_reference(checkpoint: Path, dtype: torch.dtype, device: str) -> GPT:
    """The reference nanoGPT from an HF checkpoint directory, in eval mode."""
    return GPT.from_pretrained(checkpoint, dtype=dtype, device=device).eval()


def _dtype_kwarg() -> str:
    # transformers 5 renamed torch_dtype= to dtype= (torch_dtype still works there, with a warning).
    params = inspect.signature(transformers.PreTrainedModel.from_pretrained).parameters
    return "dtype" if TRANSFORMERS_MAJOR >= 5 or "dtype" in params else "torch_dtype"


def silence_progress_bars() -> None:
    """No progress bars of transformers or the hub in this process ("Loading weights"): the harness prints
    its own progress lines, and a bar would fill every captured stderr of a failed test."""
    import huggingface_hub.utils

    transformers.utils.logging.disable_progress_bar()
    huggingface_hub.utils.disable_progress_bars()


def load_hf(
    checkpoint: Path,
    dtype: torch.dtype | str,
    device: str,
    tie_word_embeddings: bool = True,
    activation: str = GPT2_ACTIVATION,
) -> Any:
    """transformers' GPT2LMHeadModel from the same directory, in eval mode, eager of any network.

    dtype "auto" keeps the checkpoint's own dtype (float32 tensors then map the file, read lazily);
    activation is the config's activation_function (--hf-activation), GPT-2's own unless asked.
    """
    from transformers import GPT2LMHeadModel

    silence_progress_bars()
    kwargs: dict[str, Any] = {_dtype_kwarg(): dtype, "tie_word_embeddings": tie_word_embeddings}
    if activation != GPT2_ACTIVATION:
        kwargs["activation_function"] = activation
    with warnings.catch_warnings():
        # Untied control loads leave lm_head missing on purpose; transformers warns about it.
        warnings.simplefilter("ignore")
        model = GPT2LMHeadModel.from_pretrained(str(checkpoint), local_files_only=True, **kwargs)
    return model.to(device).eval()


def _parameter_places(model: torch.nn.Module) -> dict[str, list[tuple[torch.nn.Module, str]]]:
    """Every parameter's (module, attribute) places, keyed by its first name; a tied one has several."""
    first_name: dict[int, str] = {}
    places: dict[str, list[tuple[torch.nn.Module, str]]] = {}
    for module_name, module in model.named_modules(remove_duplicate=False):
        for attr, p in module.named_parameters(recurse=False, remove_duplicate=False):
            name = first_name.setdefault(id(p), f"{module_name}.{attr}" if module_name else attr)
            places.setdefault(name, []).append((module, attr))
    return places


def share_parameters(
    model: torch.nn.Module,
    source: torch.nn.Module,
    source_is_hf: bool = False,
    convert: bool = False,
    roles: Collection[str] | None = None,
) -> list[str]:
    """Replace model's parameters by views of source's same-named tensors where they hold the same values.

    With source_is_hf, Conv1D weights are views of the transposed source tensor (nanoGPT's Linear vs HF's
    Conv1D, nanogpt/schema.py), and a port's tensors are views of the ones of their role (its recorded
    mapping: rows of c_attn for a separate query, key or value). Only a bitwise-equal tensor of the same
    shape and device is shared, so whatever the model's own loader got wrong keeps its own tensor and still
    fails the parity checks; with convert, "equal" is after converting the model's tensor to the source's
    dtype (a float32 load shares a float64 model's exact upcasts), else the dtypes must match. A tied
    parameter gets one new Parameter under all its names, so the tie survives. Returns the names kept. The
    two models then must not be changed independently: a test that writes a weight restores it. roles: only
    the model's parameters of these roles (HF names, with source_is_hf) are considered; the rest are neither
    shared nor returned.
    """
    theirs = dict(source.named_parameters(remove_duplicate=False))
    places = _parameter_places(model)
    kept = []
    # Untransposed tensors first: a float32 loader may return them as views of its own memory map of the
    # checkpoint, which keeps every page it read resident until the last of them is gone.
    # A port in other names and layouts shares HF's tensors as they are placed (nanogpt.schema.TensorMapping).
    mapping = mapping_of(model) if source_is_hf else TensorMapping()
    for name in sorted(places, key=lambda n: source_is_hf and is_conv1d(mapping.role(n))):
        if roles is not None and mapping.role(name) not in roles:
            continue
        module, attr = places[name][0]
        own, other = getattr(module, attr), theirs.get(mapping.role(name))
        if other is None:
            kept.append(name)
            continue
        view = mapping.hf_view(name, other.detach()) if source_is_hf else other.detach()
        same_kind = (
            view.shape == own.shape and view.device == own.device and (convert or view.dtype == own.dtype)
        )
        if not same_kind or not torch.equal(own.detach().to(view.dtype), view):
            kept.append(name)
            continue
        shared = torch.nn.Parameter(view, requires_grad=own.requires_grad)
        del own  # the last reference outside the modules: the model's copy is freed as it is replaced
        for module, attr in places[name]:
            setattr(module, attr, shared)
    return kept


def versions() -> dict[str, str]:
    """Versions that decide numerics and tie handling."""
    return {"torch": torch.__version__, "transformers": transformers.__version__}
