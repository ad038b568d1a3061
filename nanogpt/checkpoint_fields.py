"""Validation of every field of a training checkpoint before a resume uses any of it.

A resume that accepts a damaged field does not fail, it silently changes the run: a negative `iter_num`
gives a negative learning rate, an empty optimizer state restarts AdamW's moments (the resume is no
longer exact), a flipped byte in a weight gives a loss of 1e8. So the file carries a content hash of
every tensor and value (written by `save_checkpoint`), and each field is checked for type, range and
agreement with the model before training starts. Every problem is a CheckpointError naming the field.
"""

from __future__ import annotations

import hashlib
import math
from pathlib import Path
from typing import Any

import torch

from nanogpt.hf import CheckpointError

TORCH_RNG_BYTES = torch.get_rng_state().numel()  # 5056 on every torch this project supports
MT19937_WORDS = 624  # numpy's and Python's Mersenne Twister key length
ADAMW_STATE = ("step", "exp_avg", "exp_avg_sq")


def _update(h: Any, value: Any) -> None:
    """Feed one value of a checkpoint into hash h, in an order that does not depend on dict insertion."""
    if isinstance(value, torch.Tensor):
        t = value.detach().cpu().contiguous()
        h.update(f"T{t.dtype}{tuple(t.shape)}".encode())
        if t.numel():
            h.update(memoryview(t.reshape(-1).view(torch.uint8).numpy()))  # no copy of the bytes
    elif isinstance(value, dict):
        h.update(b"D%d" % len(value))
        for k in sorted(value, key=repr):
            h.update(repr(k).encode())
            _update(h, value[k])
    elif isinstance(value, (list, tuple)):
        h.update(b"L%d" % len(value))
        for v in value:
            _update(h, v)
    else:
        h.update(f"S{type(value).__name__}:{value!r}".encode())


def payload_checksum(payload: dict[str, Any]) -> str:
    """sha256 of every field of a checkpoint payload except the checksum itself."""
    h = hashlib.sha256()
    _update(h, {k: v for k, v in payload.items() if k != "checksum"})
    return h.hexdigest()


def verify_checksum(ckpt: dict[str, Any], path: Path | str) -> None:
    """Raise CheckpointError when the stored content hash does not match (a checkpoint without one passes)."""
    stored = ckpt.get("checksum")
    if stored is None:
        return  # written before checksums existed
    if not isinstance(stored, str) or stored != payload_checksum(ckpt):
        raise CheckpointError(
            f"{path}: content hash mismatch (the file was modified or damaged after it was saved); "
            "restore a good copy or start again with --init_from=scratch"
        )


def _fail(path: Path | str, field: str, problem: str) -> CheckpointError:
    return CheckpointError(
        f"{path}: field {field!r} {problem}; the checkpoint is damaged or not written by nanogpt.train "
        "(restore a good copy, or start with --init_from=scratch)"
    )


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _byte_tensor(v: Any, numel: int) -> bool:
    return isinstance(v, torch.Tensor) and v.dtype == torch.uint8 and v.dim() == 1 and v.numel() == numel


def _check_rng(state: Any, path: Path | str, where: str) -> None:
    """One process's captured random states (see capture_rng_state)."""
    if not isinstance(state, dict) or not {"torch_cpu", "numpy", "python"} <= set(state):
        raise _fail(path, where, "is not a dict with torch_cpu, numpy and python states")
    if not _byte_tensor(state["torch_cpu"], TORCH_RNG_BYTES):
        raise _fail(path, f"{where}.torch_cpu", f"is not a uint8 tensor of {TORCH_RNG_BYTES} bytes")
    np_state = state["numpy"]
    ok = (
        isinstance(np_state, (tuple, list))
        and len(np_state) == 5
        and np_state[0] == "MT19937"
        and isinstance(np_state[1], torch.Tensor)
        and np_state[1].dtype == torch.int64
        and tuple(np_state[1].shape) == (MT19937_WORDS,)
        and bool(((np_state[1] >= 0) & (np_state[1] < 2**32)).all())
        and _is_int(np_state[2])
        and 0 <= np_state[2] <= MT19937_WORDS
        and _is_int(np_state[3])
        and isinstance(np_state[4], float)
    )
    if not ok:
        raise _fail(path, f"{where}.numpy", "is not numpy's MT19937 state")
    py = state["python"]
    ok = (
        isinstance(py, (tuple, list))
        and len(py) == 3
        and _is_int(py[0])
        and isinstance(py[1], (tuple, list))
        and len(py[1]) == MT19937_WORDS + 1
        and all(_is_int(x) and 0 <= x < 2**32 for x in py[1][:-1])
        and _is_int(py[1][-1])
        and 0 <= py[1][-1] <= MT19937_WORDS
        and (py[2] is None or isinstance(py[2], float))
    )
    if not ok:
        raise _fail(path, f"{where}.python", "is not Python's random state")
    if "torch_cuda" in state:
        cuda = state["torch_cuda"]
        if not isinstance(cuda, (list, tuple)) or not all(
            isinstance(t, torch.Tensor) and t.dtype == torch.uint8 and t.dim() == 1 for t in cuda
        ):
            raise _fail(path, f"{where}.torch_cuda", "is not a list of uint8 tensors")


