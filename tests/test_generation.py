"""The inference check's sampling comparison (parity/checks/generation.py) on tiny models, no front end.

A nanoGPT model and HF's GPT2LMHeadModel holding the same weights: the reference's own generate samples
from HF's distribution; a generate with a bug in its temperature or its crop FAILs naming the cause; a
signature without top_k, or a sampler that never calls torch.multinomial, is CANNOT-TEST with the reason;
the recorder answers the most probable token; the model's class is restored even when generate raises.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from mutant_models import ContextCroppedToFirstBlock, SamplingGPT, TemperatureMultiplied
from mutants import MUTANTS, implementation_file
from transformers import GPT2LMHeadModel

from nanogpt.hf import nanogpt_to_hf_state_dict
from nanogpt.model import GPT
from parity.checks.check import run_check
from parity.checks.generation import SamplingRecorder, _sampling_kwargs, sampled_generation, users_class
from parity.checks.registry import CHECKS
from parity.core.compare import ParityFailure
from parity.core.errors import CannotTest
from parity.core.verdicts import Status
from parity.foreign.adapters import adapted_class
from parity.foreign.impl import import_implementation, reference_implementation
from parity.subject.subject import Subject
from parity.subject.targets import ParityTarget

MUTANTS_BY_NAME = {m.name: m for m in MUTANTS}


def _pair(
    make_gpt: Callable[..., GPT], make_hf_gpt2: Callable[..., GPT2LMHeadModel], cls: type[GPT] = GPT
) -> tuple[GPT, GPT2LMHeadModel]:
    """The implementation (cls, adapted as the harness adapts it) and HF's model with the same weights."""
    model = make_gpt()
    model.__class__ = adapted_class(cls)
    hf = make_hf_gpt2()
    hf.load_state_dict(nanogpt_to_hf_state_dict(model), strict=False)
    return model, hf


def test_reference_generate_samples_from_hfs_distribution(
    make_gpt: Callable[..., GPT], make_hf_gpt2: Callable[..., GPT2LMHeadModel]
) -> None:
    model, hf = _pair(make_gpt, make_hf_gpt2)
    records, summary = sampled_generation(model, hf, model.config, torch.float64)
    assert len(records) >= 3 and all(r.passed for r in records), summary
    assert "past block_size" in summary


@pytest.mark.parametrize(
    ("cls", "cause"),
    [
        (TemperatureMultiplied, "multiplies the logits"),
        (ContextCroppedToFirstBlock, "first 32 tokens, not the last"),
    ],
)
def test_a_sampling_bug_fails_naming_it(
    make_gpt: Callable[..., GPT], make_hf_gpt2: Callable[..., GPT2LMHeadModel], cls: type[GPT], cause: str
) -> None:
    model, hf = _pair(make_gpt, make_hf_gpt2, cls)
    with pytest.raises(ParityFailure, match=cause):
        sampled_generation(model, hf, model.config, torch.float64)
    assert type(model).__mro__[1] is cls, "the adapted class is restored after the call"


class ArgmaxSampler(SamplingGPT):
    """Greedy whatever the temperature and top-k: it never calls torch.multinomial."""

    def generate(
        self, idx: torch.Tensor, max_new_tokens: int, temperature: float = 1.0, top_k: Any = None
    ) -> torch.Tensor:
        for _ in range(max_new_tokens):
            logits = self(idx[:, -self.config.block_size :], last_only=True)[0][:, -1, :] / temperature
            idx = torch.cat([idx, logits.argmax(-1, keepdim=True)], dim=1)
        return idx


class NoTopK(GPT):
    """A generate that takes a temperature only."""

    def generate(self, idx: torch.Tensor, max_new_tokens: int, temperature: float = 1.0) -> torch.Tensor:
        return idx


def test_unreadable_sampling_is_cannot_test_with_the_reason(
    make_gpt: Callable[..., GPT], make_hf_gpt2: Callable[..., GPT2LMHeadModel]
) -> None:
    model, hf = _pair(make_gpt, make_hf_gpt2, ArgmaxSampler)
    with pytest.raises(CannotTest, match="never called torch.multinomial"):
        sampled_generation(model, hf, model.config, torch.float64)
    model, hf = _pair(make_gpt, make_hf_gpt2, NoTopK)
    with pytest.raises(CannotTest, match="takes no top_k argument"):
        sampled_generation(model, hf, model.config, torch.float64)


