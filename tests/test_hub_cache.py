"""Cached GPT-2 checkpoints are found by huggingface_hub's own lookup, in a cache laid out as the hub's.

The cache built here is what `huggingface-cli download` leaves: content-addressed blobs, `refs/main`
naming a commit, and `snapshots/<commit>/` folders of relative symlinks into the blobs. The checkpoint
in it is shaped as OpenAI's upload: saved from `GPT2Model` (no `transformer.` prefix), with `attn.bias`
mask buffers, and a config with dropout 0.1 and `n_ctx`.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from nanogpt.hf import resolve_checkpoint_dir
from nanogpt.hub import find_cached_snapshot, hf_cache_dir
from parity.core.errors import UsageError
from parity.subject.loading import load_hf, load_reference
from parity.subject.targets import resolve_targets

REPO = Path(__file__).resolve().parents[1]
MAIN = "1" * 40
OLD = "0" * 40
NEWER = "2" * 40  # a newer folder on disk that refs/main does not name (an interrupted download, say)
# A tiny model in the layout of OpenAI's config.json for gpt2.
OPENAI_STYLE_CONFIG = {
    "activation_function": "gelu_new",
    "architectures": ["GPT2LMHeadModel"],
    "attn_pdrop": 0.1,
    "bos_token_id": 98,
    "embd_pdrop": 0.1,
    "eos_token_id": 98,
    "initializer_range": 0.02,
    "layer_norm_epsilon": 1e-05,
    "model_type": "gpt2",
    "n_ctx": 32,
    "n_embd": 16,
    "n_head": 2,
    "n_layer": 2,
    "n_positions": 32,
    "resid_pdrop": 0.1,
    "summary_activation": None,
    "summary_first_dropout": 0.1,
    "summary_proj_to_labels": True,
    "summary_type": "cls_index",
    "summary_use_proj": True,
    "vocab_size": 99,
}


def openai_style_files(seed: int, scratch: Path) -> dict[str, bytes]:
    """config.json and model.safetensors as OpenAI's upload has them, from a seeded tiny GPT2Model."""
    from transformers import GPT2Config, GPT2Model

    torch.manual_seed(seed)
    model = GPT2Model(GPT2Config(**OPENAI_STYLE_CONFIG))
    weights = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    T = OPENAI_STYLE_CONFIG["n_positions"]
    for i in range(OPENAI_STYLE_CONFIG["n_layer"]):
        weights[f"h.{i}.attn.bias"] = torch.tril(torch.ones(T, T)).view(1, 1, T, T)
    save_file(weights, str(scratch / f"seed{seed}.safetensors"), metadata={"format": "pt"})
    blob = (scratch / f"seed{seed}.safetensors").read_bytes()
    return {"config.json": json.dumps(OPENAI_STYLE_CONFIG, indent=2).encode(), "model.safetensors": blob}


