"""The implementation's own `generate`, called as users call it, for the inference check (forward.py).

Greedy decoding (`top_k=1`) is compared token for token with HF's generate there; here, generate runs with a
temperature and a top-k on a prompt longer than `block_size`, and each `torch.multinomial` call it makes is
intercepted (a TorchFunctionMode, as dropout-sites intercepts dropout): the probabilities it would sample
from are recorded and the most probable token is returned, so the run is deterministic. Each step's
probabilities are compared with HF's logits for the same context (its last `block_size` tokens: nanoGPT
crops the prompt) processed by HF's own `TemperatureLogitsWarper` and `TopKLogitsWarper`, then a softmax.
The adapted class (parity/foreign/adapters.py) changes forward's calling convention, so generate runs with
the model's class set back to the implementation's own for the call.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from parity.core.compare import Comparison, ParityFailure, compare_tensors
from parity.core.errors import CannotTest
from parity.core.tolerances import logits_tolerance, sampling_tolerance
from parity.numerics.forward import hf_last_logits
from parity.subject.batches import token_batch

# The sampled run: nanoGPT's sample.py defaults are temperature 0.8, top_k 200; a temperature under 1 and a
# top-k well under the vocabulary make a multiplied temperature and a wrong top-k visible.
TEMPERATURE = 0.7
TOP_K = 5
# The prompt runs this many tokens past block_size (the implementation must keep the last block_size).
PAST_BLOCK = 3
SAMPLED_TOKENS = 4
# Names generate's parameters have in GPT-2 code besides nanoGPT's; minGPT samples only with do_sample=True.
TEMPERATURE_NAMES = ("temperature", "temp")
TOP_K_NAMES = ("top_k", "topk")


@contextlib.contextmanager
def users_class(model: nn.Module) -> Iterator[nn.Module]:
    """The model with its class set back to the implementation's own (forward as users call it)."""
    adapted = type(model)
    if "_parity_logits_mode" not in adapted.__dict__:
        yield model
        return
    model.__class__ = adapted.__mro__[1]
    try:
        yield model
    finally:
        model.__class__ = adapted


def own_generate(model: nn.Module) -> Callable[..., Any] | None:
    """The implementation's own generate method, or None when it has none."""
    generate = getattr(type(model), "generate", None)
    return generate if callable(generate) else None


def greedy_generate(model: nn.Module, prompt: torch.Tensor, new: int) -> torch.Tensor | None:
    """The implementation's own generate(prompt, new, top_k=1), or None when its signature takes no top_k."""
    generate = own_generate(model)
    if generate is None:
        return None
    kwargs = _sampling_kwargs(generate, prompt, new, 1.0, 1)
    if isinstance(kwargs, str):
        return None
    with torch.no_grad(), users_class(model):
        return generate(model, prompt, new, **kwargs)


def _sampling_kwargs(
    generate: Callable[..., Any], prompt: torch.Tensor, new: int, temperature: float, top_k: int
) -> dict[str, Any] | str:
    """generate's keyword arguments for this temperature and top-k, or why its signature cannot take them."""
    sig = inspect.signature(generate)
    params = sig.parameters
    var_kw = any(p.kind is p.VAR_KEYWORD for p in params.values())
    t_name = next((n for n in TEMPERATURE_NAMES if n in params), "temperature" if var_kw else None)
    k_name = next((n for n in TOP_K_NAMES if n in params), "top_k" if var_kw else None)
    if t_name is None or k_name is None:
        return f"generate{sig} takes no {'temperature' if t_name is None else 'top_k'} argument"
    kwargs: dict[str, Any] = {t_name: temperature, k_name: top_k}
    if "do_sample" in params:
        kwargs["do_sample"] = True
    try:
        sig.bind(None, prompt, new, **kwargs)
    except TypeError as e:
        return f"generate{sig} cannot be called as generate(idx, max_new_tokens, **{kwargs}): {e}"
    return kwargs


