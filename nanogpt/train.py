"""The reference trainer: `python -m nanogpt.train [CONFIG.json|.toml] [--key=value ...]`.

One optimizer step lives in `train_step` (micro-batches with gradient accumulation, autocast, GradScaler,
clipping, AdamW), so the parity tests run the very function training runs. Around it, `train` builds the
model (from scratch, from our checkpoint, or from an HF GPT-2), schedules the learning rate (linear warmup,
then cosine decay), evaluates train/val loss every `eval_interval` steps, logs loss, learning rate, tokens/s
and MFU, and checkpoints atomically. Under `torchrun` it trains data-parallel with DDP or FSDP2 (see
`nanogpt.distributed`). Every input is validated before the model is built: a bad flag, dataset or
checkpoint is one line on stderr and exit status 2, and nothing on disk is touched.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from nanogpt.checkpoint import (
    CHECKPOINT_FILE,
    capture_rng_state,
    load_checkpoint,
    load_optimizer_state,
    restore_rng_state,
    save_checkpoint,
    training_payload,
)
from nanogpt.config import ConfigError, RunStopped, parse_config, run_cli
from nanogpt.data import BatchSampler, TokenDataset, get_batch
from nanogpt.distributed import (
    DistContext,
    init_distributed,
    set_gradient_sync,
    shard_fsdp,
    unwrap_model,
    wrap_ddp,
)
from nanogpt.flops import peak_flops
from nanogpt.hf import CheckpointError
from nanogpt.model import GPT
from nanogpt.paths import resolve_output_dir, resolve_output_file
from nanogpt.resources import check_training_fits
from nanogpt.train_config import TrainConfig
from nanogpt.train_log import Progress, format_log_line
from nanogpt.train_setup import (
    NOT_INHERITED_ON_RESUME,
    build_initial_model,
    inherit_from_checkpoint,
    resolve_device,
    resolve_dtype,
)

# ----------------------------------------------------------------------------------------------------------
# one optimization step


@dataclass(frozen=True)
class StepConfig:
    """What train_step needs besides the model, optimizer and data."""

    grad_clip: float = 0.0  # clip the global gradient norm to this; 0 disables clipping
    autocast_dtype: torch.dtype | None = None  # bfloat16/float16 autocast on CUDA; None: run in param dtype


def train_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    batches: Sequence[tuple[torch.Tensor, torch.Tensor]],
    cfg: StepConfig,
    scaler: torch.amp.GradScaler | None = None,
) -> torch.Tensor:
    """One AdamW step over len(batches) micro-batches; returns their mean loss (a detached tensor).

    Each micro-batch's loss is divided by the number of micro-batches before backward, so the accumulated
    gradient equals that of one batch holding all of them (micro-batches are equal in size). Under DDP or
    FSDP2 the gradient reduction runs only on the last micro-batch. The loss comes back as a tensor so
    the caller decides when to pay for a device sync (`.item()`).
    """
    if not batches:
        raise ValueError("train_step needs at least one micro-batch")
    k = len(batches)
    device_type = batches[0][0].device.type
    autocast = (
        torch.autocast(device_type=device_type, dtype=cfg.autocast_dtype)
        if cfg.autocast_dtype is not None
        else contextlib.nullcontext()
    )
    micro_losses = []
    for i, (x, y) in enumerate(batches):
        set_gradient_sync(model, i == k - 1)
        with autocast:
            _, loss = model(x, y)
            loss = loss / k
        micro_losses.append(loss.detach())
        if scaler is not None:
            scaler.scale(loss).backward()
        else:
            loss.backward()
    if cfg.grad_clip > 0.0:
        if scaler is not None:
            scaler.unscale_(optimizer)  # clip the true gradients, not the scaled ones
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
    if scaler is not None:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)  # frees the gradient memory until the next backward
    return torch.stack(micro_losses).sum()  # in the loss's own dtype: float64 runs keep float64


def get_lr(it: int, cfg: TrainConfig) -> float:
    """Learning rate at step it: linear warmup, cosine decay to min_lr, then min_lr (or constant)."""
    if not cfg.decay_lr:
        return cfg.learning_rate
    if it < cfg.warmup_iters:
        return cfg.learning_rate * (it + 1) / (cfg.warmup_iters + 1)
    if it >= cfg.decay_iters:
        return cfg.final_lr
    ratio = (it - cfg.warmup_iters) / (cfg.decay_iters - cfg.warmup_iters)
    coeff = 0.5 * (1.0 + math.cos(math.pi * ratio))  # 1 -> 0
    return cfg.final_lr + coeff * (cfg.learning_rate - cfg.final_lr)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Set the learning rate of every parameter group."""
    for group in optimizer.param_groups:
        group["lr"] = lr


