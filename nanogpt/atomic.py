"""Atomic writes of files and directories: a reader sees either the old complete version or the new one.

Used by every writer of outputs the user owns (HF exports, synthetic checkpoints, trainer checkpoints,
datasets, reports), so an interrupted run never leaves a half-written file under the final name. A file
is written to a temporary sibling, flushed, then renamed over the target; temporaries that a killed
writer left behind are removed by the next write of the same file.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any


def fsync_dir(path: Path) -> None:
    """Persist a directory entry (a rename) where the platform allows opening directories."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_directory(out: Path) -> Iterator[Path]:
    """Yield a temporary sibling directory; on success flush it and rename it to out.

    An existing out is moved aside first and removed only once the new directory is in place; on any
    error the temporary directory is removed and out is untouched.
    """
    out.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(out)
    tmp = temporary_name(out)
    tmp.mkdir()
    try:
        yield tmp
        for f in tmp.iterdir():
            if f.is_file():
                with f.open("rb") as fh:
                    os.fsync(fh.fileno())
        fsync_dir(tmp)
        old = None
        if out.exists():
            old = out.parent / f".{out.name}.old-{uuid.uuid4().hex[:8]}"
            os.replace(out, old)
        os.replace(tmp, out)
        fsync_dir(out.parent)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _pid_alive(pid: int) -> bool:
    """True if a process with this id exists (so its temporary files may still be in use)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    return True


def temporary_name(path: Path) -> Path:
    """A fresh temporary sibling of path whose name records this process (see remove_stale_temporaries)."""
    return path.with_name(f".{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")


def remove_stale_temporaries(path: Path) -> list[Path]:
    """Remove temporaries of path left by writers that no longer run (killed mid-save); return them."""
    removed = []
    prefix = f".{path.name}.tmp-"
    try:
        siblings = list(path.parent.iterdir())
    except OSError:
        return removed
    for f in siblings:
        if not f.name.startswith(prefix):
            continue
        pid_text = f.name[len(prefix) :].split("-", 1)[0]
        if not pid_text.isdigit() or int(pid_text) == os.getpid() or _pid_alive(int(pid_text)):
            continue
        try:
            if f.is_dir() and not f.is_symlink():
                shutil.rmtree(f)
            else:
                f.unlink()
            removed.append(f)
        except OSError:
            pass  # another process cleaned it first, or it is not ours to remove
    return removed


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike[str], mode: str = "w", **open_kwargs: Any) -> Iterator[IO[Any]]:
    """Yield a file open on a temporary sibling of path; on success fsync it and rename it over path.

    path should come from `nanogpt.paths.resolve_output_file` (symlinks resolved, so the rename replaces
    the link's target, not the link). An existing file keeps its permission bits; on any error the
    temporary is removed and path is untouched. mode is "w" (text) or "wb".
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_file writes whole files: mode 'w' or 'wb', not {mode!r}")
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(target)
    tmp = temporary_name(target)
    try:
        previous = target.stat().st_mode if target.exists() else None
        with open(tmp, "x" + mode[1:], **open_kwargs) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        if previous is not None and stat.S_ISREG(previous):
            os.chmod(tmp, stat.S_IMODE(previous))
        os.replace(tmp, target)  # atomic on POSIX: readers see the old file or the new one
        fsync_dir(target.parent)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
