"""Forward checks: logits, the implementation's own loss, and inference (generation).

Each returns an `Outcome` with its comparison records or raises `ParityFailure` naming the cause; a
failure of the logits or the loss runs the first-divergence diagnosis (parity/numerics/diagnose.py), so
the first failure a user sees under `-x` already says which module to suspect.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from parity.checks.check import Check
from parity.checks.generation import greedy_generate, near_tie, own_generate, sampled_generation
from parity.checks.ignored_targets import ignored_targets
from parity.core.compare import Comparison, ParityFailure, compare_tensors
from parity.core.outputs import split_output
from parity.core.tolerances import logits_tolerance
from parity.core.verdicts import Outcome
from parity.numerics.diagnose import difference_profile, profile_record
from parity.numerics.forward import compare_logits, hf_last_logits, loss_comparison
from parity.subject.batches import gradient_batch, token_batch
from parity.subject.subject import Subject, found_on, on_twin, twin_clause

# Batches compared by the logits check besides the gradient batch, whose logits the shared forward +
# backward already compared (parity/numerics/gradients.py): one token, a full block, the GPT-2 sentence.
LOGITS_BATCHES = ("length_1", "full_block", "sentence")
# Compared on the narrow twin where the memory plan keeps long extra passes there: at gpt2 in float64 the
# full block's forward of both models is 10 s, two thirds of the default run's time yardstick.
TWIN_BATCHES = ("full_block",)
# Greedy continuation of the inference check: a short prompt of the sentence, then this many new tokens.
PROMPT_TOKENS = 8
NEW_TOKENS = 8


def _diagnosed(subject: Subject, idx: torch.Tensor, label: str) -> str:
    """The logits check's diagnosis on idx (first diverging module), or "" when the logits match.

    Kept on the subject: the logits and the loss checks both ask for the gradient batch's diagnosis when
    the shared forward differs, and each costs several forward passes of both models.
    """
    if label not in subject.diagnoses:
        try:
            compare_logits(subject.model(), subject.hf(), idx, subject.config.n_layer, label)
            subject.diagnoses[label] = ""
        except ParityFailure as e:
            subject.diagnoses[label] = str(e).removeprefix("[logits] ")
    return subject.diagnoses[label]


def _profile(
    subject: Subject, models: tuple[nn.Module, Any, int], idx: torch.Tensor, label: str, passed: bool
) -> list[dict[str, Any]]:
    """The per-module difference profile of one batch on (implementation, HF, n_layer), for the report
    (empty when the shapes differ, or when no report asks for profiles)."""
    if not subject.profiles:
        return []
    model, hf, n_layer = models
    dtype = subject.dtype
    try:
        profile = difference_profile(model, hf, idx, n_layer)
    except Exception:  # noqa: BLE001 - a profile is a picture of a comparison, never a verdict
        return []
    return [profile_record(label, profile, dtype, logits_tolerance(dtype), passed)]


def logits_check(subject: Subject) -> Outcome:
    """Logits of four batches against Hugging Face's (tie_word_embeddings=True)."""
    model, hf = subject.model(), subject.hf()
    run = subject.gradient_run()
    records: list[Comparison] = []
    found = run.logits
    idx = gradient_batch(subject.config)[0].to(subject.device)
    passed = not isinstance(found, ParityFailure) and found.passed
    loaded = (model, hf, subject.config.n_layer)
    profiles = _profile(subject, loaded, idx, "logits[gradient batch]", passed)
    if not passed:
        diagnosis = _diagnosed(subject, idx, "gradient batch")
        summary = (
            str(found).removeprefix("[logits] ") if isinstance(found, ParityFailure) else found.summary()
        )
        raise ParityFailure(
            f"[logits] {diagnosis or summary}", [] if isinstance(found, ParityFailure) else [found], profiles
        )
    records.append(found)
    twin, twinned = subject.extras_twin(), []
    for kind in LOGITS_BATCHES:
        narrow = twin if kind in TWIN_BATCHES else None
        on = loaded if narrow is None else (narrow.model, narrow.hf, narrow.config.n_layer)
        ours, theirs, n_layer = on
        idx = token_batch(kind, subject.config if narrow is None else narrow.config).to(subject.device)
        try:
            records.append(compare_logits(ours, theirs, idx, n_layer, kind))
        except ParityFailure as e:
            more = _profile(subject, on, idx, f"logits[{kind}]", False)
            message = str(e) if narrow is None else on_twin(str(e), narrow, "logits")
            raise ParityFailure(message, records + e.records, profiles + more) from None
        if narrow is not None:
            records[-1].tensor += " (narrow twin)"
            twinned.append(kind.replace("_", " "))
    worst = max(r.max_abs for r in records)
    worst_norm = max(r.rel_norm for r in records)
    twin_note = f"; the {', '.join(twinned)} {twin_clause(twin.config, twin.why)}" if twin and twinned else ""
    return Outcome(
        f"{len(records)} batches match Hugging Face (tied); max abs diff {worst:.1e}, relative difference "
        f"norm {worst_norm:.1e}, tolerance {logits_tolerance(subject.dtype)}{twin_note}",
        "\n".join(r.summary() for r in records),
        records,
        profiles,
    )


