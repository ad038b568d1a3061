"""Validation of the paths the command-line tools write to, before any work starts.

Every output a user names (a report file, a checkpoint or dataset directory, a cache) is checked up front:
`~` is expanded, an empty value is refused, a symlink is resolved so the write goes through it to its
target, and a directory where a file is wanted (or a file where a directory is wanted), a device node, a
FIFO or a socket is refused. Whether the place is writable is probed by creating (and removing) a
temporary file there, because `os.access` says yes to root even on `/proc` or a read-only mount. The
errors are one line that names the option and the fix; the writers in `nanogpt.atomic` then replace a
regular file atomically and never touch anything else. `refuse_inputs` keeps an output off the files
the same command reads (a report never replaces the implementation it judges, a plot never its report).
"""

from __future__ import annotations

import os
import stat
import tempfile
from collections.abc import Iterable
from pathlib import Path


class OutputPathError(ValueError):
    """An output path that cannot be written as asked; the message names the option and the fix."""


def _kind(mode: int) -> str:
    """A human name for a non-regular file type."""
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device node"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a regular file"


def _expand(value: str | os.PathLike[str], option: str, what: str) -> Path:
    """The path of value with ~ expanded; refuses an empty value."""
    text = os.fspath(value)
    if not text.strip():
        raise OutputPathError(f"{option}: empty value; give the path of {what}")
    return Path(text).expanduser()


def _resolve_link(path: Path, option: str) -> Path:
    """path with symlinks resolved (so writes go through them); refuses a link loop."""
    try:
        return path.resolve(strict=False)
    except (RuntimeError, OSError) as e:  # a symlink loop
        raise OutputPathError(
            f"{option} {path}: cannot resolve the symlink ({e}); point it at a file"
        ) from None


def _nearest_existing(path: Path) -> Path:
    """path itself or its closest ancestor that exists."""
    for candidate in (path, *path.parents):
        if os.path.lexists(candidate):
            return candidate
    return Path(path.anchor or ".")


def probe_writable_dir(directory: Path, option: str, shown: Path) -> None:
    """Raise OutputPathError unless a new file can be created (and removed) in directory."""
    try:
        fd, name = tempfile.mkstemp(prefix=".write-probe-", dir=directory)
    except OSError as e:
        raise OutputPathError(
            f"{option} {shown}: cannot write in {directory} ({e.strerror or e}); choose a writable location"
        ) from None
    os.close(fd)
    os.unlink(name)


def _check_new_location(target: Path, option: str, shown: Path) -> None:
    """For a path that does not exist yet: its nearest existing ancestor must be a writable directory."""
    ancestor = _nearest_existing(target.parent)
    try:
        mode = ancestor.stat().st_mode
    except OSError as e:
        raise OutputPathError(f"{option} {shown}: cannot reach {ancestor} ({e.strerror or e})") from None
    if not stat.S_ISDIR(mode):
        raise OutputPathError(
            f"{option} {shown}: {ancestor} is {_kind(mode) if not stat.S_ISREG(mode) else 'a file'}, "
            "not a directory; choose a path inside a directory"
        )
    probe_writable_dir(ancestor, option, shown)


def resolve_output_file(value: str | os.PathLike[str], option: str) -> Path:
    """The validated path of an output file: an existing regular file or a new name in a writable place.

    Symlinks are resolved (the file is written through them); directories, devices, FIFOs and sockets
    are refused, as are places where a file cannot be created.
    """
    shown = _expand(value, option, "a file")
    target = _resolve_link(shown, option)
    if os.path.lexists(target):
        mode = target.stat().st_mode
        if stat.S_ISDIR(mode):
            raise OutputPathError(
                f"{option} {shown}: is a directory; give the path of a file (e.g. {shown / 'report.json'})"
            )
        if not stat.S_ISREG(mode):
            raise OutputPathError(
                f"{option} {shown}: is {_kind(mode)}; it is left alone, give the path of a regular file"
            )
        # The file is replaced by a rename, so its directory must take a new file.
        probe_writable_dir(target.parent, option, shown)
        return target
    _check_new_location(target, option, shown)
    return target


def resolve_output_dir(value: str | os.PathLike[str], option: str) -> Path:
    """The validated path of an output directory: an existing writable directory or one that can be made.

    Symlinks are resolved; a regular file, device, FIFO or socket at the path is refused.
    """
    shown = _expand(value, option, "a directory")
    target = _resolve_link(shown, option)
    if os.path.lexists(target):
        mode = target.stat().st_mode
        if not stat.S_ISDIR(mode):
            what = "a file" if stat.S_ISREG(mode) else _kind(mode)
            raise OutputPathError(f"{option} {shown}: is {what}, not a directory; give a directory path")
        probe_writable_dir(target, option, shown)
        return target
    _check_new_location(target, option, shown)
    return target


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def refuse_inputs(out: Path, inputs: Iterable[tuple[str, Path]], option: str) -> None:
    """Raise OutputPathError if out (from resolve_output_file) is one of the inputs or an existing file under
    an input directory; each input is (what it is, its path), e.g. ("--impl", Path("model.py"))."""
    for what, path in inputs:
        inside = path.is_dir() and out.exists() and any(_same_file(d, path) for d in out.parents)
        if _same_file(out, path) or inside:
            where = f"a file of {what} {path}" if inside else f"{what} {path}"
            raise OutputPathError(
                f"{option} {out}: is {where}, which this command reads; it is left alone, choose another path"
            )
