"""Tests for nanogpt.sample: sampling from our checkpoints and from HF GPT-2 directories, and its CLI."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from nanogpt.checkpoint import capture_rng_state, save_checkpoint, training_payload
from nanogpt.config import ConfigError, run_cli
from nanogpt.hf import CheckpointError, export_hf_checkpoint
from nanogpt.model import GPT, GPTConfig
from nanogpt.sample import SEPARATOR, SampleConfig, load_model, main, sample
from nanogpt.tokenizer import decode, encode
from nanogpt.train_config import TrainConfig

# The GPT-2 vocabulary, so that any prompt encodes; a tiny body keeps it fast.
CONFIG = GPTConfig(block_size=16, vocab_size=50304, logical_vocab_size=50257, n_layer=1, n_head=2, n_embd=16)


# Tiny models gain nothing from a second thread: tests/conftest.py one_thread.
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def out_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory with a training checkpoint of a tiny random GPT-2-vocabulary model."""
    out = tmp_path_factory.mktemp("out")
    torch.manual_seed(0)
    model = GPT(CONFIG)
    opt = model.configure_optimizers(0.1, 1e-3, (0.9, 0.95))
    payload = training_payload(
        model,
        opt,
        iter_num=1,
        best_val_loss=9.0,
        train_config=TrainConfig(),
        rng=[capture_rng_state()],
        sampler_state={"generator": torch.Generator().get_state()},
    )
    save_checkpoint(payload, out / "ckpt.pt")
    return out


def cfg(out_dir: Path, **overrides: object) -> SampleConfig:
    """A small sampling config reading out_dir/ckpt.pt."""
    args = dict(out_dir=str(out_dir), num_samples=2, max_new_tokens=8, start="Hello", device="cpu")
    return SampleConfig(**{**args, **overrides})


def test_samples_are_seeded_and_continue_the_prompt(out_dir: Path) -> None:
    first = sample(cfg(out_dir, seed=1))
    assert len(first) == 2 and all(t.startswith("Hello") for t in first)
    assert sample(cfg(out_dir, seed=1)) == first
    assert sample(cfg(out_dir, seed=2)) != first
    assert first[0] != first[1]  # the generator moves on between samples


def test_greedy_equals_top_1(out_dir: Path) -> None:
    model = load_model("resume", str(out_dir))
    greedy = sample(cfg(out_dir, temperature=0.0, num_samples=1), model=model)
    top1 = sample(cfg(out_dir, temperature=1.0, top_k=1, num_samples=1, seed=5), model=model)
    assert greedy == top1
    ids = torch.tensor([encode("Hello")])
    expected = model.generate(ids, 8, temperature=0.0)
    assert greedy[0] == decode(expected[0].tolist())


def test_sample_from_checkpoint_file_and_hf_directory(out_dir: Path, tmp_path: Path) -> None:
    by_path = sample(cfg(out_dir, init_from=str(out_dir / "ckpt.pt"), seed=3))
    assert by_path == sample(cfg(out_dir, seed=3))
    # the same weights exported as an HF GPT-2 directory sample the same text
    hf_dir = export_hf_checkpoint(load_model("resume", str(out_dir)), tmp_path / "hf")
    assert sample(cfg(out_dir, init_from=str(hf_dir), seed=3)) == by_path


def test_prompt_from_file_and_empty_prompt(out_dir: Path, tmp_path: Path) -> None:
    (tmp_path / "prompt.txt").write_text("Once upon")
    texts = sample(cfg(out_dir, start=f"FILE:{tmp_path / 'prompt.txt'}", num_samples=1))
    assert texts[0].startswith("Once upon")
    assert sample(cfg(out_dir, start="", num_samples=1))[0].startswith("<|endoftext|>")
    with pytest.raises(ConfigError, match="prompt file .* not found"):
        sample(cfg(out_dir, start=f"FILE:{tmp_path / 'nope.txt'}"))


def test_bad_settings_are_refused(out_dir: Path, tmp_path: Path) -> None:
    for bad, key in (
        (dict(num_samples=0), "num_samples"),
        (dict(temperature=-1.0), "temperature"),
        (dict(top_k=0), "top_k"),
    ):
        with pytest.raises(ConfigError, match=key):
            sample(cfg(out_dir, **bad))
    with pytest.raises(CheckpointError, match="no checkpoint here"):
        sample(cfg(tmp_path))
    with pytest.raises(ConfigError, match="is not resume, a checkpoint file"):
        sample(cfg(out_dir, init_from="not-a-model"))


def test_cli_prints_samples_and_one_line_errors(
    out_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    main([f"--out_dir={out_dir}", "--num_samples=3", "--max_new_tokens=4", "--start=Hi", "--device=cpu"])
    out = capsys.readouterr().out
    assert out.count(SEPARATOR) == 3 and out.startswith("Hi")
    with pytest.raises(SystemExit) as exc:
        run_cli(main, [f"--out_dir={tmp_path}", "--top_k=none", "--num_sample=2"], "nanogpt.sample")
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        "nanogpt.sample: error: command line: unknown key 'num_sample' (did you mean num_samples?)"
    ]


@pytest.mark.parametrize(
    "argv, need",
    [
        (["--num_samples=1000000000000"], "num_samples=1000000000000, max_new_tokens=200"),
        (["--max_new_tokens=100000000000"], "num_samples=3, max_new_tokens=100000000000"),
    ],
)
def test_more_samples_than_memory_holds_is_one_line_before_any_model_loads(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], need: str
) -> None:
    """--num_samples or --max_new_tokens of 1e12 was accepted and kept every sample in memory."""
    with pytest.raises(SystemExit) as exc:  # tmp_path has no checkpoint: the bound comes before loading
        run_cli(main, [f"--out_dir={tmp_path}", "--device=cpu", *argv], "nanogpt.sample")
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"nanogpt.sample: error: {need}: sampling holds at least ")
    assert err[0].endswith("this machine has; ask for fewer or shorter samples")
