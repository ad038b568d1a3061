"""The bugs of the mutant catalog (tests/mutants.py): one realistic GPT-2 bug per class.

Each is a subclass of a `nanogpt.model` class that overrides the one method with the bug, or a model whose
weights arrive through a converter with one bug (`ConverterBug`). The catalog pairs each with the named
check that must kill it; the controls built from the same scaffolding must pass every check.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import torch
import torch.nn as nn
from torch.nn import functional as F

from nanogpt.model import GPT, MLP, CausalSelfAttention, GPTConfig, LayerNorm

# ----------------------------------------------------------------------------------------------------------
# mutant building blocks


def gpt_with(module_cls: type[nn.Module]) -> type[GPT]:
    """A GPT whose every instance of module_cls's base class is re-classed as module_cls.

    Mutant sub-modules only override methods, so re-classing keeps every parameter (and its name) as it is:
    the checkpoint loads unchanged, on the meta device too, and only the overridden method differs.
    """
    base = module_cls.__mro__[1]

    def __init__(self: GPT, config: GPTConfig) -> None:
        GPT.__init__(self, config)
        for module in self.modules():
            if type(module) is base:
                module.__class__ = module_cls

    return type(
        f"GPTWith{module_cls.__name__}", (GPT,), {"__init__": __init__, "__doc__": module_cls.__doc__}
    )


class ReimplementedGPT(GPT):
    """GPT.forward re-implemented with switches, so each GPT-level mutant turns exactly one step off.

    With every switch on it is the reference (the control `reimplemented-forward` proves it).
    """

    add_positions = True
    final_norm = True
    crop_padding = True
    detach_positions = False
    shift_targets_again = False
    ignore_index = -1

    def forward(
        self, idx: torch.Tensor, targets: torch.Tensor | None = None, last_only: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        pos = torch.arange(0, idx.size(1), dtype=torch.long, device=idx.device)
        x = self.transformer.wte(idx)
        if self.add_positions:
            positions = self.transformer.wpe(pos)
            x = x + (positions.detach() if self.detach_positions else positions)
        x = self.transformer.drop(x)
        for block in self.transformer.h:
            x = block(x)
        if self.final_norm:
            x = self.transformer.ln_f(x)
        logits = self.lm_head(x)
        if self.crop_padding:
            logits = logits[..., : self.config.output_vocab_size]
        loss = None
        if targets is not None:
            scored, wanted = (
                (logits[:, :-1], targets[:, 1:]) if self.shift_targets_again else (logits, targets)
            )
            loss = F.cross_entropy(
                scored.reshape(-1, logits.size(-1)), wanted.reshape(-1), ignore_index=self.ignore_index
            )
        return logits, loss


def attention_heads(x: torch.Tensor, n_head: int) -> torch.Tensor:
    """(B, T, C) -> (B, n_head, T, head_dim)."""
    B, T, C = x.size()
    return x.view(B, T, n_head, C // n_head).transpose(1, 2)


def merge_heads(y: torch.Tensor) -> torch.Tensor:
    """(B, n_head, T, head_dim) -> (B, T, C)."""
    B, H, T, D = y.size()
    return y.transpose(1, 2).contiguous().view(B, T, H * D)


# ----------------------------------------------------------------------------------------------------------
# the tie


class HeadNotTied(GPT):
    """The head is not re-tied after loading: load_state_dict(assign=True) leaves two Parameters.

    They share storage, so logits match, but autograd gives each only its own path's gradient, parameters()
    counts the matrix twice and an optimizer updates the storage twice with half the gradient each time.
    """

    def tie_weights(self) -> None:
        pass


class HeadRewrappedAsParameter(GPT):
    """After the tie, the head is re-wrapped: lm_head.weight = nn.Parameter(wte.weight.data).

    The two names then share storage as two Parameter objects: logits match, but each gets only its own
    path's gradient and an optimizer updates the storage twice per step (and keeps two AdamW states).
    """

    def __init__(self, config: GPTConfig) -> None:
        super().__init__(config)
        if config.tie_weights:
            self.lm_head.weight = nn.Parameter(self.transformer.wte.weight.data)


class TieWrongDirection(GPT):
    """Ties lm_head.weight = wte.weight after initialising, so the head's GPT-2 init is lost.

    In the reference the direction cannot matter at construction: reset_parameters runs after the tie and
    draws the one shared matrix once. Many code bases instead initialise first and tie last, giving the head
    GPT-2's N(0, 0.02) and leaving the embedding to the tie ("it becomes the head"), which is right only if
    the head's Parameter survives the tie. This variant does that, and ties the other way: the survivor is the
    embedding's Parameter with nn.Embedding's default N(0, 1), 50x GPT-2's scale. Loading is unaffected (the
    checkpoint overwrites the one shared tensor), so every check on loaded weights passes; training from
    scratch does not: the loss at init is several nats above ln(vocab), which train-steps catches. The control
    `tie-right-direction-after-init` is the same class with the reference's direction, and passes.
    """

    def __init__(self, config: GPTConfig) -> None:
        super().__init__(replace(config, tie_weights=False))  # every Parameter gets GPT-2's init, untied
        self.transformer.wte.reset_parameters()  # the embedding keeps its module default: the tie covers it
        self.config.tie_weights = config.tie_weights
        if config.tie_weights:
            self.tie_weights()

    def tie_weights(self) -> None:
        self.lm_head.weight = self.transformer.wte.weight  # the bug: the embedding's Parameter survives


class TieRightDirectionAfterInit(TieWrongDirection):
    """Control: TieWrongDirection's init-then-tie, in the reference's direction; the head's init survives."""

    def tie_weights(self) -> None:
        self.transformer.wte.weight = self.lm_head.weight


