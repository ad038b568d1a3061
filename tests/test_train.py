"""Tests for the training loop (nanogpt.train): schedule, step, loop, exact resume, pretrained inits.

Every run is a tiny model (2 layers, 32 channels, 16-token context) on a few thousand GPT-2 tokens of
generated text, a few milliseconds per step on one CPU thread.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from nanogpt.checkpoint import CHECKPOINT_FILE, load_checkpoint
from nanogpt.config import ConfigError
from nanogpt.hf import export_hf_checkpoint
from nanogpt.model import GPT, GPTConfig
from nanogpt.train import StepConfig, get_lr, train, train_step
from nanogpt.train_config import TrainConfig

WORDS = (
    "the model reads tokens and predicts the next one while gradients flow back through every layer".split()
)
MakeConfig = Callable[..., TrainConfig]
# On top of tests/conftest.py's tiny run: a batch of 4, two batches per loss estimate, an evaluation every
# 4 steps (the checkpoint tests count on it) and a log line at every step.
LOOP = dict(
    batch_size=4, eval_iters=2, eval_interval=4, log_interval=1, warmup_iters=2, learning_rate=1e-3, seed=7
)


# Tiny models gain nothing from a second thread: tests/conftest.py one_thread.
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory, make_token_dataset: Callable[..., Path]) -> Path:
    """A dataset of ~3,000 GPT-2 tokens of generated text."""
    return make_token_dataset(tmp_path_factory.mktemp("corpus"), 2500, WORDS, seed=0, val_fraction=0.1)


@pytest.fixture
def tiny_config(tiny_train_config: MakeConfig, data_dir: Path) -> MakeConfig:
    """Factory: the tiny run with this file's LOOP settings on data_dir, into out_dir, with overrides."""

    def make(out_dir: Path, **overrides: object) -> TrainConfig:
        return tiny_train_config(**{**LOOP, "data_dir": data_dir, "out_dir": out_dir, **overrides})

    return make


def quiet(_: str) -> None:
    """A log function that drops the lines."""


# ----------------------------------------------------------------------------------------------------------
# schedule and step


def test_lr_schedule_warmup_cosine_floor() -> None:
    cfg = TrainConfig(learning_rate=1.0, min_lr=0.1, warmup_iters=10, lr_decay_iters=110, max_iters=200)
    warm = [get_lr(i, cfg) for i in range(10)]
    assert warm == sorted(warm) and warm[0] == pytest.approx(1 / 11) and warm[-1] == pytest.approx(10 / 11)
    assert get_lr(10, cfg) == pytest.approx(1.0)  # the peak, where the cosine starts
    assert get_lr(60, cfg) == pytest.approx(0.55)  # halfway down the cosine: (1 + 0.1) / 2
    decay = [get_lr(i, cfg) for i in range(10, 111)]
    assert decay == sorted(decay, reverse=True)
    assert get_lr(110, cfg) == get_lr(199, cfg) == pytest.approx(0.1)
    assert get_lr(50, dataclasses.replace(cfg, decay_lr=False)) == 1.0
    assert TrainConfig(learning_rate=0.5).final_lr == pytest.approx(0.05)  # default min_lr: lr / 10


def test_grad_accumulation_equals_one_big_batch() -> None:
    """k micro-batches of size b give the same step as one batch of k * b (float64: rounding only)."""
    torch.manual_seed(0)
    model = GPT(GPTConfig(block_size=16, vocab_size=64, n_layer=2, n_head=2, n_embd=32)).double()
    twin = copy.deepcopy(model)
    assert twin.is_tied()
    opt_a = model.configure_optimizers(0.1, 1e-3, (0.9, 0.95))
    opt_b = twin.configure_optimizers(0.1, 1e-3, (0.9, 0.95))
    for step in range(3):
        g = torch.Generator().manual_seed(step)
        x = torch.randint(0, 64, (8, 16), generator=g)
        y = torch.randint(0, 64, (8, 16), generator=g)
        micro = list(zip(x.chunk(4), y.chunk(4), strict=True))
        loss_a = train_step(model, opt_a, micro, StepConfig(grad_clip=1.0))
        loss_b = train_step(twin, opt_b, [(x, y)], StepConfig(grad_clip=1.0))
        # float64 sums in another order: ~1e-16 relative per op, far below a wrong scaling (a factor k)
        torch.testing.assert_close(loss_a, loss_b, rtol=1e-12, atol=1e-12)
    for (name, p), q in zip(model.named_parameters(), twin.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=0, atol=1e-12, msg=lambda m, name=name: f"{name}: {m}")


