"""The trainer tests' tiny run, as data: 2 layers, 32 channels, a 16-token context, batch 2 on one CPU thread.

A few milliseconds per step. Tests give the settings they rely on as overrides (max_iters, paths, ...);
tests/conftest.py wraps it in factory fixtures, and tables of command lines use `tiny_train_flags`.
"""

from __future__ import annotations

TINY_TRAIN = dict(
    n_layer=2,
    n_head=2,
    n_embd=32,
    block_size=16,
    batch_size=2,
    eval_iters=1,
    eval_interval=2,
    warmup_iters=1,
    device="cpu",
    dtype="float32",
    progress=False,
)


def tiny_train_flags(**overrides: object) -> list[str]:
    """The tiny run as `python -m nanogpt.train` flags (`--key=value`), with keyword overrides."""
    return [f"--{key}={value}" for key, value in {**TINY_TRAIN, **overrides}.items()]