def _check_optimizer(
    opt: Any, params: dict[str, torch.Size], path: Path | str, iter_num: int, scaled: bool
) -> None:
    """A full, name-keyed AdamW state: every parameter in exactly one group, with moments of its shape."""
    if (
        not isinstance(opt, dict)
        or not isinstance(opt.get("state"), dict)
        or not isinstance(opt.get("param_groups"), list)
    ):
        raise _fail(path, "optimizer", "is not an optimizer state dict (state + param_groups)")
    grouped: list[str] = []
    for i, group in enumerate(opt["param_groups"]):
        if not isinstance(group, dict) or not isinstance(group.get("params"), list):
            raise _fail(path, f"optimizer.param_groups[{i}]", "is not a dict with a params list")
        grouped += group["params"]
        for key in ("lr", "weight_decay", "eps"):
            v = group.get(key)
            if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v) or v < 0:
                raise _fail(path, f"optimizer.param_groups[{i}].{key}", f"is {v!r}, not a finite number >= 0")
        betas = group.get("betas")
        if not (
            isinstance(betas, (tuple, list))
            and len(betas) == 2
            and all(isinstance(b, float) and 0.0 <= b < 1.0 for b in betas)
        ):
            raise _fail(
                path, f"optimizer.param_groups[{i}].betas", f"is {betas!r}, not two numbers in [0, 1)"
            )
    if sorted(grouped) != sorted(params):
        extra = sorted(set(grouped) - set(params), key=str)[:3]
        missing = sorted(set(params) - set(grouped))[:3]
        raise _fail(
            path,
            "optimizer.param_groups",
            f"does not hold each model parameter exactly once (missing {missing}, unknown {extra})",
        )
    state = opt["state"]
    if not state and scaled:
        return  # fp16: the GradScaler skipped every step so far (inf gradients), so AdamW has no moments yet
    if set(state) != set(params):
        missing = sorted(set(params) - set(state))[:3]
        raise _fail(
            path,
            "optimizer.state",
            f"lacks the AdamW moments of {len(set(params) - set(state))} parameter(s), e.g. {missing} "
            "(a resume would restart them and no longer continue the run)",
        )
    for name, shape in params.items():
        s = state[name]
        if not isinstance(s, dict) or set(s) != set(ADAMW_STATE):
            raise _fail(path, f"optimizer.state[{name}]", f"is not AdamW's {', '.join(ADAMW_STATE)}")
        step = s["step"]
        if not isinstance(step, torch.Tensor) or step.numel() != 1 or not (0 <= float(step) <= iter_num):
            raise _fail(
                path, f"optimizer.state[{name}].step", f"is not a step count in [0, iter_num={iter_num}]"
            )
        for key in ("exp_avg", "exp_avg_sq"):
            t = s[key]
            if not isinstance(t, torch.Tensor) or t.shape != shape or not t.is_floating_point():
                raise _fail(
                    path,
                    f"optimizer.state[{name}].{key}",
                    f"does not have the parameter's shape {tuple(shape)}",
                )
            if not bool(torch.isfinite(t).all()) or (key == "exp_avg_sq" and bool((t < 0).any())):
                raise _fail(path, f"optimizer.state[{name}].{key}", "holds NaN, Inf or negative values")


def check_training_state(ckpt: dict[str, Any], params: dict[str, torch.Size], path: Path | str) -> None:
    """Raise CheckpointError unless every training field of ckpt is usable for an exact resume.

    params: the model's parameter names and shapes (the tied head counted once, under wte).
    """
    it = ckpt["iter_num"]
    if not _is_int(it) or it < 0:
        raise _fail(path, "iter_num", f"is {it!r}, not an integer >= 0")
    best = ckpt["best_val_loss"]
    if not isinstance(best, (int, float)) or isinstance(best, bool) or math.isnan(best) or best < 0:
        raise _fail(path, "best_val_loss", f"is {best!r}, not a loss >= 0")
    if not isinstance(ckpt["train_config"], dict):
        raise _fail(path, "train_config", "is not a dict of settings")
    rng = ckpt["rng"]
    if not isinstance(rng, list) or not rng:
        raise _fail(path, "rng", "is not a list of per-process random states")
    for rank, state in enumerate(rng):
        _check_rng(state, path, f"rng[{rank}]")
    sampler = ckpt.get("sampler")
    if not isinstance(sampler, dict) or not _byte_tensor(sampler.get("generator"), TORCH_RNG_BYTES):
        raise _fail(
            path,
            "sampler",
            f"is not a data-sampler state (a uint8 generator state of {TORCH_RNG_BYTES} bytes)",
        )
    scaler = ckpt.get("scaler")
    if scaler is not None and not isinstance(scaler, dict):
        raise _fail(path, "scaler", "is neither none nor a GradScaler state dict")
    _check_optimizer(ckpt["optimizer"], params, path, it, scaled=bool(scaler))
    for name, t in ckpt["model"].items():
        if isinstance(t, torch.Tensor) and t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise _fail(path, f"model[{name}]", "holds NaN or Inf values")
