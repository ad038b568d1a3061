"""Conversion between the reference nanoGPT and Hugging Face GPT-2 checkpoints, in both directions.

Hugging Face stores GPT-2's projections as `Conv1D` modules whose weights are (in_features, out_features),
the transpose of `nn.Linear`; its checkpoints may carry attention-mask buffers (`attn.bias`,
`attn.masked_bias`) that are not parameters; tied checkpoints store the token embedding once and no
`lm_head.weight`. This module is the one place that knows all of that. It validates a checkpoint (its
config, its key set, every shape) before any weight is materialized, so a bad checkpoint fails fast with
a message that names the problem and the fix, and never loads partially.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from nanogpt.atomic import atomic_directory
from nanogpt.errors import CheckpointError
from nanogpt.hf_files import (  # where checkpoints are found and read; importable from here as before
    HF_CONFIG_FILE,
    SAFETENSORS_FILE,
    LazyWeights,
    check_config_fields,
    read_hf_config,
    resolve_checkpoint_dir,
    weight_files,
)
from nanogpt.mismatch import mismatch_clauses
from nanogpt.model import LAYER_NORM_EPS, GPTConfig
from nanogpt.schema import is_conv1d, tensor_shapes, to_conv1d_layout, to_linear_layout

# Causal-mask buffers that some transformers versions save; they are not weights.
IGNORED_SUFFIXES = (".attn.bias", ".attn.masked_bias")


# ----------------------------------------------------------------------------------------------------------
# configs


def config_from_hf(
    hf_config: Mapping[str, Any], *, vocab_size: int | None = None, dropout: float = 0.0
) -> GPTConfig:
    """The GPTConfig for a Hugging Face GPT-2 config dict, refusing anything that is not GPT-2."""
    where = "config.json"
    if not isinstance(hf_config, Mapping):
        raise CheckpointError(f"{where}: expected a JSON object, got {type(hf_config).__name__}")
    model_type = hf_config.get("model_type")
    if model_type != "gpt2":
        raise CheckpointError(
            f"{where}: model_type is {model_type!r}, not 'gpt2'; this loader only reads GPT-2 checkpoints "
            "(point it at a GPT-2 checkpoint directory)"
        )
    check_config_fields(hf_config, where)
    checks = {
        "activation_function": ("gelu_new", hf_config.get("activation_function", "gelu_new")),
        "layer_norm_epsilon": (LAYER_NORM_EPS, hf_config.get("layer_norm_epsilon", LAYER_NORM_EPS)),
        "scale_attn_weights": (True, hf_config.get("scale_attn_weights", True)),
        "scale_attn_by_inverse_layer_idx": (False, hf_config.get("scale_attn_by_inverse_layer_idx", False)),
        "add_cross_attention": (False, hf_config.get("add_cross_attention", False)),
    }
    n_embd = hf_config.get("n_embd")
    n_inner = hf_config.get("n_inner")
    if n_inner is not None and n_embd is not None and n_inner != 4 * n_embd:
        checks["n_inner"] = (4 * n_embd, n_inner)
    bad = [f"{k}={got!r} (GPT-2 has {want!r})" for k, (want, got) in checks.items() if got != want]
    if bad:
        raise CheckpointError(
            f"{where}: not the GPT-2 architecture: {'; '.join(bad)}. The reference model implements GPT-2 "
            "exactly; convert or retrain the checkpoint with GPT-2's settings"
        )
    missing = [k for k in ("n_embd", "n_layer", "n_head", "vocab_size") if k not in hf_config]
    block_size = hf_config.get("n_positions", hf_config.get("n_ctx"))
    if block_size is None:
        missing.append("n_positions")
    if missing:
        raise CheckpointError(
            f"{where}: missing field(s) {', '.join(missing)}; it is not a complete GPT-2 config"
        )
    hf_vocab = int(hf_config["vocab_size"])
    if vocab_size is not None and vocab_size < hf_vocab:
        raise CheckpointError(f"vocab_size={vocab_size} is smaller than the checkpoint's {hf_vocab} tokens")
    padded = vocab_size is not None and vocab_size > hf_vocab
    try:
        return GPTConfig(
            block_size=int(block_size),
            vocab_size=vocab_size if padded else hf_vocab,
            n_layer=int(hf_config["n_layer"]),
            n_head=int(hf_config["n_head"]),
            n_embd=int(hf_config["n_embd"]),
            dropout=dropout,
            bias=True,
            logical_vocab_size=hf_vocab if padded else None,
        )
    except ValueError as e:
        raise CheckpointError(f"{where}: {e}") from e


def hf_config_from_gpt(config: GPTConfig) -> dict[str, Any]:
    """A Hugging Face GPT-2 config dict (tie_word_embeddings=True) for a tied, biased GPTConfig."""
    if not config.bias:
        raise CheckpointError("Hugging Face GPT-2 always has biases; a bias=False model cannot be exported")
    vocab = config.output_vocab_size
    eot = 50256 if vocab > 50256 else None
    return {
        "architectures": ["GPT2LMHeadModel"],
        "model_type": "gpt2",
        "vocab_size": vocab,
        "n_positions": config.block_size,
        "n_ctx": config.block_size,  # read by transformers 4.x code paths that predate n_positions
        "n_embd": config.n_embd,
        "n_layer": config.n_layer,
        "n_head": config.n_head,
        "n_inner": None,
        "activation_function": "gelu_new",
        "resid_pdrop": config.dropout,
        "embd_pdrop": config.dropout,
        "attn_pdrop": config.dropout,
        "layer_norm_epsilon": LAYER_NORM_EPS,
        "initializer_range": 0.02,
        "scale_attn_weights": True,
        "scale_attn_by_inverse_layer_idx": False,
        "reorder_and_upcast_attn": False,
        "use_cache": True,
        "bos_token_id": eot,
        "eos_token_id": eot,
        "tie_word_embeddings": True,
    }


# ----------------------------------------------------------------------------------------------------------
# state-dict conversion


def _strip_prefix(key: str) -> str:
    """HF checkpoints saved from GPT2Model lack the `transformer.` prefix of GPT2LMHeadModel; normalize."""
    return key if key.startswith(("transformer.", "lm_head.")) else "transformer." + key


def _hf_shape(key: str, shape: tuple[int, ...], config: GPTConfig) -> tuple[int, ...]:
    """The nanoGPT shape of an HF tensor (Conv1D transposed, vocabulary padded)."""
    if is_conv1d(key) and len(shape) == 2:
        shape = (shape[1], shape[0])
    if key in ("transformer.wte.weight", "lm_head.weight") and len(shape) == 2:
        shape = (config.vocab_size, shape[1])
    return shape


def _expected_hf_shape(key: str, want: tuple[int, ...], config: GPTConfig) -> tuple[int, ...]:
    """The shape an HF checkpoint stores for key (Conv1D transposed, the vocabulary unpadded)."""
    if key in ("transformer.wte.weight", "lm_head.weight"):
        return (config.output_vocab_size, *want[1:])
    return (want[1], want[0]) if is_conv1d(key) and len(want) == 2 else want


def hf_to_nanogpt_state_dict(
    weights: Mapping[str, torch.Tensor],
    config: GPTConfig,
    *,
    allow_untied: bool = False,
    dtype: torch.dtype | None = None,
    source: str = "checkpoint",
) -> tuple[dict[str, torch.Tensor], bool]:
    """Convert HF GPT-2 weights to nanoGPT names and layouts; return (state_dict, tied).

    Validates the complete key set and every shape before reading any tensor. A stored lm_head that
    differs from wte (an untied checkpoint) is refused unless allow_untied=True.
    """
    names = {_strip_prefix(k): k for k in weights if not k.endswith(IGNORED_SUFFIXES)}
    # Compare the layer count first: the table of expected shapes grows with n_layer, which a hostile
    # config can set to 10**9; the weights' own keys bound it.
    layers = {k.split(".")[2] for k in names if k.startswith("transformer.h.")}
    if len(layers) != config.n_layer:
        raise CheckpointError(
            f"{source}: weights do not match a GPT-2 with n_layer={config.n_layer}: they hold {len(layers)} "
            "layer(s). Is config.json from the same checkpoint as the weights?"
        )
    expected = tensor_shapes(config)
    has_head = "lm_head.weight" in names
    missing = sorted(set(expected) - set(names))
    unexpected = sorted(set(names) - set(expected) - {"lm_head.weight"})
    if missing or unexpected:
        raise CheckpointError(
            f"{source}: weights do not match a GPT-2 with n_layer={config.n_layer}: "
            f"{mismatch_clauses(missing, unexpected)}. "
            "Is config.json from the same checkpoint as the weights?"
        )
    shape_of = weights.shape if isinstance(weights, LazyWeights) else (lambda k: tuple(weights[k].shape))
    wrong = []
    for key, want in list(expected.items()) + (
        [("lm_head.weight", expected["transformer.wte.weight"])] if has_head else []
    ):
        raw = tuple(shape_of(names[key]))
        got = _hf_shape(key, raw, config)
        vocab_ok = key in ("transformer.wte.weight", "lm_head.weight") and raw[0] == config.output_vocab_size
        if got != want or (key in ("transformer.wte.weight", "lm_head.weight") and not vocab_ok):
            wrong.append(f"{names[key]}: stored {raw}, expected {_expected_hf_shape(key, want, config)}")
    if wrong:
        raise CheckpointError(
            f"{source}: shape mismatch in {len(wrong)} tensor(s): {'; '.join(wrong[:3])}. "
            "The weights belong to another GPT-2 size or another architecture"
        )

    def convert(key: str) -> torch.Tensor:
        stored = weights[names[key]]
        t = to_linear_layout(key, stored if dtype is None else stored.to(dtype))
        if key in ("transformer.wte.weight", "lm_head.weight") and config.vocab_size > t.size(0):
            pad = t.new_zeros(config.vocab_size - t.size(0), t.size(1))
            t = torch.cat([t, pad])  # padding rows: never read as logits (cropped), zero by convention
        t = t.contiguous()
        if not isinstance(weights, LazyWeights) and t.data_ptr() == stored.data_ptr():
            # An in-memory source (a live GPT2LMHeadModel) must not share storage with the new model:
            # training one would silently change the other. Files already give fresh tensors (safetensors)
            # or private copy-on-write maps (.bin).
            t = t.clone()
        return t

    sd = {key: convert(key) for key in expected}
    tied = True
    if has_head:
        head = convert("lm_head.weight")
        if head.data_ptr() != sd["transformer.wte.weight"].data_ptr() and not torch.equal(
            head, sd["transformer.wte.weight"]
        ):
            if not allow_untied:
                raise CheckpointError(
                    f"{source}: untied checkpoint: the stored lm_head.weight differs from "
                    "transformer.wte.weight, so it is not a tied GPT-2. Re-export it tied (save with "
                    "tie_word_embeddings=True); to inspect it as an untied model from Python, call "
                    "load_gpt(..., allow_untied=True)"
                )
            tied = False
            sd["lm_head.weight"] = head
    return sd, tied


def nanogpt_to_hf_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """HF GPT2LMHeadModel weights of a tied nanoGPT model: Conv1D layout, padding cropped, wte stored once."""
    if not model.is_tied():
        raise CheckpointError(
            "only tied models export to a tie_word_embeddings=True checkpoint; tie it first"
        )
    vocab = model.config.output_vocab_size
    out: dict[str, torch.Tensor] = {}
    for key, t in model.state_dict().items():
        if key == "lm_head.weight":
            continue  # the tie: HF rebuilds it from transformer.wte.weight
        t = to_conv1d_layout(key, t.detach())
        if key == "transformer.wte.weight":
            t = t[:vocab]
        out[key] = t.contiguous()
    return out


# ----------------------------------------------------------------------------------------------------------
# loading and exporting


def load_gpt(
    source: Any,
    *,
    model_cls: type[nn.Module],
    dtype: torch.dtype | None = None,
    device: str | torch.device = "cpu",
    allow_untied: bool = False,
    vocab_size: int | None = None,
    dropout: float = 0.0,
) -> nn.Module:
    """model_cls (nanogpt.model.GPT or a subclass) with HF GPT-2 weights: from a size name (local cache), a
    checkpoint directory, or a GPT2LMHeadModel. GPT.from_pretrained is the usual way to call it.

    dtype: convert the weights (default: as stored). vocab_size: pad the vocabulary (e.g. 50304).
    allow_untied: accept a checkpoint whose lm_head differs from wte, returning an untied model.
    """
    if (
        hasattr(source, "state_dict")
        and hasattr(source, "config")
        and not isinstance(source, (str, os.PathLike))
    ):
        hf_cfg = source.config.to_dict()
        weights: Mapping[str, torch.Tensor] = source.state_dict()
        label = type(source).__name__
    else:
        directory = resolve_checkpoint_dir(source)
        hf_cfg = read_hf_config(directory)
        config_from_hf(hf_cfg)  # refuse another architecture before touching the weights
        weights = LazyWeights(weight_files(directory))
        label = str(directory)
    config = config_from_hf(hf_cfg, vocab_size=vocab_size, dropout=dropout)
    sd, tied = hf_to_nanogpt_state_dict(weights, config, allow_untied=allow_untied, dtype=dtype, source=label)
    config.tie_weights = tied
    with torch.device("meta"):
        model = model_cls(config)  # no memory, no init: every tensor comes from the checkpoint
    if tied:
        sd["lm_head.weight"] = sd["transformer.wte.weight"]
    model.load_state_dict(sd, strict=True, assign=True)
    if tied:
        model.tie_weights()  # assign=True wraps each entry in its own Parameter: share one again
    return model.to(device)


def write_hf_checkpoint(
    out_dir: str | os.PathLike[str], hf_config: Mapping[str, Any], weights: Mapping[str, torch.Tensor]
) -> Path:
    """Atomically write config.json + model.safetensors: a temporary sibling directory, then a rename.

    A reader never sees a half-written checkpoint: the final name appears only when both files are
    complete and flushed. An existing checkpoint at out_dir is replaced only after the new one is done.
    """
    from safetensors.torch import save_file

    out = Path(out_dir)
    with atomic_directory(out) as tmp:
        (tmp / HF_CONFIG_FILE).write_text(json.dumps(dict(hf_config), indent=2, sort_keys=True) + "\n")
        save_file(
            {k: v.contiguous() for k, v in weights.items()},
            str(tmp / SAFETENSORS_FILE),
            metadata={"format": "pt"},
        )
    return out


def export_hf_checkpoint(
    model: nn.Module, out_dir: str | os.PathLike[str], dtype: torch.dtype | None = None
) -> Path:
    """Write a tied nanoGPT model as an HF GPT-2 checkpoint directory (tie_word_embeddings=True)."""
    weights = nanogpt_to_hf_state_dict(model)
    if dtype is not None:
        weights = {k: v.to(dtype) for k, v in weights.items()}
    cfg = hf_config_from_gpt(model.config)
    cfg["torch_dtype"] = str(next(iter(weights.values())).dtype).removeprefix("torch.")
    return write_hf_checkpoint(out_dir, cfg, weights)