class HeadTiedToPositions(GPT):
    """lm_head.weight tied to the position embedding wpe instead of the token embedding wte."""

    def tie_weights(self) -> None:
        self.lm_head.weight = self.transformer.wpe.weight


class HeadTiedToCopy(GPT):
    """lm_head.weight copies wte: equal values, separate tensors; the first optimizer step unties them."""

    def tie_weights(self) -> None:
        self.lm_head.weight = nn.Parameter(self.transformer.wte.weight.detach().clone())


# ----------------------------------------------------------------------------------------------------------
# the converter


class ConverterBug(GPT):
    """A GPT whose weights arrive through a converter with one bug, applied as the state dict is loaded."""

    def convert(self, key: str, value: torch.Tensor) -> torch.Tensor:
        return value

    def load_state_dict(self, state_dict: Any, strict: bool = True, assign: bool = False) -> Any:
        converted = {k: self.convert(k, v) for k, v in state_dict.items()}
        return super().load_state_dict(converted, strict=strict, assign=assign)


class CProjNotTransposed(ConverterBug):
    """The converter skips transposing attn.c_proj from HF's Conv1D (in, out) layout; square, so it loads."""

    def convert(self, key: str, value: torch.Tensor) -> torch.Tensor:
        return value.t() if key.endswith("attn.c_proj.weight") else value


class CFcNotTransposed(ConverterBug):
    """The converter forgets to transpose mlp.c_fc from HF's Conv1D (in, out) layout; not square."""

    def convert(self, key: str, value: torch.Tensor) -> torch.Tensor:
        return value.t() if key.endswith("mlp.c_fc.weight") else value


class CAttnReshapedNotTransposed(ConverterBug):
    """The converter reshapes attn.c_attn (in, out) to (out, in) instead of transposing: loads, scrambled."""

    def convert(self, key: str, value: torch.Tensor) -> torch.Tensor:
        # The harness's converter transposed correctly; undo it to get the stored layout,
        # then view it as (out, in).
        return value.t().contiguous().reshape(value.shape) if key.endswith("attn.c_attn.weight") else value


# ----------------------------------------------------------------------------------------------------------
# attention


class QKVWrongOrder(CausalSelfAttention):
    """The fused c_attn output is split as k, q, v instead of GPT-2's q, k, v."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k, q, v = self.c_attn(x).split(self.n_embd, dim=2)
        y = self.attend(*(attention_heads(t, self.n_head) for t in (q, k, v)))
        return self.resid_dropout(self.c_proj(merge_heads(y)))


class ScaleMissing(CausalSelfAttention):
    """Attention scores are not scaled by 1/sqrt(head_dim)."""

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=1.0)


class ScaleByHeadDim(CausalSelfAttention):
    """Attention scores are scaled by 1/head_dim instead of 1/sqrt(head_dim)."""

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=1.0 / q.size(-1))


class MaskOffByOne(CausalSelfAttention):
    """The causal mask is off by one: tril(diagonal=1) lets every position see the next token."""

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        T = q.size(-2)
        mask = torch.ones(T, T, dtype=torch.bool, device=q.device).tril(diagonal=1)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=1.0 / math.sqrt(q.size(-1)))


class MaskMissing(CausalSelfAttention):
    """No causal mask: every position attends to the whole sequence, the future included."""

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return F.scaled_dot_product_attention(q, k, v, is_causal=False, scale=1.0 / math.sqrt(q.size(-1)))


class AttnBiasDropped(CausalSelfAttention):
    """The attention output projection c_proj drops its bias."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.c_attn(x).split(self.n_embd, dim=2)
        y = self.attend(*(attention_heads(t, self.n_head) for t in (q, k, v)))
        return self.resid_dropout(F.linear(merge_heads(y), self.c_proj.weight))


