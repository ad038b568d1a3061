"""Output paths: validated before any work, written atomically, and nothing but a regular file is replaced.

`--parity-report` once replaced a device node, a FIFO or a symlink with a regular file, found an
unwritable place only after the whole run, wrote `~/r.json` to `./~/r.json` and ignored an empty value.
These tests create the special files in tmp_path (never the system's) and check that each is left exactly
as it was, or that the report is written through the link.
"""

from __future__ import annotations

import json
import os
import re
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from front_ends import run_batch

from nanogpt.atomic import atomic_file, remove_stale_temporaries
from nanogpt.model import GPTConfig
from nanogpt.paths import OutputPathError, resolve_output_dir, resolve_output_file
from parity.frontends.report import ParityReport
from parity.subject.synthetic import CACHE_ENV_VAR, ensure_synthetic_checkpoint

REPO = Path(__file__).resolve().parents[1]
TINY = GPTConfig(block_size=32, vocab_size=97, n_layer=2, n_head=2, n_embd=16)


def fingerprint(path: Path) -> tuple[int, int, int, bytes]:
    """(file type and mode, inode, device id, contents or link target) of path, without following links."""
    st = os.lstat(path)
    if stat.S_ISREG(st.st_mode):
        data = path.read_bytes()
    elif stat.S_ISLNK(st.st_mode):
        data = os.readlink(path).encode()
    else:
        data = b""
    return st.st_mode, st.st_ino, st.st_rdev, data


