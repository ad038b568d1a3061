"""What the sandbox parent keeps of its child's two streams, within fixed bounds: messages and output tail.

The child (parity/sandbox/child.py) writes one JSON message per line to the result pipe, each carrying the
nonce; the tested code runs in the same process and may write anything to any descriptor it holds. The
parent's reader threads feed every chunk they read to a `Channel` (the result pipe) and an `OutputTail`
(the tested code's stdout and stderr), so a flood costs the parent a bounded amount of memory, never the
flood's size: a Channel keeps only the lines that carry the nonce, at most MAX_CHANNEL_BYTES of them, and
parses each with a nesting limit; an OutputTail keeps the last OUTPUT_TAIL_BYTES. What does not belong on
the pipe (lines without the nonce, a message nested too deeply, more than the cap) is counted and named
by `Channel.problem`, which the parent turns into CANNOT-TEST: the harness's channel is not the tested
code's to write.
"""

from __future__ import annotations

import json
import re
from collections import deque
from typing import IO, Any

import torch

# The result of a gpt2-xl run (every check's comparison records and profiles) is well under a MiB.
MAX_CHANNEL_BYTES = 64 << 20
# The child's messages nest five deep (result, verdicts, a verdict, its records, a record's shape).
MAX_JSON_DEPTH = 32
# How much captured output comes back to the caller (the end of it).
OUTPUT_TAIL_BYTES = 64 * 1024
SHOWN_BYTES = 40  # of an unexpected line, in the problem's message


def nesting_exceeds(line: bytes, depth: int) -> bool:
    """True if line's brackets ([] and {}, outside strings) nest deeper than depth, or close more than open.

    Counted with a running sum in torch, so a line of a million '[' costs milliseconds, never a recursion.
    """
    steps = _JSON_STRING.sub(b"", line).translate(_STEPS, _NOT_BRACKETS)
    if not steps:
        return False
    running = torch.frombuffer(bytearray(steps), dtype=torch.int8).to(torch.int32).cumsum(0)
    return bool(running.max() > depth or running.min() < 0)


_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
# An opening bracket becomes 1, a closing one 255 (-1 as int8).
_STEPS = bytes(1 if chr(b) in "[{" else 255 if chr(b) in "]}" else 0 for b in range(256))
_JSON_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"')  # brackets inside a string do not nest


class Channel:
    """The result pipe of one child: its nonce-carrying lines, kept up to a cap; what else came, counted."""

    def __init__(self, nonce: str, cap: int = MAX_CHANNEL_BYTES) -> None:
        self.nonce = nonce.encode()
        self.cap = cap
        self.lines: list[bytes] = []
        self.kept = 0
        self._pending = b""
        self._skipping = False  # inside a line longer than the cap
        self.dropped = 0  # bytes past the cap
        self.foreign = 0  # bytes of lines without the nonce
        self.first_foreign = b""

    def append(self, chunk: bytes) -> None:
        """Take one chunk read from the pipe, in order (the reader thread calls this)."""
        *complete, rest = chunk.split(b"\n")
        for piece in complete:
            if self._skipping:
                self.dropped += len(piece)
                self._skipping = False
            else:
                self._line(self._pending + piece)
            self._pending = b""
        if self._skipping:
            self.dropped += len(rest)
        elif len(self._pending) + len(rest) > self.cap - self.kept:
            self.dropped += len(self._pending) + len(rest)
            self._pending, self._skipping = b"", True
        else:
            self._pending += rest

    def _line(self, line: bytes) -> None:
        if not line.strip():
            return
        if self.nonce not in line:
            self.foreign += len(line) + 1
            self.first_foreign = self.first_foreign or line[:SHOWN_BYTES]
        elif self.kept + len(line) > self.cap:
            self.dropped += len(line)
        else:
            self.lines.append(line)
            self.kept += len(line)

    def messages(self) -> tuple[list[dict[str, Any]], str]:
        """The well-formed messages that carry the nonce, and the problem with the channel ("" if none)."""
        if self._pending:  # a last line without its newline (the child was killed while writing)
            self._line(self._pending)
            self._pending = b""
        out, too_deep = [], 0
        for line in self.lines:
            if nesting_exceeds(line, MAX_JSON_DEPTH):
                too_deep += 1
                continue
            try:
                message = json.loads(line)
            except (ValueError, RecursionError):
                continue
            if isinstance(message, dict) and message.get("nonce") == self.nonce.decode():
                out.append(message)
        return out, self._problem(too_deep)

    def _problem(self, too_deep: int) -> str:
        """What the tested code did to the channel, in words; "" when it left it alone."""
        problems = []
        if self.foreign:
            problems.append(
                f"{self.foreign:,} bytes that are not the harness's messages (first: {self.first_foreign!r})"
            )
        if too_deep:
            problems.append(f"{too_deep} message(s) nested more than {MAX_JSON_DEPTH} deep")
        if self.dropped:
            problems.append(f"more than its cap of {self.cap:,} bytes ({self.dropped:,} bytes dropped)")
        if not problems:
            return ""
        return "the tested code wrote to the harness's result channel: " + "; ".join(problems)


class OutputTail:
    """The last `cap` bytes of a stream and its total length: what a flood of prints costs the parent."""

    def __init__(self, cap: int = OUTPUT_TAIL_BYTES) -> None:
        self.cap = cap
        self.chunks: deque[bytes] = deque()
        self.kept = 0
        self.total = 0

    def append(self, chunk: bytes) -> None:
        """Take one chunk of the stream, in order; the oldest bytes beyond the cap are let go."""
        self.chunks.append(chunk)
        self.kept += len(chunk)
        self.total += len(chunk)
        while self.kept - len(self.chunks[0]) >= self.cap:
            self.kept -= len(self.chunks.popleft())

    def text(self) -> str:
        """The tail as text, with how many bytes came before it when it is not the whole stream."""
        data = b"".join(self.chunks)[-self.cap :]
        text = data.decode("utf-8", errors="replace")
        return text if self.total <= self.cap else f"[... {self.total - len(data)} bytes before]\n{text}"


def drain(stream: IO[bytes] | None, sink: OutputTail) -> None:
    """Read stream to its end into sink, closing it after (the loop of a reader thread)."""
    if stream is None:
        return
    with stream:
        while chunk := stream.read1(65536):  # type: ignore[attr-defined]  # a BufferedReader
            sink.append(chunk)
