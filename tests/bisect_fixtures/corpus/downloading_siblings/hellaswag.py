"""An evaluation module as training repositories have one: it gets the tokenizer when imported.

Corpus shape: `tiktoken.get_encoding("gpt2")` at module level downloads the BPE files unless they are
cached; the tested child process serves them offline from the files the project ships.
"""

import tiktoken

enc = tiktoken.get_encoding("gpt2")
VOCAB_SIZE = enc.n_vocab


def render_example(example: dict) -> tuple[list[int], list[int]]:
    """The context's tokens and the tokens of each ending."""
    return enc.encode(example["ctx"]), [enc.encode(" " + e)[0] for e in example["endings"]]


def iterate_examples(split: str) -> list[dict]:
    """The examples of a split (none here)."""
    return []
