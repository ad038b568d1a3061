"""Where a training run starts: its device and dtype, and its model (scratch, resume, or an HF GPT-2).

A resumed run takes its settings from the checkpoint unless a key is given explicitly, so that it continues
the interrupted run exactly; explicit architecture overrides that contradict the checkpoint or the
pretrained model are refused. Nothing here writes anything: `nanogpt.train` validates first, then trains.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from nanogpt.checkpoint import CHECKPOINT_FILE, build_model, model_config_of
from nanogpt.config import ConfigError, check_value
from nanogpt.data import TokenDataset
from nanogpt.distributed import DistContext
from nanogpt.model import GPT, GPT2_SIZES, GPTConfig
from nanogpt.resources import check_training_fits
from nanogpt.train_config import TrainConfig

DTYPES = {
    "float32": torch.float32,
    "float64": torch.float64,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}


def resolve_device(name: str, ctx: DistContext) -> torch.device:
    """The device for this process: cuda:LOCAL_RANK under torchrun on GPUs."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(f"device: {name!r} requested but CUDA is not available here; use --device=cpu")
        if name == "cuda":
            name = f"cuda:{ctx.local_rank}"
    return torch.device(name)


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """The training dtype: autocast bfloat16 (or float16) on CUDA, float32 on CPU, unless given."""
    if name == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    dtype = DTYPES[name]
    if dtype in (torch.bfloat16, torch.float16) and device.type != "cuda":
        raise ConfigError(
            f"dtype: {name} autocast is for CUDA; on {device.type} use --dtype=float32 (or float64)"
        )
    return dtype


def check_against_model(cfg: TrainConfig, explicit: set[str], model_cfg: GPTConfig, source: str) -> None:
    """Refuse explicit architecture overrides that contradict a checkpoint's or pretrained model's config."""
    conflicts = []
    for key in TrainConfig.MODEL_KEYS:
        if key not in explicit:
            continue
        want, have = getattr(cfg, key), getattr(model_cfg, key)
        if key == "block_size":
            continue  # checked separately: a smaller block crops a pretrained model
        if key == "vocab_size" and want is None:
            continue
        if want != have:
            conflicts.append(f"{key}={want} (it has {have})")
    if conflicts:
        raise ConfigError(
            f"{source} has another architecture than the config asks for: {', '.join(conflicts)}; drop these "
            "overrides, or use another --out_dir / --init_from"
        )


def is_pretrained_source(init_from: str) -> bool:
    """True for a GPT-2 size name or a directory holding an HF checkpoint."""
    return init_from in GPT2_SIZES or Path(init_from).expanduser().is_dir()


def padded_vocab(vocab_size: int, multiple: int = 64) -> int:
    """vocab_size rounded up to a multiple (50257 -> 50304, the faster GPU shape upstream uses)."""
    return ((vocab_size + multiple - 1) // multiple) * multiple


# Keys a resumed run takes from its checkpoint unless given explicitly: the run's semantics. The others
# describe this machine or this launch (where to run, how to wrap), not the run.
# out_dir is where this launch reads and writes: a copied project must not write into the original's.
NOT_INHERITED_ON_RESUME = (
    "init_from",
    "out_dir",
    "device",
    "compile",
    "progress",
    "parallel",
    "backend",
    "eval_only",
)


def inherit_from_checkpoint(
    cfg: TrainConfig, explicit: set[str], ckpt: dict[str, Any], path: Path
) -> TrainConfig:
    """The config of a resumed run: the checkpoint's settings, overridden only by explicitly given keys.

    An explicit architecture key that contradicts the checkpoint is an error: the weights cannot change
    shape. Continuing with the checkpoint's batch size, schedule and dtype is what makes a resumed run
    continue the interrupted one exactly.
    """
    model_cfg = model_config_of(ckpt, path)
    check_against_model(cfg, explicit, model_cfg, f"checkpoint {path}")
    saved = ckpt["train_config"]
    if "block_size" in explicit and cfg.block_size != saved.get("block_size", model_cfg.block_size):
        raise ConfigError(
            f"block_size: {cfg.block_size}, but {path} was trained with {saved.get('block_size')}; "
            "a resumed run keeps its block size"
        )
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    where = f"{path}: saved train_config"
    inherited = {
        k: check_value(TrainConfig, k, v, where)
        for k, v in saved.items()
        if k in known and k not in explicit and k not in NOT_INHERITED_ON_RESUME
    }
    cfg = dataclasses.replace(cfg, **inherited)
    cfg.validate()
    return cfg


@dataclass
class Setup:
    """The model to train and where it came from."""

    model_config: GPTConfig
    model: GPT
    source: str = "scratch"


def build_initial_model(
    cfg: TrainConfig, explicit: set[str], dataset: TokenDataset, ckpt: dict[str, Any] | None = None
) -> Setup:
    """The model to train, validated against the config and the data (nothing is written)."""
    if cfg.init_from == "scratch":
        vocab = cfg.vocab_size if cfg.vocab_size is not None else padded_vocab(dataset.vocab_size)
        if vocab < dataset.vocab_size:
            raise ConfigError(
                f"vocab_size: {vocab} is smaller than the dataset's vocabulary ({dataset.vocab_size})"
            )
        model_cfg = GPTConfig(
            block_size=cfg.block_size,
            vocab_size=vocab,
            n_layer=cfg.n_layer,
            n_head=cfg.n_head,
            n_embd=cfg.n_embd,
            dropout=cfg.dropout,
            bias=cfg.bias,
            logical_vocab_size=dataset.vocab_size if vocab > dataset.vocab_size else None,
        )
        check_training_fits(
            model_cfg, cfg.batch_size, cfg.block_size, cfg.device, cfg.gradient_accumulation_steps
        )
        torch.manual_seed(cfg.seed)  # the same init on every rank (FSDP2 does not broadcast it)
        return Setup(model_cfg, GPT(model_cfg), "scratch")
    if cfg.init_from == "resume":
        if ckpt is None:
            raise ValueError("init_from=resume needs the loaded checkpoint")
        # dropout is a training setting, not part of the weights: the (possibly inherited) config decides
        ckpt["model_config"] = dict(ckpt["model_config"], dropout=cfg.dropout)
        model = build_model(ckpt)
        return Setup(model.config, model, str(Path(cfg.out_dir) / CHECKPOINT_FILE))
    if is_pretrained_source(cfg.init_from):
        model = GPT.from_pretrained(cfg.init_from, dropout=cfg.dropout)
        check_against_model(cfg, explicit, model.config, cfg.init_from)
        return Setup(model.config, model, cfg.init_from)
    raise ConfigError(
        f"init_from: {cfg.init_from!r} is not scratch, resume, a GPT-2 size ({', '.join(GPT2_SIZES)}) or an "
        "existing Hugging Face checkpoint directory"
    )