class SlidingWindow64(CausalSelfAttention):
    """Attention over a sliding window of 64 tokens (a long-context setting left on): wrong only beyond 64."""

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        T = q.size(-2)
        i = torch.arange(T, device=q.device)
        mask = (i[:, None] >= i[None, :]) & (i[:, None] - i[None, :] < 64)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=1.0 / math.sqrt(q.size(-1)))


class DropoutInEval(CausalSelfAttention):
    """Attention dropout is applied whatever the mode: `dropout_p=self.dropout` without `if self.training`."""

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        scale = 1.0 / math.sqrt(q.size(-1))
        return F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout, is_causal=True, scale=scale)


class AttnDropoutOnOutput(CausalSelfAttention):
    """Attention dropout drops the attention output (B, T, C) instead of the attention weights."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.c_attn(x).split(self.n_embd, dim=2)
        heads = (attention_heads(t, self.n_head) for t in (q, k, v))
        y = F.scaled_dot_product_attention(*heads, is_causal=True)
        return self.resid_dropout(self.c_proj(self.attn_dropout(merge_heads(y))))


class ResidDropoutBeforeCProj(CausalSelfAttention):
    """The residual dropout of attention is applied before c_proj (same shape) instead of after it."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.c_attn(x).split(self.n_embd, dim=2)
        y = self.attend(*(attention_heads(t, self.n_head) for t in (q, k, v)))
        return self.c_proj(self.resid_dropout(merge_heads(y)))


class MlpDropoutAfterGelu(MLP):
    """The MLP's dropout drops the hidden layer after the GELU (B, T, 4C) instead of the c_proj output."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c_proj(self.dropout(self.gelu(self.c_fc(x))))


class EmbDropoutTokensOnly(ReimplementedGPT):
    """Embedding dropout drops the token embeddings only, before the position embeddings are added."""

    def forward(
        self, idx: torch.Tensor, targets: torch.Tensor | None = None, last_only: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        pos = torch.arange(0, idx.size(1), dtype=torch.long, device=idx.device)
        x = self.transformer.drop(self.transformer.wte(idx)) + self.transformer.wpe(pos)
        for block in self.transformer.h:
            x = block(x)
        logits = self.lm_head(self.transformer.ln_f(x))[..., : self.config.output_vocab_size]
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-1)
        return logits, loss


# ----------------------------------------------------------------------------------------------------------
# MLP and LayerNorm


class ExactGelu(MLP):
    """The exact erf GELU instead of GPT-2's tanh approximation (transformers' "gelu" vs "gelu_new")."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.c_proj(F.gelu(self.c_fc(x))))


class GeluConstantFiveDigits(MLP):
    """The tanh GELU handwritten with sqrt(2/pi) rounded to 0.79788: off by 7e-6 relative, float64 sees it."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.c_fc(x)
        gelu = 0.5 * h * (1.0 + torch.tanh(0.79788 * (h + 0.044715 * torch.pow(h, 3.0))))
        return self.dropout(self.c_proj(gelu))


class MlpBiasDropped(MLP):
    """The MLP's first projection c_fc drops its bias."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.c_proj(self.gelu(F.linear(x, self.c_fc.weight))))


