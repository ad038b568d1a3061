"""Discovery: which class of an implementation is the model, what its config fields mean, how it takes labels.

GPT-2 code names the same things many ways. The model may be `GPT`, `Transformer`, `GPTModel` or
`GPT2LMHeadModel` (`--impl FILE:CLASS` names it; else every top-level nn.Module class of the code is built
on a small probe config and fed token ids, and the outermost one returning vocab-sized logits is taken).
Its config may call the context `block_size`, `n_positions`, `n_ctx` or `context_length`, and may be a
plain dict (`cfg["emb_dim"]`): CONFIG_SYNONYMS maps nanoGPT's names onto theirs, and the load summary
says which were mapped. Its forward may take the targets as `targets=`, `labels=`, `lm_labels=` or a
second argument, with Hugging Face's labels shifted inside or not: `LossConvention` passes the harness's
next-token targets in the implementation's convention, found on a probe batch.
"""

from __future__ import annotations

import ast
import contextlib
import inspect
import io
import keyword
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from nanogpt.model import LAYER_NORM_EPS, GPTConfig
from parity.core.errors import ImplementationError
from parity.core.outputs import split_output

# Each GPT-2 quantity (nanoGPT's name, or layer_norm_epsilon) under the names configs give it.
CONFIG_SYNONYMS: dict[str, tuple[str, ...]] = {
    "block_size": ("block_size", "n_positions", "n_ctx", "context_length", "max_position_embeddings"),
    "vocab_size": ("vocab_size", "vocab_size_or_config_json_file", "n_vocab"),
    "n_layer": ("n_layer", "n_layers", "num_layers", "num_hidden_layers"),
    "n_head": ("n_head", "n_heads", "num_heads", "num_attention_heads"),
    "n_embd": ("n_embd", "emb_dim", "n_embed", "d_model", "hidden_size"),
    "dropout": ("dropout", "drop_rate"),
    "bias": ("bias", "qkv_bias"),
    "layer_norm_epsilon": ("layer_norm_epsilon", "layer_norm_eps"),
}
# The quantities a config must name for the harness to take it for GPT-2's (with any synonym).
CORE_QUANTITIES = ("n_layer", "n_head", "n_embd")
# The model class when the code has one of this name (nanoGPT's): taken without a probe.
NANOGPT_CLASS = "GPT"
# The probe's architecture: small and with distinct sizes, so vocab-sized logits cannot be mistaken.
PROBE_CONFIG = GPTConfig(block_size=16, vocab_size=512, n_layer=1, n_head=2, n_embd=64)
PROBE_SHAPE = (2, 8)

# forward parameters that take the targets, by name; LABEL_NAMES are Hugging Face's, labels that the model
# may shift itself (labels = the input ids). A second positional parameter of another name is a target
# too, unless it is one of NOT_TARGETS.
TARGET_NAMES = ("targets", "target", "labels", "lm_labels")
# An ignored target in the harness's targets (nanoGPT's convention); Hugging Face's labels use -100.
IGNORED = -1
HF_IGNORED = -100
LABEL_NAMES = ("labels", "lm_labels")
NOT_TARGETS = (
    "position_ids",
    "attention_mask",
    "token_type_ids",
    "past",
    "past_key_values",
    "use_cache",
    "start_pos",
    "input_pos",
    "mask",
    "head_mask",
)
# A loss agrees with the cross-entropy of the same call's logits within this relative difference.
SAME_LOSS_RTOL = 1e-3


# ----------------------------------------------------------------------------------------------------------
# the config's names


def _is_dropout_name(name: str) -> bool:
    """A dropout probability: dropout, drop_rate, or minGPT's embd_pdrop, resid_pdrop, attn_pdrop."""
    return name in CONFIG_SYNONYMS["dropout"] or name.endswith("pdrop") or name.endswith("_dropout")


def quantity_of(name: str) -> str | None:
    """The GPT-2 quantity a config field of this name holds (nanoGPT's name), or None."""
    if _is_dropout_name(name):
        return "dropout"
    return next((q for q, names in CONFIG_SYNONYMS.items() if name in names), None)


def architecture_values(config: GPTConfig, names: set[str] | list[str]) -> dict[str, Any]:
    """The value of each name that holds a GPT-2 quantity, for the target's architecture."""
    out = {}
    for name in names:
        quantity = quantity_of(name)
        if quantity is not None:
            out[name] = LAYER_NORM_EPS if quantity == "layer_norm_epsilon" else getattr(config, quantity)
    return out


