"""Resume and checkpoint safety: no run writes into another's folder or over its last good checkpoint.

A resume once took `out_dir` from the checkpoint (a copied project overwrote the original's ckpt.pt), a
diverged run (NaN loss) replaced the last good checkpoint and exited 0, and 11 of 35 damaged `ckpt.pt`
fields crashed with a traceback while others (`iter_num=-5`, an empty optimizer state, flipped bytes)
were silently accepted. Each case here asserts the exit status, one line on stderr, and that no file of
the user's changed.
"""

from __future__ import annotations

import copy
import hashlib
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

import nanogpt.train as train_module
from nanogpt.checkpoint import CHECKPOINT_FILE
from nanogpt.checkpoint_fields import payload_checksum
from nanogpt.config import run_cli
from nanogpt.train import main

pytestmark = pytest.mark.usefixtures("one_thread")


def digest(directory: Path) -> dict[str, str]:
    """sha256 of every file under directory, by relative path (hidden temporaries included)."""
    return {
        str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(directory.rglob("*"))
        if p.is_file()
    }


def run_cli_status(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, list[str]]:
    """Run `python -m nanogpt.train ARGV` in this process; (exit status, stderr lines)."""
    capsys.readouterr()
    code = 0
    try:
        run_cli(main, argv, "nanogpt.train")
    except SystemExit as e:
        code = int(e.code or 0)
    return code, capsys.readouterr().err.strip().splitlines()


@pytest.fixture(scope="module")
def trained(tiny_trained_run: Path) -> Path:
    """A project root with data/ and out/ckpt.pt after 2 iterations (out_dir saved as an absolute path)."""
    return tiny_trained_run


# ----------------------------------------------------------------------------------------------------------
# resume writes only where this launch says


