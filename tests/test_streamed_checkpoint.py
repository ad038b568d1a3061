"""The streamed synthetic checkpoint: written tensor by tensor, it holds the seeded weights, bit for bit.

Two writes with the same seed give the same bytes, and a checkpoint is generated once, then reused, with
no temporaries left behind.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors import safe_open

from nanogpt.model import GPTConfig
from parity.subject.synthetic import (
    ensure_synthetic_checkpoint,
    synthetic_openai_weights,
    write_synthetic_safetensors,
)

TINY = GPTConfig(block_size=32, vocab_size=97, n_layer=2, n_head=2, n_embd=16)


def test_streamed_safetensors_holds_the_seeded_weights(tmp_path: Path) -> None:
    path = tmp_path / "model.safetensors"
    write_synthetic_safetensors(path, TINY, seed=7)
    expected = synthetic_openai_weights(TINY, seed=7)
    with safe_open(str(path), framework="pt") as f:
        assert sorted(f.keys()) == sorted(expected)
        for name, t in expected.items():
            assert torch.equal(f.get_tensor(name), t), name
    again = tmp_path / "again.safetensors"
    write_synthetic_safetensors(again, TINY, seed=7)
    assert path.read_bytes() == again.read_bytes()


def test_checkpoint_is_generated_once_and_then_reused(tmp_path: Path) -> None:
    path, seconds = ensure_synthetic_checkpoint(TINY, "tiny", root=tmp_path)
    assert seconds is not None and seconds > 0  # generated now, not taken from somewhere else
    assert ensure_synthetic_checkpoint(TINY, "tiny", root=tmp_path) == (path, None)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "no temporaries left behind"
