"""Finding the model class, its config and its loss convention in GPT-2 code that names them its own way.

Each implementation here is a few lines written to tmp_path (a token embedding, a LayerNorm and a head:
enough to return vocab-sized logits), imported with `import_implementation` in this process and built on
a tiny config. The full-model shapes run through both front ends as corpus variants (corpus.py).
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
import torch
from torch.nn import functional as F

from nanogpt.model import GPTConfig
from parity.core.errors import ImplementationError
from parity.foreign.discovery import split_class
from parity.foreign.impl import check_implementation_path, import_implementation

CONFIG = GPTConfig(block_size=16, vocab_size=97, n_layer=1, n_head=2, n_embd=32)

HEADER = """
import torch
import torch.nn as nn
from torch.nn import functional as F


class Cfg:
    def __init__(self, vocab_size=50257, n_positions=1024, n_ctx=1024, n_embd=768, n_layer=12, n_head=12,
                 layer_norm_epsilon=1e-5):
        self.vocab_size, self.n_positions, self.n_ctx = vocab_size, n_positions, n_ctx
        self.n_embd, self.n_layer, self.n_head = n_embd, n_layer, n_head
        self.layer_norm_epsilon = layer_norm_epsilon


class Block(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.ln = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon)

    def forward(self, x):
        return x + self.ln(x)


class Net(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)
        self.wpe = nn.Embedding(config.n_positions, config.n_embd)
        self.block = Block(config)
        self.head = nn.Linear(config.n_embd, config.vocab_size, bias=False)

    def logits(self, idx):
        return self.head(self.block(self.wte(idx) + self.wpe(torch.arange(idx.size(1)))))
"""


def write(tmp_path: Path, forward: str, extra: str = "") -> Path:
    """model.py: HEADER's Net with this forward (indented into the class), then extra module-level code."""
    path = tmp_path / "model.py"
    path.write_text(HEADER + textwrap.indent(textwrap.dedent(forward), "    ") + textwrap.dedent(extra))
    return path


PLAIN = """
def forward(self, idx):
    return self.logits(idx)
"""


def test_file_colon_class_names_the_model_class(tmp_path: Path) -> None:
    path = write(tmp_path, PLAIN)
    assert split_class(f"{path}:Block") == (str(path), "Block")
    assert split_class(str(path)) == (str(path), None)
    assert check_implementation_path(f"{path}:Net") == path.resolve()
    impl = import_implementation(f"{path}:Block")
    assert impl.gpt_cls.__name__ == "Block" and "model: Block (named by FILE:CLASS)" in impl.notes
    with pytest.raises(ImplementationError, match="defines no torch.nn.Module class Missing"):
        import_implementation(f"{path}:Missing")


def test_the_only_class_returning_logits_is_discovered_with_its_config_class(tmp_path: Path) -> None:
    impl = import_implementation(write(tmp_path, PLAIN))
    assert impl.gpt_cls.__name__ == "Net"
    assert "model: Net (discovered: the only nn.Module returning (2, 8, 512) logits)" in impl.notes
    assert any(
        n.startswith("config: Cfg (the class declaring n_layer, n_head, n_embd), fields mapped: ")
        and "n_ctx<-block_size, n_positions<-block_size" in n
        for n in impl.notes
    )
    model, _ = impl.build(CONFIG)
    assert model.wpe.weight.shape == (CONFIG.block_size, CONFIG.n_embd)  # n_positions <- block_size
    assert model.head.weight.shape == (CONFIG.vocab_size, CONFIG.n_embd)


def test_the_outermost_of_two_logits_classes_is_the_model(tmp_path: Path) -> None:
    extra = """

    class Wrapper(nn.Module):
        def __init__(self, config):
            super().__init__()
            self.net = Net(config)

        def forward(self, idx):
            return self.net(idx)
    """
    impl = import_implementation(write(tmp_path, PLAIN, extra))
    assert impl.gpt_cls.__name__ == "Wrapper"
    assert "model: Wrapper (discovered: the outermost nn.Module returning (2, 8, 512) logits)" in impl.notes


def test_two_unrelated_logits_classes_ask_for_file_colon_class(tmp_path: Path) -> None:
    extra = """

    class Other(Net):
        pass
    """
    with pytest.raises(ImplementationError, match=r"none holds the others: Net, Other; pass FILE:CLASS"):
        import_implementation(write(tmp_path, PLAIN, extra))


def test_no_class_returning_logits_lists_what_each_returned(tmp_path: Path) -> None:
    plain_hidden = """
    def forward(self, idx):
        return self.wte(idx)
    """
    with pytest.raises(ImplementationError) as e:
        import_implementation(write(tmp_path, plain_hidden))
    message = str(e.value)
    assert "defines no GPT class, and no nn.Module class of it returns vocab-sized logits" in message
    assert "Net: returns (2, 8, 64), not (2, 8, 512) logits" in message
    assert "Block: RuntimeError" in message and "pass FILE:CLASS" in message