def test_grad_scaler_path_matches_plain_step() -> None:
    """With a GradScaler (the float16 path), the step equals the plain one: power-of-2 scaling is exact."""
    torch.manual_seed(0)
    model = GPT(GPTConfig(block_size=16, vocab_size=64, n_layer=2, n_head=2, n_embd=32))
    twin = copy.deepcopy(model)
    opt_a = model.configure_optimizers(0.1, 1e-3, (0.9, 0.95))
    opt_b = twin.configure_optimizers(0.1, 1e-3, (0.9, 0.95))
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    x = torch.randint(0, 64, (4, 16))
    for _ in range(2):
        micro = [(x[:2], x[:2]), (x[2:], x[2:])]
        train_step(model, opt_a, micro, StepConfig(grad_clip=0.5), scaler=scaler)
        train_step(twin, opt_b, micro, StepConfig(grad_clip=0.5))
    assert scaler.get_scale() == 2.0**10  # no overflow, so no step was skipped
    for (name, p), q in zip(model.named_parameters(), twin.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=0, atol=0, msg=lambda m, name=name: f"{name}: {m}")


def test_train_step_needs_a_batch() -> None:
    model = GPT(GPTConfig(block_size=8, vocab_size=16, n_layer=1, n_head=1, n_embd=8))
    with pytest.raises(ValueError, match="at least one micro-batch"):
        train_step(model, model.configure_optimizers(0.0, 1e-3, (0.9, 0.95)), [], StepConfig())


# ----------------------------------------------------------------------------------------------------------
# the loop


def test_training_lowers_the_loss_and_logs(tiny_config: MakeConfig, tmp_path: Path) -> None:
    lines: list[str] = []
    cfg = tiny_config(tmp_path, max_iters=30, eval_interval=15, learning_rate=1e-2, log_interval=10)
    result = train(cfg, log=lines.append)
    assert result.iter_num == 30 and sorted(result.evals) == [0, 15, 30]
    assert result.evals[30]["val"] < result.evals[0]["val"] - 0.5, result.evals
    assert sorted(result.losses) == [0, 10, 20]
    log_lines = [line for line in lines if line.startswith("iter ")]
    assert len(log_lines) == 3
    for part in ("loss ", "lr ", "tok/s", "mfu n/a"):  # no peak FLOP/s for a CPU: MFU is n/a, not a guess
        assert part in log_lines[0], log_lines[0]
    assert result.checkpoints == [15, 30]  # val improved at both evaluations
    assert result.model.is_tied()


def test_resume_continues_bit_identically(tiny_config: MakeConfig, tmp_path: Path) -> None:
    """Stop at 4, resume to 8: the losses of steps 4..7 and the final weights equal the uninterrupted run.

    dropout > 0 so that the torch RNG state matters, gradient accumulation so the sampler advances twice
    per step: a resume that restored either one wrongly would diverge at once.
    """
    common = dict(dropout=0.1, gradient_accumulation_steps=2, always_save_checkpoint=True, lr_decay_iters=8)
    full = train(tiny_config(tmp_path / "full", max_iters=8, **common), log=quiet)

    train(tiny_config(tmp_path / "split", max_iters=4, **common), log=quiet)
    assert load_checkpoint(tmp_path / "split" / CHECKPOINT_FILE)["iter_num"] == 4
    # Only what changes is given: everything else (dropout, schedule, batch) comes from the checkpoint.
    resumed_cfg = TrainConfig(init_from="resume", out_dir=str(tmp_path / "split"), max_iters=8, device="cpu")
    resumed = train(resumed_cfg, explicit={"init_from", "out_dir", "max_iters", "device"}, log=quiet)

    assert sorted(resumed.losses) == [4, 5, 6, 7]
    for it in range(4, 8):
        assert resumed.losses[it] == full.losses[it], f"step {it}: {resumed.losses[it]} != {full.losses[it]}"
    assert resumed.evals[8] == full.evals[8]
    for (name, p), q in zip(full.model.named_parameters(), resumed.model.parameters(), strict=True):
        assert torch.equal(p, q), f"{name} differs after resume"
    assert resumed.model.lm_head.weight is resumed.model.transformer.wte.weight