def declares_core(names: set[str]) -> bool:
    """True when the names hold n_layer, n_head and n_embd under some synonym."""
    return all(set(CONFIG_SYNONYMS[q]) & names for q in CORE_QUANTITIES)


def mapped_names(names: set[str] | list[str]) -> str:
    """`n_positions<-block_size, ...` for the names not nanoGPT's own; empty when there are none."""
    pairs = [(n, quantity_of(n)) for n in sorted(names)]
    shown = {"layer_norm_epsilon": f"{LAYER_NORM_EPS:g} (GPT-2's)"}
    return ", ".join(f"{n}<-{shown.get(q, q)}" for n, q in pairs if q is not None and q != n or q in shown)


def _string_keys(path: str) -> set[str]:
    """String keys the file reads from a mapping: `x["emb_dim"]` and `x.get("emb_dim")`."""
    try:
        tree = ast.parse(Path(path).read_text(encoding="utf-8"))
    except (OSError, SyntaxError, UnicodeDecodeError):
        return set()
    keys = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Subscript) and isinstance(node.slice, ast.Constant):
            keys.add(node.slice.value)
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "get":
            if node.args and isinstance(node.args[0], ast.Constant):
                keys.add(node.args[0].value)
    return {k for k in keys if isinstance(k, str)}


def dict_config(
    module: ModuleType, model_cls: type
) -> tuple[Callable[[GPTConfig], dict[str, Any]], str] | None:
    """A maker of the plain dict config the model reads (`cfg["emb_dim"]`), and how it was found; or None.

    The keys are those the model's file reads that name a GPT-2 quantity; a module-level dict holding
    them (the book's `GPT_CONFIG_124M`) gives the values of its other keys.
    """
    files = {getattr(module, "__file__", None)}
    init = getattr(model_cls, "__init__", None)
    files.add(getattr(getattr(init, "__code__", None), "co_filename", None))
    keys = {k for f in files if f for k in _string_keys(f) if quantity_of(k) is not None}
    if not declares_core(keys):
        return None
    tables = [v for v in vars(module).values() if isinstance(v, dict) and keys & set(v)]
    defaults = dict(max(tables, key=lambda t: len(keys & set(t)))) if tables else {}
    keys |= {k for k in defaults if quantity_of(k) is not None}

    def make(config: GPTConfig) -> dict[str, Any]:
        return {**defaults, **architecture_values(config, keys)}

    return make, f"a dict, keys mapped: {mapped_names(keys) or 'none (nanoGPT names)'}"


# ----------------------------------------------------------------------------------------------------------
# the model class


def split_class(path: str) -> tuple[str, str | None]:
    """(path, class name) of `FILE:CLASS`; (path, None) when no class is named."""
    head, sep, tail = path.rpartition(":")
    if sep and head and tail.isidentifier() and not keyword.iskeyword(tail) and not Path(path).exists():
        return head, tail
    return path, None


def _defined_here(cls: type, module: ModuleType, folder: Path) -> bool:
    """True when the class comes from the implementation's own code, not from torch or another library."""
    if cls.__module__ == module.__name__ or cls.__module__.startswith(module.__name__.split(".")[0] + "."):
        return True
    codes = [getattr(f, "__code__", None) for f in vars(cls).values()]
    return any(c is not None and Path(c.co_filename).resolve().is_relative_to(folder) for c in codes)


def _probe(cls: type[nn.Module], make_config: Callable[[type], Any]) -> tuple[int, ...] | str:
    """The logits shape cls gives for PROBE_SHAPE token ids when built on PROBE_CONFIG; else why not."""
    try:
        with contextlib.redirect_stdout(io.StringIO()), torch.random.fork_rng(devices=[]), torch.no_grad():
            model = cls(make_config(cls))
            idx = torch.randint(
                0, PROBE_CONFIG.vocab_size, PROBE_SHAPE, generator=torch.Generator().manual_seed(0)
            )
            logits, _ = split_output(model.eval()(idx))
    except Exception as e:  # any failure of the user's code rules the class out, saying why
        return f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}".rstrip(": ")
    shape = tuple(logits.shape)
    full = len(shape) == 3 and shape[0] == PROBE_SHAPE[0] and shape[1] in (1, PROBE_SHAPE[1])
    if full and shape[2] >= PROBE_CONFIG.vocab_size:
        return shape
    return f"returns {shape}, not ({PROBE_SHAPE[0]}, {PROBE_SHAPE[1]}, {PROBE_CONFIG.vocab_size}) logits"


