"""A real torch.compile training run (slow: the first compile costs tens of seconds on a CPU).

The cheap check that a compiled model's checkpoint carries no `_orig_mod.` prefix runs by default in
test_checkpoint.py; this one compiles, trains, and loads the checkpoint into an uncompiled model.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch

from nanogpt.checkpoint import build_model, load_checkpoint
from nanogpt.data import prepare_dataset
from nanogpt.train import train
from nanogpt.train_config import TrainConfig


@pytest.mark.slow
def test_compiled_training_checkpoint_loads_uncompiled(tmp_path: Path) -> None:
    torch.set_num_threads(1)  # the root conftest restores the previous count
    rng = random.Random(0)
    (tmp_path / "t.txt").write_text(
        " ".join(rng.choice(["a", "b", "c", "tie", "weights"]) for _ in range(800))
    )
    prepare_dataset(tmp_path / "t.txt", tmp_path / "data")
    cfg = TrainConfig(
        n_layer=2,
        n_head=2,
        n_embd=32,
        block_size=16,
        batch_size=2,
        max_iters=2,
        eval_interval=2,
        eval_iters=1,
        warmup_iters=1,
        device="cpu",
        dtype="float32",
        compile=True,
        always_save_checkpoint=True,
        progress=False,
        data_dir=str(tmp_path / "data"),
        out_dir=str(tmp_path / "out"),
    )
    result = train(cfg, log=lambda _: None)
    ckpt = load_checkpoint(tmp_path / "out" / "ckpt.pt")
    assert not [k for k in ckpt["model"] if "_orig_mod" in k or k.startswith("module.")]
    loaded = build_model(ckpt)
    assert loaded.lm_head.weight is loaded.transformer.wte.weight
    for (name, p), q in zip(result.model.named_parameters(), loaded.parameters(), strict=True):
        assert torch.equal(p.detach(), q), name
