"""Tests for nanogpt.checkpoint: atomic writes, clean names from wrapped models, damaged files, RNG state."""

from __future__ import annotations

import datetime
import random
from pathlib import Path

import numpy as np
import pytest
import torch

import nanogpt.checkpoint as ckpt_mod
from nanogpt.checkpoint import (
    build_model,
    capture_rng_state,
    load_checkpoint,
    restore_rng_state,
    save_checkpoint,
    strip_wrapper_prefixes,
    training_payload,
)
from nanogpt.hf import CheckpointError
from nanogpt.model import GPT, GPTConfig
from nanogpt.train_config import TrainConfig

TINY = GPTConfig(block_size=16, vocab_size=64, n_layer=2, n_head=2, n_embd=32)


# Tiny models gain nothing from a second thread: tests/conftest.py one_thread.
pytestmark = pytest.mark.usefixtures("one_thread")


def trained_model(seed: int = 0) -> tuple[GPT, torch.optim.Optimizer]:
    """A tiny model after one AdamW step, so the optimizer has state."""
    torch.manual_seed(seed)
    model = GPT(TINY)
    opt = model.configure_optimizers(0.1, 1e-3, (0.9, 0.95))
    x = torch.randint(0, 64, (2, 16))
    model(x, x)[1].backward()
    opt.step()
    opt.zero_grad()
    return model, opt


def payload_of(model: torch.nn.Module, opt: torch.optim.Optimizer, iter_num: int = 5) -> dict:
    """A training checkpoint payload of model and opt."""
    return training_payload(
        model,
        opt,
        iter_num=iter_num,
        best_val_loss=1.5,
        train_config=TrainConfig(),
        rng=[capture_rng_state()],
        sampler_state={"generator": torch.Generator().manual_seed(1).get_state()},
    )


def test_roundtrip_restores_weights_tie_and_optimizer(tmp_path: Path) -> None:
    model, opt = trained_model()
    path = save_checkpoint(payload_of(model, opt), tmp_path / "ckpt.pt")
    ckpt = load_checkpoint(path)
    assert ckpt["iter_num"] == 5 and ckpt["best_val_loss"] == 1.5
    loaded = build_model(ckpt)
    assert loaded.lm_head.weight is loaded.transformer.wte.weight
    for (name, p), q in zip(model.state_dict().items(), loaded.state_dict().values(), strict=True):
        assert torch.equal(p, q), name
    state = ckpt["optimizer"]["state"]
    assert "transformer.wte.weight" in state  # keyed by name, not by position
    torch.testing.assert_close(
        state["transformer.wte.weight"]["exp_avg"], opt.state[model.lm_head.weight]["exp_avg"], rtol=0, atol=0
    )


def test_compiled_model_checkpoint_loads_uncompiled(tmp_path: Path) -> None:
    """torch.compile's wrapper adds `_orig_mod.` to state-dict keys; none may reach the file.

    The wrapper's state_dict behaves the same before and after compilation, so no compile is needed here
    (the slow test in test_train_compile.py trains compiled for real).
    """
    model, opt = trained_model()
    compiled = torch.compile(model)
    assert any(k.startswith("_orig_mod.") for k in compiled.state_dict())  # the hazard is real
    save_checkpoint(payload_of(compiled, opt), tmp_path / "ckpt.pt")
    raw = torch.load(tmp_path / "ckpt.pt", weights_only=True)
    assert not [k for k in raw["model"] if "_orig_mod" in k]
    assert not [k for k in raw["optimizer"]["state"] if "_orig_mod" in k]
    loaded = build_model(load_checkpoint(tmp_path / "ckpt.pt"))
    assert loaded.is_tied()
    torch.testing.assert_close(loaded.lm_head.weight, model.lm_head.weight, rtol=0, atol=0)


def test_failed_write_keeps_previous_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model, opt = trained_model()
    path = save_checkpoint(payload_of(model, opt, iter_num=1), tmp_path / "ckpt.pt")
    before = path.read_bytes()

    def crash_midway(obj: object, f) -> None:
        f.write(b"PK\x03\x04 half a zip")  # something on disk, then the process "dies"
        raise OSError("disk full")

    monkeypatch.setattr(ckpt_mod.torch, "save", crash_midway)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(payload_of(model, opt, iter_num=2), path)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt.pt"]  # no temporary file left behind
    assert load_checkpoint(path)["iter_num"] == 1


