"""A Hugging Face hub cache holding the checkpoint under test, and an offline environment pointing at it.

An implementation's own loader (`GPT.from_pretrained("gpt2")`, which upstream nanoGPT runs through
`transformers.GPT2LMHeadModel.from_pretrained`) finds its weights in the hub cache. `build_hub_cache`
lays the checkpoint out there as the hub does: `models--<repo>/blobs/<sha256>` files, a
`snapshots/<commit>/` folder of relative symlinks into them and `refs/main` naming the commit, for both
repository names of the size (`openai-community/gpt2` and the legacy `gpt2`). Blobs are hard links to the
checkpoint's files where the file system allows (a symlink otherwise), so even gpt2-xl costs no copy.
`offline_hub` sets HF_HUB_CACHE, HF_HOME, HF_HUB_OFFLINE and TRANSFORMERS_OFFLINE for one block, and the
copies huggingface_hub and transformers (4.x and 5.x) took of them at import, and restores all of them.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from nanogpt.hf_files import HF_CONFIG_FILE, SAFETENSORS_INDEX_FILE, weight_files
from nanogpt.hub import HUB_REPOS
from nanogpt.model import GPT2_SIZES, GPTConfig, gpt2_config

# The size a checkpoint of no GPT-2 size (the bisect command's small model, a narrow twin) is laid out under.
FALLBACK_NAME = "gpt2"
# The environment a loader sees: the cache, and no network.
CACHE_ENVIRONMENT = ("HF_HUB_CACHE", "HF_HOME", "HUGGINGFACE_HUB_CACHE", "TRANSFORMERS_CACHE")
OFFLINE_ENVIRONMENT = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
# Module-level copies of that environment, taken at import: huggingface_hub's constants (read at call time
# by both transformers 4.x and 5.x), and transformers 4.x's own cache paths and offline flag.
CACHE_CONSTANTS = {
    "huggingface_hub.constants": ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"),
    "transformers.utils.hub": (
        "TRANSFORMERS_CACHE",
        "PYTORCH_TRANSFORMERS_CACHE",
        "PYTORCH_PRETRAINED_BERT_CACHE",
        "HUGGINGFACE_HUB_CACHE",
    ),
}
OFFLINE_CONSTANTS = {
    "huggingface_hub.constants": ("HF_HUB_OFFLINE",),
    "transformers.utils.hub": ("_is_offline_mode",),
}
HASH_CHUNK_BYTES = 16 << 20


@dataclass(frozen=True)
class HubCache:
    """A hub cache under home (HF_HOME; the cache itself is home/hub) holding one checkpoint."""

    home: Path
    name: str  # the model name a loader is called with
    repos: tuple[str, ...]  # the repositories that hold it
    commit: str

    @property
    def cache(self) -> Path:
        """The hub cache directory (HF_HUB_CACHE)."""
        return self.home / "hub"

    def snapshot(self, repo: str) -> Path:
        """The snapshot folder of repo."""
        return self.cache / f"models--{repo.replace('/', '--')}" / "snapshots" / self.commit


def hub_model_name(config: GPTConfig) -> tuple[str, str]:
    """(the GPT-2 size whose architecture config is, else FALLBACK_NAME; a note when it is the fallback)."""
    for name in GPT2_SIZES:
        if gpt2_config(name) == config:
            return name, ""
    shape = f"{config.n_layer} layers, {config.n_head} heads, {config.n_embd} wide, vocab {config.vocab_size}"
    return FALLBACK_NAME, f"no GPT-2 size ({shape}): laid out under {FALLBACK_NAME} with its own config"


def _checkpoint_files(checkpoint: Path) -> list[Path]:
    """The files a loader reads: config.json, the weight files and a shard index when there is one."""
    files = [checkpoint / HF_CONFIG_FILE, *weight_files(checkpoint)]
    if (checkpoint / SAFETENSORS_INDEX_FILE).is_file():
        files.append(checkpoint / SAFETENSORS_INDEX_FILE)
    return files


def _listed_sums(checkpoint: Path) -> dict[str, str]:
    """sha256 digests a synthetic checkpoint lists in its SHA256SUMS file (name -> digest)."""
    sums: dict[str, str] = {}
    with contextlib.suppress(OSError):
        for line in (checkpoint / "SHA256SUMS").read_text().splitlines():
            digest, _, name = line.partition("  ")
            if len(digest) == 64 and name:
                sums[name.strip()] = digest
    return sums


def _blob_name(path: Path, listed: dict[str, str]) -> str:
    """The file's sha256: named by a hub blob it links to, listed in SHA256SUMS, or computed."""
    resolved = path.resolve()
    if resolved.parent.name == "blobs" and len(resolved.name) == 64:
        return resolved.name  # a snapshot of a real hub cache: its blobs are named by their sha256
    if path.name in listed:
        return listed[path.name]
    h = hashlib.sha256()
    with open(resolved, "rb") as f:
        while chunk := f.read(HASH_CHUNK_BYTES):
            h.update(chunk)
    return h.hexdigest()


def _place_blob(source: Path, blob: Path) -> None:
    """blob as a hard link to source, or a symlink where a hard link cannot be made."""
    if blob.exists():
        return
    try:
        os.link(source.resolve(), blob)
    except OSError:
        blob.symlink_to(source.resolve())


def build_hub_cache(checkpoint: Path, config: GPTConfig, home: Path) -> HubCache:
    """Lay checkpoint out under home/hub as the hub does, under both repository names of its size."""
    name, _ = hub_model_name(config)
    listed = _listed_sums(checkpoint)
    blobs = {f.name: (f, _blob_name(f, listed)) for f in _checkpoint_files(checkpoint)}
    commit = hashlib.sha1("".join(sorted(b for _, b in blobs.values())).encode()).hexdigest()
    hub = HubCache(home, name, HUB_REPOS[name], commit)
    for repo in hub.repos:
        snapshot = hub.snapshot(repo)
        snapshot.mkdir(parents=True, exist_ok=True)
        (snapshot.parents[1] / "blobs").mkdir(exist_ok=True)
        for file_name, (source, digest) in blobs.items():
            _place_blob(source, snapshot.parents[1] / "blobs" / digest)
            link = snapshot / file_name
            if not link.is_symlink():
                link.symlink_to(Path("..", "..", "blobs", digest))
        (snapshot.parents[1] / "refs").mkdir(exist_ok=True)
        (snapshot.parents[1] / "refs" / "main").write_text(commit)  # the bare hash, as the hub writes it
    return hub


@contextlib.contextmanager
def offline_hub(hub: HubCache) -> Iterator[None]:
    """Within the block, every hub lookup reads hub's cache and nothing reaches the network."""
    values = {**dict.fromkeys(CACHE_ENVIRONMENT, str(hub.cache)), **dict.fromkeys(OFFLINE_ENVIRONMENT, "1")}
    values["HF_HOME"] = str(hub.home)
    saved_env = {k: os.environ.get(k) for k in values}
    saved_attrs: list[tuple[object, str, object]] = []
    os.environ.update(values)
    try:
        for constants, new in ((CACHE_CONSTANTS, str(hub.cache)), (OFFLINE_CONSTANTS, True)):
            for module_name, names in constants.items():
                module = sys.modules.get(module_name)
                for attr in names:
                    if module is not None and hasattr(module, attr):
                        saved_attrs.append((module, attr, getattr(module, attr)))
                        setattr(module, attr, new)
        yield
    finally:
        for module, attr, old in reversed(saved_attrs):
            setattr(module, attr, old)
        for k, v in saved_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
