"""GPT-2's tensors defined once: names, shapes, the Conv1D set, the tied pair, the init scheme and the counts.

The converter (nanogpt/hf.py), the synthetic checkpoints, the parameter-count goldens, the comparisons and
the training parity all read these instead of keeping their own copies. Names are nanoGPT's, which are
Hugging Face GPT2LMHeadModel's too (HF stores the four projection weights as Conv1D, (in, out), i.e.
transposed with respect to nn.Linear). `TensorMapping` says where each of these tensors lives in an
implementation that names or lays them out otherwise (`tok_emb.weight`, split query/key/value, Conv1D);
the harness records it on every model it builds (`mapping_of`), the identity for nanoGPT-named code.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from nanogpt.model import GPT2_SIZES, gpt2_config

if TYPE_CHECKING:
    import torch

# The tied pair: the output head and the token embedding are one matrix.
HEAD = "lm_head.weight"
EMBEDDING = "transformer.wte.weight"
POSITIONS = "transformer.wpe.weight"

# Weights HF keeps as Conv1D, (in, out): transposed with respect to nn.Linear.
CONV1D_SUFFIXES = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
# Output projections of the two residual branches: GPT-2 scales their init by 1/sqrt(2 * n_layer).
RESIDUAL_PROJECTION_SUFFIXES = ("attn.c_proj.weight", "mlp.c_proj.weight")
# The init scheme's standard deviation of every other weight matrix (and of both embeddings).
INIT_STD = 0.02

# Published totals of the four OpenAI checkpoints (unique tensors of GPT2LMHeadModel: the tied matrix once).
GOLDEN_PARAMS = {
    "gpt2": 124_439_808,
    "gpt2-medium": 354_823_168,
    "gpt2-large": 774_030_080,
    "gpt2-xl": 1_557_611_200,
}
# The same without the position embeddings (nanoGPT's get_num_params(non_embedding=True)).
NON_EMBEDDING_PARAMS = {
    "gpt2": 123_653_376,
    "gpt2-medium": 353_774_592,
    "gpt2-large": 772_719_360,
    "gpt2-xl": 1_555_972_800,
}
# gpt2 with an untied head: one more 50257 x 768 matrix.
UNTIED_GPT2_PARAMS = 163_037_184


def block_shapes(n_embd: int) -> dict[str, tuple[int, ...]]:
    """The tensors of one block (names after `transformer.h.{i}.`), in nanoGPT's (Linear) layout."""
    C = n_embd
    return {
        "ln_1.weight": (C,),
        "ln_1.bias": (C,),
        "attn.c_attn.weight": (3 * C, C),
        "attn.c_attn.bias": (3 * C,),
        "attn.c_proj.weight": (C, C),
        "attn.c_proj.bias": (C,),
        "ln_2.weight": (C,),
        "ln_2.bias": (C,),
        "mlp.c_fc.weight": (4 * C, C),
        "mlp.c_fc.bias": (4 * C,),
        "mlp.c_proj.weight": (C, 4 * C),
        "mlp.c_proj.bias": (C,),
    }


# GPT-2's roles within one block, in forward order, as (role, nanoGPT name after `transformer.h.{i}.`,
# (in, out) of a matrix or (C,) of a vector, in multiples of n_embd). The attention's fused c_attn holds the
# query, key and value projections as its three row blocks (nn.Linear layout), in that order.
BLOCK_ROLES = (
    ("ln_1", "ln_1", (1,)),
    ("attention in", "attn.c_attn", (1, 3)),
    ("attention out", "attn.c_proj", (1, 1)),
    ("ln_2", "ln_2", (1,)),
    ("MLP in", "mlp.c_fc", (1, 4)),
    ("MLP out", "mlp.c_proj", (4, 1)),
)
QKV = ("query", "key", "value")  # the row blocks of c_attn's weight and bias
FINAL_NORM = "transformer.ln_f"
# nanoGPT's prefix of every name but lm_head's; Hugging Face's checkpoint names drop it.
PREFIX = "transformer."


def block_tensor(i: int, suffix: str) -> str:
    """The nanoGPT (and HF GPT2LMHeadModel) name of a block tensor: `transformer.h.{i}.{suffix}`."""
    return f"{PREFIX}h.{i}.{suffix}"


def checkpoint_name(name: str) -> str:
    """How a Hugging Face checkpoint names a nanoGPT tensor (`wte.weight`, `h.0.attn.c_attn.weight`)."""
    return name.removeprefix(PREFIX)


