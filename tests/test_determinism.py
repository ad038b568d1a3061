"""Determinism and independence: the same inputs give the same verdicts, in any order and in parallel.

Two runs of the parity checks report identical errors, in process, and as two `pytest parity/` runs writing
JSON reports, one of them in reverse order on two pytest-xdist workers (with the mutant catalog alongside);
synthetic checkpoints are byte-identical for a seed across processes; and the root conftest's autouse
fixture really puts back the global torch state a test changes. Everything runs on a tiny checkpoint in
tmp_path.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import re
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from nanogpt.model import GPTConfig
from parity.numerics.forward import compare_logits
from parity.numerics.gradients import compare_gradient_decomposition, compare_gradients
from parity.subject.batches import BATCH_KINDS, gradient_batch, token_batch
from parity.subject.loading import load_hf, load_reference
from parity.subject.synthetic import CACHE_ENV_VAR, checkpoint_name, ensure_synthetic_checkpoint

pytestmark = pytest.mark.usefixtures("one_thread")

REPO = Path(__file__).resolve().parents[1]
TINY = GPTConfig(block_size=32, vocab_size=97, n_layer=2, n_head=2, n_embd=16)
SUBPROCESS_TIMEOUT = 300  # seconds; a hung child must fail the test, not the CI job


def run(args: list[str], tmp: Path, **env: str) -> subprocess.Popen[str]:
    """Start a child process in the repository root, with caches pointed into tmp."""
    # One thread per child: tiny models gain nothing from more, and parallel children must not oversubscribe
    # the cores (OpenMP threads spin-waiting for each other slow a 2-core machine down several-fold).
    child_env = {**os.environ, CACHE_ENV_VAR: str(tmp / "parity-cache"), "HF_HOME": str(tmp / "hf")}
    child_env.update(OMP_NUM_THREADS="1", **env)
    child_env.pop("PYTEST_ADDOPTS", None)
    child_env.pop("HYPOTHESIS_PROFILE", None)
    return subprocess.Popen(
        args, cwd=REPO, env=child_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def finish(proc: subprocess.Popen[str]) -> tuple[int, str]:
    """Wait for a child; its return code and output."""
    try:
        out, _ = proc.communicate(timeout=SUBPROCESS_TIMEOUT)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
        pytest.fail(f"{proc.args} did not finish in {SUBPROCESS_TIMEOUT} s:\n{out[-3000:]}")
    return proc.returncode, out


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny synthetic GPT-2 checkpoint directory."""
    return ensure_synthetic_checkpoint(TINY, "tiny", root=tmp_path_factory.mktemp("determinism"))[0]


def all_records(checkpoint: Path) -> list[dict[str, Any]]:
    """Every comparison record of the logits and gradient checks, from freshly loaded models."""
    ours = load_reference(checkpoint, torch.float64, "cpu")
    theirs = load_hf(checkpoint, torch.float64, "cpu")
    records = [compare_logits(ours, theirs, token_batch(k, TINY), TINY.n_layer, k) for k in BATCH_KINDS]
    idx, targets = gradient_batch(TINY)
    records += compare_gradients(ours, theirs, idx, targets, TINY.vocab_size)
    records.append(compare_gradient_decomposition(ours, idx, targets))
    return [r.to_json() for r in records]


def test_two_in_process_runs_report_identical_errors(tiny_checkpoint: Path) -> None:
    first, second = all_records(tiny_checkpoint), all_records(tiny_checkpoint)
    assert len(first) > len(BATCH_KINDS)
    assert first == second


REVERSE_ORDER_PLUGIN = textwrap.dedent(
    """
    def pytest_collection_modifyitems(items):
        items.reverse()
    """
)


def test_parity_reports_are_identical_serial_and_on_two_xdist_workers_in_reverse_order(
    tiny_checkpoint: Path, tmp_path: Path
) -> None:
    """Two `pytest parity/` runs write the same records: one serial, one reversed on two xdist workers.

    The parallel run also carries the mutant catalog, whose session fixtures share models across tests:
    it must pass there too, and its kill-rate summary must survive the workers.
    """
    pytest.importorskip("xdist")
    (tmp_path / "reverse_order.py").write_text(REVERSE_ORDER_PLUGIN)
    serial, parallel = tmp_path / "serial.json", tmp_path / "parallel.json"
    common = ["-p", "no:cacheprovider", "-p", "no:randomly", "--model", str(tiny_checkpoint)]
    procs = [
        run(
            [sys.executable, "-m", "pytest", "parity/", "-q", *common, "--parity-report", str(serial)],
            tmp_path,
        ),
        # Two catalog entries (the whole catalog runs in tests/test_mutants.py): the session fixture they
        # share and the kill-rate summary must work on xdist workers.
        run(
            [
                sys.executable,
                "-m",
                "pytest",
                "parity/",
                "tests/test_mutants.py",
                "-p",
                "xdist",
                "-n",
                "2",
                "-k",
                "test_check or hugging or untied or exact-gelu or reference-padded",
                "-p",
                "reverse_order",
                *common,
                "--parity-report",
                str(parallel),
            ],
            tmp_path,
            PYTHONPATH=os.pathsep.join(filter(None, [str(tmp_path), os.environ.get("PYTHONPATH")])),
        ),
    ]
    outputs = []
    for proc in procs:
        rc, out = finish(proc)
        assert rc == 0, out[-4000:]
        outputs.append(out)
    assert "created: 2/2 workers" in outputs[1], outputs[1][-2000:]
    assert re.search(r"mutant kill rate: (\d+)/\1 \(100%\)", outputs[1]), "kill rate lost under xdist"
    a, b = (json.loads(r.read_text()) for r in (serial, parallel))
    assert a["records"], "the parity run recorded no comparisons"
    assert {c["check"] for c in a["checks"]} >= {"logits", "grads", "tied-storage", "train-steps"}, a[
        "checks"
    ]
    assert a["records"] == b["records"]
    assert a["checks"] == b["checks"]
    assert a["environment"] == b["environment"]


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


