"""The dropout-sites check: train mode drops the tensors Hugging Face drops, found by replaying its masks.

Counting dropout calls cannot see which tensor is dropped (the attention output instead of the attention
weights, the MLP's hidden layer instead of its output). So on a narrow twin with the same weights on both
sides, Hugging Face's eager GPT-2 runs in train mode under `MaskRecorder`, which draws each dropout's
keep-mask from a seeded generator and records it; the implementation then runs under `MaskReplay`, which
gives each of its dropout calls (and `scaled_dot_product_attention` with `dropout_p`, computed explicitly)
the next recorded mask, matched by call order and shape. A shape or count that differs names the site; equal
shapes with train-mode logits (or parameter gradients) that differ say that another tensor of the same shape
is dropped; where the weights do not load, only the order, shapes and p are checked. Eval mode must drop
nothing.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F
from torch.overrides import TorchFunctionMode

from nanogpt.hf import config_from_hf, read_hf_config
from parity.checks.check import Check
from parity.core.compare import Comparison, ParityFailure, compare_tensors
from parity.core.errors import CannotTest, ImplementationError, NotApplicable
from parity.core.tolerances import hidden_divergence, logits_tolerance
from parity.core.verdicts import Outcome
from parity.foreign.load import load_implementation
from parity.numerics.chunked import one_thread
from parity.numerics.diagnose import relative_norm
from parity.numerics.forward import hf_logits, implementation_logits
from parity.numerics.gradients import compare_gradients
from parity.numerics.tie import twin_config
from parity.subject.batches import token_batch
from parity.subject.loading import load_hf
from parity.subject.subject import Subject, clean_grads

# The probability the dropout-sites check configures on both sides.
DROPOUT_P = 0.1
# The seed of the keep-masks drawn on Hugging Face's side.
MASK_SEED = 0
SAME_CALLS_DIFFER = "outputs differ between two identical calls"
DROPOUT_FUNCTIONS = (F.dropout, torch.dropout)
SDPA_ARGS = ("query", "key", "value", "attn_mask", "dropout_p", "is_causal", "scale", "enable_gqa")


def _dropout_call(func: Any, args: tuple, kwargs: dict) -> tuple[torch.Tensor, float] | None:
    """(input, p) of a dropout call that drops something (train mode, p > 0), else None."""
    if func not in DROPOUT_FUNCTIONS:
        return None
    x = args[0] if args else kwargs["input"]
    p = float(args[1] if len(args) > 1 else kwargs.get("p", 0.5))
    train = args[2] if len(args) > 2 else kwargs.get("training", kwargs.get("train", True))
    return (x, p) if train and p > 0 else None


def _sdpa_call(func: Any, args: tuple, kwargs: dict) -> dict[str, Any] | None:
    """scaled_dot_product_attention's arguments by name when it drops (dropout_p > 0), else None."""
    if func is not F.scaled_dot_product_attention:
        return None
    named = {"attn_mask": None, "dropout_p": 0.0, "is_causal": False, "scale": None, **kwargs}
    named.update(zip(SDPA_ARGS, args, strict=False))
    return named if named["dropout_p"] > 0 else None


def apply_mask(x: torch.Tensor, keep: torch.Tensor, p: float) -> torch.Tensor:
    """Dropout with a given keep-mask: the kept elements scaled by 1/(1-p), the same on both sides."""
    return x * keep.to(x.dtype) / (1 - p)


