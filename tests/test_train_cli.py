"""Tests for `python -m nanogpt.train` on bad input: one line on stderr, exit code 2, nothing overwritten."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from nanogpt.config import run_cli
from nanogpt.train import main

# Tiny models gain nothing from a second thread: tests/conftest.py one_thread.
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def trained(tiny_trained_run: Path) -> Path:
    """A root with data/ (a tiny dataset) and out/ckpt.pt (2 iterations of tests/conftest.py's tiny run)."""
    return tiny_trained_run


def run_in_process(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """Run the CLI entry point in this process; assert exit status 2 and return the one stderr line."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        run_cli(main, argv, "nanogpt.train")
    assert exc.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("nanogpt.train: error: "), lines
    return lines[0]


def test_bad_override_from_a_real_process(tmp_path: Path) -> None:
    """The real entry point: exit 2, one line, no traceback."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(
        [sys.executable, "-m", "nanogpt.train", "--batch_size=0", f"--out_dir={tmp_path / 'out'}"],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines() == [
        "nanogpt.train: error: invalid configuration: batch_size: must be >= 1, got 0"
    ]
    assert "Traceback" not in proc.stderr and not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "extra, expected",
    [
        (["--learning_rate=-1"], "learning_rate: must be >= 0.0"),
        (["--n_layers=3"], "did you mean n_layer?"),
        (["--init_from=resume", "--n_embd=64"], r"n_embd=64 (it has 32)"),
        (["--init_from=resume", "--block_size=8"], "a resumed run keeps its block size"),
        (["--init_from=resume", "--batch_size=-2"], "batch_size: must be >= 1, got -2"),
        (["--block_size=100000"], "fewer than block_size + 1 = 100001"),
    ],
    ids=["negative-lr", "typo", "other-architecture", "other-block", "bad-resume-override", "text-too-short"],
)
def test_bad_input_leaves_the_checkpoint_alone(
    trained: Path,
    tiny_train_args: Callable[..., list[str]],
    capsys: pytest.CaptureFixture[str],
    extra: list[str],
    expected: str,
) -> None:
    ckpt = trained / "out" / "ckpt.pt"
    before = ckpt.read_bytes()
    argv = [*tiny_train_args(data_dir=trained / "data", out_dir=trained / "out", max_iters=4), *extra]
    line = run_in_process(argv, capsys)
    assert expected in line
    assert ckpt.read_bytes() == before
    assert sorted(p.name for p in ckpt.parent.iterdir()) == ["ckpt.pt"]


def test_missing_and_empty_data(
    tmp_path: Path, tiny_train_args: Callable[..., list[str]], capsys: pytest.CaptureFixture[str]
) -> None:
    line = run_in_process(tiny_train_args(data_dir=tmp_path / "none", out_dir=tmp_path / "o"), capsys)
    assert "no such directory" in line and "python -m nanogpt.data" in line
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "meta.json").write_text(
        '{"vocab_size": 50257, "dtype": "uint16", "train_tokens": 0, "val_tokens": 0}'
    )
    (tmp_path / "empty" / "train.bin").write_bytes(b"")
    (tmp_path / "empty" / "val.bin").write_bytes(b"")
    line = run_in_process(tiny_train_args(data_dir=tmp_path / "empty", out_dir=tmp_path / "o"), capsys)
    assert "train.bin: empty" in line
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("damage", ["truncated", "garbage"])
def test_damaged_checkpoint_is_refused_and_kept(
    trained: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], damage: str
) -> None:
    good = (trained / "out" / "ckpt.pt").read_bytes()
    bad = good[: len(good) // 3] if damage == "truncated" else os.urandom(4096)
    (tmp_path / "ckpt.pt").write_bytes(bad)
    argv = ["--init_from=resume", f"--out_dir={tmp_path}", f"--data_dir={trained / 'data'}", "--max_iters=4"]
    line = run_in_process(argv, capsys)
    assert "ckpt.pt: corrupt or truncated checkpoint" in line
    assert (tmp_path / "ckpt.pt").read_bytes() == bad  # left for the user to inspect or restore


def test_config_file_drives_the_cli(
    trained: Path, tmp_path: Path, tiny_train_args: Callable[..., list[str]]
) -> None:
    cfg = tmp_path / "run.toml"
    cfg.write_text(f'data_dir = "{trained / "data"}"\nout_dir = "{tmp_path / "o"}"\nmax_iters = 2\n')
    main([str(cfg), *tiny_train_args()])
    assert (tmp_path / "o" / "ckpt.pt").is_file()
