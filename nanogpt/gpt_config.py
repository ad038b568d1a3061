"""GPT-2's hyper-parameters: the config of the reference model and the four OpenAI sizes.

Kept apart from the model so that the converter (nanogpt/hf.py) can read and write configs without
importing the model, and the model can import the converter for `GPT.from_pretrained`: no import cycle.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

# GPT-2 LayerNorm epsilon (OpenAI's `norm` uses 1e-5; HF's `layer_norm_epsilon` default is 1e-5 too).
LAYER_NORM_EPS = 1e-5


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
                f"logical_vocab_size ({self.logical_vocab_size}) must be between 1 and vocab_size ({self.vocab_size})"
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
