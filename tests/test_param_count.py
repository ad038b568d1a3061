"""nanogpt.schema.param_count is the one parameter-count formula: it matches a built model, padded or not."""

from __future__ import annotations

import torch

from nanogpt.model import GPT, GPTConfig
from nanogpt.resources import training_bytes_lower_bound
from nanogpt.schema import param_count


def _built_count(config: GPTConfig) -> int:
    with torch.device("meta"):
        return sum(p.numel() for p in GPT(config).parameters())  # the tied matrix once


def test_the_formula_counts_what_a_padded_model_allocates_and_the_real_vocabulary_by_default() -> None:
    config = GPTConfig(n_layer=3, n_head=4, n_embd=48, block_size=64, vocab_size=112, logical_vocab_size=100)
    assert param_count(config, vocab_size=config.vocab_size) == _built_count(config)
    assert param_count(config) == _built_count(config) - 12 * 48, "the 12 padding rows left out"


def test_the_training_memory_bound_counts_weights_grads_and_both_moments() -> None:
    config = GPTConfig(n_layer=2, n_head=2, n_embd=32, block_size=16, vocab_size=64)
    batches = 2 * 8 * 1 * 1 * 16
    logits = 2 * 1 * 16 * 64 * 4
    assert training_bytes_lower_bound(config, 1, 16) == 4 * 4 * _built_count(config) + logits + batches