def test_a_dict_config_is_mapped_from_the_keys_the_code_reads(tmp_path: Path) -> None:
    source = """
import torch
import torch.nn as nn

BOOK_CONFIG = {"vocab_size": 50257, "context_length": 1024, "emb_dim": 768, "n_heads": 12, "n_layers": 12,
               "drop_rate": 0.1, "qkv_bias": False, "note": "kept"}


class GPTModel(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        assert cfg["n_heads"] and cfg["n_layers"] and cfg["note"] == "kept"
        self.cfg = cfg
        self.tok_emb = nn.Embedding(cfg["vocab_size"], cfg["emb_dim"])
        self.pos_emb = nn.Embedding(cfg["context_length"], cfg["emb_dim"])
        self.out_head = nn.Linear(cfg["emb_dim"], cfg["vocab_size"], bias=cfg.get("qkv_bias"))

    def forward(self, in_idx):
        return self.out_head(self.tok_emb(in_idx) + self.pos_emb(torch.arange(in_idx.size(1))))
"""
    path = tmp_path / "book.py"
    path.write_text(source)
    impl = import_implementation(path)
    assert impl.gpt_cls.__name__ == "GPTModel"
    assert (
        "config: a dict, keys mapped: context_length<-block_size, drop_rate<-dropout, emb_dim<-n_embd, "
        "n_heads<-n_head, n_layers<-n_layer, qkv_bias<-bias"
    ) in impl.notes
    model, _ = impl.build(CONFIG)
    assert model.cfg == {
        "vocab_size": 97,
        "context_length": 16,
        "emb_dim": 32,
        "n_heads": 2,
        "n_layers": 1,
        "drop_rate": 0.0,
        "qkv_bias": True,  # GPT-2 has q, k, v biases
        "note": "kept",
    }


# (forward, the load summary's loss note, whether the loss is nanoGPT's mean cross-entropy of next tokens)
LOSSES = {
    "targets": (
        """
        def forward(self, idx, targets=None):
            logits = self.logits(idx)
            loss = None if targets is None else F.cross_entropy(logits.flatten(0, 1), targets.flatten())
            return logits, loss
        """,
        None,
        True,
    ),
    "second-argument": (
        """
        def forward(self, x, y=None):
            logits = self.logits(x)
            return logits, None if y is None else F.cross_entropy(logits.flatten(0, 1), y.flatten())
        """,
        "loss: forward(idx, y), targets not shifted again (nanoGPT's convention)",
        True,
    ),
    "labels-unshifted": (
        """
        def forward(self, input_ids, attention_mask=None, labels=None):
            logits = self.logits(input_ids)
            loss = None if labels is None else F.cross_entropy(logits.flatten(0, 1), labels.flatten())
            return {"logits": logits, "loss": loss}
        """,
        "loss: forward(idx, labels=...) with next-token targets: found on a probe batch",
        True,
    ),
    "labels-shifted": (
        """
        def forward(self, input_ids, attention_mask=None, labels=None):
            logits = self.logits(input_ids)
            if labels is None:
                return logits, None
            return logits, F.cross_entropy(logits[:, :-1].flatten(0, 1), labels[:, 1:].flatten())
        """,
        "loss: forward(idx, labels=...) with labels it shifts itself: found on a probe batch",
        True,
    ),
    "lm-labels-loss-only": (
        """
        def forward(self, input_ids, position_ids=None, lm_labels=None):
            logits = self.logits(input_ids)
            if lm_labels is None:
                return logits
            shift_logits, shift_labels = logits[..., :-1, :].contiguous(), lm_labels[..., 1:].contiguous()
            return F.cross_entropy(shift_logits.view(-1, shift_logits.size(-1)), shift_labels.view(-1))
        """,
        "loss: forward(idx, lm_labels=...) with labels it shifts itself: found on a probe batch",
        True,
    ),
    "no-loss": (
        PLAIN,
        "loss: forward takes no targets: the harness computes the loss from its logits (mean cross-entropy)",
        True,
    ),
    # nanoGPT's targets are next tokens already: shifting them again is a bug, left for the loss check.
    "targets-shifted-again": (
        """
        def forward(self, idx, targets=None):
            logits = self.logits(idx)
            if targets is None:
                return logits, None
            return logits, F.cross_entropy(logits[:, :-1].flatten(0, 1), targets[:, 1:].flatten())
        """,
        None,
        False,
    ),
}


@pytest.mark.parametrize("name", list(LOSSES))
def test_each_loss_convention_gives_the_loss_of_next_token_targets(tmp_path: Path, name: str) -> None:
    forward, note, correct = LOSSES[name]
    impl = import_implementation(write(tmp_path, forward))
    model, _ = impl.build(CONFIG)
    g = torch.Generator().manual_seed(0)
    idx, targets = (torch.randint(0, CONFIG.vocab_size, (3, 12), generator=g) for _ in range(2))
    logits, loss = model(idx, targets)
    expected = F.cross_entropy(logits.flatten(0, 1), targets.flatten())
    assert logits.shape == (3, 12, CONFIG.vocab_size)
    assert torch.isclose(loss, expected, rtol=1e-5).item() is correct
    if correct:  # the loss carries the gradient of the implementation's parameters
        loss.backward()
        assert model.head.weight.grad is not None and model.head.weight.grad.abs().sum() > 0
    losses = [n for n in impl.notes if n.startswith("loss: ")]
    assert losses == ([] if note is None else [losses[0]]) and (note is None or losses[0].startswith(note))
    if correct:  # one token: a shifted loss covers no position, so the harness's loss of the logits
        assert torch.isfinite(model(idx[:, :1], targets[:, :1])[1])