def make_device_node(path: Path) -> None:
    """A character device like /dev/null, inside tmp_path; skip where mknod is not permitted."""
    try:
        os.mknod(path, 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    except (PermissionError, OSError) as e:
        pytest.skip(f"cannot create a device node here ({e})")


# ----------------------------------------------------------------------------------------------------------
# the validator


def test_new_and_existing_regular_files_are_accepted(tmp_path: Path) -> None:
    assert resolve_output_file(str(tmp_path / "new.json"), "--x") == tmp_path / "new.json"
    assert (
        resolve_output_file(str(tmp_path / "a" / "b" / "new.json"), "--x")
        == tmp_path / "a" / "b" / "new.json"
    )
    (tmp_path / "old.json").write_text("{}")
    assert resolve_output_file(str(tmp_path / "old.json"), "--x") == tmp_path / "old.json"
    assert not (tmp_path / "a").exists(), "validation must not create directories"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["old.json"], "the write probe left a file"


def test_tilde_is_expanded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    assert resolve_output_file("~/r.json", "--x") == tmp_path / "r.json"
    assert resolve_output_dir("~/out", "--x") == tmp_path / "out"


def test_symlink_resolves_to_its_target(tmp_path: Path) -> None:
    target = tmp_path / "real.json"
    target.write_text("old")
    (tmp_path / "link.json").symlink_to(target)
    (tmp_path / "dangling.json").symlink_to(tmp_path / "later.json")
    assert resolve_output_file(str(tmp_path / "link.json"), "--x") == target
    assert resolve_output_file(str(tmp_path / "dangling.json"), "--x") == tmp_path / "later.json"


@pytest.mark.parametrize(
    "kind, pattern",
    [
        ("empty", r"--x: empty value; give the path of a file"),
        ("blank", r"--x: empty value"),
        ("directory", r"--x .*: is a directory; give the path of a file"),
        ("fifo", r"--x .*: is a FIFO \(named pipe\); it is left alone, give the path of a regular file"),
        ("device", r"--x .*: is a device node; it is left alone"),
        ("link-to-fifo", r"is a FIFO"),
        ("under-a-file", r"--x .*: .*plain is a file, not a directory; choose a path inside a directory"),
        ("proc", r"--x /proc/r\.json: cannot write in /proc .*choose a writable location"),
        ("link-loop", r"--x .*loop.json"),
    ],
)
def test_bad_output_files_are_refused_and_left_alone(tmp_path: Path, kind: str, pattern: str) -> None:
    (tmp_path / "plain").write_text("mine")
    paths = {"empty": "", "blank": "  ", "directory": str(tmp_path), "proc": "/proc/r.json"}
    if kind in ("fifo", "link-to-fifo"):
        os.mkfifo(tmp_path / "fifo")
        paths["fifo"] = str(tmp_path / "fifo")
        (tmp_path / "link").symlink_to(tmp_path / "fifo")
        paths["link-to-fifo"] = str(tmp_path / "link")
    if kind == "device":
        make_device_node(tmp_path / "null")
        paths["device"] = str(tmp_path / "null")
    paths["under-a-file"] = str(tmp_path / "plain" / "r.json")
    if kind == "link-loop":
        (tmp_path / "loop.json").symlink_to(tmp_path / "loop.json")
        paths["link-loop"] = str(tmp_path / "loop.json")
    before = {p: fingerprint(p) for p in tmp_path.iterdir()}
    with pytest.raises(OutputPathError, match=pattern) as info:
        resolve_output_file(paths[kind], "--x")
    assert "\n" not in str(info.value)
    assert {p: fingerprint(p) for p in tmp_path.iterdir()} == before


def test_output_directories(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("mine")
    os.mkfifo(tmp_path / "fifo")
    assert resolve_output_dir(str(tmp_path / "new" / "deeper"), "--out_dir") == tmp_path / "new" / "deeper"
    assert resolve_output_dir(str(tmp_path), "--out_dir") == tmp_path
    with pytest.raises(OutputPathError, match=r"--out_dir .*file: is a file, not a directory"):
        resolve_output_dir(str(tmp_path / "file"), "--out_dir")
    with pytest.raises(OutputPathError, match=r"is a FIFO"):
        resolve_output_dir(str(tmp_path / "fifo"), "--out_dir")
    with pytest.raises(OutputPathError, match=r"--out_dir .*file/sub: .*file is a file, not a directory"):
        resolve_output_dir(str(tmp_path / "file" / "sub"), "--out_dir")
    with pytest.raises(OutputPathError, match=r"--out_dir: empty value; give the path of a directory"):
        resolve_output_dir("", "--out_dir")
    with pytest.raises(OutputPathError, match=r"cannot write in /proc"):
        resolve_output_dir("/proc/out", "--out_dir")


# ----------------------------------------------------------------------------------------------------------
# the atomic writer


def test_atomic_file_keeps_the_old_file_on_error_and_its_mode(tmp_path: Path) -> None:
    target = tmp_path / "f.txt"
    target.write_text("old")
    target.chmod(0o640)
    with pytest.raises(RuntimeError), atomic_file(target) as fh:
        fh.write("half")
        raise RuntimeError("killed")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["f.txt"], "the temporary was left behind"
    with atomic_file(target) as fh:
        fh.write("new")
    assert target.read_text() == "new" and stat.S_IMODE(target.stat().st_mode) == 0o640


def test_stale_temporaries_of_dead_writers_are_removed(tmp_path: Path) -> None:
    target = tmp_path / "ckpt.pt"
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    dead_pid = int(dead.stdout)
    stale = tmp_path / f".ckpt.pt.tmp-{dead_pid}-deadbeef"
    stale.write_bytes(b"half a checkpoint")
    live = tmp_path / f".ckpt.pt.tmp-{os.getppid()}-cafecafe"  # a running writer's: not ours to remove
    live.write_bytes(b"in progress")
    other = tmp_path / f".other.pt.tmp-{dead_pid}-deadbeef"
    other.write_bytes(b"another file's")
    assert remove_stale_temporaries(target) == [stale]
    with atomic_file(target, "wb") as fh:
        fh.write(b"complete")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["ckpt.pt", live.name, other.name])


def test_report_is_written_through_a_symlink(tmp_path: Path) -> None:
    target = tmp_path / "reports" / "r.json"
    target.parent.mkdir()
    target.write_text("old")
    link = tmp_path / "r.json"
    link.symlink_to(target)
    ParityReport({"device": "cpu"}).write(link)
    assert link.is_symlink() and os.readlink(link) == str(target)
    assert json.loads(target.read_text())["environment"]["device"] == "cpu"


# ----------------------------------------------------------------------------------------------------------
# `pytest parity/ --parity-report PATH`: refused before collection, or written through a link

# name: (the --parity-report value, regex of the one error line, or None when the run must succeed)
REPORT_CASES: dict[str, tuple[str, str | None]] = {
    "empty": ("", r"--parity-report: empty value"),
    "directory": ("{tmp}", r"--parity-report .*: is a directory"),
    "fifo": ("{tmp}/fifo", r"--parity-report .*fifo: is a FIFO"),
    "device": ("{tmp}/null", r"--parity-report .*null: is a device node"),
    "link-to-device": ("{tmp}/devlink", r"--parity-report .*devlink: is a device node"),
    "under-a-file": ("{tmp}/plain/r.json", r"plain is a file, not a directory"),
    "proc": ("/proc/r.json", r"--parity-report /proc/r\.json: cannot write in /proc"),
    "symlink": ("{tmp}/link.json", None),
    "tilde": ("~/tilde.json", None),
}


@pytest.fixture(scope="module")
def report_runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict, dict, dict]:
    """Every REPORT_CASES value through `pytest parity/ --co` in one subprocess; fingerprints before/after."""
    tmp = tmp_path_factory.mktemp("report-paths")
    good = ensure_synthetic_checkpoint(TINY, "tiny", root=tmp / "checkpoints")[0]
    os.mkfifo(tmp / "fifo")
    try:
        os.mknod(tmp / "null", 0o666 | stat.S_IFCHR, os.makedev(1, 3))
        (tmp / "devlink").symlink_to(tmp / "null")
    except OSError:
        pass  # the device cases are skipped below
    (tmp / "plain").write_text("mine")
    (tmp / "target.json").write_text("old report")
    (tmp / "link.json").symlink_to(tmp / "target.json")
    (tmp / "home").mkdir()
    before = {p.name: fingerprint(p) for p in tmp.iterdir() if p.name not in ("checkpoints", "home")}
    cases = {
        n: ["--co", "-q", "--model", str(good), "--parity-report", v.format(tmp=tmp)]
        for n, (v, _) in REPORT_CASES.items()
    }
    env = {**os.environ, CACHE_ENV_VAR: str(tmp / "cache"), "HOME": str(tmp / "home"), "OMP_NUM_THREADS": "1"}
    env.pop("PYTEST_ADDOPTS", None)
    results = run_batch("pytest", cases, env, tmp / "home" / "results.json", timeout=300)
    after = {p.name: fingerprint(p) for p in tmp.iterdir() if p.name in before}
    return tmp, results, before, after