def loss_check(subject: Subject) -> Outcome:
    """The implementation's own loss (its forward with targets) equals the loss of HF's logits, also with
    ignored targets (parity/checks/ignored_targets.py)."""
    run = subject.gradient_run()
    try:
        rec = loss_comparison(run.implementation_loss, run.hf_loss, subject.dtype)
    except ParityFailure as e:
        idx = gradient_batch(subject.config)[0].to(subject.device)
        diagnosis = _diagnosed(subject, idx, "gradient batch")
        cause = (
            f"the logits differ too: {diagnosis.splitlines()[0]}"
            if diagnosis
            else "the logits match, so the implementation's own loss is computed differently (cross-entropy "
            "over every position, mean reduction, targets not shifted again, ignore_index=-1)"
        )
        raise ParityFailure(f"[loss] {cause}\n  {str(e).removeprefix('[loss] ')}", e.records) from None
    masked = ignored_targets(subject)
    return Outcome(
        f"loss {float(run.hf_loss):.6f} matches Hugging Face's ({rec.summary()}); {masked}", records=[rec]
    )


def _forward_differs(subject: Subject) -> bool:
    """True when the shared forward pass's logits already differ from Hugging Face's."""
    found = subject.gradient_run().logits
    return isinstance(found, ParityFailure) or not found.passed


def own_forward_logits(model: nn.Module, idx: torch.Tensor) -> torch.Tensor:
    """The implementation's own forward without targets (what generation calls): its last-position logits."""
    cls = type(model)
    # parity.foreign.adapters adapts foreign classes by subclassing (full logits without targets): call
    # the original.
    own = cls.__mro__[1].forward if "_parity_logits_mode" in cls.__dict__ else cls.forward
    return split_output(own(model, idx))[0][:, -1, :]


def _greedy(model: nn.Module, prompt: torch.Tensor, new: int) -> tuple[torch.Tensor, str]:
    """(the continuation, how): its own generate with top_k=1 if it takes one, else a greedy loop."""
    ours = greedy_generate(model, prompt, new)
    if ours is not None:
        return ours, "its own generate(top_k=1)"
    idx = prompt
    for _ in range(new):
        idx = torch.cat([idx, own_forward_logits(model, idx).argmax(-1, keepdim=True)], dim=1)
    return idx, "a greedy loop over its forward"


def _sampled(subject: Subject, model: nn.Module, hf: Any) -> tuple[list[Comparison], str]:
    """sampled_generation on the narrow twin where the memory plan keeps long extra passes there (each
    sampled step is a forward of a whole block, and the crop, the temperature and the top-k are the same code
    at any width), else, or when the twin cannot be built, on the loaded models."""
    twin = subject.extras_twin()
    if twin is None:
        return sampled_generation(model, hf, subject.config, subject.dtype)
    with found_on(twin, "inference"):
        records, summary = sampled_generation(twin.model, twin.hf, twin.config, subject.dtype)
    return records, f"{summary}, {twin_clause(twin.config, twin.why)}"