def add_snapshot(
    cache: Path, repo_id: str, commit: str, files: dict[str, bytes], ref: str | None = None
) -> Path:
    """Store files as blobs and a snapshot of symlinks, as the hub does; point refs/<ref> at the commit."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True, exist_ok=True)
    (repo / "blobs").mkdir(exist_ok=True)
    for name, data in files.items():
        digest = hashlib.sha256(data).hexdigest()
        (repo / "blobs" / digest).write_bytes(data)
        (snapshot / name).symlink_to(Path("..", "..", "blobs", digest))
    if ref is not None:
        (repo / "refs").mkdir(exist_ok=True)
        (repo / "refs" / ref).write_text(commit)  # the hub writes the bare hash, no newline
    return snapshot


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, bytes]]:
    scratch = tmp_path_factory.mktemp("openai-style")
    return {"main": openai_style_files(0, scratch), "old": openai_style_files(1, scratch)}


@pytest.fixture
def hub_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    cache = tmp_path / "hub"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return cache


@pytest.mark.parametrize("repo_id", ["openai-community/gpt2", "gpt2"])
def test_auto_weights_find_and_use_the_snapshot_that_refs_main_names(
    hub_cache: Path, checkpoints: dict[str, dict[str, bytes]], repo_id: str
) -> None:
    main = add_snapshot(hub_cache, repo_id, MAIN, checkpoints["main"], ref="main")
    add_snapshot(hub_cache, repo_id, OLD, checkpoints["old"], ref="v-old")
    newer = add_snapshot(hub_cache, repo_id, NEWER, checkpoints["old"])
    now = time.time()
    os.utime(newer, (now + 60, now + 60))  # newest by mtime: the lookup this replaces would take it
    (target,) = resolve_targets("gpt2", "auto", "cpu", None)
    assert target.weights == "pretrained" and target.checkpoint == main
    assert str(main) in target.reason
    assert resolve_checkpoint_dir("gpt2") == main
    # Used: both production loaders read the GPT2Model keys and mask buffers, tied, and agree.
    ours = load_reference(target.checkpoint, torch.float64, "cpu")
    theirs = load_hf(target.checkpoint, torch.float64, "cpu")
    assert ours.is_tied() and theirs.lm_head.weight.data_ptr() == theirs.transformer.wte.weight.data_ptr()
    assert theirs.config.attn_pdrop == 0.1 and not theirs.training
    idx = torch.randint(0, 99, (2, 32), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        out = ours(idx)
        logits = out[0] if isinstance(out, tuple) else out
        torch.testing.assert_close(logits, theirs(idx).logits, rtol=1e-9, atol=1e-9)
        # The model in refs/main, not the old one: its embedding is the one stored under main.
        from safetensors.torch import load as load_safetensors

        wte = load_safetensors(checkpoints["main"]["model.safetensors"])["wte.weight"].double()
        assert torch.equal(ours.transformer.wte.weight, wte)


def test_revision_pins_a_branch_or_a_commit(
    hub_cache: Path, checkpoints: dict[str, dict[str, bytes]]
) -> None:
    main = add_snapshot(hub_cache, "openai-community/gpt2", MAIN, checkpoints["main"], ref="main")
    old = add_snapshot(hub_cache, "openai-community/gpt2", OLD, checkpoints["old"], ref="v-old")
    assert find_cached_snapshot("gpt2") == main
    assert find_cached_snapshot("gpt2", revision="v-old") == old
    assert find_cached_snapshot("gpt2", revision=OLD) == old
    (target,) = resolve_targets("gpt2", "pretrained", "cpu", None, revision="v-old")
    assert target.checkpoint == old


def test_an_uncached_revision_is_a_usage_error_naming_it(
    hub_cache: Path, checkpoints: dict[str, dict[str, bytes]]
) -> None:
    add_snapshot(hub_cache, "openai-community/gpt2", MAIN, checkpoints["main"], ref="main")
    with pytest.raises(UsageError, match=r"--revision nope: no snapshot of gpt2 at that revision"):
        resolve_targets("gpt2", "auto", "cpu", None, revision="nope")
    with pytest.raises(UsageError, match=r"--revision pins pretrained weights"):
        resolve_targets("gpt2", "synthetic", "cpu", None, revision="main")


def test_a_snapshot_without_weights_or_without_refs_is_not_a_checkpoint(
    hub_cache: Path, checkpoints: dict[str, dict[str, bytes]]
) -> None:
    add_snapshot(
        hub_cache,
        "openai-community/gpt2",
        MAIN,
        {"config.json": checkpoints["main"]["config.json"]},
        ref="main",
    )
    add_snapshot(hub_cache, "gpt2", OLD, checkpoints["old"])  # a snapshot that no ref names
    assert find_cached_snapshot("gpt2") is None
    (target,) = resolve_targets("gpt2", "auto", "cpu", None)
    assert target.weights == "synthetic"
    with pytest.raises(UsageError, match="not in the local Hugging Face cache"):
        resolve_targets("gpt2", "pretrained", "cpu", None)


def test_cache_directory_follows_the_hubs_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_HOME", "XDG_CACHE_HOME"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert hf_cache_dir() == tmp_path / "xdg" / "huggingface" / "hub"
    monkeypatch.setenv("HF_HOME", str(tmp_path / "home"))
    assert hf_cache_dir() == tmp_path / "home" / "hub"
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "cache"))
    assert hf_cache_dir() == tmp_path / "cache"


def test_the_header_of_pytest_parity_names_the_cached_snapshot(
    hub_cache: Path, checkpoints: dict[str, dict[str, bytes]], tmp_path: Path
) -> None:
    """Through the command line: --weights auto and --revision reach the lookup, before any model is built."""
    add_snapshot(hub_cache, "gpt2", MAIN, checkpoints["main"], ref="main")
    old = add_snapshot(hub_cache, "gpt2", OLD, checkpoints["old"], ref="v-old")
    env = {**os.environ, "NANOGPT_PARITY_CACHE": str(tmp_path / "parity-cache")}
    env.pop("PYTEST_ADDOPTS", None)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "parity/",
            "--model",
            "gpt2",
            "--revision",
            "v-old",
            "--device",
            "cpu",
            "--collect-only",
            "-p",
            "no:cacheprovider",
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert (
        f"weights: pretrained (OpenAI weights found in the local Hugging Face cache ({old}))" in proc.stdout
    )
