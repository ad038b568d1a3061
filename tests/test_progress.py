"""Progress lines: one per phase with its elapsed time, a bar on a TTY, visible through pytest's capture."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from nanogpt import progress_bar
from nanogpt.train_log import Progress
from parity.subject import progress

REPO = Path(__file__).resolve().parents[1]


class Sink:
    def __init__(self, isatty: bool) -> None:
        self.isatty = isatty
        self.lines: list[str] = []
        self.redraws: list[str] = []

    def line(self, text: str) -> None:
        self.lines.append(text)

    def redraw(self, text: str) -> None:
        self.redraws.append(text)


def test_a_phase_is_announced_and_ends_with_its_elapsed_time(monkeypatch: pytest.MonkeyPatch) -> None:
    sink = Sink(isatty=False)
    monkeypatch.setattr(progress, "_sink", sink)
    with progress.phase("loading gpt2-xl", total=6.2, unit="GB") as p:
        p.update(3.1)  # no bar off a TTY
    assert sink.lines[0] == "loading gpt2-xl ..."
    assert sink.lines[1].startswith("loading gpt2-xl: done in ") and sink.lines[1].endswith(" s")
    assert len(sink.lines) == 2 and sink.redraws == []


def test_a_failing_phase_says_so_and_the_error_propagates(monkeypatch: pytest.MonkeyPatch) -> None:
    sink = Sink(isatty=False)
    monkeypatch.setattr(progress, "_sink", sink)
    with pytest.raises(RuntimeError, match="boom"), progress.phase("backward"):
        raise RuntimeError("boom")
    assert sink.lines[-1].startswith("backward: failed after ")


def test_on_a_tty_a_bar_is_redrawn_in_place(monkeypatch: pytest.MonkeyPatch) -> None:
    sink = Sink(isatty=True)
    monkeypatch.setattr(progress, "_sink", sink)
    monkeypatch.setattr(progress_bar, "REDRAW_INTERVAL_S", 0.0)
    with progress.phase("writing", total=4.0, unit="GB") as p:
        p.update(2.0)
        p.update(4.0)
    bars = [r for r in sink.redraws if "[" in r]
    assert "[" + "#" * 15 + "." * 15 + "]" in bars[1] and "2.0/4.0 GB" in bars[1]
    assert "[" + "#" * 30 + "]" in bars[2]
    assert sink.redraws[-1].startswith("writing: done in ")
    assert sink.lines == [""], "the bar's line is ended once, nothing else printed"


def test_the_bar_fills_rounded_down_and_clamped() -> None:
    assert progress_bar.bar(0.5, width=10) == "[#####.....]"
    assert progress_bar.bar(0.99, width=10) == "[#########.]", "full means done"
    assert progress_bar.bar(-1.0, width=4) == "[....]" and progress_bar.bar(7.0, width=4) == "[####]"


def test_redraws_are_paced_but_the_final_one_always_happens() -> None:
    redraws = progress_bar.Redraws()
    assert redraws.due(), "the first draw is never held back"
    assert not redraws.due(), "a second draw within the interval is skipped"
    assert redraws.due(final=True)


def test_the_trainer_draws_the_same_bar_and_always_its_last_step(capsys: pytest.CaptureFixture[str]) -> None:
    display = Progress(total=10, start=0, enabled=True)
    for it in range(1, 11):
        display.update(it, loss=1.5)  # all within one interval: the first and the last are drawn
    display.close()
    err = capsys.readouterr().err
    assert err.count("\r") == 2 and err.endswith("\n")
    assert f"{progress_bar.bar(1.0)} 10/10 loss 1.5000 " in err


PHASE_TEST = textwrap.dedent(
    """
    from parity.subject.progress import phase

    def test_long_work():
        print("captured output")
        with phase("generating the synthetic gpt2-xl checkpoint"):
            pass
    """
)


def test_under_pytest_the_lines_reach_the_terminal_past_output_capture(tmp_path: Path) -> None:
    (tmp_path / "test_phase.py").write_text(PHASE_TEST)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    env.pop("PYTEST_ADDOPTS", None)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-p",
            "parity.subject.progress",
            "-p",
            "no:cacheprovider",
            "test_phase.py",
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "generating the synthetic gpt2-xl checkpoint ..." in proc.stdout
    assert "generating the synthetic gpt2-xl checkpoint: done in " in proc.stdout
    assert "captured output" not in proc.stdout, "capture itself stays on for the test's own output"
