"""Finding GPT-2 checkpoints in the local Hugging Face hub cache, with huggingface_hub's own lookup.

The cache keeps each repository as blobs, `refs/<branch>` files naming a commit, and
`snapshots/<commit>/` folders of symlinks. Which snapshot is "the" checkpoint is the hub's decision:
`refs/main` (or the pinned revision) names it, not the newest folder on disk, so the lookup goes through
`huggingface_hub.snapshot_download(..., local_files_only=True)`, which never touches the network.
"""

from __future__ import annotations

import os
from pathlib import Path

from nanogpt.model import GPT2_SIZES

# Hub repositories of the four OpenAI sizes. The short names are legacy aliases of the same checkpoints.
HUB_REPOS: dict[str, tuple[str, ...]] = {name: (f"openai-community/{name}", name) for name in GPT2_SIZES}

# What a snapshot must hold to be loadable: its config and one of the weight formats.
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")
# Only these files matter here: a snapshot missing, say, TensorFlow weights is complete for us.
NEEDED_PATTERNS = ["config.json", "*.safetensors", "model.safetensors.index.json", "pytorch_model.bin"]


def hf_cache_dir() -> Path:
    """The hub cache dir, by huggingface_hub's rules, read now (HF_HUB_CACHE, HF_HOME, XDG_CACHE_HOME)."""
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if os.environ.get(var):
            return Path(os.environ[var]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "huggingface" / "hub"


def cached_repo_snapshot(repo_id: str, revision: str | None = None) -> Path | None:
    """The cached snapshot of repo_id at revision (default: what refs/main names) or None; never downloads."""
    from huggingface_hub import snapshot_download

    try:
        folder = snapshot_download(
            repo_id,
            revision=revision,
            cache_dir=hf_cache_dir(),  # read now: huggingface_hub reads its environment once, at import
            local_files_only=True,
            allow_patterns=NEEDED_PATTERNS,
        )
    except (OSError, ValueError):  # not cached, an incomplete snapshot, or an invalid revision
        return None
    path = Path(folder)
    if (path / "config.json").is_file() and any((path / f).is_file() for f in WEIGHT_FILES):
        return path
    return None


def find_cached_snapshot(name: str, revision: str | None = None) -> Path | None:
    """The cached snapshot of a GPT-2 size with a config and weights (either repository name), or None."""
    for repo in HUB_REPOS[name]:
        found = cached_repo_snapshot(repo, revision)
        if found is not None:
            return found
    return None
