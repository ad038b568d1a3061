"""Loading the two implementations under test from one checkpoint directory.

Both sides go through their normal public loading path: `GPT.from_pretrained(dir)` for the reference
nanoGPT, `GPT2LMHeadModel.from_pretrained(dir, tie_word_embeddings=...)` for Hugging Face. This module
also hides the differences between transformers 4.x and 5.x that matter to the harness (the dtype
keyword, `_tied_weights_keys` being a list or a dict).
"""

from __future__ import annotations

import inspect
import warnings
from pathlib import Path
from typing import Any

import torch
import transformers

from nanogpt.model import GPT

TRANSFORMERS_MAJOR = int(transformers.__version__.split(".")[0])


def load_reference(checkpoint: Path, dtype: torch.dtype, device: str) -> GPT:
    """The reference nanoGPT from an HF checkpoint directory, in eval mode."""
    return GPT.from_pretrained(checkpoint, dtype=dtype, device=device).eval()


def _dtype_kwarg() -> str:
    # transformers 5 renamed torch_dtype= to dtype= (torch_dtype still works there, with a warning).
    params = inspect.signature(transformers.PreTrainedModel.from_pretrained).parameters
    return "dtype" if TRANSFORMERS_MAJOR >= 5 or "dtype" in params else "torch_dtype"


def load_hf(checkpoint: Path, dtype: torch.dtype, device: str, tie_word_embeddings: bool = True) -> Any:
    """transformers' GPT2LMHeadModel from the same directory, in eval mode, eager of any network."""
    from transformers import GPT2LMHeadModel

    kwargs: dict[str, Any] = {_dtype_kwarg(): dtype, "tie_word_embeddings": tie_word_embeddings}
    with warnings.catch_warnings():
        # Untied control loads leave lm_head missing on purpose; transformers warns about it.
        warnings.simplefilter("ignore")
        model = GPT2LMHeadModel.from_pretrained(str(checkpoint), local_files_only=True, **kwargs)
    return model.to(device).eval()


def tied_weights_keys(hf_model: Any) -> dict[str, str]:
    """HF's declared ties as {tied name: source name}: a dict in transformers 5, a list of names in 4.x."""
    keys = getattr(hf_model, "_tied_weights_keys", None) or {}
    if isinstance(keys, dict):
        return dict(keys)
    return {k: "transformer.wte.weight" for k in keys}


def hf_num_parameters(hf_model: Any) -> int:
    """HF's own parameter count (`num_parameters()`), which counts shared tensors once."""
    return int(hf_model.num_parameters())


def versions() -> dict[str, str]:
    """Versions that decide numerics and tie handling."""
    return {"torch": torch.__version__, "transformers": transformers.__version__}
