"""The sandboxed child (parity/sandbox/parent.py): what it trusts, what it captures, how it reports an end.

The hostile corpus (tests/test_corpus.py) covers exits, hangs and a monkeypatched transformers through
the bisect command and `pytest parity/ --impl`; these tests cover the pieces directly: the fingerprint, a
forged result, the verdicts' round trip, -v.
"""

from __future__ import annotations

import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import transformers.activations
from bisect_fixtures.variants import model_source

from parity.core.compare import Comparison
from parity.core.exit_codes import EXIT_ABORT, EXIT_SKIP
from parity.core.verdicts import Status, Verdict
from parity.frontends.bisect import resolve_model, run
from parity.sandbox import integrity
from parity.sandbox.fingerprint import fingerprint_differs, hf_fingerprint
from parity.sandbox.parent import (
    SMALL_TIMEOUT_S,
    _describe_end,
    _verdicts_of,
    default_timeout,
    run_checks_in_child,
    target_message,
)
from parity.sandbox.witness import clean_witness, witness_differs

# Forward writes a forged PASS to every descriptor it may hold (the result pipe among them), then exits.
FORGE = """        import json, os
        forged = {"kind": "result", "nonce": "a guess", "fingerprints": [],
                  "verdicts": [{"check": "logits", "status": "PASS", "reason": "forged", "details": ""}]}
        for fd in range(3, 256):
            try:
                os.write(fd, (json.dumps(forged) + "\\n").encode())
            except OSError:
                pass
        os._exit(0)
"""
FORWARD_START = "        device = idx.device\n"
REPO_ROOT = Path(__file__).resolve().parents[1]