def test_damaged_checkpoints_are_refused(tmp_path: Path) -> None:
    model, opt = trained_model()
    good = save_checkpoint(payload_of(model, opt), tmp_path / "good.pt").read_bytes()
    (tmp_path / "truncated.pt").write_bytes(good[: len(good) // 2])
    (tmp_path / "garbage.pt").write_bytes(b"\x00\x01 not a checkpoint" * 100)
    for name in ("truncated.pt", "garbage.pt"):
        with pytest.raises(CheckpointError, match=f"{name}: corrupt or truncated checkpoint"):
            load_checkpoint(tmp_path / name)
    torch.save([1, 2, 3], tmp_path / "list.pt")
    with pytest.raises(CheckpointError, match="not a nanogpt checkpoint"):
        load_checkpoint(tmp_path / "list.pt")
    torch.save({"model": {}}, tmp_path / "partial.pt")
    with pytest.raises(CheckpointError, match="missing model_config"):
        load_checkpoint(tmp_path / "partial.pt")
    with pytest.raises(CheckpointError, match="no checkpoint here"):
        load_checkpoint(tmp_path / "absent.pt")


def test_weights_of_another_config_are_refused(tmp_path: Path) -> None:
    model, opt = trained_model()
    payload = payload_of(model, opt)
    payload["model_config"] = dict(payload["model_config"], n_layer=3)
    save_checkpoint(payload, tmp_path / "ckpt.pt")
    with pytest.raises(CheckpointError, match=r"weights do not fit .*n_layer=3.*missing transformer\.h\.2"):
        load_checkpoint(tmp_path / "ckpt.pt")
    payload["model_config"] = dict(payload["model_config"], n_layer=2, n_embd=64, n_head=2)
    save_checkpoint(payload, tmp_path / "ckpt.pt")
    wrong_shape = r"wrong shape: transformer\.\S+ \(64, 32\) \(expected \(64, 64\)\)"
    with pytest.raises(CheckpointError, match=wrong_shape):
        load_checkpoint(tmp_path / "ckpt.pt")
    payload = payload_of(model, opt)
    payload["model"]["transformer.extra.weight"] = payload["model"].pop("transformer.ln_f.weight")
    save_checkpoint(payload, tmp_path / "ckpt.pt")
    both = r"1 tensor\(s\) missing: transformer\.ln_f\.weight; 1 unexpected tensor\(s\): transformer\.extra"
    with pytest.raises(CheckpointError, match=both):
        load_checkpoint(tmp_path / "ckpt.pt")


def test_unsafe_pickles_are_not_executed(tmp_path: Path) -> None:
    # any importable class beyond tensors and plain data; a real attack would name os.system instead
    torch.save({"model": datetime.date(2020, 1, 1)}, tmp_path / "evil.pt")
    with pytest.raises(CheckpointError, match="not a nanogpt checkpoint .*Unsupported global"):
        load_checkpoint(tmp_path / "evil.pt")


def test_upstream_style_checkpoint_loads_for_sampling(tmp_path: Path) -> None:
    """Upstream nanoGPT saves `model_args` and, from a compiled model, `_orig_mod.`-prefixed keys."""
    model, _ = trained_model()
    sd = {"_orig_mod." + k: v for k, v in model.state_dict().items()}
    args = dict(n_layer=2, n_head=2, n_embd=32, block_size=16, bias=True, vocab_size=64, dropout=0.0)
    torch.save({"model": sd, "model_args": args, "iter_num": 10}, tmp_path / "up.pt")
    with pytest.raises(CheckpointError, match="not a complete training checkpoint"):
        load_checkpoint(tmp_path / "up.pt")  # fine for sampling, not for resuming
    loaded = build_model(load_checkpoint(tmp_path / "up.pt", require_training_state=False))
    assert loaded.is_tied()
    torch.testing.assert_close(loaded.transformer.wte.weight, model.transformer.wte.weight, rtol=0, atol=0)
    assert strip_wrapper_prefixes({"module._orig_mod.a": 1, "b": 2}) == {"a": 1, "b": 2}


def test_rng_state_roundtrip_through_a_file(tmp_path: Path) -> None:
    torch.manual_seed(1), np.random.seed(1), random.seed(1)
    torch.save({"rng": capture_rng_state()}, tmp_path / "rng.pt")
    expected = (torch.rand(3), np.random.rand(3), random.random())
    torch.manual_seed(2), np.random.seed(2), random.seed(2)
    restore_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True)["rng"])
    got = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(got[0], expected[0]) and np.array_equal(got[1], expected[1]) and got[2] == expected[2]
