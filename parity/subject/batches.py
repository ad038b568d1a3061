"""The token batches every parity check runs on, deterministic for a given config.

Several sequences in one batch (batching bugs), a single token (off-by-one masks, empty attention),
a full block_size sequence (position embeddings and masks at the far end), and a real English sentence
through the real GPT-2 tokenizer (realistic token statistics).
"""

from __future__ import annotations

import torch

from nanogpt.model import GPTConfig

SENTENCE = (
    "Our model, called GPT-2 (a successor to GPT), was trained simply to predict the next word in "
    "40GB of Internet text."
)
BATCH_KINDS = ("several_sequences", "length_1", "full_block", "sentence")


def _random_tokens(shape: tuple[int, int], vocab: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab, shape, generator=g)


def sentence_tokens(vocab: int, block_size: int) -> torch.Tensor:
    """The GPT-2 sentence as (1, T) token ids; folded into range for a smaller synthetic vocabulary."""
    from nanogpt.tokenizer import encode

    ids = torch.tensor([encode(SENTENCE)], dtype=torch.long)[:, :block_size]
    return ids % vocab


def token_batch(kind: str, config: GPTConfig) -> torch.Tensor:
    """The (B, T) input ids of one batch kind."""
    vocab, block = config.output_vocab_size, config.block_size
    if kind == "several_sequences":
        return _random_tokens((4, min(64, block)), vocab, seed=1)
    if kind == "length_1":
        return _random_tokens((3, 1), vocab, seed=2)
    if kind == "full_block":
        return _random_tokens((1, block), vocab, seed=3)
    if kind == "sentence":
        return sentence_tokens(vocab, block)
    raise ValueError(f"unknown batch kind {kind!r}; choose one of {', '.join(BATCH_KINDS)}")


def targets_for(idx: torch.Tensor, vocab: int, seed: int = 4) -> torch.Tensor:
    """Next-token targets for idx: the shifted sequence, with a random final target."""
    last = _random_tokens((idx.size(0), 1), vocab, seed)
    return torch.cat([idx[:, 1:], last], dim=1)


def gradient_batch(config: GPTConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """(idx, targets) for the gradient checks: 2 sequences of up to 64 tokens."""
    idx = _random_tokens((2, min(64, config.block_size)), config.output_vocab_size, seed=5)
    return idx, targets_for(idx, config.output_vocab_size)
