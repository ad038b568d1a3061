"""A read-only view of the disk for the tested code, made in its mount namespace by process 1.

`unshare --mount` (parity/sandbox/isolation.py) gives parity/sandbox/pid1.py a copy of the mount table;
`make_read_only_view` makes every mount of that copy read-only except the directories the tested code may
write to (its working directory, its TMPDIR and /dev/shm, each bound onto itself first so that it is a
mount of its own) and /proc, which is left as it is. Each remount is `MS_REMOUNT | MS_BIND | MS_RDONLY`: a
bind remount changes that mount of the copy, never the filesystem, so the harness's own view is untouched
(mount propagation is made private first, so nothing reaches back out). A mount keeps its nosuid, nodev,
noexec and nosymfollow flags and its atime flags (the kernel keeps those of a remount that names none): in a
user namespace the kernel refuses with EPERM a remount that would clear one. Device nodes such as /dev/null
stay writable on a read-only mount. Only the standard library: it runs before everything the child imports.
"""

from __future__ import annotations

import ctypes
import os

MS_RDONLY = 0x1
MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_NOEXEC = 0x8
MS_REMOUNT = 0x20
MS_NOSYMFOLLOW = 0x100
MS_BIND = 0x1000
MS_REC = 0x4000
MS_PRIVATE = 0x40000
# The per-mount flags a read-only remount keeps, as /proc/self/mountinfo spells them.
KEPT_FLAGS = {"nosuid": MS_NOSUID, "nodev": MS_NODEV, "noexec": MS_NOEXEC, "nosymfollow": MS_NOSYMFOLLOW}
LEFT_AS_THEY_ARE = ("/proc",)  # and everything below: the harness's /proc, as without the view
PROBLEM_CHARS = 300  # a problem is one line of a load note


def unescape(field: str) -> str:
    """A path as /proc/self/mountinfo writes it (space, tab, newline and backslash as octal escapes)."""
    out, i = [], 0
    while i < len(field):
        if field[i] == "\\" and field[i + 1 : i + 4].isdigit():
            out.append(chr(int(field[i + 1 : i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def mounts(text: str) -> list[tuple[str, set[str]]]:
    """(mount point, per-mount options) of each line of /proc/self/mountinfo's text, in its order."""
    found = []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) >= 6:
            found.append((unescape(fields[4]), set(fields[5].split(","))))
    return found


def within(path: str, directories: list[str]) -> bool:
    """True if path is one of directories or below one."""
    return any(path == d or path.startswith(d.rstrip("/") + "/") for d in directories)


def remount_flags(options: set[str]) -> int:
    """The flags that make a mount with these per-mount options read-only, keeping the locked ones."""
    flags = MS_REMOUNT | MS_BIND | MS_RDONLY
    for option, flag in KEPT_FLAGS.items():
        if option in options:
            flags |= flag
    return flags


def _mount_call():  # noqa: ANN202 - a ctypes function
    libc = ctypes.CDLL(None, use_errno=True)
    mount = libc.mount
    mount.argtypes = (ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_void_p)
    mount.restype = ctypes.c_int

    def call(source: str | None, target: str, flags: int) -> None:
        encoded = None if source is None else os.fsencode(source)
        if mount(encoded, os.fsencode(target), None, flags, None) != 0:
            errno = ctypes.get_errno()
            raise OSError(errno, os.strerror(errno), target)

    return call


def make_read_only_view(writable: list[str], outside_namespace: str) -> str:
    """Make this mount namespace's mounts read-only except writable (and /proc); "" or what went wrong.

    outside_namespace is the harness's mount namespace (`readlink /proc/self/ns/mnt`): this process must be
    in another one, or a remount would change the harness's own view; then nothing is done.
    """
    try:
        if os.readlink("/proc/self/ns/mnt") == outside_namespace:
            return "not in a mount namespace of its own"
        mount = _mount_call()
        mount(None, "/", MS_REC | MS_PRIVATE)  # nothing done here propagates back out
        kept = [os.path.realpath(d) for d in writable if os.path.isdir(d)]
        for directory in kept:
            mount(directory, directory, MS_BIND | MS_REC)  # a mount of its own, left writable
        with open("/proc/self/mountinfo") as f:
            table = mounts(f.read())
        failed = []
        for point, options in table:
            if "ro" in options or within(point, kept) or within(point, list(LEFT_AS_THEY_ARE)):
                continue
            try:
                mount(None, point, remount_flags(options))
            except OSError as e:
                failed.append(f"{point}: {e.strerror}")
    except (OSError, AttributeError) as e:  # AttributeError: a libc without mount
        return f"{type(e).__name__}: {e}"[:PROBLEM_CHARS]
    if failed:
        return f"{len(failed)} mount(s) left writable, first {failed[0]}"[:PROBLEM_CHARS]
    return ""