class LayerNormEps6(LayerNorm):
    """LayerNorm with eps=1e-6 (PyTorch/TF habits) instead of GPT-2's 1e-5."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x, self.weight.shape, self.weight, self.bias, 1e-6)


# ----------------------------------------------------------------------------------------------------------
# the forward pass


class PositionsDetached(ReimplementedGPT):
    """The position embeddings are added detached (a leftover .detach()): same logits, wpe never learns."""

    detach_positions = True


class LossShiftsTargetsAgain(ReimplementedGPT):
    """The model's own loss shifts already-shifted targets (HF's labels= habit): logits right, loss wrong."""

    shift_targets_again = True


class LossIgnoresNothing(ReimplementedGPT):
    """A hand-written cross-entropy (log_softmax, gather) without ignore_index: no target is ignored."""

    def forward(
        self, idx: torch.Tensor, targets: torch.Tensor | None = None, last_only: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        logits, _ = super().forward(idx)
        if targets is None:
            return logits, None
        return logits, -F.log_softmax(logits, dim=-1).gather(-1, targets.unsqueeze(-1)).mean()


class LossIgnoresPadToken(ReimplementedGPT):
    """The loss ignores token 0 (taken for a pad id) instead of -1: masked targets are not ignored."""

    ignore_index = 0


class PositionsNotAdded(ReimplementedGPT):
    """Position embeddings are never added to the token embeddings."""

    add_positions = False


class FinalNormMissing(ReimplementedGPT):
    """The final LayerNorm ln_f is skipped before the head."""

    final_norm = False


class PaddingNotCropped(ReimplementedGPT):
    """A padded vocabulary (e.g. 97 -> 128 rows), logits not cropped: padding columns enter every softmax."""

    crop_padding = False


# ----------------------------------------------------------------------------------------------------------
# generation


class SamplingGPT(GPT):
    """GPT.generate re-implemented with switches, so each sampling mutant turns exactly one step off."""

    multiply_temperature = False
    top_k_keeps_only_max = False
    crop_first_block = False

    def generate(
        self, idx: torch.Tensor, max_new_tokens: int, temperature: float = 1.0, top_k: int | None = None
    ) -> torch.Tensor:
        block = self.config.block_size
        for _ in range(max_new_tokens):
            if idx.size(1) <= block:
                idx_cond = idx
            else:
                idx_cond = idx[:, :block] if self.crop_first_block else idx[:, -block:]
            logits = self(idx_cond, last_only=True)[0][:, -1, :]
            logits = logits * temperature if self.multiply_temperature else logits / temperature
            if top_k is not None:
                v, _ = torch.topk(logits, min(top_k, logits.size(-1)))
                logits[logits < v[:, [0 if self.top_k_keeps_only_max else -1]]] = -float("inf")
            idx = torch.cat((idx, torch.multinomial(F.softmax(logits, dim=-1), num_samples=1)), dim=1)
        return idx


def sampling_bug(name: str, switch: str, doc: str) -> type[SamplingGPT]:
    """A SamplingGPT with one switch turned on; doc is the bug, as a mutant class's docstring says it."""
    return type(name, (SamplingGPT,), {switch: True, "__doc__": doc})


TemperatureMultiplied = sampling_bug(
    "TemperatureMultiplied",
    "multiply_temperature",
    "generate multiplies the logits by the temperature instead of dividing: 0.7 sharpens nothing.",
)
TopKKeepsOnlyMax = sampling_bug(
    "TopKKeepsOnlyMax",
    "top_k_keeps_only_max",
    "generate's top-k filter compares with v[:, [0]] (the largest) instead of v[:, [-1]]: top-1 sampling.",
)
ContextCroppedToFirstBlock = sampling_bug(
    "ContextCroppedToFirstBlock",
    "crop_first_block",
    "generate crops a long context to its first block_size tokens instead of its last.",
)


