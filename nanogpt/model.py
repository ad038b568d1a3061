"""The reference nanoGPT: a faithful GPT-2 with tied input/output embeddings.

Everything in this project is compared against this file, so it stays readable: one concept per class,
forward passes that read top to bottom like the GPT-2 paper, and state-dict names identical to upstream
nanoGPT (`transformer.wte.weight`, ..., `lm_head.weight`) so checkpoints interchange with upstream-style
code. Conversion to and from Hugging Face checkpoints lives in `nanogpt.hf`.

References:
1) the official GPT-2 TensorFlow implementation released by OpenAI:
   https://github.com/openai/gpt-2/blob/master/src/model.py
2) huggingface/transformers PyTorch implementation:
   https://github.com/huggingface/transformers/blob/main/src/transformers/models/gpt2/modeling_gpt2.py
"""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn
from torch.nn import functional as F

# GPT-2 LayerNorm epsilon (OpenAI's `norm` uses 1e-5; HF's `layer_norm_epsilon` default is 1e-5 too).
LAYER_NORM_EPS = 1e-5


class LayerNorm(nn.Module):
    """LayerNorm with an optional bias (PyTorch's has no `bias=False` before 2.1)."""

    def __init__(self, ndim: int, bias: bool) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(ndim))
        self.bias = nn.Parameter(torch.zeros(ndim)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x, self.weight.shape, self.weight, self.bias, LAYER_NORM_EPS)


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention with one fused q,k,v projection, as in GPT-2."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.n_head = config.n_head
        self.n_embd = config.n_embd
        self.dropout = config.dropout
        # q, k, v for all heads in one matmul; the output columns are ordered [q | k | v] like GPT-2's.
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.attn_dropout = nn.Dropout(config.dropout)
        self.resid_dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.size()
        q, k, v = self.c_attn(x).split(self.n_embd, dim=2)
        # (B, T, C) -> (B, n_head, T, head_dim)
        q = q.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        k = k.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        v = v.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        y = self.attend(q, k, v)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # re-assemble all head outputs side by side
        return self.resid_dropout(self.c_proj(y))

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """softmax(q k^T / sqrt(head_dim) + causal mask) v, with the fused kernel where one exists."""
        scale = 1.0 / math.sqrt(q.size(-1))
        dropout_p = self.dropout if self.training else 0.0
        return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, is_causal=True, scale=scale)


class MLP(nn.Module):
    """The position-wise feed-forward network: width 4 * n_embd, tanh-approximated GELU."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        # GPT-2 uses the tanh approximation of GELU ("gelu_new" in transformers); the exact erf GELU
        # differs by up to ~1e-3 and is a classic parity bug.
        self.gelu = nn.GELU(approximate="tanh")
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.c_proj(self.gelu(self.c_fc(x))))


class Block(nn.Module):
    """A pre-LayerNorm transformer block: x + attn(ln_1(x)), then x + mlp(ln_2(x))."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.ln_1 = LayerNorm(config.n_embd, bias=config.bias)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = LayerNorm(config.n_embd, bias=config.bias)
        self.mlp = MLP(config)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        x = x + self.mlp(self.ln_2(x))
        return x


