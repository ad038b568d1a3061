"""Golden parameter counts of the four OpenAI GPT-2 sizes (tied: the token embedding counted once).

Totals from the published checkpoints (sum of numel over unique tensors of GPT2LMHeadModel); the untied
gpt2 figure adds one 50257 x 768 head.
"""

from __future__ import annotations

from nanogpt.model import GPTConfig

TOTAL_PARAMS = {
    "gpt2": 124_439_808,
    "gpt2-medium": 354_823_168,
    "gpt2-large": 774_030_080,
    "gpt2-xl": 1_557_611_200,
}
NON_EMBEDDING_PARAMS = {
    "gpt2": 123_653_376,
    "gpt2-medium": 353_774_592,
    "gpt2-large": 772_719_360,
    "gpt2-xl": 1_555_972_800,
}
UNTIED_GPT2_PARAMS = 163_037_184


def expected_total_params(config: GPTConfig) -> int:
    """The tied GPT-2 parameter count of any config (with biases), from the architecture alone."""
    C, L = config.n_embd, config.n_layer
    per_block = 2 * (2 * C) + (3 * C * C + 3 * C) + (C * C + C) + (4 * C * C + 4 * C) + (4 * C * C + C)
    return config.vocab_size * C + config.block_size * C + L * per_block + 2 * C