class LastOnlyGivesFirstPosition(GPT):
    """The no-target call for generation (last_only) returns the first position's logits, not the last's."""

    def forward(
        self, idx: torch.Tensor, targets: torch.Tensor | None = None, last_only: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        logits, loss = super().forward(idx, targets)
        return (logits[:, [0], :], loss) if last_only and targets is None else (logits, loss)


class HeadBias(GPT):
    """lm_head built with a bias (nn.Linear's default), which GPT-2 does not have.

    The checkpoint has no lm_head.bias, so, like upstream-style loaders that copy only the keys a checkpoint
    has, this variant leaves it at nn.Linear's default init (seeded here for reproducibility).
    """

    def __init__(self, config: GPTConfig) -> None:
        super().__init__(config)
        bound = 1.0 / math.sqrt(config.n_embd)  # nn.Linear's default bias init
        self.lm_head.bias = nn.Parameter(torch.empty(config.vocab_size).uniform_(-bound, bound))

    def load_state_dict(self, state_dict: Any, strict: bool = True, assign: bool = False) -> Any:
        bound = 1.0 / math.sqrt(self.config.n_embd)
        g = torch.Generator().manual_seed(0)
        bias = torch.empty(self.config.vocab_size, dtype=torch.float64).uniform_(-bound, bound, generator=g)
        return super().load_state_dict({**state_dict, "lm_head.bias": bias}, strict=strict, assign=assign)


# ----------------------------------------------------------------------------------------------------------
# counting and the optimizer


class ParametersCountTieTwice(GPT):
    """parameters() yields named_parameters(remove_duplicate=False): tied matrix counts twice everywhere."""

    def parameters(self, recurse: bool = True) -> Iterator[nn.Parameter]:
        for _, p in self.named_parameters(recurse=recurse, remove_duplicate=False):
            yield p


class NumParamsCountTieTwice(GPT):
    """get_num_params sums named_parameters(remove_duplicate=False): the tied matrix is counted twice."""

    def get_num_params(self, non_embedding: bool = True) -> int:
        n = sum(p.numel() for _, p in self.named_parameters(remove_duplicate=False))
        return n - self.transformer.wpe.weight.numel() if non_embedding else n


class TiedInTwoGroups(GPT):
    """Decay by module type: the tied matrix is in the decay group as lm_head and the no-decay group as wte.

    This was upstream nanoGPT's old rule (Linear weights decay, Embedding weights do not), which met the tied
    matrix twice; torch.optim refuses one Parameter in two groups.
    """

    def optimizer_groups(self, weight_decay: float) -> list[dict[str, Any]]:
        decay, no_decay = [], []
        for module in self.modules():
            for name, p in module.named_parameters(recurse=False):
                (decay if isinstance(module, nn.Linear) and name == "weight" else no_decay).append(p)
        return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


class TiedTwiceInDecayGroup(GPT):
    """The decay group has all names, the tied matrix under both: AdamW decays and updates it twice a step."""

    def optimizer_groups(self, weight_decay: float) -> list[dict[str, Any]]:
        params = [p for _, p in self.named_parameters(remove_duplicate=False)]
        return [
            {"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
            {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
        ]


class AdamNotAdamW(GPT):
    """torch.optim.Adam instead of AdamW: the weight decay is added to the gradient (L2), not decoupled."""

    def configure_optimizers(
        self, weight_decay: float, learning_rate: float, betas: tuple[float, float], device_type: str = "cpu"
    ) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.optimizer_groups(weight_decay), lr=learning_rate, betas=betas)


class BetasDropped(GPT):
    """configure_optimizers takes betas but never passes them on: AdamW runs with its default (0.9, 0.999)."""

    def configure_optimizers(
        self, weight_decay: float, learning_rate: float, betas: tuple[float, float], device_type: str = "cpu"
    ) -> torch.optim.Optimizer:
        return torch.optim.AdamW(self.optimizer_groups(weight_decay), lr=learning_rate)


class DecayEveryTensor(GPT):
    """Decay by dim() >= 1: biases and LayerNorm gains are weight-decayed with the matrices."""

    def optimizer_groups(self, weight_decay: float) -> list[dict[str, Any]]:
        params = list(self.parameters())
        return [
            {"params": [p for p in params if p.dim() >= 1], "weight_decay": weight_decay},
            {"params": [p for p in params if p.dim() < 1], "weight_decay": 0.0},
        ]


# ----------------------------------------------------------------------------------------------------------
# the implementation's own loader


class FromPretrainedCountsMaskBuffers(GPT):
    """from_pretrained asserts HF's state dict has its own number of keys, its attn.bias masks counted.

    The upstream bug: the model keeps a causal-mask buffer per block (attention without flash), the key
    count includes them, and `GPT.from_pretrained("gpt2")` raises AssertionError on a real cache.
    """

    def __init__(self, config: GPTConfig) -> None:
        super().__init__(config)
        mask = torch.tril(torch.ones(config.block_size, config.block_size))
        for block in self.transformer.h:
            block.attn.register_buffer("bias", mask.view(1, 1, config.block_size, config.block_size))

    @classmethod
    def from_pretrained(cls, model_type: str, **kwargs: Any) -> GPT:
        from transformers import GPT2LMHeadModel

        from nanogpt.hf import config_from_hf

        model_hf = GPT2LMHeadModel.from_pretrained(model_type)
        sd, sd_hf = cls(config_from_hf(model_hf.config.to_dict())).state_dict(), model_hf.state_dict()
        assert len(sd_hf) == len(sd), f"mismatched keys: {len(sd_hf)} != {len(sd)}"
        return super().from_pretrained(model_type, **kwargs)


class FromPretrainedUntiesHead(GPT):
    """from_pretrained assigns lm_head.weight a new Parameter from HF's state dict after tying: a copy."""

    @classmethod
    def from_pretrained(cls, model_type: str, **kwargs: Any) -> GPT:
        from transformers import GPT2LMHeadModel

        model = super().from_pretrained(model_type, **kwargs)
        sd_hf = GPT2LMHeadModel.from_pretrained(model_type).state_dict()
        model.lm_head.weight = nn.Parameter(sd_hf["lm_head.weight"].clone())
        return model