def tensor_shapes(config: Any, vocab_size: int | None = None) -> dict[str, tuple[int, ...]]:
    """Every tensor of a tied GPT-2 (no lm_head.weight: it is wte) with its nanoGPT shape, in forward order.

    vocab_size: the embedding's rows (default config.vocab_size, which may include padding rows).
    """
    C = config.n_embd
    V = config.vocab_size if vocab_size is None else vocab_size
    shapes: dict[str, tuple[int, ...]] = {EMBEDDING: (V, C), POSITIONS: (config.block_size, C)}
    for i in range(config.n_layer):
        shapes.update({f"transformer.h.{i}.{k}": s for k, s in block_shapes(C).items()})
    shapes.update({"transformer.ln_f.weight": (C,), "transformer.ln_f.bias": (C,)})
    return shapes


def hf_tensor_shapes(config: Any) -> dict[str, tuple[int, ...]]:
    """tensor_shapes in Hugging Face's layout: the Conv1D weights (in, out), i.e. transposed."""
    return {k: (s[1], s[0]) if is_conv1d(k) else s for k, s in tensor_shapes(config).items()}


def is_conv1d(name: str) -> bool:
    """True for a weight HF keeps as Conv1D, (in, out), where nanoGPT keeps an nn.Linear's (out, in)."""
    return name.endswith(CONV1D_SUFFIXES)


def to_linear_layout(name: str, tensor: torch.Tensor) -> torch.Tensor:
    """An HF tensor (or its gradient or optimizer state) in nanoGPT's layout: Conv1D weights transposed."""
    return tensor.t() if is_conv1d(name) else tensor


def to_conv1d_layout(name: str, tensor: torch.Tensor) -> torch.Tensor:
    """A nanoGPT tensor in Hugging Face's layout: Linear weights of the Conv1D set transposed."""
    return to_linear_layout(name, tensor)  # a transpose is its own inverse


def param_count(config: Any, vocab_size: int | None = None) -> int:
    """The tied GPT-2 parameter count of a config (real vocabulary unless vocab_size is given, biases)."""
    C, L = config.n_embd, config.n_layer
    per_block = sum(math.prod(s) for s in block_shapes(C).values())
    vocab = vocab_size if vocab_size is not None else getattr(config, "output_vocab_size", config.vocab_size)
    return vocab * C + config.block_size * C + L * per_block + 2 * C


def size_name(config: Any) -> str | None:
    """The OpenAI size a config has the architecture of, or None."""
    fields = ("block_size", "n_layer", "n_head", "n_embd")
    for name in GPT2_SIZES:
        size = gpt2_config(name)
        vocab = getattr(config, "output_vocab_size", config.vocab_size)
        if vocab == size.vocab_size and all(getattr(config, f) == getattr(size, f) for f in fields):
            return name
    return None


def golden_param_count(config: Any) -> int:
    """The published total for the size with config's architecture; else the count from the architecture."""
    name = size_name(config)
    return GOLDEN_PARAMS[name] if name is not None else param_count(config)


def init_spec(name: str, n_layer: int) -> tuple[float, float]:
    """(mean, std) of a tensor under GPT-2's init: N(0, 0.02) weights and embeddings, residual projections
    scaled by 1/sqrt(2 n_layer), zero biases, unit LayerNorm gains (std 0: a constant)."""
    if name.endswith(RESIDUAL_PROJECTION_SUFFIXES):
        return 0.0, INIT_STD / math.sqrt(2 * n_layer)
    if ".ln_" in name or "ln_f." in name:
        return (1.0 if name.endswith(".weight") else 0.0), 0.0
    if name.endswith(".bias"):
        return 0.0, 0.0
    return 0.0, INIT_STD


# ----------------------------------------------------------------------------------------------------------
# The mapping of GPT-2's tensors onto an implementation's own names and layouts

# The attribute of a model instance the harness built that holds its TensorMapping (read with mapping_of).
MAPPING_ATTRIBUTE = "parity_tensor_mapping"


@dataclass(frozen=True)
class Placement:
    """Where (part of) a nanoGPT tensor goes: an implementation parameter, its rows, its layout."""

    target: str  # the implementation's parameter name
    rows: tuple[int, int] | None = None  # rows of the nanoGPT (Linear-layout) tensor it takes: q/k/v
    transpose: bool = False  # the parameter is stored (in, out): Conv1D

    def describe(self) -> str:
        """`trf_blocks.0.att.W_query.weight[rows 0:64] (transposed)`."""
        rows = f"[rows {self.rows[0]}:{self.rows[1]}]" if self.rows else ""
        return f"{self.target}{rows}{' (transposed)' if self.transpose else ''}"