def _inner_classes(cls: type[nn.Module], make_config: Callable[[type], Any]) -> set[type]:
    """The classes of cls's submodules, when built on the probe config."""
    with contextlib.redirect_stdout(io.StringIO()), torch.random.fork_rng(devices=[]):
        return {type(m) for m in cls(make_config(cls)).modules()} - {cls}


def model_class(
    module: ModuleType, where: str, class_name: str | None, make_config: Callable[[type], Any]
) -> tuple[type[nn.Module], str]:
    """The implementation's model class and how it was chosen: named, nanoGPT's `GPT`, or found by probing.

    make_config(cls) is cls's config for PROBE_CONFIG. Without a name or a `GPT`, each nn.Module class of
    the implementation's code is built and fed token ids; of those returning vocab-sized logits, the
    outermost one (no other holds it) is the model. None or several: ImplementationError naming them.
    """
    if class_name is not None:
        cls = getattr(module, class_name, None)
        if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
            raise ImplementationError(f"{where} defines no torch.nn.Module class {class_name}")
        return cls, "named by FILE:CLASS"
    named = getattr(module, NANOGPT_CLASS, None)
    if isinstance(named, type) and issubclass(named, nn.Module):
        return named, ""
    folder = Path(where).resolve().parent if Path(where).suffix == ".py" else Path(where).resolve()
    classes = dict.fromkeys(c for c in vars(module).values() if isinstance(c, type))
    candidates = [c for c in classes if issubclass(c, nn.Module) and _defined_here(c, module, folder)]
    probes = {c: _probe(c, make_config) for c in candidates}
    models = [c for c, p in probes.items() if isinstance(p, tuple)]
    if len(models) > 1:
        inner = {i for c in models for i in _inner_classes(c, make_config)}
        models = [c for c in models if c not in inner]
    if len(models) == 1:
        shape = probes[models[0]]
        held = (
            "the only"
            if len(candidates) == 1 or sum(isinstance(p, tuple) for p in probes.values()) == 1
            else ("the outermost")
        )
        return models[0], f"discovered: {held} nn.Module returning {shape} logits"
    file = Path(where).name
    if models:
        raise ImplementationError(
            f"{where}: several nn.Module classes return vocab-sized logits for token ids and none holds the "
            f"others: {', '.join(c.__name__ for c in models)}; pass FILE:CLASS to name the model "
            f"(--impl {file}:{models[0].__name__})"
        )
    tried = "; ".join(f"{c.__name__}: {p}" for c, p in probes.items()) or "none defined"
    raise ImplementationError(
        f"{where} defines no GPT class, and no nn.Module class of it returns vocab-sized logits for token "
        f"ids ({tried}); pass FILE:CLASS to name the model class (--impl {file}:MyModel)"
    )


# ----------------------------------------------------------------------------------------------------------
# the loss


def _cross_entropy(
    logits: torch.Tensor, targets: torch.Tensor, ignore_index: int = -100, reduction: str = "mean"
) -> torch.Tensor:
    """Cross-entropy of (B, T, V) logits against (B, T) targets, in at least float32."""
    flat = logits.reshape(-1, logits.size(-1))
    return F.cross_entropy(
        flat.float() if flat.dtype in (torch.float16, torch.bfloat16) else flat,
        targets.reshape(-1),
        ignore_index=ignore_index,
        reduction=reduction,
    )