@dataclass
class GPTConfig:
    """Hyper-parameters of a GPT-2 model; field names as in upstream nanoGPT."""

    block_size: int = 1024
    # Rows of the embedding matrix. Upstream nanoGPT trains with 50304 (50257 rounded up to a multiple of
    # 64, which is faster on GPUs); the extra rows are padding that no real token ever uses.
    vocab_size: int = 50304
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    dropout: float = 0.0
    # True: bias in Linears and LayerNorms, like GPT-2. False: a bit better and faster (upstream's note).
    bias: bool = True
    # Real tokens when vocab_size is padded (50257 for GPT-2). Logits are cropped to this many columns so
    # the padding rows can never leak into a softmax. None means "no padding": all vocab_size rows are real.
    logical_vocab_size: int | None = None
    # GPT-2 ties lm_head to the token embedding (https://paperswithcode.com/method/weight-tying). False is
    # only for controls such as the untied twin of the parity harness.
    tie_weights: bool = True

    def __post_init__(self) -> None:
        problems = []
        for name in ("block_size", "vocab_size", "n_layer", "n_head", "n_embd"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                problems.append(f"{name} must be a positive integer, got {value!r}")
        if not problems and self.n_embd % self.n_head != 0:
            problems.append(f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})")
        if not 0.0 <= float(self.dropout) < 1.0:
            problems.append(f"dropout must be in [0, 1), got {self.dropout!r}")
        if self.logical_vocab_size is not None and not 1 <= self.logical_vocab_size <= self.vocab_size:
            problems.append(
                f"logical_vocab_size ({self.logical_vocab_size}) must be between 1 and "
                f"vocab_size ({self.vocab_size})"
            )
        if problems:
            raise ValueError("invalid GPTConfig: " + "; ".join(problems))

    @property
    def output_vocab_size(self) -> int:
        """Columns of the logits: the real tokens, without padding rows."""
        return self.logical_vocab_size if self.logical_vocab_size is not None else self.vocab_size


# The four OpenAI GPT-2 sizes (https://github.com/openai/gpt-2/blob/master/DEVELOPERS.md).
GPT2_SIZES: dict[str, dict[str, int]] = {
    "gpt2": dict(n_layer=12, n_head=12, n_embd=768),  # 124M params
    "gpt2-medium": dict(n_layer=24, n_head=16, n_embd=1024),  # 350M params
    "gpt2-large": dict(n_layer=36, n_head=20, n_embd=1280),  # 774M params
    "gpt2-xl": dict(n_layer=48, n_head=25, n_embd=1600),  # 1558M params
}


def gpt2_config(name: str, **overrides: Any) -> GPTConfig:
    """The GPTConfig of an OpenAI GPT-2 size (vocab 50257, block 1024, bias), with optional overrides."""
    if name not in GPT2_SIZES:
        raise ValueError(f"unknown GPT-2 size {name!r}; choose one of {', '.join(GPT2_SIZES)}")
    args: dict[str, Any] = dict(GPT2_SIZES[name], vocab_size=50257, block_size=1024, bias=True, dropout=0.0)
    args.update(overrides)
    return GPTConfig(**args)


