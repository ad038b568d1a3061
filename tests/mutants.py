"""A catalog of deliberately wrong GPT-2 implementations ("mutants"), each naming the check that must kill it.

Each mutant is one realistic bug, a class of tests/mutant_models.py. The catalog is data: `MUTANTS` (each must
be killed) and `CONTROLS` (correct variants built with the same scaffolding, which must pass every check).
tests/test_mutants.py writes each entry as an implementation file (`implementation_file`) and runs it through
the product's own entry points, `pytest parity/ --impl` and the bisect command, on a small synthetic
checkpoint: the registry's checks (parity/checks/registry.py) decide, never a composition of our own.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from mutant_models import (
    AdamNotAdamW,
    AttnBiasDropped,
    AttnDropoutOnOutput,
    BetasDropped,
    CAttnReshapedNotTransposed,
    CFcNotTransposed,
    ContextCroppedToFirstBlock,
    CProjNotTransposed,
    DecayEveryTensor,
    DropoutInEval,
    EmbDropoutTokensOnly,
    ExactGelu,
    FinalNormMissing,
    FromPretrainedCountsMaskBuffers,
    FromPretrainedUntiesHead,
    GeluConstantFiveDigits,
    HeadBias,
    HeadNotTied,
    HeadRewrappedAsParameter,
    HeadTiedToCopy,
    HeadTiedToPositions,
    LastOnlyGivesFirstPosition,
    LayerNormEps6,
    LossIgnoresNothing,
    LossIgnoresPadToken,
    LossShiftsTargetsAgain,
    MaskMissing,
    MaskOffByOne,
    MlpBiasDropped,
    MlpDropoutAfterGelu,
    NumParamsCountTieTwice,
    PaddingNotCropped,
    ParametersCountTieTwice,
    PositionsDetached,
    PositionsNotAdded,
    QKVWrongOrder,
    ReimplementedGPT,
    ResidDropoutBeforeCProj,
    SamplingGPT,
    ScaleByHeadDim,
    ScaleMissing,
    SlidingWindow64,
    TemperatureMultiplied,
    TiedInTwoGroups,
    TiedTwiceInDecayGroup,
    TieRightDirectionAfterInit,
    TieWrongDirection,
    TopKKeepsOnlyMax,
    gpt_with,
)

from nanogpt.model import GPT, GPTConfig

# The synthetic checkpoints the mutants load, with dropout 0.1 configured (eval-mode checks must see it
# inactive). "square" has block_size == vocab_size, so a head tied to the position embedding
# (block_size x n_embd) has the head's shape and loads without a shape error. "wide" and "wide-square" are
# GPT-2's width (768, 12 heads) for the slow variant of the catalog tests.
CONFIGS = {
    "tiny": GPTConfig(block_size=32, vocab_size=97, n_layer=2, n_head=2, n_embd=16, dropout=0.1),
    "square": GPTConfig(block_size=48, vocab_size=48, n_layer=2, n_head=2, n_embd=16, dropout=0.1),
    "wide": GPTConfig(block_size=64, vocab_size=1000, n_layer=4, n_head=12, n_embd=768, dropout=0.1),
    "wide-square": GPTConfig(block_size=256, vocab_size=256, n_layer=2, n_head=12, n_embd=768, dropout=0.1),
    # A block longer than the gradient batch's 64 tokens: only the full-block batch reaches past position 64.
    "long": GPTConfig(block_size=96, vocab_size=97, n_layer=2, n_head=2, n_embd=16, dropout=0.1),
    "wide-long": GPTConfig(block_size=96, vocab_size=1000, n_layer=2, n_head=12, n_embd=768, dropout=0.1),
    # One block: the last position's logits cannot show a missing causal mask (it sees every token anyway).
    "one-layer": GPTConfig(block_size=32, vocab_size=97, n_layer=1, n_head=2, n_embd=16, dropout=0.1),
    "wide-one-layer": GPTConfig(
        block_size=64, vocab_size=1000, n_layer=1, n_head=12, n_embd=768, dropout=0.1
    ),
}
TESTS_DIR = Path(__file__).resolve().parent


# ----------------------------------------------------------------------------------------------------------
# the catalog entry


@dataclass(frozen=True)
class Mutant:
    """One bug: how to build it, which named check must kill it, and what the check's message must name."""

    name: str
    model_cls: type[GPT] = GPT
    killed_by: str = "logits"
    cause: str = ""  # a regex the killing check's message must match (re.search)
    config: str = "tiny"
    padded: bool = False  # load with the vocabulary padded to the next multiple of 64 (like 50257 -> 50304)

    @property
    def bug(self) -> str:
        """The bug, in one line: the first line of the mutant's docstring."""
        doc = self.model_cls.__doc__ or ""
        return doc.strip().splitlines()[0]