@dataclass
class LossConvention:
    """How an implementation's forward takes targets, and whether it shifts them itself."""

    parameter: str | None  # the forward parameter taking the targets; None: forward computes no loss
    positional: bool  # passed as the second argument, not by name
    shifted: bool | None = None  # labels shifted inside (found on a probe); None until found, or never
    notes: list[str] | None = None  # the load summary, told the convention once found
    ignore_index: int = IGNORED  # what an ignored target is passed as (the harness's targets use IGNORED)

    @property
    def may_shift(self) -> bool:
        """Hugging Face's labels (the input ids, shifted inside or not); `targets` are never shifted again."""
        return self.parameter in LABEL_NAMES

    def describe(self) -> str:
        """The convention in words, for the load summary."""
        if self.parameter is None:
            return (
                "forward takes no targets: the harness computes the loss from its logits (mean cross-entropy)"
            )
        call = f"forward(idx, {self.parameter})" if self.positional else f"forward(idx, {self.parameter}=...)"
        if self.shifted is None:
            return f"{call}, targets not shifted again (nanoGPT's convention)"
        if not self.shifted:
            return f"{call} with next-token targets: found on a probe batch that it does not shift them"
        return (
            f"{call} with labels it shifts itself: found on a probe batch; passed the targets one place "
            "right, and the last position's term (which such a loss never covers) from its logits"
        )

    def call(
        self, forward: Callable[..., Any], model: nn.Module, idx: torch.Tensor, labels: torch.Tensor
    ) -> Any:
        """forward(model, idx) with labels passed the implementation's way (ignored ones as ignore_index)."""
        if self.ignore_index != IGNORED:
            labels = labels.masked_fill(labels == IGNORED, self.ignore_index)
        if self.positional:
            return forward(model, idx, labels)
        return forward(model, idx, **{self.parameter: labels})

    def _run(
        self, forward: Callable[..., Any], model: nn.Module, idx: torch.Tensor, labels: torch.Tensor
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """(logits, loss) of a call with labels; a bare scalar is the loss alone (pytorch-pretrained-bert)."""
        out = self.call(forward, model, idx, labels)
        if isinstance(out, torch.Tensor) and out.dim() == 0:
            return None, out
        return split_output(out)

    def detect(self, forward: Callable[..., Any], model: nn.Module, idx: torch.Tensor) -> None:
        """Find whether labels are shifted inside: its loss against the cross-entropy of its own logits."""
        probe = idx if idx.size(1) > 1 else idx.repeat(1, 2)
        labels = probe.flip(1)
        with (
            torch.no_grad(),
            torch.random.fork_rng(devices=[] if probe.device.type == "cpu" else [probe.device]),
        ):
            logits, loss = self._run(forward, model, probe, labels)
            if logits is None or logits.shape[:2] != probe.shape:
                logits, _ = split_output(forward(model, probe))
            if loss is None or logits.shape[:2] != probe.shape:
                self.shifted = False
                return  # no loss of its own: the harness's loss of its logits, as for any forward
            plain = float(_cross_entropy(logits, labels))
            shift = float(_cross_entropy(logits[:, :-1], labels[:, 1:]))
        # Closer to the shifted loss, and within SAME_LOSS_RTOL of it: shifted inside. Otherwise taken as
        # unshifted, and the loss check judges the loss against Hugging Face's.
        off = abs(float(loss) - shift)
        self.shifted = off <= SAME_LOSS_RTOL * abs(shift) and off < abs(float(loss) - plain)
        if self.notes is not None:
            self.notes.append(f"loss: {self.describe()}")

    def logits_and_loss(
        self,
        forward: Callable[..., Any],
        model: nn.Module,
        idx: torch.Tensor,
        targets: torch.Tensor,
        full_logits: Callable[[], torch.Tensor],
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(every position's logits, the implementation's loss of next-token targets, or None)."""
        if self.parameter is None:
            return full_logits(), None
        if self.may_shift and self.shifted is None:
            self.detect(forward, model, idx)
        if not self.shifted:
            logits, loss = self._run(forward, model, idx, targets)
        elif idx.size(1) == 1:  # a shifted loss covers no position of one token
            return full_logits(), None
        else:  # labels[t + 1] = targets[t]; the first label is dropped by the shift
            logits, loss = self._run(forward, model, idx, torch.cat([idx[:, :1], targets[:, :-1]], dim=1))
        if logits is None or logits.dim() != 3 or logits.shape[:2] != idx.shape:
            logits = full_logits()
        if self.shifted and loss is not None:  # the mean over the kept targets, the last position's added
            kept = int((targets[:, :-1] != IGNORED).sum())
            added = _cross_entropy(logits[:, -1:], targets[:, -1:], ignore_index=IGNORED, reduction="sum")
            total = kept + int((targets[:, -1] != IGNORED).sum())
            loss = (loss * kept + added) / total if kept else added / max(total, 1)
        return logits, loss


def loss_convention(forward: Callable[..., Any]) -> LossConvention:
    """The parameter of forward(self, idx, ...) that takes targets: a known name, else the second argument."""
    params = list(inspect.signature(forward).parameters.values())[2:]
    by_name = [p for p in params if p.name in TARGET_NAMES and p.kind != p.POSITIONAL_ONLY]
    if by_name:
        return LossConvention(by_name[0].name, positional=False)
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    if positional and positional[0].name not in NOT_TARGETS:
        return LossConvention(positional[0].name, positional=True)
    if not positional and any(p.kind == p.VAR_POSITIONAL for p in params):
        return LossConvention("*args", positional=True)
    return LossConvention(None, positional=False)
