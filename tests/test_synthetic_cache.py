"""Synthetic checkpoints: the shape of OpenAI's upload, and a cache that is verified before it is reused.

A cached checkpoint whose bytes changed on disk (a flipped bit, NaNs written over a tensor, an edited
config) must be regenerated with a one-line note, never silently used: the parity checks would then
compare two implementations on weights nobody chose, and a NaN would read as a parity failure.
"""

from __future__ import annotations

import hashlib
import json
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from nanogpt.model import GPT, GPTConfig
from parity.core.exit_codes import EXIT_ABORT
from parity.frontends.bisect import resolve_model, run
from parity.subject import progress, synthetic
from parity.subject.loading import load_hf, load_reference
from parity.subject.synthetic import (
    CACHE_ENV_VAR,
    CHECKSUM_FILE,
    DEFAULT_SEED,
    checkpoint_name,
    checkpoint_problem,
    ensure_synthetic_checkpoint,
    synthetic_hf_weights,
)

PARITY_DIR = Path(__file__).resolve().parents[1] / "parity"
pytest_plugins = ["pytester"]
TINY = GPTConfig(block_size=32, vocab_size=99, n_layer=2, n_head=2, n_embd=16, dropout=0.0, bias=True)


class RecordingSink:
    """Stands in for the terminal: keeps the progress lines."""

    isatty = False

    def __init__(self) -> None:
        self.lines: list[str] = []

    def line(self, text: str) -> None:
        self.lines.append(text)

    def redraw(self, text: str) -> None:
        self.lines.append(text)


@pytest.fixture
def terminal(monkeypatch: pytest.MonkeyPatch) -> RecordingSink:
    sink = RecordingSink()
    monkeypatch.setattr(progress, "_sink", sink)
    return sink


@pytest.fixture
def cached(tmp_path: Path) -> Path:
    path, seconds = ensure_synthetic_checkpoint(TINY, "tiny", root=tmp_path)
    assert seconds is not None
    return path


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _tensor_range(path: Path, key: str) -> tuple[int, int]:
    """Absolute byte range of one tensor in a safetensors file."""
    raw = path.read_bytes()
    header_len = int.from_bytes(raw[:8], "little")
    start, end = json.loads(raw[8 : 8 + header_len])[key]["data_offsets"]
    return 8 + header_len + start, 8 + header_len + end


# ------------------------------------------------------------------------------------------------------
# the shape of OpenAI's upload


def test_checkpoint_has_the_keys_buffers_and_config_of_openais_upload(cached: Path) -> None:
    with safe_open(str(cached / "model.safetensors"), framework="pt") as f:
        keys = set(f.keys())
        mask = f.get_tensor("h.1.attn.bias")
        wte = f.get_tensor("wte.weight")
    assert not [k for k in keys if k.startswith("transformer.")], "GPT2Model keys carry no prefix"
    assert "lm_head.weight" not in keys
    assert {f"h.{i}.attn.bias" for i in range(TINY.n_layer)} <= keys
    assert mask.shape == (1, 1, TINY.block_size, TINY.block_size)
    assert torch.equal(mask[0, 0], torch.tril(torch.ones(TINY.block_size, TINY.block_size)))
    assert torch.equal(wte, synthetic_hf_weights(TINY)["transformer.wte.weight"])
    cfg = json.loads((cached / "config.json").read_text())
    assert cfg["attn_pdrop"] == cfg["embd_pdrop"] == cfg["resid_pdrop"] == 0.1
    assert cfg["n_ctx"] == cfg["n_positions"] == TINY.block_size
    assert "tie_word_embeddings" not in cfg, "OpenAI's config leaves the tie to transformers' default"


