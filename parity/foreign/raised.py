"""Where the tested code raised: an exception's type, its message, and the user's own file:line.

A bare `assert` raises AssertionError with an empty message, so "GPT(config) raised AssertionError:" says
nothing a user can act on. `describe_exception` names the type, the message (or "(no message)") and the
innermost traceback frame inside the implementation's own folder, with its source line: the line the
user fixes. Frames of the harness, torch or any installed package are skipped, so an error raised inside
torch points at the user's line that called it.
"""

from __future__ import annotations

import traceback
from pathlib import Path

# Folders of installed packages: a virtual environment inside the user's folder is not the user's code.
INSTALLED_PARTS = frozenset({"site-packages", "dist-packages"})


def user_frame(error: BaseException, root: Path) -> traceback.FrameSummary | None:
    """The innermost frame of error's traceback in a .py file under root (installed packages excluded)."""
    inside = []
    for frame in traceback.extract_tb(error.__traceback__):
        path = Path(frame.filename)
        if path.is_relative_to(root) and not INSTALLED_PARTS & set(path.parts):
            inside.append(frame)
    return inside[-1] if inside else None


def raised_at(error: BaseException, root: Path) -> str:
    """', at FILE:LINE (`source`)' of the user's frame that raised error, relative to root; '' if none."""
    frame = user_frame(error, root)
    if frame is None:
        return ""
    path = Path(frame.filename)
    shown = path.relative_to(root) if path != root else Path(path.name)
    source = f" (`{frame.line.strip()}`)" if frame.line and frame.line.strip() else ""
    return f", at {shown}:{frame.lineno}{source}"


def describe_exception(error: BaseException, root: Path) -> str:
    """'Type: message, at FILE:LINE (`source`)', the message '(no message)' when empty; the place goes after
    the message's first line, which is what a verdict's reason shows."""
    first, newline, rest = (str(error).strip() or "(no message)").partition("\n")
    return f"{type(error).__name__}: {first}{raised_at(error, root)}{newline}{rest}"