def explicit_attention(named: dict[str, Any], drop: Any) -> torch.Tensor:
    """scaled_dot_product_attention written out, drop(weights) applied to the softmax weights."""
    q, k, v, mask = named["query"], named["key"], named["value"], named["attn_mask"]
    if named.get("enable_gqa") and k.size(-3) != q.size(-3):
        k = k.repeat_interleave(q.size(-3) // k.size(-3), -3)
        v = v.repeat_interleave(q.size(-3) // v.size(-3), -3)
    scale = named["scale"] if named["scale"] is not None else 1 / math.sqrt(q.size(-1))
    att = (q @ k.transpose(-2, -1)) * scale
    if named["is_causal"]:
        causal = torch.ones(q.size(-2), k.size(-2), dtype=torch.bool, device=q.device).tril()
        att = att.masked_fill(~causal, float("-inf"))
    if mask is not None:
        att = att.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else att + mask
    return drop(F.softmax(att, dim=-1)) @ v


class DropoutRecorder(TorchFunctionMode):
    """Records every dropout a forward pass applies: ("attention" or "hidden", p) in call order."""

    def __init__(self) -> None:
        super().__init__()
        self.sites: list[tuple[str, float]] = []

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        call = _dropout_call(func, args, kwargs)
        sdpa = _sdpa_call(func, args, kwargs)
        if call is not None:
            self.sites.append(("attention" if call[0].dim() == 4 else "hidden", call[1]))
        elif sdpa is not None:
            self.sites.append(("attention", float(sdpa["dropout_p"])))
        return func(*args, **kwargs)


@dataclass
class Drop:
    """One dropout call: what was dropped (shape, p), the keep-mask, and the dropped tensor."""

    shape: tuple[int, ...]
    p: float
    keep: torch.Tensor
    output: torch.Tensor


class MaskRecorder(TorchFunctionMode):
    """Hugging Face's side: each dropout draws a keep-mask from a seeded generator, applies and records it."""

    def __init__(self, seed: int = MASK_SEED) -> None:
        super().__init__()
        self.generator = torch.Generator().manual_seed(seed)
        self.drops: list[Drop] = []

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        call = _dropout_call(func, args, kwargs)
        if call is None:
            return func(*args, **kwargs)
        x, p = call
        keep = (torch.rand(x.shape, generator=self.generator) >= p).to(x.device)
        out = apply_mask(x, keep, p)
        self.drops.append(Drop(tuple(x.shape), p, keep, out.detach().clone()))
        return out


class ReplayMismatch(Exception):
    """The implementation's dropout call at `position` is not Hugging Face's (shape or p), or is extra."""

    def __init__(self, position: int, expected: Drop | None, shape: tuple[int, ...], p: float) -> None:
        super().__init__(position)
        self.position, self.expected, self.shape, self.p = position, expected, shape, p


class MaskReplay(TorchFunctionMode):
    """The implementation's side: each dropout takes the next recorded mask, which must have its shape."""

    def __init__(self, drops: list[Drop]) -> None:
        super().__init__()
        self.drops = drops
        self.outputs: list[torch.Tensor] = []

    def _replayed(self, x: torch.Tensor, p: float) -> torch.Tensor:
        position = len(self.outputs)
        expected = self.drops[position] if position < len(self.drops) else None
        if expected is None or expected.shape != tuple(x.shape) or not math.isclose(expected.p, p):
            raise ReplayMismatch(position, expected, tuple(x.shape), p)
        out = apply_mask(x, expected.keep, p)
        self.outputs.append(out.detach().clone())
        return out

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        call = _dropout_call(func, args, kwargs)
        if call is not None:
            return self._replayed(*call)
        sdpa = _sdpa_call(func, args, kwargs)
        if sdpa is not None:
            return explicit_attention(sdpa, lambda w: self._replayed(w, float(sdpa["dropout_p"])))
        return func(*args, **kwargs)


def site_name(position: int, n_layer: int) -> str:
    """Hugging Face's dropout site at a position of the call order, in words."""
    if position == 0:
        return "embeddings"
    block, kind = divmod(position - 1, 3)
    if block >= n_layer:
        return f"after block {n_layer - 1} (Hugging Face drops nothing more)"
    return (
        f"block {block} "
        + ("attention weights", "attention output (residual)", "MLP output (residual)")[kind]
    )


def mismatch_message(e: ReplayMismatch, n_layer: int) -> str:
    """What differs at the first dropout call that does not match Hugging Face's."""
    where = site_name(e.position, n_layer)
    if e.expected is None:
        return f"{where}: the implementation drops a {e.shape} tensor (p={e.p}) where Hugging Face drops none"
    if e.expected.shape != e.shape:
        return (
            f"{where}: Hugging Face drops a {e.expected.shape} tensor there, the implementation a {e.shape} "
            "tensor (dropout applied to another tensor than Hugging Face's)"
        )
    return f"{where}: Hugging Face drops with p={e.expected.p}, the implementation with p={e.p}"


def _sites(model: nn.Module, idx: torch.Tensor) -> Counter[tuple[str, float]]:
    """One forward's dropout calls by kind and p (what eval mode must not have)."""
    recorder = DropoutRecorder()
    with torch.no_grad(), recorder:
        model(idx)
    words = {"attention": "attention weights", "hidden": "hidden states"}
    return Counter((words[kind], round(p, 6)) for kind, p in recorder.sites)


def _twins(subject: Subject) -> tuple[Any, nn.Module, Any, str]:
    """(config, the implementation, HF's eager GPT-2, why the weights differ) with dropout=DROPOUT_P.

    Both have one checkpoint's weights; where the implementation cannot load them, it keeps its own init
    and the last item says why (the replay then checks the order, shapes and p of the dropouts only).
    """
    twin = twin_config(subject.config)
    checkpoint = subject.target.ensure_twin_checkpoint()
    try:
        loaded, _ = load_implementation(subject.impl, checkpoint, subject.dtype, subject.device)
    except ImplementationError as e:
        config = replace(twin, dropout=DROPOUT_P)
        loaded, unloaded = None, str(e).splitlines()[0]
    else:
        # The loader builds from the checkpoint's config, without dropout: build with it, copy the weights.
        config = replace(config_from_hf(read_hf_config(checkpoint)), dropout=DROPOUT_P)
        unloaded = ""
    model = subject.impl.build(config)[0]
    model = model.to(subject.dtype).to(subject.device)
    try:
        if loaded is not None:
            model.load_state_dict(loaded.state_dict())
    except RuntimeError as e:
        raise CannotTest(
            f"[dropout-sites] the twin built with dropout={DROPOUT_P} does not take the loaded twin's "
            f"weights ({str(e).splitlines()[0]}): the masks cannot be replayed on the same weights"
        ) from e
    hf = load_hf(checkpoint, subject.dtype, subject.device, True, activation=subject.target.hf_activation)
    if hasattr(hf, "set_attn_implementation"):
        hf.set_attn_implementation("eager")  # attention dropout as an explicit F.dropout on the weights
    else:
        hf.config._attn_implementation = "eager"
    for module in hf.modules():
        if isinstance(module, nn.Dropout):
            module.p = DROPOUT_P
    return config, model, hf, unloaded


def _first_differing(drops: list[Drop], outputs: list[torch.Tensor], dtype: torch.dtype) -> int | None:
    """The first call whose dropped tensor differs from Hugging Face's beyond the dtype's noise."""
    limit = hidden_divergence(dtype)
    for i, (drop, out) in enumerate(zip(drops, outputs, strict=False)):
        if relative_norm(out, drop.output) > limit:
            return i
    return None


def dropout_sites_check(subject: Subject) -> Outcome:
    """Train mode drops the tensors HF drops (masks replayed), with the configured p; eval drops nothing.

    On one thread: the twin is tiny, and its records' last bits would otherwise follow the caller's thread
    count (LayerNorm gradients differed by an ulp between one thread and two).
    """
    with one_thread():
        return _dropout_sites(subject)


def _dropout_sites(subject: Subject) -> Outcome:
    config, model, hf, unloaded = _twins(subject)
    idx = token_batch("several_sequences", config)[:2, :16].to(subject.device)
    with torch.no_grad():  # the adapter's first call may run forward twice to find every position's logits
        ours_eval = implementation_logits(model.eval(), idx)
        theirs_eval = hf_logits(hf.eval(), idx)
        again = implementation_logits(model, idx)
    in_eval = _sites(model, idx)
    active = ", ".join(f"{n} x {site} (p={p})" for (site, p), n in sorted(in_eval.items()))
    if in_eval or not torch.equal(ours_eval, again):
        raise ParityFailure(
            f"[dropout-sites] dropout is active in eval mode ({active or SAME_CALLS_DIFFER}): "
            "eval must apply none (pass dropout_p=0 to scaled_dot_product_attention "
            "outside training, and use nn.Dropout or training=self.training)"
        )
    model.train(), hf.train()
    if not _sites(model, idx):
        raise NotApplicable(
            f"[dropout-sites] {subject.label} applies no dropout in train mode with dropout={DROPOUT_P} "
            "configured "
            "(no dropout modules, or its config has no dropout setting): nothing to compare with Hugging "
            "Face's dropout sites"
        )
    tol = logits_tolerance(subject.dtype)
    try:
        if unloaded:  # the replay checks the dropouts' order, shapes and p; the values cannot be compared
            ours_eval = theirs_eval = hf_logits(hf, idx)
        eval_rec = compare_tensors("dropout-sites", "eval-mode logits", ours_eval, theirs_eval, tol)
        differ = "" if eval_rec.passed else eval_rec.summary()
    except ParityFailure as e:  # another shape: padded vocabulary columns, say
        differ = str(e).removeprefix("[dropout-sites] ")
    if differ:
        raise CannotTest(
            f"[dropout-sites] the twin's eval-mode logits already differ from Hugging Face's ({differ}): "
            "the masks cannot be compared by replay; fix what the logits check reports first"
        )
    recorder = MaskRecorder()
    with torch.no_grad(), recorder:
        theirs = hf_logits(hf, idx)
    replay = MaskReplay(recorder.drops)
    try:
        with torch.no_grad(), replay:
            ours = implementation_logits(model, idx)
    except ReplayMismatch as e:
        where = mismatch_message(e, config.n_layer)
        raise ParityFailure(
            f"[dropout-sites] train-mode dropout differs from Hugging Face's at {where}"
        ) from None
    finally:
        model.eval(), hf.eval()
    if len(replay.outputs) < len(recorder.drops):
        missing = ", ".join(
            site_name(i, config.n_layer) for i in range(len(replay.outputs), len(recorder.drops))
        )
        raise ParityFailure(
            f"[dropout-sites] train-mode dropout differs from Hugging Face's: the implementation drops "
            f"{len(replay.outputs)} tensors, Hugging Face {len(recorder.drops)}; not dropped: {missing}"
        )
    if unloaded:
        return Outcome(
            f"train mode drops Hugging Face's {len(replay.outputs)} tensors in its order, shapes and p="
            f"{DROPOUT_P} (its masks replayed); eval drops none. The weights do not load ({unloaded}), so "
            "the train-mode outputs were not compared"
        )
    rec = compare_tensors("dropout-sites", "train-mode logits (masks replayed)", ours, theirs, tol)
    if not rec.passed:
        first = _first_differing(recorder.drops, replay.outputs, subject.dtype)
        where = (
            f"the first dropped tensor that differs is at {site_name(first, config.n_layer)}"
            if first is not None
            else f"every dropped tensor matched ({len(replay.outputs)} sites replayed)"
        )
        raise ParityFailure(
            "[dropout-sites] the dropout is applied to another tensor than Hugging Face's at the same shape: "
            f"with Hugging Face's masks replayed, train-mode logits differ (relative difference norm "
            f"{rec.rel_norm:.3g}) while eval logits match; {where}",
            records=[eval_rec, rec],
        )
    grads = _replayed_gradients(model, hf, idx, recorder.drops, config)
    records = [eval_rec, rec, *grads]
    return Outcome(
        f"train mode drops Hugging Face's {len(replay.outputs)} tensors with p={DROPOUT_P} (its masks "
        f"replayed, logits and {len(grads)} parameter gradients match); eval drops none",
        "\n".join(r.summary() for r in records),
        records,
    )


def _own(records: list[Comparison]) -> list[Comparison]:
    """The gradient comparison's records under this check's name (the grads check writes its own)."""
    return [replace(r, check="dropout-sites") for r in records]


def _replayed_gradients(
    model: nn.Module, hf: Any, idx: torch.Tensor, drops: list[Drop], config: Any
) -> list[Comparison]:
    """Every parameter's gradient against HF's, both backward passes under HF's recorded masks.

    run_gradients runs HF's forward and backward first, then the implementation's: the masks are replayed
    to HF, then once more to the implementation.
    """
    targets = torch.roll(idx, -1, dims=1)
    model.train(), hf.train()
    try:
        with clean_grads(model, hf), MaskReplay(drops + drops):
            return _own(compare_gradients(model, hf, idx, targets, config.output_vocab_size))
    except ReplayMismatch as e:  # the forward with targets drops otherwise than the forward without
        raise CannotTest(
            "[dropout-sites] the masks replayed to the forward without targets give Hugging Face's logits, "
            f"but the forward with targets drops otherwise ({mismatch_message(e, config.n_layer)}): its "
            "gradients cannot be compared"
        ) from None
    except ParityFailure as e:
        raise ParityFailure(
            "[dropout-sites] with Hugging Face's masks replayed the train-mode logits match but the "
            f"gradients differ: {str(e).removeprefix('[grads] ')}",
            _own(e.records),
        ) from None
    finally:
        model.eval(), hf.eval()


DROPOUT_CHECKS = (
    Check(
        "dropout-sites",
        "train mode drops the tensors HF drops (embeddings, attention weights, both residual branches) with "
        "the configured p: HF's masks replayed call by call match in shape and give HF's train-mode logits "
        "and parameter gradients; "
        "eval drops nothing",
        "a fresh narrow twin of each with one checkpoint's weights, p=0.1",
        dropout_sites_check,
    ),
)
