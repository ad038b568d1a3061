"""nanogpt.json_files refuses each hostile JSON file with one line naming the file and the problem."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from nanogpt.json_files import JsonFileError, parse_json_object, read_json_object


def _write(tmp_path: Path, data: bytes) -> Path:
    path = tmp_path / "x.json"
    path.write_bytes(data)
    return path


def test_a_json_object_is_returned(tmp_path: Path) -> None:
    assert read_json_object(_write(tmp_path, b'{"a": [1, 2]}'), "a test file", 100) == {"a": [1, 2]}


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"[" * 100_000 + b"]" * 100_000, r"x\.json: JSON nested too deeply to be a test file$"),
        (b'{"a": "\xff\xfe"}', r"x\.json: not valid JSON \(.*codec can't decode"),
        (b'{"a":\n\n1', r"x\.json: not valid JSON \(Expecting ',' delimiter: line 3 column 2 \(char 8\)\)$"),
        (b"[1, 2]", r"x\.json: expected a JSON object, got list$"),
        (b" " * 300_000, r"x\.json: 300,000 bytes, not a test file \(at most 200,000 bytes\)$"),
    ],
    ids=["deep", "not-utf8", "invalid", "a-list", "too-large"],
)
def test_a_hostile_file_is_refused_with_one_line(tmp_path: Path, data: bytes, message: str) -> None:
    with pytest.raises(JsonFileError, match=message) as caught:
        read_json_object(_write(tmp_path, data), "a test file", 200_000)
    assert "\n" not in str(caught.value)


def test_a_missing_file_and_a_directory_are_refused(tmp_path: Path) -> None:
    with pytest.raises(JsonFileError, match=r"nowhere\.json: no such file$"):
        read_json_object(tmp_path / "nowhere.json", "a test file", 100)
    with pytest.raises(JsonFileError, match=r": not a regular file$"):
        read_json_object(tmp_path, "a test file", 100)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_a_fifo_is_refused_without_blocking(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo.json"
    os.mkfifo(fifo)
    with pytest.raises(JsonFileError, match=r"fifo\.json: not a regular file$"):
        read_json_object(fifo, "a test file", 100)


def test_parse_names_the_source_it_is_given() -> None:
    assert parse_json_object(b'{"n": 1}', "here", "a test file") == {"n": 1}
    with pytest.raises(JsonFileError, match=r"^here: expected a JSON object, got int$"):
        parse_json_object(b"3", "here", "a test file")