def test_resume_in_a_copied_project_writes_its_own_checkpoint(
    trained: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(trained, copy)
    original = digest(trained)
    monkeypatch.chdir(copy)  # no --out_dir: the default "out" of this project, not the saved absolute path
    result = train_module.train(
        train_module.parse_config(
            train_module.TrainConfig,
            ["--init_from=resume", "--data_dir=data", "--max_iters=4", "--always_save_checkpoint"],
            validate=False,
        )[0],
        {"init_from", "data_dir", "max_iters", "always_save_checkpoint"},
        log=lambda _: None,
    )
    assert result.iter_num == 4 and result.checkpoints == [4]
    assert digest(trained) == original, "the original project's files changed"
    assert torch.load(copy / "out" / CHECKPOINT_FILE, weights_only=True)["iter_num"] == 4


# ----------------------------------------------------------------------------------------------------------
# a diverged run stops and keeps the last good checkpoint


def diverge_after(step: int) -> Callable[..., torch.Tensor]:
    """train_step that, from the given step on, leaves an Inf in a weight (what a blown-up update does)."""
    real = train_module.train_step
    calls = {"n": 0}

    def step_then_blow_up(model: torch.nn.Module, *args: Any, **kwargs: Any) -> torch.Tensor:
        loss = real(model, *args, **kwargs)
        calls["n"] += 1
        if calls["n"] >= step:
            with torch.no_grad():
                next(model.parameters()).fill_(float("inf"))
        return loss

    return step_then_blow_up


@pytest.mark.parametrize("log_interval", [1, 100], ids=["seen-in-the-log", "seen-at-evaluation"])
def test_diverged_run_stops_with_status_3_and_keeps_the_good_checkpoint(
    trained: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    log_interval: int,
) -> None:
    out = tmp_path / "out"
    shutil.copytree(trained / "out", out)
    before = digest(out)
    monkeypatch.setattr(train_module, "train_step", diverge_after(1))
    argv = ["--init_from=resume", f"--out_dir={out}", "--max_iters=8", f"--log_interval={log_interval}"]
    code, err = run_cli_status(argv, capsys)
    assert code == 3, err
    assert len(err) == 1 and err[0].startswith("nanogpt.train: error: the run diverged at iter "), err
    assert "nan" in err[0] and "is kept as it was" in err[0] and "--learning_rate" in err[0]
    assert digest(out) == before


def test_scratch_run_that_diverges_saves_nothing(
    trained: Path,
    tmp_path: Path,
    tiny_train_args: Callable[..., list[str]],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setattr(train_module, "train_step", diverge_after(1))
    argv = tiny_train_args(data_dir=trained / "data", out_dir=tmp_path / "o", max_iters=4)
    code, err = run_cli_status(argv, capsys)
    assert code == 3 and len(err) == 1 and "nothing was saved" in err[0], err
    assert not (tmp_path / "o" / CHECKPOINT_FILE).exists()


# ----------------------------------------------------------------------------------------------------------
# damaged checkpoint fields


def _set(path: tuple[Any, ...], value: Any) -> Callable[[dict], None]:
    def edit(ckpt: dict) -> None:
        target = ckpt
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value

    return edit


def _drop(path: tuple[Any, ...]) -> Callable[[dict], None]:
    def edit(ckpt: dict) -> None:
        target = ckpt
        for key in path[:-1]:
            target = target[key]
        del target[path[-1]]

    return edit


def _first_param(ckpt: dict) -> str:
    return next(iter(ckpt["optimizer"]["state"]))


def _edit_first_state(key: str, value: Callable[[torch.Tensor], Any]) -> Callable[[dict], None]:
    def edit(ckpt: dict) -> None:
        state = ckpt["optimizer"]["state"][_first_param(ckpt)]
        state[key] = value(state[key])

    return edit


def _scale_weight(ckpt: dict) -> None:
    ckpt["model"]["transformer.h.0.mlp.c_fc.weight"][0, 0] = float("nan")


# name: (edit of the loaded checkpoint, regex the error line must contain)
FIELD_CASES: dict[str, tuple[Callable[[dict], None], str]] = {
    "iter-num-string": (_set(("iter_num",), "abc"), r"field 'iter_num' is 'abc', not an integer >= 0"),
    "iter-num-negative": (_set(("iter_num",), -5), r"field 'iter_num' is -5"),
    "iter-num-float": (_set(("iter_num",), 2.5), r"field 'iter_num' is 2.5"),
    "iter-num-bool": (_set(("iter_num",), True), r"field 'iter_num' is True"),
    "best-loss-string": (_set(("best_val_loss",), "low"), r"field 'best_val_loss' is 'low'"),
    "best-loss-nan": (_set(("best_val_loss",), float("nan")), r"field 'best_val_loss' is nan"),
    "best-loss-negative": (_set(("best_val_loss",), -1.0), r"field 'best_val_loss' is -1.0"),
    "rng-string": (_set(("rng",), "seed"), r"field 'rng' is not a list"),
    "rng-empty": (_set(("rng",), []), r"field 'rng' is not a list"),
    "rng-entry-not-dict": (_set(("rng", 0), 5), r"field 'rng\[0\]' is not a dict"),
    "rng-torch-short": (
        _set(("rng", 0, "torch_cpu"), torch.zeros(10, dtype=torch.uint8)),
        r"rng\[0\]\.torch_cpu",
    ),
    "rng-torch-float": (_set(("rng", 0, "torch_cpu"), torch.zeros(5056)), r"rng\[0\]\.torch_cpu"),
    "rng-numpy-string": (_set(("rng", 0, "numpy"), "MT"), r"rng\[0\]\.numpy"),
    "rng-numpy-short-key": (
        _set(("rng", 0, "numpy"), ("MT19937", torch.zeros(5, dtype=torch.int64), 0, 0, 0.0)),
        r"rng\[0\]\.numpy",
    ),
    "rng-python-string": (_set(("rng", 0, "python"), "x"), r"rng\[0\]\.python"),
    "rng-python-bad-pos": (_set(("rng", 0, "python"), (3, (0,) * 624 + (9999,), None)), r"rng\[0\]\.python"),
    "rng-missing-key": (_drop(("rng", 0, "numpy")), r"field 'rng\[0\]' is not a dict with"),
    "sampler-string": (_set(("sampler",), "s"), r"field 'sampler'"),
    "sampler-missing": (_drop(("sampler",)), r"field 'sampler'"),
    "sampler-short": (_set(("sampler", "generator"), torch.zeros(3, dtype=torch.uint8)), r"field 'sampler'"),
    "optimizer-string": (_set(("optimizer",), "adamw"), r"field 'optimizer' is not an optimizer state"),
    "optimizer-empty-state": (_set(("optimizer", "state"), {}), r"optimizer\.state' lacks the AdamW moments"),
    "optimizer-no-groups": (
        _set(("optimizer", "param_groups"), []),
        r"optimizer\.param_groups' does not hold",
    ),
    "optimizer-group-string": (
        _set(("optimizer", "param_groups", 0), "g"),
        r"param_groups\[0\]' is not a dict",
    ),
    "optimizer-lr-nan": (
        _set(("optimizer", "param_groups", 0, "lr"), float("nan")),
        r"param_groups\[0\]\.lr",
    ),
    "optimizer-betas": (
        _set(("optimizer", "param_groups", 0, "betas"), (2.0, 0.9)),
        r"param_groups\[0\]\.betas",
    ),
    "optimizer-moment-shape": (_edit_first_state("exp_avg", lambda t: t[:1]), r"\.exp_avg' does not have"),
    "optimizer-moment-nan": (
        _edit_first_state("exp_avg_sq", lambda t: t * float("nan")),
        r"NaN, Inf or negative",
    ),
    "optimizer-step-negative": (_edit_first_state("step", lambda t: t - 100), r"\.step' is not a step count"),
    "optimizer-step-string": (_edit_first_state("step", lambda t: "1"), r"\.step' is not a step count"),
    "scaler-string": (_set(("scaler",), "s"), r"field 'scaler'"),
    "train-config-string": (_set(("train_config",), "cfg"), r"field 'train_config' is not a dict"),
    "train-config-bad-type": (
        _set(("train_config", "batch_size"), "abc"),
        r"saved train_config: batch_size expects int",
    ),
    "train-config-bad-range": (_set(("train_config", "learning_rate"), 1e9), r"learning_rate: must be <= 1"),
    "model-nan": (_scale_weight, r"field 'model\[transformer\.h\.0\.mlp\.c_fc\.weight\]' holds NaN"),
    "model-config-n-layer": (
        _set(("model_config", "n_layer"), 10**9),
        r"n_layer=1000000000, .*missing transformer\.h\.2\.\* \(the weights hold 2 layers\)",
    ),
}


@pytest.fixture(scope="module")
def good_checkpoint(trained: Path) -> dict:
    return torch.load(trained / "out" / CHECKPOINT_FILE, weights_only=True)


@pytest.mark.parametrize("case", FIELD_CASES)
def test_damaged_field_is_one_line_and_nothing_changes(
    case: str, trained: Path, good_checkpoint: dict, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    edit, pattern = FIELD_CASES[case]
    ckpt = copy.deepcopy(good_checkpoint)
    edit(ckpt)
    ckpt["checksum"] = payload_checksum(ckpt)  # the field itself must be refused, not only the hash
    out = tmp_path / "out"
    out.mkdir()
    torch.save(ckpt, out / CHECKPOINT_FILE)
    before = digest(tmp_path)
    code, err = run_cli_status(
        ["--init_from=resume", f"--out_dir={out}", f"--data_dir={trained / 'data'}", "--max_iters=4"], capsys
    )
    assert code == 2 and len(err) == 1, err
    assert re.search(pattern, err[0]), err[0]
    assert digest(tmp_path) == before


def test_flipped_bytes_are_caught_by_the_content_hash(
    trained: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    shutil.copytree(trained / "out", out)
    ckpt = torch.load(out / CHECKPOINT_FILE, weights_only=True)
    w = ckpt["model"]["transformer.h.1.attn.c_proj.weight"]
    w.view(torch.int32)[3, 4] ^= 1 << 29  # one exponent bit: the value grows by ~2^64, still finite
    torch.save(ckpt, out / CHECKPOINT_FILE)  # the stored hash is the old one
    before = digest(out)
    code, err = run_cli_status(
        ["--init_from=resume", f"--out_dir={out}", f"--data_dir={trained / 'data'}", "--max_iters=4"], capsys
    )
    assert code == 2 and len(err) == 1 and "content hash mismatch" in err[0], err
    assert digest(out) == before


# ----------------------------------------------------------------------------------------------------------
# a killed save leaves a temporary; the next save removes it


def test_next_save_removes_the_temporary_of_a_killed_save(trained: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    shutil.copytree(trained / "out", out)
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    stale = out / f".{CHECKPOINT_FILE}.tmp-{int(dead.stdout)}-0123abcd"
    stale.write_bytes(os.urandom(1000))
    main(["--init_from=resume", f"--out_dir={out}", "--max_iters=4", "--progress=false"])
    assert sorted(p.name for p in out.iterdir()) == [CHECKPOINT_FILE]


def test_symlinked_checkpoint_is_written_through_and_a_fifo_refused(
    trained: Path,
    tmp_path: Path,
    tiny_train_args: Callable[..., list[str]],
    capsys: pytest.CaptureFixture[str],
) -> None:
    out, store = tmp_path / "out", tmp_path / "store"
    out.mkdir()
    store.mkdir()
    shutil.copyfile(trained / "out" / CHECKPOINT_FILE, store / CHECKPOINT_FILE)
    (out / CHECKPOINT_FILE).symlink_to(store / CHECKPOINT_FILE)
    main(
        [
            "--init_from=resume",
            f"--out_dir={out}",
            "--max_iters=4",
            "--always_save_checkpoint",
            "--progress=false",
        ]
    )
    assert (out / CHECKPOINT_FILE).is_symlink()
    assert torch.load(store / CHECKPOINT_FILE, weights_only=True)["iter_num"] == 4

    fifo_dir = tmp_path / "fifo-run"
    fifo_dir.mkdir()
    os.mkfifo(fifo_dir / CHECKPOINT_FILE)
    before = os.lstat(fifo_dir / CHECKPOINT_FILE)
    code, err = run_cli_status(tiny_train_args(data_dir=trained / "data", out_dir=fifo_dir), capsys)
    assert code == 2 and len(err) == 1 and "ckpt.pt) " in err[0] and "is a FIFO" in err[0], err
    after = os.lstat(fifo_dir / CHECKPOINT_FILE)
    assert (after.st_ino, after.st_mode) == (before.st_ino, before.st_mode)


def test_tilde_out_dir_is_the_home_directory(
    trained: Path, tmp_path: Path, tiny_train_args: Callable[..., list[str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    main(tiny_train_args(data_dir=trained / "data", out_dir="~/run", max_iters=2))
    assert (tmp_path / "run" / CHECKPOINT_FILE).is_file() and not (tmp_path / "~").exists()