def test_fingerprint_sees_a_patched_gelu_and_ignores_the_default_dtype(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clean = hf_fingerprint()
    assert not fingerprint_differs(clean, hf_fingerprint())
    monkeypatch.setattr(torch, "get_default_dtype", torch.get_default_dtype)  # restored by monkeypatch
    torch.set_default_dtype(torch.float64)
    try:
        assert not fingerprint_differs(clean, hf_fingerprint())
    finally:
        torch.set_default_dtype(torch.float32)
    monkeypatch.setattr(
        transformers.activations.NewGELUActivation, "forward", lambda self, x: torch.nn.functional.gelu(x)
    )
    assert fingerprint_differs(clean, hf_fingerprint())
    assert fingerprint_differs(clean, "not a list") and fingerprint_differs(clean, clean[:-1])


def test_witness_of_the_target_sees_a_patch_at_its_width_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """A GELU patched only at the target's MLP width (256) escapes the tiny fingerprint, not the witness."""
    target = resolve_model("small", "cpu", None)
    clean_fingerprint, clean = hf_fingerprint(), clean_witness(target)
    assert not witness_differs(clean, clean_witness(target), "cpu")  # bit for bit on CPU
    own = transformers.activations.NewGELUActivation.forward
    monkeypatch.setattr(
        transformers.activations.NewGELUActivation,
        "forward",
        lambda self, x: torch.nn.functional.gelu(x) if x.shape[-1] == 256 else own(self, x),
    )
    assert not fingerprint_differs(clean_fingerprint, hf_fingerprint())
    assert witness_differs(clean, clean_witness(target), "cpu")
    assert witness_differs(clean, None, "cpu") and witness_differs(clean, clean[:-1], "cpu")
    assert witness_differs(clean, [*clean[:-1], "x"], "cpu")
    nudged = [clean[0] * (1 + 1e-7), *clean[1:]]
    assert witness_differs(clean, nudged, "cpu") and not witness_differs(clean, nudged, "cuda")


def test_integrity_sees_a_rebound_comparison_a_loosened_tolerance_and_a_patched_torch(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import parity.core.tolerances
    import parity.numerics.forward

    before = integrity.snapshot()
    assert integrity.changes(before) == []
    monkeypatch.setattr(parity.numerics.forward, "compare_chunked", lambda *a: None)
    monkeypatch.setitem(
        parity.core.tolerances.LOGITS, torch.float64, parity.core.tolerances.LOGITS[torch.float32]
    )
    monkeypatch.setattr(torch.Tensor, "abs", lambda self: self)  # shadows the C method: a name added
    monkeypatch.setattr(torch, "allclose", lambda *a, **k: True)
    assert integrity.changes(before, limit=10) == [
        "parity.core.tolerances.LOGITS[torch.float64]",
        "parity.numerics.forward.compare_chunked",
        "torch.Tensor (its names)",
        "torch.allclose",
    ]
    monkeypatch.undo()
    assert integrity.changes(before) == []


def test_a_forged_result_without_the_nonce_is_not_trusted(tmp_path: Path) -> None:
    impl = tmp_path / "model.py"
    impl.write_text(model_source().replace(FORWARD_START, FORWARD_START + FORGE))
    target = resolve_model("small", "cpu", None)
    result = run_checks_in_child(str(impl), False, target, ["logits", "grads"], True, SMALL_TIMEOUT_S)
    assert [v.status for v in result.verdicts] == [Status.CANNOT_TEST] * 2, result.verdicts
    assert "exited with status 0 during check logits without returning a verdict" in result.what_happened


def test_prints_are_captured_and_shown_only_with_v(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    impl = tmp_path / "model.py"
    impl.write_text(
        model_source().replace(FORWARD_START, FORWARD_START + '        print("spam from forward")\n')
    )
    assert run(["--impl", str(impl), "--checks", "logits", "--timeout", "120"]) == 0
    out = capsys.readouterr().out
    assert "spam from forward" not in out and re.search(
        r"the tested code printed \d+ line\(s\); -v shows them", out
    )
    assert run(["--impl", str(impl), "--checks", "logits", "-v"]) == 0
    out = capsys.readouterr().out
    assert re.search(
        r"captured output of the tested code \(\d+ lines\):\n"
        r"  \| number of parameters: 0.13M\n  \| spam from forward\n",
        out,
    )


def test_verdicts_come_back_whole_and_a_malformed_one_is_refused() -> None:
    """The child sends Verdict.to_json (records and profiles included); the parent rebuilds exactly that, and
    anything else in the result makes every check CANNOT-TEST."""
    record = Comparison(
        "logits", "logits[batch]", (2, 3), math.nan, 0.5, 1e-9, 1e-9, 6, 6, "NaN in it", False
    )
    profile = {
        "label": "batch",
        "modules": ["transformer.h.0.mlp"],
        "relative_difference": [None],
        "passed": False,
    }
    verdicts = [
        Verdict(
            "logits",
            Status.FAIL,
            "first divergence",
            "details",
            [record, replace(record, where=(1, 2))],
            [profile],
        ),
        Verdict("grads", Status.CANNOT_TEST, "crashed", ""),
    ]
    sent = json.loads(json.dumps({"verdicts": [v.to_json() for v in verdicts]}))  # NaN travels as NaN
    back = _verdicts_of(sent, ["grads", "logits"])
    as_text = lambda vs: json.dumps([v.to_json() for v in vs])  # noqa: E731  (NaN == NaN as text)
    assert back is not None and as_text(back) == as_text(verdicts)
    assert back[0].records[1].where == (1, 2) and math.isnan(back[0].records[0].max_abs)
    for corrupt in (
        lambda v: v.pop("records"),
        lambda v: v.update(status="GOOD"),
        lambda v: v.update(extra=1),
        lambda v: v.update(profiles=["a string"]),
        lambda v: v["records"][0].update(mismatched=True),
        lambda v: v["records"][0].update(shape="2x3"),
        lambda v: v["records"][0].pop("where"),
        lambda v: v["records"][0].update(max_abs="0.1"),
    ):
        bad = json.loads(json.dumps(sent))
        corrupt(bad["verdicts"][0])
        assert _verdicts_of(bad, ["grads", "logits"]) is None, bad
    assert _verdicts_of({"verdicts": "logits"}, ["logits"]) is None


def test_the_child_gets_an_absolute_checkpoint_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """--model DIR is relative to the caller's directory; the child runs in a temporary one."""
    monkeypatch.chdir(tmp_path)
    target = replace(resolve_model("small", "cpu", None), checkpoint=Path("my-checkpoint"))
    assert target_message(target)["checkpoint"] == str((tmp_path / "my-checkpoint").resolve())


def test_default_timeout_grows_with_the_model() -> None:
    small, gpt2, xl = (default_timeout(resolve_model(m, "cpu", None)) for m in ("small", "gpt2", "gpt2-xl"))
    assert small == SMALL_TIMEOUT_S < gpt2 < xl


def test_a_bad_timeout_aborts(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["--timeout", "0"]) == EXIT_ABORT
    assert "--timeout '0': give a positive number of seconds" in capsys.readouterr().err


def test_the_end_of_a_child_is_described_with_its_phase_and_last_output() -> None:
    assert _describe_end(-9, None, "check grads", "a\nb\n\nc\nd\n") == (
        "the tested code's process killed by signal SIGKILL during check grads; last output: b | c | d"
    )
    assert _describe_end(None, 5.0, "import", "").startswith(
        "the tested code's process timed out after 5 s during import"
    )
    assert EXIT_SKIP == 125


def test_interrupting_the_command_kills_the_child(tmp_path: Path, shared_dir: Path) -> None:
    """Ctrl-C reaches only the command (the child has its own session): the command must kill the child."""
    pid_file = shared_dir / "child.pid"
    hang = (
        # its PID outside the child's PID namespace: /proc/self of the harness's /proc
        f'        open({str(pid_file)!r}, "w").write(__import__("os").readlink("/proc/self"))\n'
        '        __import__("time").sleep(3600)\n'
    )
    impl = tmp_path / "model.py"
    impl.write_text(model_source().replace(FORWARD_START, FORWARD_START + hang))
    env = dict(
        os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))
    )
    command = [
        sys.executable,
        "-m",
        "parity.frontends.bisect",
        "--impl",
        str(impl),
        "--checks",
        "logits",
        "--timeout",
        "600",
    ]
    proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while not (pid_file.exists() and pid_file.read_text()) and time.monotonic() < deadline:
            time.sleep(0.5)
        child = int(pid_file.read_text())
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=60)
    finally:
        proc.kill()
    time.sleep(1)
    with pytest.raises(ProcessLookupError):
        os.kill(child, 0)
