"""Unit tests for the reference nanoGPT (nanogpt/model.py): shapes and loss, the weight tie, parameter
counts, initialisation, optimizer groups, generation, MFU and context cropping.

All models are tiny and float64 on the CPU (see tests/conftest.py), except the parameter-count tests,
which build the real GPT-2 sizes on the meta device: shapes without memory or compute.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch.nn import functional as F
from transformers import GPT2Config, GPT2LMHeadModel

from nanogpt.flops import peak_flops
from nanogpt.model import GPT, GPT2_SIZES, GPTConfig, gpt2_config
from nanogpt.schema import GOLDEN_PARAMS, NON_EMBEDDING_PARAMS, UNTIED_GPT2_PARAMS
from parity.core.tolerances import SAME_FUNCTION_F64

# One float64 function sliced two ways: SAME_FUNCTION_F64 in parity/core/tolerances.py says why.
F64_ATOL = SAME_FUNCTION_F64.atol


# ----------------------------------------------------------------------------------------------------------
# 1. shapes and loss


def test_logits_cover_every_position(tiny_gpt: GPT, tokens: torch.Tensor) -> None:
    logits, loss = tiny_gpt(tokens)
    assert logits.shape == (2, 32, 97)
    assert loss is None


def test_last_only_returns_the_last_row_of_the_full_logits(tiny_gpt: GPT, tokens: torch.Tensor) -> None:
    full, _ = tiny_gpt(tokens)
    last, _ = tiny_gpt(tokens, last_only=True)
    assert last.shape == (2, 1, 97)
    torch.testing.assert_close(last, full[:, -1:, :], rtol=0, atol=F64_ATOL)


def test_loss_is_the_cross_entropy_of_the_logits(tiny_gpt: GPT, tokens: torch.Tensor) -> None:
    targets = tokens.roll(-1, dims=1)
    logits, loss = tiny_gpt(tokens, targets)
    expected = F.cross_entropy(logits.reshape(-1, 97), targets.reshape(-1))
    torch.testing.assert_close(loss, expected, rtol=0, atol=F64_ATOL)


def test_targets_of_minus_one_are_ignored_by_the_loss(tiny_gpt: GPT, tokens: torch.Tensor) -> None:
    targets = tokens.roll(-1, dims=1)
    targets[:, -1] = -1  # e.g. the position with no next token
    targets[0, :5] = -1
    logits, loss = tiny_gpt(tokens, targets)
    keep = targets != -1
    expected = F.cross_entropy(logits[keep], targets[keep])
    torch.testing.assert_close(loss, expected, rtol=0, atol=F64_ATOL)


def test_sequence_longer_than_block_size_raises_naming_block_size(tiny_gpt: GPT) -> None:
    too_long = torch.zeros(1, 33, dtype=torch.long)
    with pytest.raises(ValueError, match="block_size"):
        tiny_gpt(too_long)


def test_padded_vocab_gives_logical_vocab_columns(make_gpt, tokens: torch.Tensor) -> None:
    model = make_gpt(vocab_size=128, logical_vocab_size=97)
    assert model.transformer.wte.weight.shape == (128, 16)
    logits, loss = model(tokens, tokens.roll(-1, dims=1))
    assert logits.shape == (2, 32, 97)
    assert torch.isfinite(loss)


# ----------------------------------------------------------------------------------------------------------
# 2. the weight tie


def test_head_and_embedding_are_one_parameter(tiny_gpt: GPT) -> None:
    assert tiny_gpt.lm_head.weight is tiny_gpt.transformer.wte.weight
    assert tiny_gpt.is_tied()
    # parameters() yields the shared matrix once; state_dict() lists it under both names.
    assert sum(p is tiny_gpt.lm_head.weight for p in tiny_gpt.parameters()) == 1
    assert {"lm_head.weight", "transformer.wte.weight"} <= set(tiny_gpt.state_dict())


def test_in_place_change_through_one_name_is_visible_through_the_other(tiny_gpt: GPT) -> None:
    with torch.no_grad():
        tiny_gpt.lm_head.weight[3, 5] = 42.0
        tiny_gpt.transformer.wte.weight[7].zero_()
    assert tiny_gpt.transformer.wte.weight[3, 5].item() == 42.0
    assert torch.count_nonzero(tiny_gpt.lm_head.weight[7]) == 0


def test_tie_survives_dtype_conversion(tiny_config: GPTConfig) -> None:
    model = GPT(tiny_config).to(torch.float64)
    assert model.lm_head.weight.dtype == torch.float64
    assert model.is_tied()


def test_tie_survives_deepcopy(tiny_gpt: GPT) -> None:
    clone = copy.deepcopy(tiny_gpt)
    assert clone.is_tied()
    assert clone.lm_head.weight is not tiny_gpt.lm_head.weight
    torch.testing.assert_close(clone.lm_head.weight, tiny_gpt.lm_head.weight, rtol=0, atol=0)


def test_tie_survives_strict_load_state_dict(make_gpt) -> None:
    source, target = make_gpt(seed=1), make_gpt(seed=2)
    target.load_state_dict(source.state_dict(), strict=True)
    assert target.is_tied()
    torch.testing.assert_close(target.transformer.wte.weight, source.lm_head.weight, rtol=0, atol=0)


def test_tie_survives_torch_save_and_load_into_a_fresh_model(make_gpt, tmp_path, tokens) -> None:
    source = make_gpt(seed=1)
    torch.save(source.state_dict(), tmp_path / "ckpt.pt")
    fresh = make_gpt(seed=2)
    fresh.load_state_dict(torch.load(tmp_path / "ckpt.pt", weights_only=True), strict=True)
    assert fresh.is_tied()
    torch.testing.assert_close(fresh(tokens)[0], source(tokens)[0], rtol=0, atol=0)


# ----------------------------------------------------------------------------------------------------------
# 3. parameter counts of the four GPT-2 sizes

# Totals count the tied matrix once; "non-embedding" subtracts the position embeddings only (see
# GPT.get_num_params). Checked against transformers below.
# The published counts, from the one schema the harness uses too (nanogpt/schema.py).
PARAM_COUNTS = {name: (GOLDEN_PARAMS[name], NON_EMBEDDING_PARAMS[name]) for name in GOLDEN_PARAMS}


@pytest.mark.parametrize("name", list(GPT2_SIZES))
def test_parameter_counts_of_gpt2_sizes(name: str) -> None:
    with torch.device("meta"):
        model = GPT(gpt2_config(name))
    total, non_embedding = PARAM_COUNTS[name]
    assert model.get_num_params(non_embedding=False) == total
    assert model.get_num_params() == non_embedding


def test_untied_gpt2_counts_the_head_separately() -> None:
    with torch.device("meta"):
        model = GPT(gpt2_config("gpt2", tie_weights=False))
    assert not model.is_tied()
    assert model.get_num_params(non_embedding=False) == UNTIED_GPT2_PARAMS


@pytest.mark.parametrize("name", list(GPT2_SIZES))
def test_parameter_count_goldens_match_transformers(name: str) -> None:
    size = GPT2_SIZES[name]
    hf_config = GPT2Config(n_layer=size["n_layer"], n_head=size["n_head"], n_embd=size["n_embd"])
    with torch.device("meta"):
        hf = GPT2LMHeadModel(hf_config)
    assert hf.num_parameters() == PARAM_COUNTS[name][0]


# ----------------------------------------------------------------------------------------------------------
# 4. initialisation


@pytest.fixture(scope="module")
def init_model() -> GPT:
    """A model large enough for std estimates: every matrix has >= 64k entries."""
    torch.manual_seed(0)
    return GPT(GPTConfig(block_size=256, vocab_size=1024, n_layer=4, n_head=4, n_embd=256))


def assert_normal(t: torch.Tensor, std: float) -> None:
    """Sample mean and std of t agree with N(0, std) to 6 standard errors (a false alarm is ~1e-9)."""
    n = t.numel()
    # Standard errors of the sample mean and the sample std of n normal draws: std/sqrt(n), std/sqrt(2n).
    assert abs(t.mean().item()) < 6 * std / math.sqrt(n)
    assert abs(t.std().item() - std) < 6 * std / math.sqrt(2 * n)


def test_weights_are_normal_with_std_002(init_model: GPT) -> None:
    for name, p in init_model.named_parameters():
        if p.dim() == 2 and not name.endswith("c_proj.weight"):
            assert_normal(p.detach(), 0.02)


def test_residual_projections_are_scaled_by_depth(init_model: GPT) -> None:
    std = 0.02 / math.sqrt(2 * init_model.config.n_layer)
    projections = [p for n, p in init_model.named_parameters() if n.endswith("c_proj.weight")]
    assert len(projections) == 2 * init_model.config.n_layer
    for p in projections:
        assert_normal(p.detach(), std)


def test_biases_are_zero_and_layernorm_weights_one(init_model: GPT) -> None:
    biases = [p for n, p in init_model.named_parameters() if n.endswith(".bias")]
    norms = [p for n, p in init_model.named_parameters() if ".ln_" in n and n.endswith(".weight")]
    assert len(norms) == 2 * init_model.config.n_layer + 1
    assert all(torch.all(p == 0) for p in biases)
    assert all(torch.all(p == 1) for p in norms)


def test_tied_matrix_is_initialised_once_as_gpt2_embedding(init_model: GPT) -> None:
    """std 0.02: not nn.Linear's default (uniform, std 1/sqrt(3*256) ~ 0.036) nor nn.Embedding's (1.0)."""
    assert init_model.is_tied()
    assert_normal(init_model.lm_head.weight.detach(), 0.02)


# ----------------------------------------------------------------------------------------------------------
# 5. optimizer groups


def test_every_trainable_parameter_is_in_exactly_one_group_the_tied_one_once(tiny_gpt: GPT) -> None:
    optimizer = tiny_gpt.configure_optimizers(0.1, 1e-3, (0.9, 0.95), "cpu")
    grouped = [p for group in optimizer.param_groups for p in group["params"]]
    assert len({id(p) for p in grouped}) == len(grouped)  # no parameter twice
    assert {id(p) for p in grouped} == {id(p) for p in tiny_gpt.parameters()}
    assert sum(p is tiny_gpt.lm_head.weight for p in grouped) == 1


def test_decay_policy_2d_decays_1d_does_not_and_the_tied_matrix_decays(tiny_gpt: GPT) -> None:
    """Policy: weight decay on every >= 2-D parameter, including the tied embedding/head; none on 1-D."""
    decay, no_decay = tiny_gpt.configure_optimizers(0.1, 1e-3, (0.9, 0.95), "cpu").param_groups
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert decay["params"] and all(p.dim() >= 2 for p in decay["params"])
    assert no_decay["params"] and all(p.dim() == 1 for p in no_decay["params"])
    assert any(p is tiny_gpt.transformer.wte.weight for p in decay["params"])


def test_adamw_step_keeps_the_tie_and_moves_both_names(tiny_gpt: GPT, tokens: torch.Tensor) -> None:
    optimizer = tiny_gpt.configure_optimizers(0.1, 1e-2, (0.9, 0.95), "cpu")
    before = tiny_gpt.lm_head.weight.detach().clone()
    _, loss = tiny_gpt(tokens, tokens.roll(-1, dims=1))
    loss.backward()
    optimizer.step()
    assert tiny_gpt.is_tied()
    assert not torch.equal(tiny_gpt.lm_head.weight, before)
    torch.testing.assert_close(tiny_gpt.transformer.wte.weight, tiny_gpt.lm_head.weight, rtol=0, atol=0)


# ----------------------------------------------------------------------------------------------------------
# 8. generation


def test_greedy_generation_is_argmax_step_by_step(tiny_gpt: GPT) -> None:
    prompt = torch.tensor([[1, 2, 3], [4, 5, 6]])
    out = tiny_gpt.generate(prompt, max_new_tokens=6, temperature=0)
    expected = prompt
    with torch.no_grad():
        for _ in range(6):
            next_token = tiny_gpt(expected)[0][:, -1, :].argmax(dim=-1, keepdim=True)
            expected = torch.cat([expected, next_token], dim=1)
    assert torch.equal(out, expected)
    assert torch.equal(tiny_gpt.generate(prompt, max_new_tokens=6, temperature=0), out)


def test_top_k_1_sampling_equals_greedy(tiny_gpt: GPT) -> None:
    prompt = torch.tensor([[10, 20, 30]])
    greedy = tiny_gpt.generate(prompt, max_new_tokens=8, temperature=0)
    sampled = tiny_gpt.generate(
        prompt, max_new_tokens=8, temperature=1.0, top_k=1, generator=torch.Generator().manual_seed(0)
    )
    assert torch.equal(sampled, greedy)


def test_generation_grows_by_max_new_tokens_past_block_size(tiny_gpt: GPT) -> None:
    prompt = torch.zeros(3, 30, dtype=torch.long)
    out = tiny_gpt.generate(prompt, max_new_tokens=5, generator=torch.Generator().manual_seed(0))
    assert out.shape == (3, 35)  # the context is cropped to the last block_size tokens
    assert torch.equal(out[:, :30], prompt)
    assert int(out.max()) < 97


def test_negative_temperature_raises(tiny_gpt: GPT) -> None:
    with pytest.raises(ValueError, match="temperature"):
        tiny_gpt.generate(torch.zeros(1, 1, dtype=torch.long), max_new_tokens=1, temperature=-0.5)


# ----------------------------------------------------------------------------------------------------------
# 9. MFU


def test_mfu_is_positive_and_inversely_proportional_to_step_time(tiny_gpt: GPT) -> None:
    mfu = tiny_gpt.estimate_mfu(fwdbwd_per_iter=4, dt=0.5, peak_flops=1e12)
    assert mfu > 0
    assert tiny_gpt.estimate_mfu(fwdbwd_per_iter=4, dt=1.0, peak_flops=1e12) == pytest.approx(mfu / 2)


def test_peak_flops_of_known_and_unknown_devices() -> None:
    assert peak_flops("NVIDIA H100 80GB HBM3", torch.bfloat16) == 989e12
    assert peak_flops("NVIDIA H100 PCIe", torch.bfloat16) == 756e12  # the specific name wins
    assert peak_flops("Some Unknown Accelerator", torch.bfloat16) is None


# ----------------------------------------------------------------------------------------------------------
# 10. crop_block_size


def test_crop_block_size_shortens_wpe_and_keeps_its_first_rows(tiny_gpt: GPT) -> None:
    wpe = tiny_gpt.transformer.wpe.weight.detach().clone()
    tiny_gpt.crop_block_size(16)
    assert tiny_gpt.config.block_size == 16
    assert tiny_gpt.transformer.wpe.weight.shape == (16, 16)
    torch.testing.assert_close(tiny_gpt.transformer.wpe.weight.detach(), wpe[:16], rtol=0, atol=0)
    assert tiny_gpt.is_tied()


def test_cropped_model_forwards_at_the_new_size_and_refuses_longer(tiny_gpt: GPT, tokens) -> None:
    before, _ = tiny_gpt(tokens[:, :16])
    tiny_gpt.crop_block_size(16)
    after, _ = tiny_gpt(tokens[:, :16])
    torch.testing.assert_close(after, before, rtol=0, atol=0)  # causal: positions < 16 are unchanged
    with pytest.raises(ValueError, match="block_size"):
        tiny_gpt(tokens[:, :17])
