"""Role discovery (parity/foreign/roles.py) and the architecture check's departures, on the corpus's shapes.

Faithful ports in other names and layouts get every GPT-2 tensor by role, and HF's weights placed by the
discovered mapping give HF's logits; non-GPT-2 models get the departures that name what differs.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import torch
from torch import nn

from conftest import TINY
from nanogpt.model import GPTConfig
from nanogpt.schema import HEAD, to_linear_layout
from parity.checks.architecture import architecture_departures
from parity.foreign.roles import Unit, discover_roles, matrix_layout

CORPUS = Path(__file__).parent / "bisect_fixtures" / "corpus"


def _corpus(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"roles_corpus_{name}", CORPUS / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _build(name: str, **extra: Any) -> nn.Module:
    module = _corpus(name)
    torch.manual_seed(1)
    return module.GPT(module.GPTConfig(**TINY, **extra)).double().eval()


def _hf_weights(hf: nn.Module) -> dict[str, torch.Tensor]:
    """HF's tensors under nanoGPT's names, in nanoGPT's (Linear) layout."""
    return {
        k: to_linear_layout(k, v)
        for k, v in hf.state_dict().items()
        if not k.endswith((".attn.bias", ".attn.masked_bias"))
    }


@pytest.mark.parametrize(
    ("name", "extra"), [("book_style", {}), ("book_style", {"tie": True}), ("hf_lineage", {})]
)
def test_faithful_port_loaded_by_role_gives_hf_logits(
    name: str, extra: dict[str, Any], make_hf_gpt2: Any
) -> None:
    model, hf = _build(name, **extra), make_hf_gpt2()
    roles = discover_roles(model, GPTConfig(**TINY))
    assert roles.complete, roles.departures
    placed = roles.place(_hf_weights(hf))
    params = {n for n, _ in model.named_parameters()}
    assert params <= set(placed), params - set(placed)
    model.load_state_dict(placed, strict=False)
    idx = torch.randint(0, TINY["vocab_size"], (2, 9), generator=torch.Generator().manual_seed(0))
    logits = model(idx)
    torch.testing.assert_close(logits, hf(idx).logits, rtol=1e-12, atol=1e-12)


def test_square_conv1d_projection_is_transposed_by_evidence(make_hf_gpt2: Any) -> None:
    """c_proj (C x C) of a Conv1D port: shape cannot tell, the probe does; a wrong guess changes logits."""
    roles = discover_roles(_build("hf_lineage"), GPTConfig(**TINY))
    (place,) = roles.placements["transformer.h.0.attn.c_proj.weight"]
    assert place.transpose and place.target == "transformer.h.0.attn.c_proj.weight"
    (linear,) = discover_roles(_build("llmc_style"), GPTConfig(**TINY)).placements[
        "transformer.h.0.attn.c_proj.weight"
    ]
    assert not linear.transpose


def test_a_module_whose_layout_the_probe_cannot_decide_is_a_departure() -> None:
    class Odd(nn.Module):  # a square weight used neither as x @ W nor as x @ W.T
        def __init__(self) -> None:
            super().__init__()
            self.weight = nn.Parameter(torch.zeros(4, 4))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x @ (self.weight + self.weight.t())

    assert matrix_layout(Unit("odd", Odd(), dict(Odd().named_parameters()))) is None


def test_book_style_mapping_lines_show_the_split_and_the_untied_head() -> None:
    lines = discover_roles(_build("book_style"), GPTConfig(**TINY)).mapping_lines()
    C = TINY["n_embd"]
    assert (
        f"h.{{i}}.attn.c_attn.weight -> trf_blocks.{{i}}.att.W_query.weight[rows 0:{C}], "
        f"trf_blocks.{{i}}.att.W_key.weight[rows {C}:{2 * C}], "
        f"trf_blocks.{{i}}.att.W_value.weight[rows {2 * C}:{3 * C}]"
    ) in lines
    assert "wte.weight -> tok_emb.weight" in lines
    assert "ln_f.weight -> final_norm.scale" in lines
    assert "wte.weight -> out_head.weight (untied head: a copy of the values)" in lines


def test_head_aliasing_the_embedding_is_the_tie_not_a_missing_parameter() -> None:
    model = _build("hf_lineage")
    assert model.lm_head.decoder.weight is model.transformer.wte.weight
    roles = discover_roles(model, GPTConfig(**TINY))
    assert roles.tied and roles.head is None and HEAD not in roles.place(_hf_weights_of_zeros(model))


def _hf_weights_of_zeros(model: nn.Module) -> dict[str, torch.Tensor]:
    from nanogpt.schema import tensor_shapes

    return {k: torch.zeros(s) for k, s in tensor_shapes(GPTConfig(**TINY)).items()}


def test_nanogpt_names_are_the_identity_mapping(tiny_gpt: nn.Module) -> None:
    roles = discover_roles(tiny_gpt, GPTConfig(**TINY))
    assert roles.identity and roles.tied and roles.complete


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("name", ["book_style", "hf_lineage", "llmc_style"])
def test_faithful_ports_have_no_departures(name: str, dtype: torch.dtype) -> None:
    """In float64, and as built (float32): the probes bring their own float64 tensors."""
    assert architecture_departures(_build(name).to(dtype), GPTConfig(**TINY))[1] == []


def test_rmsnorm_without_biases_departs_by_name() -> None:
    departures = architecture_departures(_build("rmsnorm_no_bias"), GPTConfig(**TINY))[1]
    text = "\n".join(departures)
    assert "block {i} ln_1: no LayerNorm parameters" in text
    assert "no biases: transformer.h.{i}.attn.c_attn.weight has none" in text
    assert "ln_f: no LayerNorm parameters" in text
    assert "another activation" in text
    assert len(departures) == len(set(departures)) <= 8  # one line per pattern, not one per block


def test_rotary_model_departs_for_its_missing_position_embedding() -> None:
    roles, departures = architecture_departures(_build("rotary_untied"), GPTConfig(**TINY))
    assert departures == [
        f"no position embedding ({TINY['block_size']} x {TINY['n_embd']} learned positions; "
        "rotary or none instead)"
    ]
    assert roles.head == "lm_head.weight" and not roles.tied


def test_rmsnorm_with_a_bias_is_not_layernorm() -> None:
    class RMSNormWithBias(nn.Module):
        def __init__(self, n: int) -> None:
            super().__init__()
            self.weight, self.bias = nn.Parameter(torch.ones(n)), nn.Parameter(torch.zeros(n))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.nn.functional.rms_norm(x, (x.size(-1),), self.weight) + self.bias

    model = _build("llmc_style")
    model.transformer.ln_f = RMSNormWithBias(TINY["n_embd"]).double()
    departures = architecture_departures(model, GPTConfig(**TINY))[1]
    assert departures == ["transformer.ln_f is not LayerNorm (eps 1e-5) on a probe"]


def test_as_many_positions_as_tokens_keeps_the_embeddings_and_the_head_apart() -> None:
    """V == T: the position embedding has the token embedding's shape, and is never taken for the head."""
    from nanogpt.model import GPT

    square = GPTConfig(block_size=48, vocab_size=48, n_layer=2, n_head=2, n_embd=16)
    model = GPT(square)
    roles = discover_roles(model, square)
    assert roles.identity and roles.tied and roles.complete, roles.departures
    model.lm_head.weight = model.transformer.wpe.weight  # tied to the wrong matrix
    roles = discover_roles(model, square)
    assert roles.placements["transformer.wpe.weight"][0].target == "transformer.wpe.weight"
    assert roles.head == "lm_head.weight" and not roles.tied
