"""A known departure is named in one line and can be set aside: exact vs tanh GELU and --hf-activation gelu.

Upstream nanoGPT's `nn.GELU()` is the exact GELU, GPT-2's the tanh approximation. On the exact-GELU
template (tests/bisect_fixtures/variants.py), logits FAIL with one line that names the departure and the
option; with `--hf-activation gelu`, Hugging Face's model is built with the same GELU and everything else
(logits, grads, the tie, the architecture) passes, in both front ends. The reverse (GPT-2's GELU against a
Hugging Face model built with the exact one) says to drop the option.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from bisect_fixtures.variants import write_model
from front_ends import report_verdicts, run_pytest_parity

from nanogpt.model import GPTConfig
from parity.core.tolerances import logits_tolerance
from parity.frontends.bisect import run as bisect_run
from parity.numerics.diagnose import first_divergence
from parity.subject.batches import token_batch
from parity.subject.loading import load_hf, load_reference
from parity.subject.synthetic import ensure_synthetic_checkpoint

pytestmark = pytest.mark.usefixtures("one_thread")
pytest_plugins = ["pytester"]

KNOWN = "first divergence at transformer.h.0.mlp: a known departure: the MLP computes the exact GELU"
CHECKS = ("logits", "grads", "tied-storage", "architecture")


def _bisect(tmp_path: Path, impl: Path, *extra: str) -> tuple[int, dict[str, tuple[str, str, str]]]:
    report = tmp_path / f"report{len(extra)}.json"
    argv = ["--impl", str(impl), "--checks", ",".join(CHECKS), "--parity-report", str(report), *extra]
    code = bisect_run(argv)
    return code, report_verdicts(json.loads(report.read_text()))


def test_the_exact_gelu_fails_logits_with_one_line_and_passes_with_hf_activation_gelu(tmp_path: Path) -> None:
    impl = write_model(tmp_path, "exact-gelu")
    code, verdicts = _bisect(tmp_path, impl)
    status, reason, _ = verdicts["logits"]
    assert code == 1 and status == "FAIL" and reason.startswith(KNOWN), reason
    assert "--hf-activation gelu" in reason and "\n" not in reason and "suspect" not in reason, reason
    assert "a known departure" in verdicts["architecture"][1]
    code, verdicts = _bisect(tmp_path, impl, "--hf-activation", "gelu")
    assert code == 0 and {c: v[0] for c, v in verdicts.items()} == dict.fromkeys(CHECKS, "PASS"), verdicts


def test_the_pytest_front_end_takes_hf_activation_too(tmp_path: Path, pytester: pytest.Pytester) -> None:
    impl = write_model(tmp_path, "exact-gelu")
    report = tmp_path / "r.json"
    only = ("-k", " or ".join(CHECKS), "--hf-activation", "gelu")
    code, text, data = run_pytest_parity(pytester, impl, Path("small"), report, *only, verbose=True)
    assert code == 0, text[-3000:]
    assert {c: v[0] for c, v in report_verdicts(data).items()} == dict.fromkeys(CHECKS, "PASS")
    assert "activation_function=gelu (--hf-activation)" in text, "the header says what was set aside"


def test_gpt2s_gelu_against_an_exact_gelu_hugging_face_says_to_drop_the_option(tmp_path: Path) -> None:
    config = GPTConfig(block_size=32, vocab_size=97, n_layer=2, n_head=2, n_embd=16)
    path, _ = ensure_synthetic_checkpoint(config, "departure", root=tmp_path)
    reference = load_reference(path, torch.float64, "cpu")
    hf = load_hf(path, torch.float64, "cpu", activation="gelu")
    idx = token_batch("several_sequences", config)
    where, _ = first_divergence(reference, hf, idx, config.n_layer, logits_tolerance(torch.float64))
    assert where.startswith("first divergence at transformer.h.0.mlp: the MLP computes GPT-2's tanh GELU")
    assert "drop --hf-activation" in where