@torch.no_grad()
def estimate_loss(
    model: nn.Module,
    dataset: TokenDataset,
    cfg: TrainConfig,
    device: torch.device,
    autocast_dtype: torch.dtype | None,
    ctx: DistContext,
) -> dict[str, float]:
    """Mean loss over eval_iters batches per split, the same batches at every evaluation.

    The batches come from a generator seeded afresh each time, so successive estimates are comparable and
    evaluating never moves the training sampler's or dropout's random state (resumes stay exact).
    """
    out = {}
    model.eval()
    autocast = (
        torch.autocast(device_type=device.type, dtype=autocast_dtype)
        if autocast_dtype
        else contextlib.nullcontext()
    )
    for i, split in enumerate(("train", "val")):
        generator = torch.Generator().manual_seed(cfg.seed + 1 + i)
        losses = torch.zeros(cfg.eval_iters, device=device)
        for k in range(cfg.eval_iters):
            x, y = get_batch(
                dataset.split(split), cfg.batch_size, cfg.block_size, generator, ctx.rank, ctx.world_size
            )
            with autocast:
                _, loss = model(x.to(device), y.to(device))
            losses[k] = loss.float()
        out[split] = ctx.all_reduce_mean(losses.mean()).item()
    model.train()
    return out


# ----------------------------------------------------------------------------------------------------------
# the training loop


@dataclass
class TrainResult:
    """What a run did: final iteration, logged train losses by iteration, evaluations, the trained model."""

    iter_num: int
    best_val_loss: float
    losses: dict[int, float] = field(default_factory=dict)
    evals: dict[int, dict[str, float]] = field(default_factory=dict)
    model: GPT | None = None
    checkpoints: list[int] = field(default_factory=list)


def train(
    cfg: TrainConfig, explicit: set[str] | None = None, log: Callable[[str], None] = print
) -> TrainResult:
    """Run training as configured; explicit: the keys the user set (checked against checkpoints).

    A resumed run takes its settings from the checkpoint, so its config is validated after the merge.
    """
    cfg.validate(only=NOT_INHERITED_ON_RESUME if cfg.init_from == "resume" else None)
    explicit = set() if explicit is None else explicit
    use_cuda = cfg.device.startswith("cuda") or (cfg.device == "auto" and torch.cuda.is_available())
    ctx = init_distributed(cfg.backend, use_cuda=use_cuda)
    try:
        return _train(cfg, explicit, ctx, log if ctx.is_main else (lambda _: None))
    finally:
        ctx.close()