class SamplingRecorder(TorchFunctionMode):
    """Records the probabilities of every torch.multinomial call and answers with the most probable tokens."""

    def __init__(self) -> None:
        super().__init__()
        self.probs: list[torch.Tensor] = []
        self.chosen: list[torch.Tensor] = []

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        if func in (torch.multinomial, torch.Tensor.multinomial):
            probs = args[0]
            n = args[1] if len(args) > 1 else kwargs.get("num_samples", 1)
            chosen = probs.detach().topk(int(n), dim=-1).indices
            self.probs.append(probs.detach().clone())
            self.chosen.append(chosen)
            return chosen
        return func(*args, **kwargs)


def hf_sampling_probs(hf: Any, context: torch.Tensor, temperature: float, top_k: int) -> torch.Tensor:
    """HF's next-token probabilities for context: its own temperature and top-k warpers, then a softmax."""
    from transformers import TemperatureLogitsWarper, TopKLogitsWarper

    scores = hf_last_logits(hf, context)
    scores = TemperatureLogitsWarper(temperature)(context, scores)
    scores = TopKLogitsWarper(top_k)(context, scores)
    return torch.softmax(scores, dim=-1)


def near_tie(hf: Any, context: torch.Tensor, top_k: int, dtype: torch.dtype) -> bool:
    """True when HF's k-th and (k+1)-th next-token logits are closer than rounding: either top-k is right."""
    logits = hf_last_logits(hf, context)
    if top_k >= logits.size(-1):
        return False  # every token is kept: no boundary to fall on either side of
    values = logits.topk(top_k + 1, dim=-1).values
    tol = logits_tolerance(dtype)
    gap = values[:, top_k - 1] - values[:, top_k]
    return bool((gap <= 2 * (tol.atol + tol.rtol * values[:, top_k - 1].abs())).any())


def _tie_explains(
    hf: Any, context: torch.Tensor, probs: torch.Tensor, theirs: torch.Tensor, top_k: int, dtype: torch.dtype
) -> bool:
    """True when the two kept sets differ only in tokens whose HF logit is within rounding of the k-th."""
    if probs.shape != theirs.shape:
        return False
    differ = (probs > 0) != (theirs > 0)
    if not differ.any():
        return False
    logits = hf_last_logits(hf, context)
    kth = logits.topk(top_k, dim=-1).values[:, -1:]
    tol = logits_tolerance(dtype)
    close = (logits - kth).abs() <= 2 * (tol.atol + tol.rtol * kth.abs())
    return bool(close[differ].all())


