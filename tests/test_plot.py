"""`python -m parity.frontends.plot`: a PNG of per-module relative-difference profiles, or one error line.

The reports are built by hand in the schema `--parity-report` writes under "profiles": a float32 run
that passes (flat near the noise level) and one with a real bug (a step at the module that introduces
it, here an exact-GELU MLP in block 1).
"""

from __future__ import annotations

import json
import os
import stat
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from parity.frontends import plot

MODULES = (
    ["transformer.wte+wpe"]
    + [f"transformer.h.{i}.{part}" for i in range(4) for part in ("ln_1", "attn", "ln_2", "mlp")]
    + ["transformer.ln_f", "lm_head"]
)
BUG_AT = MODULES.index("transformer.h.1.mlp")
REPO = Path(__file__).resolve().parents[1]


def profile(
    model: str, rel: list[float | None], passed: bool, comparison: str = "logits[gradient batch]"
) -> dict:
    return {
        "model": model,
        "comparison": comparison,
        "dtype": "float32",
        "modules": MODULES,
        "relative_difference": rel,
        "noise": 1e-5,
        "tolerance": {"rtol": 1e-4, "atol": 1e-5},
        "passed": passed,
    }


def passing_float32() -> dict:
    rel: list[float | None] = [2e-8 * (1 + 0.3 * i) for i in range(len(MODULES))]
    rel[0] = 0.0  # embeddings are looked up, not computed: exactly equal
    rel[5] = None  # a module the hooks did not observe
    return profile("gpt2", rel, passed=True)


def exact_gelu_bug() -> dict:
    rel = [3e-8 if i < BUG_AT else 2e-3 * (1 + 0.5 * (i - BUG_AT)) for i in range(len(MODULES))]
    return profile("tiny-exact-gelu", rel, passed=False)


def write(tmp_path: Path, report: object, name: str = "report.json") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(report) if not isinstance(report, str) else report)
    return path


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    return struct.unpack(">II", data[16:24])


