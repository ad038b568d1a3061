"""A data module that downloads a shard when imported: definitions-only loading never imports it.

Corpus shape: `urllib.request.urlopen` at module level. The address is a closed local port, so importing
this module fails at once on any machine: a test through it fails if the import ever runs.
"""

import urllib.request

SHARD_URL = "http://127.0.0.1:9/edu_fineweb10B/shard_000000.npy"
shard = urllib.request.urlopen(SHARD_URL, timeout=5).read()


def shard_paths(split: str) -> list[str]:
    """The shard files of a split."""
    return [SHARD_URL] if split == "train" else []
