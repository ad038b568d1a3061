"""Every command line of the trainer, the sampler and the data tool on bad input: one line, no damage.

Each case runs the CLI entry point (`run_cli`, what `python -m nanogpt.X` runs) on an input a careless
user or an attacker would try, and asserts the exit status (2 for input errors), exactly one line on
stderr that names the problem, no traceback, and that no file under the test's directory changed (a
hash of every file before and after, FIFOs and device nodes included by type and inode).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import stat
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from tiny_train import tiny_train_flags

import nanogpt.tokenizer as tokenizer_module
from nanogpt.config import run_cli
from nanogpt.data import prepare_dataset

REPO = Path(__file__).resolve().parents[1]
WORDS = "a tiny corpus of words that repeat so the model has something to learn from".split()
TINY_TRAIN = tiny_train_flags(n_layer=1, n_embd=16, block_size=8, max_iters=2)

pytestmark = pytest.mark.usefixtures("one_thread")


def snapshot(root: Path) -> dict[str, tuple[int, int, str]]:
    """Every entry under root: (file type + mode, inode, sha256 of a regular file or a link's target)."""
    out = {}
    for p in sorted(root.rglob("*")):
        st = os.lstat(p)
        if stat.S_ISREG(st.st_mode):
            content = hashlib.sha256(p.read_bytes()).hexdigest()
        elif stat.S_ISLNK(st.st_mode):
            content = os.readlink(p)
        else:
            content = ""
        out[str(p.relative_to(root))] = (st.st_mode, st.st_ino, content)
    return out


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """tmp_path with text.txt, data/ (a tiny dataset), a plain file, a FIFO, and a non-UTF-8 prompt."""
    rng = random.Random(1)
    (tmp_path / "text.txt").write_text(" ".join(rng.choice(WORDS) for _ in range(400)))
    prepare_dataset(tmp_path / "text.txt", tmp_path / "data")
    (tmp_path / "plain").write_text("the user's file")
    os.mkfifo(tmp_path / "fifo")
    (tmp_path / "latin1.txt").write_bytes("caf\xe9".encode("latin-1"))
    return tmp_path


def _bad_tokens(project: Path) -> None:
    d = project / "bad-data"
    d.mkdir()
    meta = json.loads((project / "data" / "meta.json").read_text())
    for split in ("train", "val"):
        tokens = np.fromfile(project / "data" / f"{split}.bin", dtype=np.uint16)
        tokens[len(tokens) // 2] = 60000  # beyond GPT-2's 50257 ids
        tokens.tofile(d / f"{split}.bin")
    (d / "meta.json").write_text(json.dumps(meta))


def _meta(**changes: object) -> Callable[[Path], None]:
    def make(project: Path) -> None:
        d = project / "bad-data"
        d.mkdir()
        for split in ("train", "val"):
            (d / f"{split}.bin").write_bytes((project / "data" / f"{split}.bin").read_bytes())
        meta = json.loads((project / "data" / "meta.json").read_text())
        (d / "meta.json").write_text(json.dumps({**meta, **changes}))

    return make


def _deep_meta(project: Path) -> None:
    _meta()(project)
    (project / "bad-data" / "meta.json").write_text("[" * 100_000 + "]" * 100_000)


def _fifo_in_out_dir(project: Path) -> None:
    (project / "out").mkdir()
    os.mkfifo(project / "out" / "train.bin")


def _deep_config(project: Path) -> None:
    (project / "deep.json").write_text("[" * 100_000 + "]" * 100_000)


def _fifo_config(project: Path) -> None:
    os.mkfifo(project / "fifo.json")


def _local_gpt2_folder(project: Path) -> None:
    (project / "gpt2").mkdir()
    (project / "gpt2" / "config.json").write_text("{}")


# name: (CLI module, arguments with {p} for the project directory, regex of the one error line, setup)
CASES: dict[str, tuple[str, list[str], str, Callable[[Path], None] | None]] = {
    # nanogpt.data
    "data-no-source": ("data", ["--out_dir={p}/o"], r"source: is required", None),
    "data-glob-absolute": (
        "data",
        ["--source={p}", "--glob=/etc/*", "--out_dir={p}/o"],
        r"glob: '/etc/\*' is absolute",
        None,
    ),
    "data-glob-dotdot": (
        "data",
        ["--source={p}/data", "--glob=../*.txt", "--out_dir={p}/o"],
        r"glob: '\.\./\*\.txt' climbs out of --source",
        None,
    ),
    "data-out-empty": ("data", ["--source={p}/text.txt", "--out_dir="], r"out_dir: empty value", None),
    "data-out-a-file": (
        "data",
        ["--source={p}/text.txt", "--out_dir={p}/plain"],
        r"out_dir .*plain: is a file, not a directory",
        None,
    ),
    "data-out-proc": (
        "data",
        ["--source={p}/text.txt", "--out_dir=/proc/o"],
        r"out_dir /proc/o: cannot write in /proc",
        None,
    ),
    "data-out-fifo-inside": (
        "data",
        ["--source={p}/text.txt", "--out_dir={p}/out"],
        r"out_dir \(train\.bin\) .*: is a FIFO",
        _fifo_in_out_dir,
    ),
    "data-source-fifo": (
        "data",
        ["--source={p}/fifo", "--out_dir={p}/o"],
        r"fifo: not a regular file or a directory",
        None,
    ),
    "data-val-fraction-nan": (
        "data",
        ["--source={p}/text.txt", "--val_fraction=nan", "--out_dir={p}/o"],
        r"val_fraction must be a finite number",
        None,
    ),
    "data-val-fraction-inf": (
        "data",
        ["--source={p}/text.txt", "--val_fraction=inf", "--out_dir={p}/o"],
        r"val_fraction must be a finite number",
        None,
    ),
    # nanogpt.sample
    "sample-temperature-tiny": (
        "sample",
        ["--init_from=gpt2", "--temperature=1e-300"],
        r"temperature: 1e-300 is too small to sample with; use 0",
        None,
    ),
    "sample-temperature-inf": (
        "sample",
        ["--init_from=gpt2", "--temperature=inf"],
        r"temperature must be a finite number",
        None,
    ),
    "sample-temperature-nan": (
        "sample",
        ["--init_from=gpt2", "--temperature=nan"],
        r"temperature must be a finite number",
        None,
    ),
    "sample-seed-huge": (
        "sample",
        ["--init_from=gpt2", f"--seed={10**23}"],
        r"seed: must be <= 9\.22337e\+18",
        None,
    ),
    "sample-top-k-zero": ("sample", ["--init_from=gpt2", "--top_k=0"], r"top_k: must be >= 1", None),
    "sample-prompt-not-utf8": (
        "sample",
        ["--init_from=gpt2", "--start=FILE:{p}/latin1.txt"],
        r"latin1\.txt is not UTF-8 text \(byte 3\)",
        None,
    ),
    "sample-prompt-fifo": (
        "sample",
        ["--init_from=gpt2", "--start=FILE:{p}/fifo"],
        r"fifo is not a regular file",
        None,
    ),
    "sample-prompt-missing": (
        "sample",
        ["--init_from=gpt2", "--start=FILE:{p}/none.txt"],
        r"prompt file .*none\.txt not found",
        None,
    ),
    "sample-no-checkpoint": (
        "sample",
        ["--out_dir={p}/nothing"],
        r"nothing/ckpt\.pt: no checkpoint here",
        None,
    ),
    # nanogpt.train
    "train-lr-inf": (
        "train",
        [*TINY_TRAIN, "--data_dir={p}/data", "--out_dir={p}/o", "--learning_rate=inf"],
        r"learning_rate must be a finite number",
        None,
    ),
    "train-lr-nan": (
        "train",
        [*TINY_TRAIN, "--data_dir={p}/data", "--out_dir={p}/o", "--learning_rate=nan"],
        r"learning_rate must be a finite number",
        None,
    ),
    "train-lr-huge": (
        "train",
        [*TINY_TRAIN, "--data_dir={p}/data", "--out_dir={p}/o", "--learning_rate=1e6"],
        r"learning_rate: must be <= 1, got 1000000\.0; AdamW diverges",
        None,
    ),
    "train-wd-nan": (
        "train",
        [*TINY_TRAIN, "--data_dir={p}/data", "--out_dir={p}/o", "--weight_decay=nan"],
        r"weight_decay must be a finite number",
        None,
    ),
    "train-dropout-nan": (
        "train",
        [*TINY_TRAIN, "--data_dir={p}/data", "--out_dir={p}/o", "--dropout=nan"],
        r"dropout must be a finite number",
        None,
    ),
    "train-seed-huge": (
        "train",
        [*TINY_TRAIN, "--data_dir={p}/data", "--out_dir={p}/o", f"--seed={10**23}"],
        r"seed: must be <= 9\.22337e\+18",
        None,
    ),
    "train-out-a-file": (
        "train",
        [*TINY_TRAIN, "--data_dir={p}/data", "--out_dir={p}/plain"],
        r"out_dir .*plain: is a file, not a directory",
        None,
    ),
    "train-out-empty": (
        "train",
        [*TINY_TRAIN, "--data_dir={p}/data", "--out_dir="],
        r"out_dir: empty value",
        None,
    ),
    "train-out-proc": (
        "train",
        [*TINY_TRAIN, "--data_dir={p}/data", "--out_dir=/proc/o"],
        r"out_dir /proc/o: cannot write in /proc",
        None,
    ),
    "train-out-fifo": (
        "train",
        [*TINY_TRAIN, "--data_dir={p}/data", "--out_dir={p}/fifo"],
        r"out_dir .*fifo: is a FIFO",
        None,
    ),
    "train-huge-width": (
        "train",
        [*TINY_TRAIN, "--data_dir={p}/data", "--out_dir={p}/o", "--n_embd=1000000", "--n_head=1"],
        r"n_embd=1000000, .*training needs at least [\d,.]+ GiB, more than",
        None,
    ),
    "train-huge-batch": (
        "train",
        [*TINY_TRAIN, "--data_dir={p}/data", "--out_dir={p}/o", f"--batch_size={10**9}"],
        r"batch_size=1000000000, .*needs at least",
        None,
    ),
    "train-huge-accumulation": (
        "train",
        [*TINY_TRAIN, "--data_dir={p}/data", "--out_dir={p}/o", f"--gradient_accumulation_steps={10**10}"],
        r"gradient_accumulation_steps=10000000000: training needs at least",
        None,
    ),
    "train-huge-eval-iters": (
        "train",
        [*TINY_TRAIN, "--data_dir={p}/data", "--out_dir={p}/o", f"--eval_iters={10**12}"],
        r"eval_iters: must be <= 1e\+06",
        None,
    ),
    "train-config-file-deep": (
        "train",
        ["{p}/deep.json"],
        r"deep\.json: JSON nested too deeply to be a config file",
        _deep_config,
    ),
    "train-config-file-fifo": ("train", ["{p}/fifo.json"], r"fifo\.json: not a regular file", _fifo_config),
    "train-token-out-of-range": (
        "train",
        [*TINY_TRAIN, "--data_dir={p}/bad-data", "--out_dir={p}/o"],
        r"train\.bin: token id 60000 at position \d+ is outside the vocabulary of 50257",
        _bad_tokens,
    ),
    "train-meta-vocab-string": (
        "train",
        [*TINY_TRAIN, "--data_dir={p}/bad-data", "--out_dir={p}/o"],
        r"meta\.json: vocab_size is 'abc', not an integer",
        _meta(vocab_size="abc"),
    ),
    "train-meta-tokens-negative": (
        "train",
        [*TINY_TRAIN, "--data_dir={p}/bad-data", "--out_dir={p}/o"],
        r"meta\.json: train_tokens is -1",
        _meta(train_tokens=-1),
    ),
    "train-meta-deep": (
        "train",
        [*TINY_TRAIN, "--data_dir={p}/bad-data", "--out_dir={p}/o"],
        r"meta\.json: JSON nested too deeply",
        _deep_meta,
    ),
    "train-gpt2-name-with-local-folder": (
        "train",
        [*TINY_TRAIN, "--data_dir={p}/data", "--out_dir={p}/o", "--init_from=gpt2"],
        r"not in the local Hugging Face cache.*for the local folder gpt2, pass \./gpt2",
        _local_gpt2_folder,
    ),
}


@pytest.mark.parametrize("case", CASES)
def test_bad_input_is_one_line_and_changes_nothing(
    case: str, project: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    module, args, pattern, setup = CASES[case]
    if setup is not None:
        setup(project)
    monkeypatch.chdir(project)
    monkeypatch.setenv("HF_HOME", str(project / "no-hf-home"))
    monkeypatch.setenv("HF_HUB_CACHE", str(project / "no-hf-home" / "hub"))
    before = snapshot(project)
    main = __import__(f"nanogpt.{module}", fromlist=["main"]).main
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        run_cli(main, [a.format(p=project) for a in args], f"nanogpt.{module}")
    captured = capsys.readouterr()
    assert exc.value.code == 2, captured.err
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"nanogpt.{module}: error: "), lines
    assert re.search(pattern, lines[0]), lines[0]
    assert snapshot(project) == before


@pytest.mark.parametrize("module", ["data", "sample"])
def test_tampered_tokenizer_file_is_one_line(
    module: str, project: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    encoder_json, vocab_bpe = tokenizer_module.bpe_files()
    tampered = project / "tokenizer"
    tampered.mkdir()
    (tampered / "encoder.json").write_bytes(encoder_json.read_bytes().replace(b'"the"', b'"teh"', 1))
    (tampered / "vocab.bpe").write_bytes(vocab_bpe.read_bytes())
    monkeypatch.setattr(tokenizer_module, "_default_data_dir", lambda: tampered)
    if module == "data":
        args = [f"--source={project / 'text.txt'}", f"--out_dir={project / 'o'}"]
    else:
        args = _sample_args_with_a_model(project)
    before = snapshot(project)
    main = __import__(f"nanogpt.{module}", fromlist=["main"]).main
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        run_cli(main, args, f"nanogpt.{module}")
    lines = capsys.readouterr().err.strip().splitlines()
    assert exc.value.code == 2 and len(lines) == 1, lines
    assert "encoder.json" in lines[0] and "failed sha256 verification" in lines[0], lines[0]
    assert snapshot(project) == before


def _sample_args_with_a_model(project: Path) -> list[str]:
    """A tiny trained checkpoint under project/run (made before the snapshot)."""
    from nanogpt.train import main as train_main

    train_main(
        [
            *TINY_TRAIN,
            f"--data_dir={project / 'data'}",
            f"--out_dir={project / 'run'}",
            "--always_save_checkpoint",
        ]
    )
    return [f"--out_dir={project / 'run'}", "--num_samples=1", "--max_new_tokens=2", "--device=cpu"]


def test_data_writes_through_a_symlinked_output_file(project: Path) -> None:
    (project / "out").mkdir()
    (project / "elsewhere").mkdir()
    (project / "out" / "meta.json").symlink_to(project / "elsewhere" / "meta.json")
    run_cli(
        __import__("nanogpt.data", fromlist=["main"]).main,
        [f"--source={project / 'text.txt'}", f"--out_dir={project / 'out'}"],
        "nanogpt.data",
    )
    assert (project / "out" / "meta.json").is_symlink()
    assert json.loads((project / "elsewhere" / "meta.json").read_text())["train_tokens"] > 0


@pytest.mark.parametrize(
    "module, args, expected",
    [
        (
            "nanogpt.data",
            ["--source=x", "--glob=/etc/*"],
            "nanogpt.data: error: invalid configuration: glob: ",
        ),
        (
            "nanogpt.train",
            ["--learning_rate=inf"],
            "nanogpt.train: error: command line: learning_rate must be",
        ),
        (
            "nanogpt.sample",
            ["--temperature=1e-300"],
            "nanogpt.sample: error: invalid configuration: temperature",
        ),
    ],
)
def test_real_entry_points(module: str, args: list[str], expected: str, tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(expected), lines
    assert list(tmp_path.iterdir()) == []