def test_the_command_writes_a_png_of_sensible_size(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("matplotlib")
    report = write(tmp_path, {"models": [], "profiles": [passing_float32(), exact_gelu_bug()]})
    out = tmp_path / "profile.png"
    assert plot.main([str(report), "-o", str(out)]) == 0
    width, height = png_size(out)
    assert 600 <= width <= 2400 and 300 <= height <= 1200
    assert 10_000 < out.stat().st_size < 2_000_000
    assert capsys.readouterr().out.strip() == f"wrote {out} (2 profiles)"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "no temporary file left behind"


def test_a_bug_is_marked_where_it_starts_and_a_pass_is_not(tmp_path: Path) -> None:
    """What makes the two runs look different at a glance: a step, marked at its module, above the lines."""
    pytest.importorskip("matplotlib")
    profiles = plot.read_profiles(write(tmp_path, {"profiles": [passing_float32(), exact_gelu_bug()]}))
    good, bad = profiles
    assert good.first_divergence() is None and bad.first_divergence() == BUG_AT
    fig = plot.draw(profiles)
    ax = fig.axes[0]
    notes = [t.get_text() for t in ax.texts]
    assert "first divergence: h.1.mlp" in notes, notes
    assert sum("first divergence" in n for n in notes) == 1, "the passing run is not marked"
    assert any("float32 noise 1e-05" in n for n in notes) and any("tolerance rtol" in n for n in notes)
    assert ax.get_yscale() == "log"
    good_line, bad_line = ax.get_lines()[:2]
    assert max(good_line.get_ydata()) < 1e-5 < min(bad_line.get_ydata()[BUG_AT:])
    assert len(good_line.get_xdata()) == len(MODULES) - 1, "the unobserved module is a gap, not a zero"
    assert min(good_line.get_ydata()) == pytest.approx(2.6e-9), "exact agreement: a decade below the least"


def _bad_reports(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    short = passing_float32()
    short["relative_difference"] = short["relative_difference"][:-1]
    nan = passing_float32()
    nan["noise"] = float("nan")
    no_tol = passing_float32()
    del no_tol["tolerance"]
    return {
        "missing file": (tmp_path / "nowhere.json", "no such file"),
        "not json": (write(tmp_path, "{not json", "a.json"), "not valid JSON"),
        "no profiles": (write(tmp_path, {"models": []}, "b.json"), 'no "profiles" in the report'),
        "empty profiles": (write(tmp_path, {"profiles": []}, "c.json"), "must be a non-empty list"),
        "length mismatch": (write(tmp_path, {"profiles": [short]}, "d.json"), "as long as modules"),
        "nan noise": (
            write(tmp_path, {"profiles": [passing_float32(), nan]}, "e.json"),
            "profiles[1].noise must be a finite number",
        ),
        "no tolerance": (write(tmp_path, {"profiles": [no_tol]}, "f.json"), "profiles[0] lacks tolerance"),
        "deeply nested": (write(tmp_path, "[" * 100_000, "g.json"), "JSON nested too deeply"),
        "lone surrogate": (
            write(tmp_path, json.dumps({"profiles": [dict(passing_float32(), model="\ud800")]}), "h.json"),
            "a string holds a lone surrogate ('\\ud800')",
        ),
    }


def test_a_malformed_report_is_refused_with_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "profile.png"
    for case, (path, message) in _bad_reports(tmp_path).items():
        assert plot.main([str(path), "-o", str(out)]) == 2, case
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and message in err, f"{case}: {err!r}"
        assert not out.exists(), case


def test_missing_matplotlib_is_one_line_naming_the_extra(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # makes `import matplotlib` raise ImportError
    report = write(tmp_path, {"profiles": [passing_float32()]})
    assert plot.main([str(report), "-o", str(tmp_path / "p.png")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "pip install 'nanogpt-parity[plot]'" in err
    assert not (tmp_path / "p.png").exists()


def test_an_output_folder_that_does_not_exist_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    report = write(tmp_path, {"profiles": [passing_float32()]})
    assert plot.main([str(report), "-o", str(tmp_path / "no" / "p.png")]) == 2
    assert "is not a directory" in capsys.readouterr().err


def test_exact_zeros_have_their_own_marker_and_the_legend_stays_clear_of_the_title(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    fig = plot.draw(plot.read_profiles(write(tmp_path, {"profiles": [passing_float32(), exact_gelu_bug()]})))
    ax = fig.axes[0]
    (zeros,) = ax.collections  # only the passing run has an exact zero (its embeddings)
    assert [list(xy) for xy in zeros.get_offsets()] == [[0.0, pytest.approx(2.6e-9)]]
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert "gpt2: exact zero (drawn at 3e-09)" in labels, labels
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    title = ax.title.get_window_extent(renderer)
    legend = ax.get_legend().get_window_extent(renderer)
    axes = ax.get_window_extent(renderer)
    assert legend.x0 >= axes.x1, "the legend is outside the axes, not over the curves"
    assert not legend.overlaps(title), "the legend is not drawn under the title"
    for note in ax.texts:
        if "first divergence" in note.get_text():
            box = note.get_window_extent(renderer)
            assert box.y1 <= axes.y1 and not box.overlaps(title), "the divergence note stays in the axes"


def test_the_png_has_ordinary_permissions(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("matplotlib")
    report = write(tmp_path, {"profiles": [exact_gelu_bug()]})
    out = tmp_path / "p.png"
    old = os.umask(0o022)
    try:
        assert plot.main([str(report), "-o", str(out)]) == 0
    finally:
        os.umask(old)
    assert stat.S_IMODE(out.stat().st_mode) == 0o644
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "no temporary file left behind"


def _state(directory: Path) -> dict[str, tuple[int, int, bytes]]:
    """Each entry's type and mode, inode and contents (or link target), without following links."""
    out = {}
    for p in directory.iterdir():
        st = os.lstat(p)
        data = b"" if not stat.S_ISREG(st.st_mode) else p.read_bytes()
        data = os.readlink(p).encode() if p.is_symlink() else data
        out[p.name] = (st.st_mode, st.st_ino, data)
    return out


@pytest.mark.parametrize(
    "case, message",
    [
        ("the report", "-o {report}: is the report {report}, which this command reads; it is left alone"),
        ("a link to the report", "is the report {report}, which this command reads"),
        ("empty", "-o: empty value; give the path of a file"),
        ("a directory", "is a directory; give the path of a file"),
        ("a FIFO", "is a FIFO (named pipe); it is left alone"),
        ("a link to a FIFO", "is a FIFO (named pipe); it is left alone"),
        ("a device", "is a device node; it is left alone"),
    ],
)
def test_an_output_that_is_not_a_new_or_regular_file_or_is_the_report_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], case: str, message: str
) -> None:
    report = write(tmp_path, {"profiles": [passing_float32()]})
    os.mkfifo(tmp_path / "fifo")
    (tmp_path / "report-link").symlink_to(report)
    (tmp_path / "fifo-link").symlink_to(tmp_path / "fifo")
    device = tmp_path / "null"
    if case == "a device":
        try:
            os.mknod(device, 0o666 | stat.S_IFCHR, os.makedev(1, 3))
        except OSError as e:
            pytest.skip(f"cannot create a device node here ({e})")
    output = {
        "the report": report,
        "a link to the report": tmp_path / "report-link",
        "empty": "",
        "a directory": tmp_path,
        "a FIFO": tmp_path / "fifo",
        "a link to a FIFO": tmp_path / "fifo-link",
        "a device": device,
    }[case]
    before = _state(tmp_path)
    assert plot.main([str(report), "-o", str(output)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message.format(report=report) in err, err
    assert _state(tmp_path) == before, "every file, link and node is left as it was"


def test_reading_a_fifo_or_a_device_is_refused_at_once(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    for source in (fifo, Path("/dev/zero")):
        done = subprocess.run(
            [sys.executable, "-m", "parity.frontends.plot", str(source), "-o", str(tmp_path / "p.png")],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=REPO,
        )
        assert done.returncode == 2, done.stderr
        want = f"error: {source}: not a regular file; pass the JSON file written by --parity-report\n"
        assert done.stderr == want
    assert not (tmp_path / "p.png").exists()