def test_signature_adapts_to_mingpt_and_other_names() -> None:
    def mingpt(self, idx, max_new_tokens, temperature=1.0, do_sample=False, top_k=None): ...
    def renamed(self, idx, n, temp=1.0, topk=None): ...

    prompt = torch.zeros(1, 2, dtype=torch.long)
    assert _sampling_kwargs(mingpt, prompt, 3, 0.7, 5) == {"temperature": 0.7, "top_k": 5, "do_sample": True}
    assert _sampling_kwargs(renamed, prompt, 3, 0.7, 5) == {"temp": 0.7, "topk": 5}


def test_recorder_keeps_the_probabilities_and_answers_the_most_probable_token() -> None:
    probs = torch.tensor([[0.1, 0.6, 0.3], [0.5, 0.2, 0.3]])
    recorder = SamplingRecorder()
    with recorder:
        chosen = torch.multinomial(probs, num_samples=1)
        again = probs.multinomial(1)
    assert chosen.tolist() == [[1], [0]] and again.tolist() == [[1], [0]]
    assert len(recorder.probs) == 2 and torch.equal(recorder.probs[0], probs)


def test_users_class_is_restored_when_generate_raises(make_gpt: Callable[..., GPT]) -> None:
    model = make_gpt()
    adapted = adapted_class(GPT)
    model.__class__ = adapted
    with pytest.raises(RuntimeError), users_class(model) as own:
        assert type(own) is GPT
        raise RuntimeError("inside generate")
    assert type(model) is adapted


def test_sampling_runs_on_the_narrow_twin_where_the_plan_says(extras_on_twin: ParityTarget) -> None:
    subject = Subject(reference_implementation(), extras_on_twin)
    verdict = run_check(CHECKS["inference"], subject)
    assert verdict.status is Status.PASS, verdict.reason
    assert "sampled steps of its own generate" in verdict.reason and "on the narrow twin" in verdict.reason


def test_a_sampling_bug_on_the_twin_fails_saying_where(extras_on_twin: ParityTarget, tmp_path: Path) -> None:
    impl = import_implementation(implementation_file(MUTANTS_BY_NAME["temperature-multiplied"], tmp_path))
    verdict = run_check(CHECKS["inference"], Subject(impl, extras_on_twin))
    assert verdict.status is Status.FAIL
    assert "on the narrow twin" in verdict.reason and "multiplies the logits" in verdict.reason


@pytest.mark.usefixtures("twin_cannot_be_built")
def test_sampling_falls_back_to_the_loaded_models_without_a_twin(extras_on_twin: ParityTarget) -> None:
    verdict = run_check(CHECKS["inference"], Subject(reference_implementation(), extras_on_twin))
    assert verdict.status is Status.PASS, verdict.reason
    assert "sampled steps of its own generate" in verdict.reason and "narrow twin" not in verdict.reason


def test_greedy_generation_runs_on_the_narrow_twin_where_the_plan_says(extras_on_twin: ParityTarget) -> None:
    verdict = run_check(CHECKS["inference"], Subject(reference_implementation(), extras_on_twin))
    assert verdict.status is Status.PASS, verdict.reason
    assert "greedy tokens by its own generate(top_k=1) on the narrow twin equal" in verdict.reason


def test_a_greedy_bug_on_the_twin_fails_saying_where(extras_on_twin: ParityTarget, tmp_path: Path) -> None:
    mutant = MUTANTS_BY_NAME["last-only-gives-first-position"]
    impl = import_implementation(implementation_file(mutant, tmp_path))
    verdict = run_check(CHECKS["inference"], Subject(impl, extras_on_twin))
    assert verdict.status is Status.FAIL, verdict.reason
    assert "on the narrow twin" in verdict.reason and "greedy continuation" in verdict.reason, verdict.reason
