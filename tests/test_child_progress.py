"""The child's progress lines reach the terminal as they happen, before the first verdict, in both front ends.

The unit tests feed parity/sandbox/relay.py's `ProgressRelay` the pipe's bytes in awkward pieces; the
end-to-end tests run `nanogpt-parity --impl` and `nanogpt-parity-bisect --impl` on the small model with a
model file whose __init__ sleeps SLEEP_S once, and time each line as it arrives on the command's pipes: a
line printed only after the child ended would arrive with the verdicts, not SLEEP_S before them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from bisect_fixtures.variants import INIT_START, model_source

from parity.sandbox import relay
from parity.sandbox.relay import ProgressRelay

REPO = Path(__file__).resolve().parents[1]
NONCE = "n" * 32
SLEEP_S = 4.0  # longer than relay.HOLD_S: the build's start line shows while it runs
SLOW_ONCE = (
    "        if not getattr(GPT, '_slept', False):\n"
    "            import time\n\n"
    "            GPT._slept = True\n"
    f"            time.sleep({SLEEP_S})\n"
)


def _message(text: str, nonce: str = NONCE) -> bytes:
    return json.dumps({"progress": text, "nonce": nonce}).encode() + b"\n"


def _relay() -> tuple[ProgressRelay, list[str]]:
    shown: list[str] = []
    return ProgressRelay(NONCE, show=shown.append, indent=""), shown


def test_lines_split_across_chunks_are_shown_whole_and_only_with_the_nonce() -> None:
    r, shown = _relay()
    stream = _message("check logits: done in 0.3 s") + _message("forged", "x" * 32) + b"not json\n"
    stream += json.dumps({"kind": "result", "verdicts": ["v" * 5000], "nonce": NONCE}).encode() + b"\n"
    stream += _message("check grads: done in 0.1 s")
    for n in range(0, len(stream), 7):
        r.feed(stream[n : n + 7])
    r.flush()
    assert shown == ["check logits: done in 0.3 s", "check grads: done in 0.1 s"]


def test_control_characters_cannot_reach_the_terminal() -> None:
    r, shown = _relay()
    r.feed(_message("check \x1b[2Jlogits\r: done"))
    r.flush()
    assert shown == ["check ?[2Jlogits?: done"]


def test_a_start_line_shows_only_when_its_phase_runs_long(monkeypatch: pytest.MonkeyPatch) -> None:
    r, shown = _relay()
    r.feed(_message("check logits ...") + _message("check logits: done in 0.1 s"))
    r.flush()
    assert shown == ["check logits: done in 0.1 s"], "a quick phase is one line"
    r.feed(_message("check train-steps ..."))
    r.flush()
    assert shown[1:] == [], "held for relay.HOLD_S"
    monkeypatch.setattr(relay, "HOLD_S", 0.0)
    r.flush()
    r.feed(_message("gpt2: forward + backward ...") + _message("gpt2: forward + backward: done in 9 s"))
    r.flush(final=True)
    assert shown[1:] == ["check train-steps ...", "gpt2: forward + backward: done in 9 s"]


def _timed_run(argv: list[str], cwd: Path) -> tuple[int, list[tuple[float, str, str]]]:
    """Run argv; every line of stdout and stderr with the time it arrived, in arrival order."""
    env = dict(os.environ, PYTHONPATH=str(REPO), PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(argv, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    lines: list[tuple[float, str, str]] = []
    lock = threading.Lock()

    def read(stream: object, name: str) -> None:
        for raw in stream:  # type: ignore[attr-defined]
            with lock:
                lines.append((time.monotonic(), name, raw.decode(errors="replace").rstrip("\n")))

    readers = [
        threading.Thread(target=read, args=(s, n)) for s, n in ((proc.stdout, "out"), (proc.stderr, "err"))
    ]
    for t in readers:
        t.start()
    code = proc.wait(timeout=300)
    for t in readers:
        t.join()
    return code, sorted(lines, key=lambda line: line[0])


def _arrival(lines: list[tuple[float, str, str]], stream: str, predicate: object) -> tuple[float, int]:
    found = [(t, n) for n, (t, s, text) in enumerate(lines) if s == stream and predicate(text)]  # type: ignore[operator]
    assert found, f"no such line on std{stream}:\n" + "\n".join(f"{s}: {x}" for _, s, x in lines)
    return found[0]


@pytest.mark.parametrize("front_end", ["nanogpt-parity", "nanogpt-parity-bisect"])
def test_progress_arrives_while_the_child_runs_before_the_first_verdict(
    front_end: str, tmp_path: Path
) -> None:
    impl = tmp_path / "model.py"
    impl.write_text(model_source().replace(INIT_START, INIT_START + SLOW_ONCE, 1))
    if front_end == "nanogpt-parity":
        module, progress, extra = "parity.frontends.cli", "out", ["-v", "-p", "no:randomly"]
        is_verdict = lambda text: " PASSED" in text or " FAILED" in text  # noqa: E731
    else:
        module, progress, extra = "parity.frontends.bisect", "err", ["--checks", "logits,grads"]
        is_verdict = lambda text: text.startswith("PASS ")  # noqa: E731
    code, lines = _timed_run(
        [sys.executable, "-m", module, "--impl", str(impl), "--model", "small", *extra], tmp_path
    )
    assert code == 0, "\n".join(text for _, _, text in lines)
    building, n_building = _arrival(
        lines, progress, lambda t: t.strip() == "building the model and loading its weights ..."
    )
    built, n_built = _arrival(
        lines, progress, lambda t: "building the model and loading its weights: done" in t
    )
    checked, n_checked = _arrival(lines, progress, lambda t: t.strip().startswith("check logits: done in"))
    verdict, n_verdict = _arrival(lines, "out", is_verdict)
    assert n_building < n_built < n_checked < n_verdict, "the child's phases, then the verdicts"
    assert built - building >= SLEEP_S - relay.HOLD_S - 1, "the slow build's start line showed while it ran"


def test_the_parents_witness_model_is_announced_for_a_large_model(monkeypatch: pytest.MonkeyPatch) -> None:
    """Before the child starts, the parent loads Hugging Face's model of the target: seconds on gpt2-xl."""
    from parity.sandbox import witness
    from parity.subject import progress
    from parity.subject.targets import resolve_targets

    lines: list[str] = []
    monkeypatch.setattr(progress, "_sink", None)  # restored after the test
    progress.send_lines_to(lines.append)
    monkeypatch.setattr(witness, "PROGRESS_MIN_BYTES", 0)  # the small model counts as large here
    (target,) = resolve_targets("small", "auto", "cpu", None)
    witness.clean_witness(target)
    assert lines[0] == f"{target.name}: Hugging Face's model in this process, the witness for the child's ..."
    assert lines[1].startswith(
        f"{target.name}: Hugging Face's model in this process, the witness for the child's: done"
    )