@dataclass
class TensorMapping:
    """Where each nanoGPT tensor lives in one implementation; a name without a placement is its own.

    A tied head is the embedding's Parameter (`tied_head` names its second name, if any); an untied head
    (`head`) gets a copy of the embedding's values from a tied checkpoint.
    """

    placements: dict[str, list[Placement]] = field(default_factory=dict)
    tied: bool = False  # the head is the token embedding (same Parameter or same storage, or no head)
    head: str | None = None  # an untied head's parameter name
    tied_head: str | None = None  # the tied head's own name for the embedding (`lm_head.decoder.weight`)
    stack: str = "\0"  # the first block's name prefix (`trf_blocks.0.`), for the mapping's patterns

    @property
    def stack_i(self) -> str:
        """The block prefix with `{i}` for the index."""
        return self.stack[: -len("0.")] + "{i}." if self.stack.endswith("0.") else self.stack

    @property
    def identity(self) -> bool:
        """Every tensor goes to its own nanoGPT name, whole and untransposed (nanoGPT-named code)."""
        return all(
            len(ps) == 1 and ps[0].target == name and ps[0].rows is None and not ps[0].transpose
            for name, ps in self.placements.items()
        ) and self.head in (None, HEAD)

    def target(self, nano: str) -> str:
        """The implementation's name of a whole nanoGPT tensor; the head of a model tied without a head
        module of its own is the embedding."""
        if nano == HEAD:
            if self.head or self.tied_head:
                return self.head or self.tied_head  # type: ignore[return-value]
            return self.target(EMBEDDING) if self.tied and self.placements else HEAD
        places = self.placements.get(nano)
        return places[0].target if places and len(places) == 1 and places[0].rows is None else nano

    def source(self, name: str) -> tuple[str, Placement]:
        """(the nanoGPT name, the placement) of an implementation parameter; an unmapped name is its own."""
        if name in (self.head, self.tied_head):
            return HEAD, Placement(name)
        for nano, places in self.placements.items():
            for p in places:
                if p.target == name:
                    return nano, p
        return name, Placement(name)

    def role(self, name: str) -> str:
        """The nanoGPT name of an implementation parameter (its own name when unmapped)."""
        return self.source(name)[0]

    def view(self, name: str, linear: torch.Tensor) -> torch.Tensor:
        """A tensor of name's role in nanoGPT's layout, as the implementation's parameter `name` holds it."""
        p = self.source(name)[1]
        t = linear if p.rows is None else linear[p.rows[0] : p.rows[1]]
        return t.t() if p.transpose else t

    def hf_view(self, name: str, hf: torch.Tensor) -> torch.Tensor:
        """Hugging Face's tensor of name's role (or its gradient) as the implementation's `name` holds it."""
        return self.view(name, to_linear_layout(self.role(name), hf))

    def place(self, sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """A nanoGPT-named, Linear-layout state dict in the implementation's names and layouts."""
        out: dict[str, torch.Tensor] = {}
        for name, places in self.placements.items():
            for p in places:
                t = sd[name] if p.rows is None else sd[name][p.rows[0] : p.rows[1]]
                out[p.target] = (t.t() if p.transpose else t).contiguous()
        if self.head is not None:
            out[self.head] = sd.get(HEAD, sd[EMBEDDING])
        return out

    def mapping_lines(self) -> list[str]:
        """`h.{i}.attn.c_attn.weight -> trf_blocks.{i}.att.W_query.weight[rows 0:64]`, one per pattern."""
        lines: list[str] = []
        for name, places in self.placements.items():
            if ".h." in name and ".h.0." not in name:
                continue  # blocks after the first follow the first's pattern
            targets = ", ".join(p.describe() for p in places)
            if ".h.0." in name:
                name, targets = name.replace(".h.0.", ".h.{i}."), targets.replace(self.stack, self.stack_i)
            lines.append(f"{checkpoint_name(name)} -> {targets}")
        if self.head is not None:
            lines.append(f"wte.weight -> {self.head} (untied head: a copy of the values)")
        elif self.tied:
            alias = f" ({self.tied_head}: the same Parameter)" if self.tied_head not in (None, HEAD) else ""
            lines.append(f"lm_head.weight: the token embedding (tied){alias}")
        return lines


def identity_mapping(config: Any) -> TensorMapping:
    """The mapping of nanoGPT-named, tied code: every tensor of tensor_shapes under its own name."""
    places = {name: [Placement(name)] for name in tensor_shapes(config)}
    return TensorMapping(places, tied=True, tied_head=HEAD, stack=f"{PREFIX}h.0.")


def mapping_of(model: Any) -> TensorMapping:
    """The mapping the harness recorded on a model it built; names map to themselves when none was
    (the reference nanoGPT, Hugging Face's model)."""
    found = model.__dict__.get(MAPPING_ATTRIBUTE) if hasattr(model, "__dict__") else None
    return found if isinstance(found, TensorMapping) else TensorMapping()


def record_mapping(model: Any, mapping: TensorMapping) -> None:
    """Record on a model instance where its tensors' roles are (read back with mapping_of)."""
    model.__dict__[MAPPING_ATTRIBUTE] = mapping
