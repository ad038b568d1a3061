"""Tests for nanogpt.data: tokenizing text into uint16 memmaps, validating datasets, sampling windows."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from nanogpt.data import BatchSampler, DataError, TokenDataset, get_batch, main, prepare_dataset
from nanogpt.tokenizer import ENDOFTEXT_ID, decode, encode

WORDS = (
    "the model reads tokens and predicts the next one while gradients flow back through every layer".split()
)


def write_text(path: Path, n_words: int, seed: int = 0) -> Path:
    """A deterministic pseudo-English text of n_words words."""
    rng = random.Random(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(" ".join(rng.choice(WORDS) for _ in range(n_words)) + "\n")
    return path


def test_prepare_single_file_roundtrips(tmp_path: Path) -> None:
    src = write_text(tmp_path / "corpus.txt", 500)
    meta = prepare_dataset(src, tmp_path / "data", val_fraction=0.2)
    ids = encode(src.read_text()) + [ENDOFTEXT_ID]
    train = np.fromfile(tmp_path / "data" / "train.bin", dtype=np.uint16)
    val = np.fromfile(tmp_path / "data" / "val.bin", dtype=np.uint16)
    assert train.tolist() + val.tolist() == ids
    assert len(val) == round(len(ids) * 0.2)
    on_disk = json.loads((tmp_path / "data" / "meta.json").read_text())
    assert on_disk == meta
    assert meta["tokenizer"] == "gpt2" and meta["vocab_size"] == 50257 and meta["dtype"] == "uint16"
    assert meta["train_tokens"] == len(train) and meta["val_tokens"] == len(val)
    assert meta["files"] == ["corpus.txt"] and meta["val_fraction"] == 0.2
    assert decode(train.tolist()).startswith(src.read_text()[:50])


def test_prepare_directory_separates_documents(tmp_path: Path) -> None:
    write_text(tmp_path / "src" / "b.txt", 50, seed=2)
    write_text(tmp_path / "src" / "sub" / "a.txt", 50, seed=1)
    (tmp_path / "src" / "skip.md").write_text("not matched by the glob")
    meta = prepare_dataset(tmp_path / "src", tmp_path / "data", glob="*.txt", val_fraction=0.1)
    assert meta["files"] == ["b.txt", "sub/a.txt"]  # sorted, relative, recursive, only the glob's matches
    tokens = TokenDataset.open(tmp_path / "data")
    stream = np.concatenate([tokens.train, tokens.val]).tolist()
    assert stream.count(ENDOFTEXT_ID) == 2 and stream[-1] == ENDOFTEXT_ID
    first = encode((tmp_path / "src" / "b.txt").read_text())
    assert stream[: len(first) + 1] == first + [ENDOFTEXT_ID]


def test_literal_endoftext_in_text_is_not_a_boundary(tmp_path: Path) -> None:
    src = tmp_path / "t.txt"
    src.write_text("a <|endoftext|> b " * 20)
    prepare_dataset(src, tmp_path / "data")
    ds = TokenDataset.open(tmp_path / "data")
    assert np.concatenate([ds.train, ds.val]).tolist().count(ENDOFTEXT_ID) == 1  # only the document end


def test_get_batch_windows_are_shifted_by_one(tmp_path: Path) -> None:
    tokens = np.arange(100, dtype=np.uint16)
    g = torch.Generator().manual_seed(0)
    x, y = get_batch(tokens, batch_size=8, block_size=16, generator=g)
    assert x.shape == y.shape == (8, 16) and x.dtype == torch.int64
    torch.testing.assert_close(y[:, :-1], x[:, 1:], rtol=0, atol=0)  # integer tokens: exact
    assert torch.all(y[:, -1] == x[:, -1] + 1)
    assert torch.all(x[:, 1:] - x[:, :-1] == 1)  # contiguous windows of the arange


def test_sampler_is_reproducible_and_resumable() -> None:
    tokens = np.arange(1000, dtype=np.uint16)
    a = BatchSampler(tokens, 4, 8, seed=3)
    b = BatchSampler(tokens, 4, 8, seed=3)
    first = [a.next_batch()[0] for _ in range(3)]
    assert all(torch.equal(f, b.next_batch()[0]) for f in first)
    state = a.state_dict()
    expected = a.next_batch()[0]
    c = BatchSampler(tokens, 4, 8, seed=99)
    c.load_state_dict(state)
    assert torch.equal(c.next_batch()[0], expected)
    assert not torch.equal(BatchSampler(tokens, 4, 8, seed=4).next_batch()[0], first[0])


def test_ranks_split_the_global_batch() -> None:
    """Two ranks seeded alike take disjoint halves of the batch one process with twice the batch draws."""
    tokens = np.arange(5000, dtype=np.uint16)
    whole = BatchSampler(tokens, 8, 16, seed=5).next_batch()[0]
    halves = [BatchSampler(tokens, 4, 16, seed=5, rank=r, world_size=2).next_batch()[0] for r in (0, 1)]
    torch.testing.assert_close(torch.cat(halves), whole, rtol=0, atol=0)


def test_open_rejects_missing_empty_short_and_truncated(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no such directory.*python -m nanogpt.data"):
        TokenDataset.open(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no meta.json"):
        TokenDataset.open(tmp_path / "empty")

    src = write_text(tmp_path / "short.txt", 12)
    meta = prepare_dataset(src, tmp_path / "short", val_fraction=0.3)
    with pytest.raises(DataError, match=r"(train|val)\.bin: \d+ tokens, fewer than block_size \+ 1 = 17"):
        TokenDataset.open(tmp_path / "short", block_size=16)
    shortest = min(meta["train_tokens"], meta["val_tokens"])
    TokenDataset.open(tmp_path / "short", block_size=shortest - 1)  # exactly one window fits in each split

    bin_path = tmp_path / "short" / "train.bin"
    bin_path.write_bytes(bin_path.read_bytes()[:-2])
    with pytest.raises(DataError, match="train.bin: .* bytes, but meta.json promises"):
        TokenDataset.open(tmp_path / "short")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[1, 2]", r"meta\.json: expected a JSON object, got list; create it with"),
        ('{"vocab_size": ', r"meta\.json: not valid JSON \(Expecting value: .*\); create it with"),
        ("[" * 100_000 + "]" * 100_000, r"meta\.json: JSON nested too deeply to be a dataset description;"),
    ],
    ids=["a-list", "invalid", "deep"],
)
def test_open_rejects_an_unreadable_meta_json_in_one_line(tmp_path: Path, text: str, message: str) -> None:
    prepare_dataset(write_text(tmp_path / "a.txt", 50), tmp_path / "d")
    (tmp_path / "d" / "meta.json").write_text(text)
    with pytest.raises(DataError, match=message) as caught:
        TokenDataset.open(tmp_path / "d")
    assert "\n" not in str(caught.value)


def test_prepare_rejects_bad_sources(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no such file or directory"):
        prepare_dataset(tmp_path / "missing.txt", tmp_path / "out")
    (tmp_path / "dir").mkdir()
    with pytest.raises(DataError, match=r"no files match '\*.txt'.*--glob"):
        prepare_dataset(tmp_path / "dir", tmp_path / "out")
    (tmp_path / "blank.txt").write_text("  \n\n")
    with pytest.raises(DataError, match="the text is empty"):
        prepare_dataset(tmp_path / "blank.txt", tmp_path / "out")
    assert not (tmp_path / "out" / "meta.json").exists()


def test_failed_prepare_keeps_the_previous_dataset(tmp_path: Path) -> None:
    src = write_text(tmp_path / "a.txt", 100)
    prepare_dataset(src, tmp_path / "data")
    before = {p.name: p.read_bytes() for p in (tmp_path / "data").iterdir()}
    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(DataError):
        prepare_dataset(tmp_path / "empty.txt", tmp_path / "data")
    assert {p.name: p.read_bytes() for p in (tmp_path / "data").iterdir()} == before


def test_undecodable_file_is_kept_with_replacement(tmp_path: Path) -> None:
    (tmp_path / "src").mkdir()
    write_text(tmp_path / "src" / "good.txt", 30)
    (tmp_path / "src" / "latin1.txt").write_bytes("caf\xe9 au lait ".encode("latin-1") * 10)
    meta = prepare_dataset(tmp_path / "src", tmp_path / "data")
    assert meta["undecodable_files"] == [str(tmp_path / "src" / "latin1.txt")]
    assert meta["files"] == ["good.txt", "latin1.txt"]


def test_cli_prepares_and_reports(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = write_text(tmp_path / "c.txt", 200)
    main([f"--source={src}", f"--out_dir={tmp_path / 'd'}", "--val_fraction=0.25"])
    out = capsys.readouterr().out
    assert "train +" in out and "from 1 file(s)" in out
    assert TokenDataset.open(tmp_path / "d").meta["val_fraction"] == 0.25


def test_cli_user_error_is_one_line_exit_2(tmp_path: Path) -> None:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "nanogpt.data",
            f"--source={tmp_path / 'missing'}",
            f"--out_dir={tmp_path / 'o'}",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("nanogpt.data: error:") and "missing" in lines[0], (
        proc.stderr
    )
    assert not (tmp_path / "o").exists()
