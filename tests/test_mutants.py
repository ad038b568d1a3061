"""The parity checks catch real bugs: every mutant of tests/mutants.py is killed by the check it names.

Each mutant is loaded through the production loader from a tiny synthetic checkpoint and compared with
transformers' GPT2LMHeadModel from the same directory. A mutant passes its test only when the named check
fails *and* its message names the cause; the correct controls must pass every check. The kill rate is
printed at the end of the run ("mutant kill rate: N/N (100%)", see tests/conftest.py) and must stay 100%.
"""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch
from mutants import CHECKS, CONFIGS, CONTROLS, MUTANTS, Mutant, verdicts_for

from parity.loading import load_hf
from parity.synthetic import ensure_synthetic_checkpoint

pytestmark = pytest.mark.usefixtures("one_thread")

# The bug classes the catalog must keep covering: deleting a mutant to keep the kill rate at 100% fails here.
REQUIRED = {
    "head-not-tied",
    "tie-wrong-direction",
    "head-tied-to-wpe",
    "head-tied-to-copy",
    "c_proj-not-transposed",
    "c_fc-not-transposed",
    "c_attn-reshaped-not-transposed",
    "qkv-split-order",
    "exact-gelu",
    "layernorm-eps-1e-6",
    "attn-scale-missing",
    "attn-scale-1/head_dim",
    "causal-mask-off-by-one",
    "causal-mask-missing",
    "attn-bias-dropped",
    "mlp-bias-dropped",
    "positions-not-added",
    "ln_f-missing",
    "dropout-in-eval",
    "tied-in-two-groups",
    "tied-twice-in-decay-group",
    "parameters-count-tie-twice",
    "num-params-count-tie-twice",
    "lm_head-bias",
    "padding-not-cropped",
}


class Catalog:
    """Synthetic checkpoints and Hugging Face models per catalog config, made on first use and kept."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.hf_models: dict[str, Any] = {}

    def checkpoint(self, config: str) -> Path:
        """The synthetic checkpoint directory of a catalog config."""
        return ensure_synthetic_checkpoint(CONFIGS[config], config, root=self.root)[0]

    def failing_checks(self, entry: Mutant) -> dict[str, str]:
        """The checks that fail on entry, with their messages (the HF model is shared: checks leave it as is)."""
        if entry.config not in self.hf_models:
            self.hf_models[entry.config] = load_hf(self.checkpoint(entry.config), torch.float64, "cpu")
        verdicts = verdicts_for(entry, self.checkpoint(entry.config), self.hf_models[entry.config])
        return {check: message for check, message in verdicts.items() if message}


@pytest.fixture(scope="session")
def catalog(tmp_path_factory: pytest.TempPathFactory) -> Catalog:
    """The session's checkpoints and Hugging Face models, in its temporary directory."""
    return Catalog(tmp_path_factory.mktemp("mutant-checkpoints"))


def assert_killed(mutant: Mutant, failed: dict[str, str]) -> None:
    """The mutant's own check failed and its message names the cause."""
    assert failed, f"mutant {mutant.name} SURVIVED every check: {mutant.bug}"
    assert mutant.killed_by in failed, (
        f"mutant {mutant.name} ({mutant.bug}) was killed by {sorted(failed)}, not by {mutant.killed_by!r}"
    )
    message = failed[mutant.killed_by]
    assert re.search(mutant.cause, message, re.S), (
        f"the {mutant.killed_by} check killed {mutant.name} but its message does not name the cause "
        f"(expected /{mutant.cause}/):\n{message}"
    )


@pytest.mark.parametrize("mutant", MUTANTS, ids=[m.name for m in MUTANTS])
def test_mutant_is_killed_by_its_check_which_names_the_cause(
    mutant: Mutant, catalog: Catalog, record_property: Any
) -> None:
    failed = catalog.failing_checks(mutant)
    # Read by the kill-rate summary in tests/conftest.py (user properties survive pytest-xdist workers).
    record_property("mutant", mutant.name)
    record_property("mutant_killed_by", ",".join(sorted(failed)))
    assert_killed(mutant, failed)


@pytest.mark.parametrize("control", CONTROLS, ids=[c.name for c in CONTROLS])
def test_correct_variant_passes_every_check(control: Mutant, catalog: Catalog) -> None:
    failed = catalog.failing_checks(control)
    assert not failed, f"false alarm on the correct variant {control.name}:\n" + "\n".join(failed.values())


WIDE = {"tiny": "wide", "square": "wide-square"}


@pytest.mark.slow
@pytest.mark.parametrize("entry", MUTANTS + CONTROLS, ids=[m.name for m in MUTANTS + CONTROLS])
def test_catalog_at_gpt2_width(entry: Mutant, catalog: Catalog) -> None:
    """The same verdicts at GPT-2's width (768 channels, 12 heads), where rounding is larger."""
    wide = replace(entry, config=WIDE[entry.config])
    failed = catalog.failing_checks(wide)
    if entry in CONTROLS:
        assert not failed, f"false alarm on the correct variant {entry.name}:\n" + "\n".join(failed.values())
    else:
        assert_killed(wide, failed)


def test_catalog_covers_every_required_bug_and_names_real_checks() -> None:
    names = [m.name for m in MUTANTS]
    assert len(names) == len(set(names)), "mutant names must be unique"
    assert REQUIRED <= set(names), f"catalog lost mutants: {sorted(REQUIRED - set(names))}"
    for m in MUTANTS:
        assert m.killed_by in CHECKS, f"{m.name}: unknown check {m.killed_by!r}"
        assert m.cause, f"{m.name}: a mutant must say what its killing message names"
        assert m.bug, f"{m.name}: a mutant must document its bug in a docstring"
