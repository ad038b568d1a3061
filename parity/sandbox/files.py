"""The checkpoint a sandboxed run reads, hashed before the child starts and checked after it ends.

Code under test runs with the caller's file permissions, so it can rewrite the checkpoint it is given:
the user's `--model` directory, or the synthetic checkpoint in the cache together with its SHA256SUMS (a
sums file the child can rewrite proves nothing). Every later run of an unchanged broken model would then
compare on weights nobody chose. The parent (parity/sandbox/parent.py) keeps `file_hashes` of the
checkpoint in its own memory, where the child cannot reach, and `checkpoint_changes` names what differs
after the child: a file changed, added or removed. Any change makes every verdict CANNOT-TEST; a synthetic
checkpoint that changed loses its sums file, so the next run writes it again. The same holds for code:
`code_hashes` keeps the sha256 of the harness's own sources (parity/, nanogpt/) and of every transformers
module the parent has imported (Hugging Face's GPT-2 among them), and `changed_code` names a source the
child rewrote, with the way to get the original back. Other files (the rest of transformers, torch, cached
bytecode) are not hashed: 0.9 s for transformers' 2,951 sources would be paid by every child.
"""

from __future__ import annotations

import contextlib
import hashlib
import shutil
import sys
from pathlib import Path

from parity.subject.synthetic import CHECKSUM_FILE

HASH_CHUNK_BYTES = 16 << 20
# The harness's own packages, hashed whole (about 200 small files).
HARNESS_PACKAGES = ("parity", "nanogpt")


def _sha256(path: Path) -> str:
    """path's sha256, read in chunks; "unreadable: why" for a file that cannot be read."""
    digest = hashlib.sha256()
    try:
        with path.open("rb") as fh:
            while chunk := fh.read(HASH_CHUNK_BYTES):
                digest.update(chunk)
    except OSError as e:
        return f"unreadable: {e.strerror or e}"
    return digest.hexdigest()


def file_hashes(directory: Path) -> dict[str, str]:
    """The sha256 of every file under directory (through symlinks, as the hub cache's blobs), by relative
    path; a file that cannot be read is recorded as such, so that a change to it still shows."""
    return {
        str(path.relative_to(directory)): _sha256(path)
        for path in sorted(directory.rglob("*"))
        if not path.is_dir()
    }


def checkpoint_changes(directory: Path, before: dict[str, str], limit: int = 3) -> list[str]:
    """The files of directory that differ from before (changed, added, removed); at most limit of them."""
    now = file_hashes(directory) if directory.is_dir() else {}
    changed = sorted(
        f"{name} ({'removed' if name not in now else 'added' if name not in before else 'changed'})"
        for name in before.keys() | now.keys()
        if before.get(name) != now.get(name)
    )
    return changed[:limit] + ([f"and {len(changed) - limit} more"] if len(changed) > limit else [])


def changed_checkpoint(directory: Path, before: dict[str, str], synthetic: bool) -> str:
    """What changed in the checkpoint since before ("" if nothing), and for a synthetic checkpoint, that it
    was removed to be written again."""
    changes = checkpoint_changes(directory, before)
    if not changes:
        return ""
    what = f"the tested code changed the checkpoint {directory}: {', '.join(changes)}"
    if synthetic:  # without its sums file the cache writes it again; this run's readers still find it
        sums = directory / CHECKSUM_FILE
        with contextlib.suppress(OSError):
            shutil.rmtree(sums) if sums.is_dir() and not sums.is_symlink() else sums.unlink(missing_ok=True)
        what += f" ({CHECKSUM_FILE} is removed, so the next run writes the synthetic checkpoint again)"
    return what


def code_files() -> list[Path]:
    """The harness's sources and those of every transformers module imported in this process."""
    files: set[Path] = set()
    for name in HARNESS_PACKAGES:
        module = sys.modules.get(name)
        if module is not None and getattr(module, "__file__", None):
            files.update(Path(module.__file__).parent.rglob("*.py"))
    for name, module in list(sys.modules.items()):
        source = getattr(module, "__file__", None)
        if name.split(".")[0] == "transformers" and isinstance(source, str) and source.endswith(".py"):
            files.add(Path(source))
    return sorted(files)


def code_hashes() -> dict[Path, str]:
    """The sha256 of every file of `code_files`, held by the caller (never written where a child could)."""
    return {path: _sha256(path) for path in code_files()}


def changed_code(before: dict[Path, str], limit: int = 3) -> str:
    """Which of the hashed sources the tested code changed ("" if none), and how to restore them."""
    changed = sorted(str(path) for path, digest in before.items() if _sha256(path) != digest)
    if not changed:
        return ""
    shown = ", ".join(changed[:limit]) + (f" and {len(changed) - limit} more" if len(changed) > limit else "")
    return (
        f"the tested code changed {len(changed)} source file(s) of the harness or of transformers: {shown}; "
        "every later run would use them: restore them (git checkout, or pip install --force-reinstall "
        "of the package) before trusting another run"
    )