GENERATE = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from nanogpt.model import GPTConfig
    from parity.subject.synthetic import ensure_synthetic_checkpoint
    config = GPTConfig(block_size=32, vocab_size=97, n_layer=2, n_head=2, n_embd=16)
    ensure_synthetic_checkpoint(config, "tiny", seed=int(sys.argv[2]), root=Path(sys.argv[1]))
    """
)


def test_synthetic_checkpoints_are_byte_identical_across_processes(tmp_path: Path) -> None:
    roots = {name: tmp_path / name for name in ("process-1", "process-2", "other-seed")}
    seeds = {"process-1": 1337, "process-2": 1337, "other-seed": 1338}
    procs = [run([sys.executable, "-c", GENERATE, str(roots[n]), str(seeds[n])], tmp_path) for n in roots]
    for proc in procs:
        rc, out = finish(proc)
        assert rc == 0, out[-3000:]
    here = ensure_synthetic_checkpoint(TINY, "tiny", seed=1337, root=tmp_path / "this-process")[0]
    files = {n: roots[n] / checkpoint_name("tiny", seeds[n]) for n in roots}
    for f in ("model.safetensors", "config.json"):
        digests = {_sha256(files["process-1"] / f), _sha256(files["process-2"] / f), _sha256(here / f)}
        assert len(digests) == 1, f"{f} differs between processes for the same seed"
    assert _sha256(files["other-seed"] / "model.safetensors") != _sha256(here / "model.safetensors")


def _fixture_function(request: pytest.FixtureRequest, name: str) -> Any:
    """The plain generator function behind a fixture of the root conftest.py."""
    for plugin in request.config.pluginmanager.get_plugins():
        if getattr(plugin, "__file__", None) == str(REPO / "conftest.py"):
            fixture = getattr(plugin, name)
            unwrap = getattr(fixture, "_get_wrapped_function", None)  # pytest >= 8.4 wraps fixture functions
            return unwrap() if unwrap else getattr(fixture, "__wrapped__", fixture)
    raise LookupError(f"no root conftest.py plugin with {name}")


def _global_state() -> dict[str, Any]:
    return {
        "dtype": torch.get_default_dtype(),
        "threads": torch.get_num_threads(),
        "deterministic": torch.are_deterministic_algorithms_enabled(),
        "warn_only": torch.is_deterministic_algorithms_warn_only_enabled(),
        "grad": torch.is_grad_enabled(),
        "torch_rng": torch.get_rng_state(),
        "numpy_rng": np.random.get_state()[1].copy(),
        "python_rng": random.getstate(),
    }


def test_autouse_fixture_restores_global_torch_state(request: pytest.FixtureRequest) -> None:
    guard = _fixture_function(request, "restore_torch_global_state")()
    before = _global_state()
    next(guard)
    torch.set_default_dtype(torch.float64 if before["dtype"] != torch.float64 else torch.float32)
    torch.set_num_threads(1 if before["threads"] != 1 else 2)
    torch.use_deterministic_algorithms(not before["deterministic"], warn_only=not before["warn_only"])
    torch.set_grad_enabled(not before["grad"])
    torch.rand(3)
    np.random.rand(3)
    random.random()
    changed = _global_state()
    with contextlib.suppress(StopIteration):
        next(guard)
    after = _global_state()
    for key in before:
        assert not _equal(changed[key], before[key]), f"the test failed to change {key}"
        assert _equal(after[key], before[key]), f"{key} was not restored"


def _equal(a: Any, b: Any) -> bool:
    if isinstance(a, torch.Tensor):
        return torch.equal(a, b)
    if isinstance(a, np.ndarray):
        return bool(np.array_equal(a, b))
    return a == b