def _greedy_matches(
    model: nn.Module, hf: Any, prompt: torch.Tensor, new: int, dtype: torch.dtype, rec: Comparison
) -> str:
    """How model continued prompt greedily by new tokens, when that equals HF's generate (KV cache); else
    ParityFailure naming the first token that differs (rec: the last-position comparison, for the record)."""
    tol = logits_tolerance(dtype)
    with torch.no_grad():
        ours, how = _greedy(model, prompt, new)
        theirs = hf.generate(
            prompt,
            attention_mask=torch.ones_like(prompt),
            max_new_tokens=new,
            do_sample=False,
            use_cache=True,
            pad_token_id=0,
        )
    if ours.shape == theirs.shape and torch.equal(ours, theirs):
        return how
    differ = (ours[0, : theirs.size(1)] != theirs[0, : ours.size(1)]).nonzero()
    k = int(differ[0]) if len(differ) else min(ours.size(1), theirs.size(1))
    prefix = theirs[:, :k]
    with torch.no_grad():
        step = compare_tensors(
            "inference",
            f"logits before token {k}",
            own_forward_logits(model, prefix),
            hf_last_logits(hf, prefix),
            tol,
        )
        # A difference is rounding only where HF's two largest logits are closer than the tolerance.
        tie = near_tie(hf, prefix, 1, dtype)
    if not step.passed or k >= min(ours.size(1), theirs.size(1)) or not tie:
        cause = (
            "; the forward without targets matches Hugging Face there and the top two logits are no tie, "
            "so generate computes its next token differently (its no-target call, its crop or its choice)"
            if step.passed
            else ""
        )
        raise ParityFailure(
            f"[inference] greedy continuation by {how} differs from Hugging Face's generate (KV cache) "
            f"at token {k}: {ours[0].tolist()} vs {theirs[0].tolist()}{cause}; {step.summary()}",
            [rec, step],
        )
    return how


def inference_check(subject: Subject) -> Outcome:
    """Called without targets: HF's last-position logits; greedy decoding equals HF's generate (KV cache)."""
    model, hf = subject.model(), subject.hf()
    tol = logits_tolerance(subject.dtype)
    prompt_length = max(1, min(PROMPT_TOKENS, subject.config.block_size // 2))
    prompt = token_batch("sentence", subject.config)[:, :prompt_length]
    prompt = prompt.to(subject.device)
    new = max(1, min(NEW_TOKENS, subject.config.block_size - prompt.size(1)))
    with torch.no_grad():
        last = own_forward_logits(model, prompt)
        rec = compare_tensors(
            "inference", "last-position logits without targets", last, hf_last_logits(hf, prompt), tol
        )
    if not rec.passed:
        # Outside no_grad: whether the forward pass differs is read from the shared forward + backward.
        forward = "; the forward pass differs already (see logits)" if _forward_differs(subject) else ""
        raise ParityFailure(
            "[inference] the call without targets (as generation makes it) differs"
            f"{forward}\n  {rec.summary()}",
            [rec],
        )
    twin = subject.extras_twin()
    on = (model, hf) if twin is None else (twin.model, twin.hf)
    with found_on(twin, "inference"):
        how = _greedy_matches(*on, prompt, new, subject.dtype, rec)
    if twin is not None:
        how += " on the narrow twin"
    sampled, sampling = [], "it has no generate: no sampling to compare"
    if own_generate(model) is not None:
        sampled, sampling = _sampled(subject, model, hf)
    return Outcome(
        f"last-position logits without targets match, and {new} greedy tokens by {how} equal Hugging Face's "
        f"generate with its KV cache; {sampling}",
        "\n".join(r.summary() for r in [rec, *sampled]),
        [rec, *sampled],
    )


FORWARD_CHECKS = (
    Check(
        "logits",
        "logits of four batches equal Hugging Face's GPT2LMHeadModel (tie_word_embeddings=True), "
        "element by element and in the norm of their difference",
        "both models; the shared forward + backward; the full block on the narrow twin at GPT-2 sizes",
        logits_check,
    ),
    Check(
        "loss",
        "the implementation's own loss (forward with targets) equals the loss of HF's logits, also with a "
        "third of the targets ignored (nanoGPT's -1, or HF's and PyTorch's -100)",
        "both models; the shared forward + backward",
        loss_check,
    ),
    Check(
        "inference",
        "the call without targets gives HF's last-position logits; greedy decoding equals "
        "HF's generate with its KV cache; its own generate samples from HF's distribution (temperature, "
        "top-k warpers) on a prompt longer than block_size, cropped to the last block",
        "both models; the greedy and sampled generation on the narrow twin at GPT-2 sizes",
        inference_check,
    ),
)