def _train(cfg: TrainConfig, explicit: set[str], ctx: DistContext, log: Callable[[str], None]) -> TrainResult:
    # --- validate everything that can fail before any heavy work or any write
    resolve_output_dir(cfg.out_dir, "out_dir")
    cfg = dataclasses.replace(cfg, out_dir=str(Path(cfg.out_dir).expanduser()))  # ~/runs, not ./~/runs
    resolve_output_file(Path(cfg.out_dir) / CHECKPOINT_FILE, f"out_dir ({CHECKPOINT_FILE})")
    device = resolve_device(cfg.device, ctx)
    ckpt = None
    if cfg.init_from == "resume":
        path = Path(cfg.out_dir) / CHECKPOINT_FILE
        ckpt = load_checkpoint(path)
        cfg = inherit_from_checkpoint(cfg, explicit, ckpt, path)
    dtype = resolve_dtype(cfg.dtype, device)
    dataset = TokenDataset.open(cfg.data_dir)
    dataset.check_block_size(cfg.block_size)  # cheap, and before a model of that context is built
    setup = build_initial_model(cfg, explicit, dataset, ckpt)
    model_cfg = setup.model_config
    if setup.source != "scratch":  # the weights exist already; the batches and optimizer state do not
        check_training_fits(
            model_cfg, cfg.batch_size, cfg.block_size, cfg.device, cfg.gradient_accumulation_steps
        )
    if cfg.block_size > model_cfg.block_size:
        raise ConfigError(
            f"block_size: {cfg.block_size} exceeds the model's context of {model_cfg.block_size} "
            f"({setup.source}); use --block_size<={model_cfg.block_size}"
        )
    if dataset.vocab_size > model_cfg.output_vocab_size:
        raise ConfigError(
            f"the dataset's vocabulary ({dataset.vocab_size} tokens) does not fit the model's "
            f"{model_cfg.output_vocab_size} output tokens ({setup.source})"
        )
    autocast_dtype = dtype if dtype in (torch.bfloat16, torch.float16) else None

    # --- model, optimizer, scaler
    model = setup.model
    if cfg.block_size < model_cfg.block_size:
        model.crop_block_size(cfg.block_size)  # e.g. fine-tune GPT-2 (1024) at 256
    model.to(device)
    if dtype == torch.float64:
        model.double()
    if not model.is_tied():
        raise CheckpointError(f"{setup.source}: lm_head.weight is not transformer.wte.weight after loading")
    raw_model = model
    if ctx.enabled and cfg.parallel == "fsdp":
        model = shard_fsdp(model, device, ctx.world_size)
    elif ctx.enabled:
        model = wrap_ddp(model, device)
    betas = (cfg.beta1, cfg.beta2)
    optimizer = raw_model.configure_optimizers(cfg.weight_decay, cfg.learning_rate, betas, device.type)
    scaler = torch.amp.GradScaler(device.type) if dtype == torch.float16 else None

    # --- training state: fresh or restored
    iter_num, best_val_loss = 0, float("inf")
    torch.manual_seed(cfg.seed + ctx.rank)  # dropout differs per rank; the data stream is shared
    sampler = BatchSampler(
        dataset.train,
        cfg.batch_size,
        cfg.block_size,
        cfg.seed,
        device,
        rank=ctx.rank,
        world_size=ctx.world_size,
    )
    if ckpt is not None:
        load_optimizer_state(model, optimizer, ckpt["optimizer"])
        if scaler is not None and ckpt.get("scaler"):
            scaler.load_state_dict(ckpt["scaler"])
        iter_num, best_val_loss = int(ckpt["iter_num"]), float(ckpt["best_val_loss"])
        sampler.load_state_dict(ckpt["sampler"])
        if len(ckpt["rng"]) == ctx.world_size:
            restore_rng_state(ckpt["rng"][ctx.rank])
        else:
            log(
                f"note: the checkpoint holds the random states of {len(ckpt['rng'])} process(es), "
                f"this run has {ctx.world_size}; dropout is re-seeded"
            )
            torch.manual_seed(cfg.seed + ctx.rank + iter_num)
        log(f"resumed from {setup.source} at iter {iter_num} (best val loss {best_val_loss:.4f})")
        del ckpt  # free the CPU copy of the weights
    if cfg.compile:
        log("compiling the model (the first step takes a while)")
        model = torch.compile(model)
    if ctx.is_main:
        Path(cfg.out_dir).mkdir(parents=True, exist_ok=True)

    # --- the loop
    step_cfg = StepConfig(grad_clip=cfg.grad_clip, autocast_dtype=autocast_dtype)
    tokens_per_iter = cfg.batch_size * cfg.block_size * cfg.gradient_accumulation_steps * ctx.world_size
    peak = peak_flops(torch.cuda.get_device_name(device), dtype) if device.type == "cuda" else None
    parallel = f", {cfg.parallel} x{ctx.world_size}" if ctx.enabled else ""
    log(
        f"training {raw_model.get_num_params() / 1e6:.2f}M parameters on {device} "
        f"({str(dtype).removeprefix('torch.')}{parallel}), {tokens_per_iter:,} tokens per iteration"
    )
    result = TrainResult(iter_num=iter_num, best_val_loss=best_val_loss, model=raw_model)
    show_progress = cfg.progress if cfg.progress is not None else sys.stderr.isatty()
    progress = Progress(cfg.max_iters, iter_num, show_progress and ctx.is_main)
    start_iter, running_mfu, last_loss = iter_num, None, None
    window_start, window_iter = time.time(), iter_num  # the timing window since the last log line
    while True:
        lr = get_lr(iter_num, cfg)
        set_lr(optimizer, lr)
        due = iter_num % cfg.eval_interval == 0 or iter_num == cfg.max_iters
        already_done = iter_num == start_iter and iter_num > 0  # a resumed run was evaluated when saved
        if cfg.eval_only or (due and not already_done):
            losses = estimate_loss(model, dataset, cfg, device, autocast_dtype, ctx)
            result.evals[iter_num] = losses
            log(f"step {iter_num}: train loss {losses['train']:.4f}, val loss {losses['val']:.4f}")
            stop_if_diverged(iter_num, losses, cfg)
            improved = losses["val"] < best_val_loss
            best_val_loss = min(best_val_loss, losses["val"])
            if (improved or cfg.always_save_checkpoint) and iter_num > 0 and not cfg.eval_only:
                write_checkpoint(cfg, ctx, model, optimizer, scaler, sampler, iter_num, best_val_loss, log)
                result.checkpoints.append(iter_num)
            window_start, window_iter = time.time(), iter_num  # evaluation time is not step time
        if cfg.eval_only or iter_num >= cfg.max_iters:
            break

        batches = [sampler.next_batch() for _ in range(cfg.gradient_accumulation_steps)]
        loss = train_step(model, optimizer, batches, step_cfg, scaler)

        if iter_num % cfg.log_interval == 0:
            last_loss = ctx.all_reduce_mean(loss).item()  # the global mean; .item() waits for the device
            now = time.time()
            dt = (now - window_start) / (iter_num + 1 - window_iter)  # mean step time over the window
            result.losses[iter_num] = last_loss
            stop_if_diverged(iter_num, {"train": last_loss}, cfg)
            mfu = None
            if peak is not None and iter_num - start_iter >= 5:  # the first steps include warm-up costs
                step_mfu = raw_model.estimate_mfu(cfg.batch_size * cfg.gradient_accumulation_steps, dt, peak)
                running_mfu = step_mfu if running_mfu is None else 0.9 * running_mfu + 0.1 * step_mfu
                mfu = running_mfu
            log(format_log_line(iter_num, last_loss, lr, dt, tokens_per_iter / dt, mfu))
            window_start, window_iter = now, iter_num + 1
        iter_num += 1
        progress.update(iter_num, last_loss)
    progress.close()
    result.iter_num, result.best_val_loss = iter_num, best_val_loss
    return result