def test_resume_refuses_another_architecture(tiny_config: MakeConfig, tmp_path: Path) -> None:
    train(tiny_config(tmp_path, max_iters=4, always_save_checkpoint=True), log=quiet)
    before = (tmp_path / CHECKPOINT_FILE).read_bytes()
    cfg = TrainConfig(init_from="resume", out_dir=str(tmp_path), n_layer=3, max_iters=8)
    with pytest.raises(ConfigError, match=r"n_layer=3 \(it has 2\)"):
        train(cfg, explicit={"init_from", "out_dir", "n_layer", "max_iters"}, log=quiet)
    cfg = TrainConfig(init_from="resume", out_dir=str(tmp_path), block_size=8, max_iters=8)
    with pytest.raises(ConfigError, match="block_size: 8, but .* was trained with 16"):
        train(cfg, explicit={"init_from", "out_dir", "block_size", "max_iters"}, log=quiet)
    assert (tmp_path / CHECKPOINT_FILE).read_bytes() == before


def test_eval_only_writes_nothing(tiny_config: MakeConfig, tmp_path: Path) -> None:
    result = train(tiny_config(tmp_path / "out", eval_only=True, max_iters=10), log=quiet)
    assert list(result.evals) == [0] and result.iter_num == 0 and not result.losses
    assert not (tmp_path / "out" / CHECKPOINT_FILE).exists()


def test_checkpoint_only_on_improvement_unless_always(tiny_config: MakeConfig, tmp_path: Path) -> None:
    # lr 0: the weights never change, so the val loss never improves after the first evaluation
    cfg = tiny_config(tmp_path / "a", max_iters=8, learning_rate=0.0, min_lr=0.0)
    assert train(cfg, log=quiet).checkpoints == []  # step 0 is never saved; 4 and 8 did not improve
    cfg = dataclasses.replace(cfg, out_dir=str(tmp_path / "b"), always_save_checkpoint=True)
    assert train(cfg, log=quiet).checkpoints == [4, 8]


def test_progress_display(
    tiny_config: MakeConfig, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    train(tiny_config(tmp_path, max_iters=3, progress=True, eval_interval=100), log=quiet)
    err = capsys.readouterr().err
    assert "3/3" in err and "it/s" in err and "ETA" in err


def test_init_from_hf_checkpoint_directory(tiny_config: MakeConfig, tmp_path: Path) -> None:
    """A Hugging Face GPT-2 directory is fine-tuned at a cropped context; contradicting overrides fail."""
    torch.manual_seed(3)
    source = GPT(GPTConfig(block_size=32, vocab_size=50257, n_layer=2, n_head=2, n_embd=32))
    hf_dir = export_hf_checkpoint(source, tmp_path / "hf")
    cfg = tiny_config(tmp_path / "out", init_from=str(hf_dir), max_iters=2, block_size=16, n_layer=5)
    # n_layer is not explicit here: a pretrained model brings its own architecture
    result = train(cfg, explicit={"init_from", "block_size"}, log=quiet)
    model = result.model
    assert model.config.block_size == 16 and model.config.n_layer == 2 and model.is_tied()
    assert model.transformer.wpe.weight.shape == (16, 32)

    with pytest.raises(ConfigError, match=r"n_layer=5 \(it has 2\)"):
        train(cfg, explicit={"init_from", "n_layer"}, log=quiet)
    with pytest.raises(ConfigError, match="block_size: 64 exceeds the model's context of 32"):
        train(dataclasses.replace(cfg, block_size=64), explicit={"init_from"}, log=quiet)


def test_unknown_init_from_and_cpu_autocast_are_refused(tiny_config: MakeConfig, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="init_from: 'gpt3' is not scratch, resume"):
        train(tiny_config(tmp_path, init_from="gpt3"), log=quiet)
    with pytest.raises(ConfigError, match="dtype: bfloat16 autocast is for CUDA"):
        train(tiny_config(tmp_path, dtype="bfloat16"), log=quiet)
    with pytest.raises(ConfigError, match="smaller than the dataset's vocabulary"):
        train(tiny_config(tmp_path, vocab_size=1000), log=quiet)
    assert not (tmp_path / CHECKPOINT_FILE).exists()
