"""The reference nanoGPT: a GPT-2 with tied embeddings, its Hugging Face converter, tokenizer and trainer."""

from nanogpt.model import GPT, GPT2_SIZES, GPTConfig, gpt2_config

__all__ = ["GPT", "GPTConfig", "GPT2_SIZES", "gpt2_config"]
