"""The own-loader check: the implementation's own loader, run offline against a hub cache of the checkpoint.

The cache is laid out as the hub lays it out (blobs named by sha256, snapshots of relative symlinks,
refs/main), found by huggingface_hub's own lookup, and visible only inside `offline_hub`. The check runs
in this process here, on the bisect command's small model; the corpus and the mutant catalog run it
through both front ends.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import huggingface_hub.constants
import pytest
import torch
from bisect_fixtures.variants import write_model

from nanogpt.hub import find_cached_snapshot
from parity.checks.check import run_check
from parity.checks.registry import CHECKS
from parity.core.errors import UsageError
from parity.core.verdicts import Status, Verdict
from parity.foreign.impl import import_implementation, reference_implementation
from parity.frontends.bisect import resolve_model
from parity.frontends.options import loader_spec
from parity.subject.hub_cache import build_hub_cache, hub_model_name, offline_hub
from parity.subject.subject import Subject
from parity.subject.targets import ParityTarget

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def small() -> ParityTarget:
    target = resolve_model("small", "cpu", None)
    target.ensure_checkpoint()
    return target


def own_loader(impl_path: Path | None, target: ParityTarget, loader: str | None = None) -> Verdict:
    impl = reference_implementation() if impl_path is None else import_implementation(impl_path)
    return run_check(CHECKS["own-loader"], Subject(impl, target, loader=loader))


def test_the_cache_is_laid_out_as_the_hub_lays_it_out(small: ParityTarget, tmp_path: Path) -> None:
    checkpoint = small.ensure_checkpoint()
    hub = build_hub_cache(checkpoint, small.config, tmp_path)
    assert hub.name == "gpt2" and hub.repos == ("openai-community/gpt2", "gpt2")
    for repo in hub.repos:
        folder = hub.cache / f"models--{repo.replace('/', '--')}"
        assert (folder / "refs" / "main").read_text() == hub.commit
        for name in ("config.json", "model.safetensors"):
            link = folder / "snapshots" / hub.commit / name
            digest = hashlib.sha256((checkpoint / name).read_bytes()).hexdigest()
            assert os.readlink(link) == str(Path("..", "..", "blobs", digest))
            assert (folder / "blobs" / digest).read_bytes() == (checkpoint / name).read_bytes()
    saved = (os.environ.get("HF_HUB_CACHE"), huggingface_hub.constants.HF_HUB_CACHE)
    with offline_hub(hub):
        assert find_cached_snapshot("gpt2") == hub.snapshot("openai-community/gpt2")
        assert os.environ["HF_HUB_OFFLINE"] == "1" and huggingface_hub.constants.HF_HUB_OFFLINE
    assert (os.environ.get("HF_HUB_CACHE"), huggingface_hub.constants.HF_HUB_CACHE) == saved


def test_a_checkpoint_of_no_gpt2_size_is_laid_out_under_gpt2_and_says_so(small: ParityTarget) -> None:
    name, note = hub_model_name(small.config)
    assert name == "gpt2" and "no GPT-2 size (2 layers, 2 heads, 64 wide, vocab 512)" in note


def test_the_references_and_the_templates_own_loaders_pass(small: ParityTarget, tmp_path: Path) -> None:
    for impl in (None, write_model(tmp_path / "template")):
        verdict = own_loader(impl, small)
        assert verdict.status is Status.PASS, verdict.details
        assert "GPT.from_pretrained('gpt2') loads offline" in verdict.reason
        assert "laid out under gpt2 with its own config" in verdict.reason


def test_a_crashing_loader_fails_with_its_exception_and_line(small: ParityTarget, tmp_path: Path) -> None:
    path = write_model(tmp_path / "crash", "mask-buffers", "loader-counts-mask-buffers")
    verdict = own_loader(path, small)
    assert verdict.status is Status.FAIL
    assert "GPT.from_pretrained('gpt2') raised AssertionError: mismatched keys: 29 != 33" in verdict.reason
    line = next(i for i, t in enumerate(path.read_text().splitlines(), 1) if "mismatched keys" in t)
    assert f", at {path.name}:{line} (`assert len(sd_keys_hf) == len(sd_keys)" in verdict.reason


def test_a_loader_that_breaks_the_tie_fails(small: ParityTarget, tmp_path: Path) -> None:
    verdict = own_loader(write_model(tmp_path / "untie", "loader-unties-head"), small)
    assert verdict.status is Status.FAIL
    assert "lm_head.weight equals transformer.wte.weight by value but is a separate tensor" in verdict.reason


def test_no_loader_is_not_applicable(small: ParityTarget, tmp_path: Path) -> None:
    path = write_model(tmp_path / "none")
    path.write_text(path.read_text().replace("def from_pretrained(", "def load_pretrained("))
    verdict = own_loader(path, small)
    assert verdict.status is Status.CANNOT_TEST and not verdict.applicable
    assert "has no loader of its own (no GPT.from_pretrained" in verdict.reason


LOADERS = """
import torch
from model import GPT


def load(name):
    return GPT.from_pretrained(name)


def load_c_proj_untransposed(name):
    model = GPT.from_pretrained(name)
    with torch.no_grad():
        w = model.transformer.h[1].attn.c_proj.weight
        w.copy_(w.t().clone())
    return model
"""


@pytest.mark.parametrize(
    "spec, passes",
    [
        ("loaders:load", True),
        ("model:GPT.from_pretrained", True),
        ("loaders:load_c_proj_untransposed", False),
    ],
)
def test_a_loader_named_by_option(small: ParityTarget, tmp_path: Path, spec: str, passes: bool) -> None:
    path = write_model(tmp_path / "named")
    (tmp_path / "named" / "loaders.py").write_text(LOADERS)
    verdict = own_loader(path, small, loader=loader_spec(spec))
    assert verdict.status is (Status.PASS if passes else Status.FAIL), verdict.details
    if passes:
        assert f"{spec.partition(':')[2]}('gpt2') loads offline" in verdict.reason
    else:
        assert "first differing tensor: transformer.h.1.attn.c_proj.weight" in verdict.details


@pytest.mark.parametrize("text", ["loaders", "loaders:", ":load", "a-b:load", "loaders:load()"])
def test_a_malformed_loader_option_is_refused(text: str) -> None:
    with pytest.raises(UsageError, match="write MODULE:FUNCTION"):
        loader_spec(text)


def test_the_loaded_model_runs_in_the_targets_dtype(small: ParityTarget, tmp_path: Path) -> None:
    verdict = own_loader(None, small)
    assert small.dtype == torch.float64 and verdict.records[0].atol == 1e-9
