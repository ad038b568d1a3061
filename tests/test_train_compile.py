"""A real torch.compile training run (slow: the first compile costs tens of seconds on a CPU).

The cheap check that a compiled model's checkpoint carries no `_orig_mod.` prefix runs by default in
test_checkpoint.py; this one compiles, trains, and loads the checkpoint into an uncompiled model.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from nanogpt.checkpoint import build_model, load_checkpoint
from nanogpt.train import train
from nanogpt.train_config import TrainConfig


@pytest.mark.slow
def test_compiled_training_checkpoint_loads_uncompiled(
    tmp_path: Path, make_token_dataset: Callable[..., Path], tiny_train_config: Callable[..., TrainConfig]
) -> None:
    torch.set_num_threads(1)  # the root conftest restores the previous count
    data_dir = make_token_dataset(tmp_path, 800, ["a", "b", "c", "tie", "weights"], seed=0)
    cfg = tiny_train_config(
        max_iters=2, compile=True, always_save_checkpoint=True, data_dir=data_dir, out_dir=tmp_path / "out"
    )
    result = train(cfg, log=lambda _: None)
    ckpt = load_checkpoint(tmp_path / "out" / "ckpt.pt")
    assert not [k for k in ckpt["model"] if "_orig_mod" in k or k.startswith("module.")]
    loaded = build_model(ckpt)
    assert loaded.lm_head.weight is loaded.transformer.wte.weight
    for (name, p), q in zip(result.model.named_parameters(), loaded.parameters(), strict=True):
        assert torch.equal(p.detach(), q), name