class GPT(nn.Module):
    """GPT-2: token + position embeddings, n_layer blocks, final LayerNorm, a head tied to the embedding."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.config = config
        self.transformer = nn.ModuleDict(
            dict(
                wte=nn.Embedding(config.vocab_size, config.n_embd),
                wpe=nn.Embedding(config.block_size, config.n_embd),
                drop=nn.Dropout(config.dropout),
                h=nn.ModuleList([Block(config) for _ in range(config.n_layer)]),
                ln_f=LayerNorm(config.n_embd, bias=config.bias),
            )
        )
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        if config.tie_weights:
            self.tie_weights()
        self.reset_parameters()

    def tie_weights(self) -> None:
        """Make lm_head.weight and transformer.wte.weight one Parameter object.

        The direction of the assignment decides which Parameter survives, and with it its initialisation
        and any optimizer or hook attached to it. We keep upstream nanoGPT's direction: the embedding
        points at the head's Parameter (`wte.weight = lm_head.weight`). With loaded weights it makes no
        difference, and at construction `reset_parameters` runs after the tie and draws the single shared
        matrix exactly once from N(0, 0.02), which is GPT-2's init for both roles. (The other direction
        would keep the embedding's Parameter; a code base that initialises the head specially, e.g. with
        zeros, silently loses that init when the embedding is assigned last.)
        """
        self.transformer.wte.weight = self.lm_head.weight

    def is_tied(self) -> bool:
        """True when lm_head.weight and transformer.wte.weight are the same Parameter object."""
        return self.lm_head.weight is self.transformer.wte.weight

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """GPT-2 init: N(0, 0.02) weights, zero biases, residual projections scaled by 1/sqrt(2*n_layer)."""
        seen: set[int] = set()
        for name, p in self.named_parameters():  # named_parameters() yields the tied matrix once
            if id(p) in seen:
                continue
            seen.add(id(p))
            if name.endswith("ln_1.weight") or name.endswith("ln_2.weight") or name.endswith("ln_f.weight"):
                nn.init.ones_(p)
            elif name.endswith(".bias"):
                nn.init.zeros_(p)
            elif name.endswith("c_proj.weight"):
                # The residual stream sums 2 * n_layer projections; scale them so its variance stays O(1)
                # (GPT-2 paper, section 2.3).
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * self.config.n_layer))
            else:
                nn.init.normal_(p, mean=0.0, std=0.02)

    def get_num_params(self, non_embedding: bool = True) -> int:
        """Number of parameters, the tied matrix counted once.

        With non_embedding=True the position embeddings are subtracted; the token embeddings are not,
        because through the tie they are the output head's weights, which do real compute. (Untied, the
        input token embedding is subtracted too.)
        """
        n_params = sum(p.numel() for p in self.parameters())  # parameters() de-duplicates shared tensors
        if non_embedding:
            n_params -= self.transformer.wpe.weight.numel()
            if not self.is_tied():
                n_params -= self.transformer.wte.weight.numel()
        return n_params

    def forward(
        self, idx: torch.Tensor, targets: torch.Tensor | None = None, last_only: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Return (logits, loss): logits for every position (or only the last with last_only=True).

        loss is the mean cross-entropy against targets (ignore_index=-1), or None without targets.
        """
        device = idx.device
        b, t = idx.size()
        if t > self.config.block_size:
            raise ValueError(
                f"cannot forward a sequence of length {t}: block_size is {self.config.block_size} "
                "(crop the input, or use crop_block_size() on a model with a larger block)"
            )
        if not torch.compiler.is_compiling() and idx.numel():
            # An id outside the vocabulary would fail deep inside the embedding with an opaque IndexError
            # (or a device-side assert on CUDA). One fused min/max reduction; skipped while tracing, so a
            # compiled graph has no data-dependent branch.
            lo, hi = torch.aminmax(idx)
            if lo < 0 or hi >= self.config.output_vocab_size:
                raise ValueError(
                    f"token ids must be in [0, {self.config.output_vocab_size}), the vocabulary, got ids "
                    f"from {int(lo)} to {int(hi)} (was the data tokenized for another vocabulary?)"
                )
        pos = torch.arange(0, t, dtype=torch.long, device=device)

        tok_emb = self.transformer.wte(idx)  # (b, t, n_embd)
        pos_emb = self.transformer.wpe(pos)  # (t, n_embd)
        x = self.transformer.drop(tok_emb + pos_emb)
        for block in self.transformer.h:
            x = block(x)
        x = self.transformer.ln_f(x)

        if last_only and targets is None:
            x = x[:, [-1], :]  # generation: only the last position is needed; the list keeps the time dim
        logits = self.lm_head(x)
        if logits.size(-1) != self.config.output_vocab_size:
            logits = logits[..., : self.config.output_vocab_size]  # padding rows never reach a softmax
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-1)
        return logits, loss

    def crop_block_size(self, block_size: int) -> None:
        """Shrink the context window (e.g. load GPT-2's 1024 and fine-tune at 256)."""
        if not 1 <= block_size <= self.config.block_size:
            raise ValueError(f"block_size must be between 1 and {self.config.block_size}, got {block_size}")
        self.config.block_size = block_size
        self.transformer.wpe.weight = nn.Parameter(self.transformer.wpe.weight[:block_size].detach().clone())

    def optimizer_groups(self, weight_decay: float) -> list[dict[str, Any]]:
        """The AdamW parameter groups: every trainable parameter in exactly one group, the tied one once.

        Decay policy: every parameter with 2 or more dimensions decays (Linear weights and both embedding
        matrices); 1-D parameters (biases, LayerNorm weights) do not. The tied token-embedding/head matrix
        is 2-D, so it decays, once, under its first name `transformer.wte.weight`. This is upstream
        nanoGPT's policy since it switched to the dimension rule.
        """
        decay, no_decay = [], []
        for _, p in self.named_parameters():  # de-duplicated: the tied matrix appears once
            if not p.requires_grad:
                continue
            (decay if p.dim() >= 2 else no_decay).append(p)
        return [
            {"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ]

    def configure_optimizers(
        self,
        weight_decay: float,
        learning_rate: float,
        betas: tuple[float, float],
        device_type: str = "cpu",
    ) -> torch.optim.AdamW:
        """AdamW over optimizer_groups(); the fused kernel on CUDA where this torch supports it."""
        groups = self.optimizer_groups(weight_decay)
        fused_available = "fused" in inspect.signature(torch.optim.AdamW).parameters
        extra = dict(fused=True) if fused_available and device_type == "cuda" else dict()
        return torch.optim.AdamW(groups, lr=learning_rate, betas=betas, **extra)

    def estimate_mfu(self, fwdbwd_per_iter: int, dt: float, peak_flops: float) -> float:
        """Model FLOPs utilization: achieved FLOP/s over peak_flops (see nanogpt.flops.PEAK_FLOPS).

        FLOPs per token follow the PaLM paper, appendix B (https://arxiv.org/abs/2204.02311):
        6 N + 12 L H Q T, N the non-embedding parameter count.
        """
        if dt <= 0 or peak_flops <= 0:
            raise ValueError("dt and peak_flops must be positive")
        cfg = self.config
        N = self.get_num_params()
        L, H, Q, T = cfg.n_layer, cfg.n_head, cfg.n_embd // cfg.n_head, cfg.block_size
        flops_per_token = 6 * N + 12 * L * H * Q * T
        flops_per_iter = flops_per_token * T * fwdbwd_per_iter
        return flops_per_iter / dt / peak_flops

    @torch.no_grad()
    def generate(
        self,
        idx: torch.Tensor,
        max_new_tokens: int,
        temperature: float = 1.0,
        top_k: int | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Append max_new_tokens sampled tokens to idx (b, t); temperature 0 means greedy."""
        if temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {temperature}")
        if top_k is not None and top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {top_k}")
        for _ in range(max_new_tokens):
            idx_cond = idx if idx.size(1) <= self.config.block_size else idx[:, -self.config.block_size :]
            logits, _ = self(idx_cond, last_only=True)
            logits = logits[:, -1, :]
            if temperature == 0:
                idx_next = logits.argmax(dim=-1, keepdim=True)
            else:
                logits = logits / temperature
                if top_k is not None:
                    v, _ = torch.topk(logits, min(top_k, logits.size(-1)))
                    logits[logits < v[:, [-1]]] = -float("inf")
                probs = F.softmax(logits, dim=-1)
                idx_next = torch.multinomial(probs, num_samples=1, generator=generator)
            idx = torch.cat((idx, idx_next), dim=1)
        return idx

    @classmethod
    def from_pretrained(cls, source: Any, **kwargs: Any) -> GPT:
        """Load GPT-2 weights: a size name from the HF cache, an HF checkpoint directory or a GPT2LMHeadModel.

        See nanogpt.hf.load_gpt for the keyword arguments (dtype, device, allow_untied, vocab_size, ...).
        """
        # Imported here, as upstream imports transformers here: the model stays torch-only at import time.
        from nanogpt.hf import load_gpt

        return load_gpt(source, model_cls=cls, **kwargs)