@pytest.mark.parametrize("case", REPORT_CASES)
def test_parity_report_path(case: str, report_runs: tuple[Path, dict, dict, dict]) -> None:
    tmp, results, before, after = report_runs
    if "device" in case and "null" not in before:
        pytest.skip("device nodes cannot be created here")
    result, pattern = results[case], REPORT_CASES[case][1]
    output = str(result["output"])
    assert "Traceback" not in output and "INTERNALERROR" not in output, output[-3000:]
    unchanged = {k: v for k, v in before.items() if k != "target.json"}
    assert {k: after[k] for k in unchanged} == unchanged, "a file that is not the report changed"
    if pattern is None:
        assert result["rc"] == 0, output[-3000:]
        return
    assert result["rc"] == pytest.ExitCode.USAGE_ERROR, output[-3000:]
    assert len([line for line in output.splitlines() if re.search(pattern, line)]) == 1, output[-3000:]


def test_parity_report_written_through_the_link_and_tilde_expanded(
    report_runs: tuple[Path, dict, dict, dict],
) -> None:
    tmp, results, _, _ = report_runs
    assert results["symlink"]["rc"] == 0 and results["tilde"]["rc"] == 0
    assert (tmp / "link.json").is_symlink() and os.readlink(tmp / "link.json") == str(tmp / "target.json")
    assert "environment" in json.loads((tmp / "target.json").read_text())
    assert "environment" in json.loads((tmp / "home" / "tilde.json").read_text())
    assert not (REPO / "~").exists()


def test_cache_that_is_a_file_is_one_usage_error_before_any_model(tmp_path: Path) -> None:
    """NANOGPT_PARITY_CACHE pointing at a file: one line from pytest parity/ (exit 4) and the bisect command
    (exit 129), and the file is left as it was."""
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("mine\n")
    env = dict(os.environ, **{CACHE_ENV_VAR: str(blocker)})
    root = Path(__file__).resolve().parent.parent
    suite = subprocess.run(
        [sys.executable, "-m", "pytest", "parity/", "-q", "-p", "no:cacheprovider"],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert suite.returncode == 4, suite.stdout[-2000:] + suite.stderr[-2000:]
    assert f"{CACHE_ENV_VAR} {blocker}: is a file, not a directory" in suite.stderr + suite.stdout
    assert "Traceback" not in suite.stderr + suite.stdout
    bisect = subprocess.run(
        [sys.executable, "-m", "parity.frontends.bisect", "--checks", "param-count"],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert bisect.returncode == 129, bisect.stdout + bisect.stderr
    assert bisect.stderr.count("\n") == 1 and "is a file, not a directory" in bisect.stderr, bisect.stderr
    assert blocker.read_text() == "mine\n"


def test_the_report_is_never_the_impl_file_or_the_checkpoint(tmp_path: Path) -> None:
    """`--parity-report model.py` once replaced the user's model.py with JSON and exited 0: both front ends
    now refuse the --impl file (also through a link) and a file of the checkpoint before any work."""
    good = ensure_synthetic_checkpoint(TINY, "tiny", root=tmp_path / "checkpoints")[0]
    model = tmp_path / "model.py"
    model.write_text("# the user's model\n")
    (tmp_path / "link.json").symlink_to(model)
    cases = {
        "impl": (str(model), r"--parity-report .*model\.py: is --impl .*model\.py, which this command reads"),
        "link-to-impl": (str(tmp_path / "link.json"), r"is --impl .*model\.py, which this command reads"),
        "checkpoint": (str(good / "config.json"), r"is a file of the checkpoint .*, which this command"),
    }
    before = {p: fingerprint(p) for p in [model, tmp_path / "link.json", *good.iterdir()]}
    env = {**os.environ, CACHE_ENV_VAR: str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}
    env.pop("PYTEST_ADDOPTS", None)
    for front_end, rc in (("pytest", pytest.ExitCode.USAGE_ERROR), ("bisect", 129)):
        argv = {
            n: ["--impl", str(model), "--model", str(good), "--parity-report", value]
            + (["--co", "-q"] if front_end == "pytest" else ["--checks", "param-count"])
            for n, (value, _) in cases.items()
        }
        results = run_batch(front_end, argv, env, tmp_path / f"{front_end}.json", timeout=300)
        for name, (_, pattern) in cases.items():
            output = str(results[name]["output"])
            assert results[name]["rc"] == rc, f"{front_end} {name}: {output[-3000:]}"
            assert "Traceback" not in output, output[-3000:]
            lines = [line for line in output.splitlines() if re.search(pattern, line)]
            assert len(lines) == 1, output[-3000:]
    assert {p: fingerprint(p) for p in before} == before, "the implementation and checkpoint are unchanged"