def padded_vocab(vocab_size: int) -> int:
    """The vocabulary padded to the next multiple of 64, with at least one padding row (97 -> 128)."""
    return 64 * (vocab_size // 64 + 1)


# ----------------------------------------------------------------------------------------------------------
# the catalog

MUTANTS: tuple[Mutant, ...] = (
    # the tie
    Mutant("head-not-tied", HeadNotTied, "tied-storage", r"not tied|separate Parameter|a copy, not a tie"),
    Mutant("tie-wrong-direction", TieWrongDirection, "init", r"wrong direction.*N\(0, 1\)"),
    Mutant(
        "head-tied-to-wpe",
        HeadTiedToPositions,
        "tied-storage",
        r"tied to transformer\.wpe\.weight",
        config="square",
    ),
    Mutant("head-tied-to-copy", HeadTiedToCopy, "tied-storage", r"a copy, not a tie"),
    Mutant(
        "head-rewrapped-as-parameter",
        HeadRewrappedAsParameter,
        "tied-storage",
        r"two Parameter objects|a copy, not a tie",
    ),
    # the converter
    Mutant(
        "c_proj-not-transposed", CProjNotTransposed, cause=r"first divergence at transformer\.h\.0\.attn:"
    ),
    Mutant("c_fc-not-transposed", CFcNotTransposed, "load", r"size mismatch.*mlp\.c_fc\.weight"),
    Mutant(
        "c_attn-reshaped-not-transposed",
        CAttnReshapedNotTransposed,
        cause=r"first divergence at transformer\.h\.0\.attn:",
    ),
    # attention
    Mutant("qkv-split-order", gpt_with(QKVWrongOrder), cause=r"first divergence at transformer\.h\.0\.attn:"),
    Mutant(
        "attn-scale-missing",
        gpt_with(ScaleMissing),
        cause=r"first divergence at transformer\.h\.0\.attn:.*scale",
    ),
    Mutant(
        "attn-scale-1/head_dim",
        gpt_with(ScaleByHeadDim),
        cause=r"first divergence at transformer\.h\.0\.attn:.*scale",
    ),
    Mutant(
        "causal-mask-off-by-one",
        gpt_with(MaskOffByOne),
        cause=r"first divergence at transformer\.h\.0\.attn:.*mask",
    ),
    Mutant(
        "causal-mask-missing",
        gpt_with(MaskMissing),
        cause=r"first divergence at transformer\.h\.0\.attn:.*mask",
    ),
    Mutant(
        "causal-mask-missing-one-layer",
        gpt_with(MaskMissing),
        cause=r"first divergence at transformer\.h\.0\.attn:.*mask",
        config="one-layer",
    ),
    Mutant(
        "attn-bias-dropped", gpt_with(AttnBiasDropped), cause=r"first divergence at transformer\.h\.0\.attn:"
    ),
    Mutant(
        "dropout-in-eval", gpt_with(DropoutInEval), "dropout-sites", r"active in eval mode.*attention weights"
    ),
    Mutant(
        "attn-dropout-on-output",
        gpt_with(AttnDropoutOnOutput),
        "dropout-sites",
        r"block 0 attention weights: Hugging Face drops a \(2, \d+, 16, 16\) tensor.*a \(2, 16, \d+\) tensor",
    ),
    Mutant(
        "resid-dropout-before-c_proj",
        gpt_with(ResidDropoutBeforeCProj),
        "dropout-sites",
        r"another tensor than Hugging Face's at the same shape.*block 0 attention output \(residual\)",
    ),
    Mutant(
        "mlp-dropout-after-gelu",
        gpt_with(MlpDropoutAfterGelu),
        "dropout-sites",
        r"block 0 MLP output \(residual\): Hugging Face drops a \(2, 16, \d+\) tensor"
        r".*a \(2, 16, \d+\) tensor",
    ),
    Mutant(
        "emb-dropout-tokens-only",
        EmbDropoutTokensOnly,
        "dropout-sites",
        r"another tensor than Hugging Face's at the same shape.*first dropped tensor that differs is at "
        r"embeddings",
    ),
    # MLP, LayerNorm, the forward pass
    Mutant("exact-gelu", gpt_with(ExactGelu), cause=r"first divergence at transformer\.h\.0\.mlp:.*GELU"),
    Mutant(
        "mlp-bias-dropped",
        gpt_with(MlpBiasDropped),
        cause=r"first divergence at transformer\.h\.0\.mlp:.*bias",
    ),
    Mutant(
        "layernorm-eps-1e-6",
        gpt_with(LayerNormEps6),
        cause=r"first divergence at transformer\.h\.0\.ln_1:.*eps",
    ),
    Mutant(
        "positions-not-added", PositionsNotAdded, cause=r"first divergence at transformer\.drop:.*position"
    ),
    Mutant("ln_f-missing", FinalNormMissing, cause=r"transformer\.ln_f"),
    Mutant(
        "positions-detached",
        PositionsDetached,
        "grads",
        r"transformer\.wpe\.weight: no gradient on the implementation side",
    ),
    Mutant("loss-shifts-targets-again", LossShiftsTargetsAgain, "loss", r"the logits match.*own loss"),
    Mutant("loss-ignores-nothing", LossIgnoresNothing, "loss", r"ignores neither nanoGPT's -1.*out of range"),
    Mutant(
        "loss-ignores-pad-token", LossIgnoresPadToken, "loss", r"ignores neither.*ignore_index=-1.*Target -1"
    ),
    Mutant(
        "attention-window-64",
        gpt_with(SlidingWindow64),
        cause=r"transformer\.h\.0\.attn.*logits\[full_block\]",
        config="long",
    ),
    Mutant(
        "gelu-constant-5-digits",
        gpt_with(GeluConstantFiveDigits),
        cause=r"first divergence at transformer\.h\.0\.mlp:",
    ),
    Mutant("padding-not-cropped", PaddingNotCropped, cause=r"padd", padded=True),
    Mutant("lm_head-bias", HeadBias, "load", r"no value from the checkpoint: lm_head\.bias"),
    # generation: the implementation's own generate, greedy and sampled
    Mutant(
        "temperature-multiplied",
        TemperatureMultiplied,
        "inference",
        r"step 0 differs.*temperature multiplies the logits",
    ),
    Mutant("top-k-keeps-only-max", TopKKeepsOnlyMax, "inference", r"keeps 1 token\(s\), not the 5.*top-k"),
    Mutant(
        "context-cropped-to-first-block",
        ContextCroppedToFirstBlock,
        "inference",
        r"first \d+ tokens, not the last \(the crop\)",
    ),
    Mutant(
        "last-only-gives-first-position",
        LastOnlyGivesFirstPosition,
        "inference",
        r"greedy continuation by its own generate\(top_k=1\) differs.*no-target call",
    ),
    # counting and the optimizer
    Mutant("parameters-count-tie-twice", ParametersCountTieTwice, "param-count", r"counted twice"),
    Mutant(
        "num-params-count-tie-twice", NumParamsCountTieTwice, "own-count", r"get_num_params.*counted twice"
    ),
    Mutant(
        "tied-in-two-groups", TiedInTwoGroups, "decay-groups", r"transformer\.wte\.weight.*\[0\.1, 0\.0\]"
    ),
    Mutant(
        "tied-twice-in-decay-group",
        TiedTwiceInDecayGroup,
        "optimizer-once",
        r"transformer\.wte\.weight.*\[0\.1, 0\.1\]",
    ),
    Mutant("adam-not-adamw", AdamNotAdamW, "decay-groups", r"torch\.optim\.adam\.Adam differs.*\(L2\)"),
    Mutant("betas-dropped", BetasDropped, "decay-groups", r"betas=\(0\.9, 0\.999\).*betas=\(0\.85, 0\.97\)"),
    Mutant(
        "decay-every-tensor",
        DecayEveryTensor,
        "decay-groups",
        r"ln_1\.weight \(a norm gain\) has weight_decay \[0\.1\].*do not decay",
    ),
    # the implementation's own loader
    Mutant(
        "from-pretrained-counts-mask-buffers",
        FromPretrainedCountsMaskBuffers,
        "own-loader",
        r"raised AssertionError: mismatched keys: \d+ != \d+",
    ),
    Mutant("from-pretrained-unties-head", FromPretrainedUntiesHead, "own-loader", r"a copy, not a tie"),
)

# Correct variants built with the mutants' scaffolding: each must pass every check.
CONTROLS: tuple[Mutant, ...] = (
    Mutant("reference", GPT),
    Mutant("reference-square", GPT, config="square"),
    Mutant("reference-padded", GPT, padded=True),
    Mutant("reimplemented-forward", ReimplementedGPT),
    Mutant("reimplemented-forward-padded", ReimplementedGPT, padded=True),
    Mutant("tie-right-direction-after-init", TieRightDirectionAfterInit),
    Mutant("reimplemented-generate", SamplingGPT),
)


ENTRIES = {m.name: m for m in MUTANTS + CONTROLS}


def padded_config(vocab_size: int) -> type[GPTConfig]:
    """A GPTConfig that pads the vocabulary it is given, as upstream nanoGPT does (50257 -> 50304)."""

    @dataclass
    class PaddedGPTConfig(GPTConfig):
        def __post_init__(self) -> None:
            if self.logical_vocab_size is None:
                self.logical_vocab_size = self.vocab_size
                self.vocab_size = padded_vocab(self.vocab_size)
            super().__post_init__()

    return PaddedGPTConfig


def implementation_classes(name: str) -> tuple[type[GPT], type[GPTConfig]]:
    """(GPT, GPTConfig) of a catalog entry, as an implementation file exposes them."""
    entry = ENTRIES[name]
    return entry.model_cls, padded_config(CONFIGS[entry.config].vocab_size) if entry.padded else GPTConfig


def implementation_file(entry: Mutant, directory: Path) -> Path:
    """A model file exposing the entry's GPT and GPTConfig, for `--impl`."""
    path = directory / f"{entry.name.replace('/', '_')}.py"
    path.write_text(
        f'"""Catalog entry {entry.name}: {entry.bug}"""\n\n'
        "import sys\n\n"
        f"sys.path.insert(0, {str(TESTS_DIR)!r})\n"
        "from mutants import implementation_classes  # noqa: E402\n\n"
        f"GPT, GPTConfig = implementation_classes({entry.name!r})\n"
    )
    return path
