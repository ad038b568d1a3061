"""Strict, bounded reading of a small JSON file whose top level must be an object.

Every JSON file the project reads from a user (a checkpoint's config.json and shard index, a dataset's
meta.json, a trainer config file, a parity report) is read here, so the same hostile inputs fail the
same way: a file over its size cap is refused before it is read in full, a FIFO or device before it
blocks, nesting deep enough to exhaust the recursion limit, undecodable bytes, a lone surrogate (an
escape that is not text), invalid JSON and a top level that is not an object each raise JsonFileError
with one line that starts with the file. Callers translate it into their own error type and may append a
hint.
"""

from __future__ import annotations

import json
import stat
from pathlib import Path
from typing import Any


class JsonFileError(ValueError):
    """A JSON file that cannot be read as one bounded JSON object; the message is one line."""


def one_line(error: BaseException) -> str:
    """The text of an exception with its whitespace (newlines included) collapsed to single spaces."""
    return " ".join(str(error).split())


def parse_json_object(raw: bytes, where: str, what: str) -> dict[str, Any]:
    """raw as a JSON object, or JsonFileError naming where: nested too deeply, invalid, or not an object."""
    try:
        value = json.loads(raw.decode("utf-8"))
    except RecursionError:
        raise JsonFileError(f"{where}: JSON nested too deeply to be {what}") from None
    except (UnicodeDecodeError, ValueError) as e:
        raise JsonFileError(f"{where}: not valid JSON ({one_line(e)})") from None
    if not isinstance(value, dict):
        raise JsonFileError(f"{where}: expected a JSON object, got {type(value).__name__}")
    if b"\\u" in raw and (bad := _lone_surrogate(value)) is not None:
        raise JsonFileError(f"{where}: a string holds a lone surrogate ({bad!r}), which is not text")
    return value


def _lone_surrogate(value: Any) -> str | None:
    """The first string (key or value) in value that cannot be encoded as UTF-8, or None."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            stack += list(item.keys()) + list(item.values())
        elif isinstance(item, list):
            stack += item
        elif isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                return item[:40]
    return None


def read_json_object(path: Path, what: str, max_bytes: int) -> dict[str, Any]:
    """The JSON object in path (what: a noun phrase such as "a GPT-2 config"), or JsonFileError."""
    try:
        info = path.stat()
        if not stat.S_ISREG(info.st_mode):  # a FIFO or device would block the read
            raise JsonFileError(f"{path}: not a regular file")
        if info.st_size > max_bytes:
            raise JsonFileError(f"{path}: {info.st_size:,} bytes, not {what} (at most {max_bytes:,} bytes)")
        with path.open("rb") as fh:
            raw = fh.read(max_bytes + 1)  # the file may have grown since stat
    except FileNotFoundError:
        raise JsonFileError(f"{path}: no such file") from None
    except OSError as e:
        raise JsonFileError(f"{path}: cannot read it ({e.strerror or e})") from None
    if len(raw) > max_bytes:
        raise JsonFileError(f"{path}: more than {max_bytes:,} bytes, not {what}")
    return parse_json_object(raw, str(path), what)