def sampled_generation(
    model: nn.Module, hf: Any, config: Any, dtype: torch.dtype
) -> tuple[list[Comparison], str]:
    """(records, summary): each step's sampling distribution of the implementation's generate against HF's.

    Raises ParityFailure naming the first step that differs, or CannotTest when generate cannot be called
    with a temperature and a top-k or never calls torch.multinomial.
    """
    generate = own_generate(model)
    assert generate is not None
    block = config.block_size
    device = next(model.parameters()).device
    head = token_batch("sentence", config)[:, :PAST_BLOCK]
    prompt = torch.cat([head, token_batch("full_block", config)], dim=1).to(device)
    top_k = min(TOP_K, config.output_vocab_size)
    kwargs = _sampling_kwargs(generate, prompt, SAMPLED_TOKENS, TEMPERATURE, top_k)
    if isinstance(kwargs, str):
        raise CannotTest(f"[inference] greedy decoding passed; sampling not compared: {kwargs}")
    call = f"generate(prompt of {prompt.size(1)} tokens, block_size {block}, {SAMPLED_TOKENS}, **{kwargs})"
    recorder = SamplingRecorder()
    try:
        with torch.no_grad(), users_class(model), recorder:
            out = generate(model, prompt, SAMPLED_TOKENS, **kwargs)
    except Exception as e:  # noqa: BLE001 - nanoGPT's generate crops a long prompt; a crash here is the bug
        raise ParityFailure(
            f"[inference] {call} raised {type(e).__name__}: {e} (generate must crop the context to its last "
            "block_size tokens)"
        ) from e
    if not recorder.probs:
        raise CannotTest(
            f"[inference] greedy decoding passed; sampling not compared: {call} never called "
            "torch.multinomial, so the distribution it samples from could not be read (sample with "
            "torch.multinomial to have it compared)"
        )
    expected = prompt.size(1) + len(recorder.chosen)
    batch = prompt.size(0)  # a sampler may pass 1-D probabilities for its one sequence
    sampled = torch.cat([c.reshape(batch, -1)[:, :1] for c in recorder.chosen], dim=1)
    if out.shape != (prompt.size(0), expected) or not torch.equal(out[:, prompt.size(1) :], sampled):
        raise ParityFailure(
            f"[inference] {call} returned shape {tuple(out.shape)}, new tokens "
            f"{out[0, prompt.size(1) :].tolist()}: not the prompt followed by the {len(recorder.chosen)} "
            f"tokens it sampled, {sampled[0].tolist()}"
        )
    records: list[Comparison] = []
    skipped = 0
    tol = sampling_tolerance(dtype)
    with torch.no_grad():
        for step, probs in enumerate(recorder.probs):
            context = out[:, : prompt.size(1) + step][:, -block:]
            name = f"sampling probabilities at step {step} (temperature {TEMPERATURE}, top_k {top_k})"
            theirs = hf_sampling_probs(hf, context, TEMPERATURE, top_k)
            if probs.numel() == theirs.numel():
                probs = probs.reshape(theirs.shape)
            rec = compare_tensors("inference", name, probs, theirs, tol)
            if not rec.passed and _tie_explains(hf, context, probs, theirs, top_k, dtype):
                skipped += 1  # another top-k set, equally right within rounding
                continue
            if not rec.passed:
                cause = _suspect(probs, hf, out[:, : prompt.size(1) + step], block, top_k, tol)
                raise ParityFailure(
                    f"[inference] {call}: the distribution it samples from at step {step} differs from HF's "
                    f"(its last {block} tokens, TemperatureLogitsWarper then TopKLogitsWarper, softmax): "
                    f"{cause}\n  {rec.summary()}",
                    [*records, rec],
                )
            records.append(rec)
    if not records:
        raise CannotTest(f"[inference] greedy decoding passed; every sampled step of {call} was a near tie")
    note = f", {skipped} near-tie step(s) skipped" if skipped else ""
    summary = (
        f"{len(records)} sampled steps of its own generate (temperature {TEMPERATURE}, top_k {top_k}, a "
        f"prompt {PAST_BLOCK} tokens past block_size) sample from HF's distribution{note}"
    )
    return records, summary


def _suspect(probs: torch.Tensor, hf: Any, seq: torch.Tensor, block: int, top_k: int, tol: Any) -> str:
    """The likely cause of a sampling difference: the first explanation HF's own warpers reproduce."""
    expected = hf_sampling_probs(hf, seq[:, -block:], TEMPERATURE, top_k)
    if probs.shape != expected.shape:
        return f"{probs.size(-1)} probabilities for a vocabulary of {expected.size(-1)}"
    causes = (
        (seq[:, :block], TEMPERATURE, f"the context is the first {block} tokens, not the last (the crop)"),
        (seq[:, -block:][:, :1], TEMPERATURE, "the logits of the context's first position, not its last"),
        (seq[:, -block:], 1 / TEMPERATURE, "the temperature multiplies the logits instead of dividing them"),
        (seq[:, -block:], 1.0, "the temperature is not applied"),
    )
    for context, temperature, cause in causes:
        candidate = hf_sampling_probs(hf, context, temperature, top_k)
        if compare_tensors("inference", cause, probs, candidate, tol).passed:
            return cause
    kept, wanted = int((probs[0] > 0).sum()), int((expected[0] > 0).sum())
    if not torch.equal(probs > 0, expected > 0):
        return f"it keeps {kept} token(s), not the {wanted} with the largest logits (the top-k filter)"
    return "the same tokens kept, other probabilities: the temperature or the logits differ"