def stop_if_diverged(iter_num: int, losses: dict[str, float], cfg: TrainConfig) -> None:
    """Raise RunStopped on a NaN or infinite loss, before it can replace the last good checkpoint.

    Every rank sees the same all-reduced loss, so every rank stops at the same step.
    """
    bad = {k: v for k, v in losses.items() if not math.isfinite(v)}
    if not bad:
        return
    path = Path(cfg.out_dir) / CHECKPOINT_FILE
    kept = f"{path} (the last good checkpoint) is kept as it was" if path.exists() else "nothing was saved"
    what = ", ".join(f"{k} loss {v}" for k, v in bad.items())
    raise RunStopped(
        f"the run diverged at iter {iter_num} ({what}); {kept}. Lower --learning_rate "
        f"(now {cfg.learning_rate:g}), raise --warmup_iters or set --grad_clip, then resume or restart"
    )


def write_checkpoint(
    cfg: TrainConfig,
    ctx: DistContext,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler | None,
    sampler: BatchSampler,
    iter_num: int,
    best_val_loss: float,
    log: Callable[[str], None],
) -> None:
    """Gather the full training state (collective) and write out_dir/ckpt.pt atomically on rank 0."""
    if not unwrap_model(model).is_tied():
        raise RuntimeError("lm_head.weight and transformer.wte.weight came apart during training")
    rng = ctx.gather_objects(capture_rng_state())
    payload = training_payload(
        model,
        optimizer,
        iter_num=iter_num,
        best_val_loss=best_val_loss,
        train_config=cfg,
        rng=rng,
        sampler_state=sampler.state_dict(),
        scaler=scaler,
    )
    if ctx.is_main:
        path = save_checkpoint(payload, Path(cfg.out_dir) / CHECKPOINT_FILE)
        log(f"saved checkpoint {path} (iter {iter_num})")
    ctx.barrier()


def main(argv: list[str]) -> None:
    """`python -m nanogpt.train`: parse the config, train."""
    cfg, explicit = parse_config(TrainConfig, argv, prog="nanogpt.train", validate=False)
    train(cfg, explicit)


if __name__ == "__main__":
    run_cli(main, None, "nanogpt.train")