def test_both_loaders_read_the_upload_shape_tied_with_dropout_configured(cached: Path) -> None:
    ours = load_reference(cached, torch.float64, "cpu")
    theirs = load_hf(cached, torch.float64, "cpu")
    assert theirs.config.attn_pdrop == 0.1 and not theirs.training, "eval mode with a non-zero dropout"
    assert ours.is_tied()
    assert theirs.lm_head.weight.data_ptr() == theirs.transformer.wte.weight.data_ptr()
    idx = torch.randint(0, TINY.vocab_size, (2, TINY.block_size), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        out = ours(idx)
        logits = out[0] if isinstance(out, tuple) else out
        torch.testing.assert_close(logits, theirs(idx).logits, rtol=1e-9, atol=1e-9)


# ------------------------------------------------------------------------------------------------------
# the content hash


def test_sums_file_lists_the_sha256_of_both_files_in_sha256sum_format(cached: Path) -> None:
    lines = (cached / CHECKSUM_FILE).read_text().splitlines()
    assert lines == [
        f"{_sha256(cached / 'config.json')}  config.json",
        f"{_sha256(cached / 'model.safetensors')}  model.safetensors",
    ]
    assert checkpoint_problem(cached) is None


def test_an_intact_cache_is_reused_without_a_note(cached: Path, terminal: RecordingSink) -> None:
    assert ensure_synthetic_checkpoint(TINY, "tiny", root=cached.parent) == (cached, None)
    assert terminal.lines == []


def _flip_one_bit(path: Path) -> None:
    start, end = _tensor_range(path / "model.safetensors", "h.0.mlp.c_fc.weight")
    with (path / "model.safetensors").open("r+b") as fh:
        fh.seek((start + end) // 2)
        byte = fh.read(1)[0]
        fh.seek((start + end) // 2)
        fh.write(bytes([byte ^ 0x01]))  # the lowest mantissa bit of one weight: a 1e-7 relative change


def _write_nans(path: Path) -> None:
    start, _ = _tensor_range(path / "model.safetensors", "wte.weight")
    with (path / "model.safetensors").open("r+b") as fh:
        fh.seek(start)
        fh.write(struct.pack("<4f", *[float("nan")] * 4))


def _edit_config(path: Path) -> None:
    cfg = json.loads((path / "config.json").read_text())
    cfg["layer_norm_epsilon"] = 1e-6
    (path / "config.json").write_text(json.dumps(cfg))


def _drop_sums(path: Path) -> None:
    (path / CHECKSUM_FILE).unlink()


@pytest.mark.parametrize(
    "damage, why",
    [
        (_flip_one_bit, "model.safetensors does not match its sha256"),
        (_write_nans, "model.safetensors does not match its sha256"),
        (_edit_config, "config.json does not match its sha256"),
        (_drop_sums, f"no {CHECKSUM_FILE}"),
    ],
    ids=["flipped-bit", "nan-bytes", "edited-config", "no-sums"],
)
def test_a_damaged_cache_is_regenerated_with_a_one_line_note(
    cached: Path, terminal: RecordingSink, damage, why: str
) -> None:
    original = {f: _sha256(cached / f) for f in ("config.json", "model.safetensors")}
    damage(cached)
    assert checkpoint_problem(cached) is not None
    path, seconds = ensure_synthetic_checkpoint(TINY, "tiny", root=cached.parent)
    assert path == cached and seconds is not None, "the damaged checkpoint was reused"
    assert {f: _sha256(cached / f) for f in original} == original, (
        "regenerated bytes differ from the first write"
    )
    assert checkpoint_problem(cached) is None
    assert len(terminal.lines) == 1 and why in terminal.lines[0] and "regenerating" in terminal.lines[0]
    assert not [p for p in cached.parent.iterdir() if p.name.startswith(".")], "temporaries left behind"


def test_nan_bytes_would_otherwise_reach_the_model(cached: Path) -> None:
    """The damage above is real: the loader reads the NaNs, so only the hash stands between them and a run."""
    _write_nans(cached)
    assert torch.isnan(GPT.from_pretrained(cached).transformer.wte.weight).sum() == 4


# ------------------------------------------------------------------------------------------------------
# the lock that serializes writers


@pytest.fixture
def held_lock(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """The small model's lock in a fresh cache, held by another process; the wait cut to a second."""
    monkeypatch.setenv(CACHE_ENV_VAR, str(tmp_path / "cache"))
    monkeypatch.setattr(synthetic, "LOCK_TIMEOUT_S", 1.0)
    lock = (
        tmp_path / "cache" / f"{checkpoint_name(resolve_model('small', 'cpu', None).name, DEFAULT_SEED)}.lock"
    )
    lock.parent.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(lock)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "held\n"
        yield lock
    finally:
        holder.kill()
        holder.wait()


HOLD_LOCK = (
    "import fcntl, sys, time\n"
    "f = open(sys.argv[1], 'a')\n"
    "fcntl.flock(f, fcntl.LOCK_EX)\n"
    "print('held', flush=True)\n"
    "time.sleep(600)\n"
)


def test_a_held_lock_is_one_error_naming_it_in_the_bisect_command(
    held_lock: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A process holding the cache's lock made the next run hang with no output; now it waits
    LOCK_TIMEOUT_S with a note, then stops (129 aborts git bisect run) naming the lock and the fix."""
    start = time.monotonic()
    assert run(["--model", "small", "--checks", "logits"]) == EXIT_ABORT
    assert time.monotonic() - start < 30
    err = capsys.readouterr().err
    assert f"{held_lock}: another process has held this lock for 1 s" in err
    assert f"end that process (fuser {held_lock}) or remove {held_lock}" in err
    assert "Traceback" not in err


def test_a_held_lock_is_one_usage_error_in_pytest_parity(held_lock: Path, pytester: pytest.Pytester) -> None:
    start = time.monotonic()
    result = pytester.runpytest_inprocess(
        str(PARITY_DIR), "-q", "-p", "no:cacheprovider", "--model", "small", "-k", "logits"
    )
    output = result.stdout.str() + result.stderr.str()
    assert result.ret == pytest.ExitCode.USAGE_ERROR, output[-3000:]
    assert time.monotonic() - start < 60
    assert f"{held_lock}: another process has held this lock for 1 s" in output, output[-3000:]
    assert "Traceback" not in output


def test_a_checkpoint_is_hashed_once_per_process_until_its_files_change(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = GPTConfig(block_size=16, vocab_size=64, n_layer=1, n_head=2, n_embd=8)
    path, _ = synthetic.ensure_synthetic_checkpoint(config, "hashed-once", root=tmp_path)
    hashed: list[str] = []
    real = synthetic._file_sha256
    monkeypatch.setattr(synthetic, "_file_sha256", lambda p: hashed.append(p.name) or real(p))
    assert synthetic.checkpoint_problem(path) is None and synthetic.checkpoint_problem(path) is None
    assert hashed.count(synthetic.SAFETENSORS_FILE) == 1, hashed
    with (path / synthetic.SAFETENSORS_FILE).open("ab") as fh:
        fh.write(b"\0")
    assert "does not match its sha256" in (synthetic.checkpoint_problem(path) or "")
