"""Tests of the Hugging Face <-> nanoGPT converter (nanogpt/hf.py): logit parity with transformers'
GPT2LMHeadModel, the weight tie through export and reload, and clear refusals of bad checkpoints.

Every model is a tiny random-init GPT-2 in float64 (see tests/conftest.py); no weights are downloaded.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import GPT2LMHeadModel

from nanogpt.hf import CheckpointError, export_hf_checkpoint
from nanogpt.model import GPT
from parity.core.tolerances import CONVERSION_F64

# HF vs nanoGPT in float64: CONVERSION_F64 in parity/core/tolerances.py says why.
PARITY = dict(rtol=CONVERSION_F64.rtol, atol=CONVERSION_F64.atol)


def hf_logits(hf: GPT2LMHeadModel, tokens: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return hf(tokens).logits


def gpt_logits(model: GPT, tokens: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(tokens)[0]


@pytest.fixture
def hf_dir(make_hf_gpt2, tmp_path: Path) -> Path:
    """A tied tiny GPT-2 saved by transformers' own save_pretrained (safetensors)."""
    out = tmp_path / "hf"
    make_hf_gpt2().save_pretrained(out)
    return out


@pytest.fixture
def exported_dir(tiny_gpt: GPT, tmp_path: Path) -> Path:
    """The tiny nanoGPT exported with export_hf_checkpoint."""
    return export_hf_checkpoint(tiny_gpt, tmp_path / "exported")


def edit_config(directory: Path, **changes: object) -> None:
    path = directory / "config.json"
    cfg = json.loads(path.read_text())
    cfg.update(changes)
    path.write_text(json.dumps(cfg))


# ----------------------------------------------------------------------------------------------------------
# parity with transformers


def test_logits_match_transformers_after_loading_a_live_hf_model(make_hf_gpt2, tokens) -> None:
    hf = make_hf_gpt2()
    model = GPT.from_pretrained(hf)
    assert model.is_tied()
    torch.testing.assert_close(gpt_logits(model, tokens), hf_logits(hf, tokens), **PARITY)


def test_loaded_model_owns_its_weights_not_the_hf_models(make_hf_gpt2, tokens) -> None:
    hf = make_hf_gpt2()
    expected = hf_logits(hf, tokens)
    model = GPT.from_pretrained(hf)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    torch.testing.assert_close(hf_logits(hf, tokens), expected, rtol=0, atol=0)


def test_padded_vocab_load_gives_the_same_logits(make_hf_gpt2, tokens) -> None:
    hf = make_hf_gpt2()
    model = GPT.from_pretrained(hf, vocab_size=128)
    assert model.transformer.wte.weight.shape == (128, 16)
    assert model.config.logical_vocab_size == 97
    assert model.is_tied()
    torch.testing.assert_close(gpt_logits(model, tokens), hf_logits(hf, tokens), **PARITY)


def test_safetensors_saved_by_transformers_load_with_the_same_logits(make_hf_gpt2, hf_dir, tokens) -> None:
    model = GPT.from_pretrained(hf_dir)
    assert model.is_tied()
    torch.testing.assert_close(gpt_logits(model, tokens), hf_logits(make_hf_gpt2(), tokens), **PARITY)


def test_pytorch_bin_checkpoint_loads_and_its_attn_mask_buffers_are_ignored(
    make_hf_gpt2, tmp_path, tokens
) -> None:
    """transformers 5's save_pretrained ignores safe_serialization=False and always writes safetensors,
    so the legacy pytorch_model.bin is written here as transformers 4.x did: the state dict, including
    the causal-mask buffers `attn.bias` and `attn.masked_bias` that older versions saved."""
    hf = make_hf_gpt2()
    out = tmp_path / "bin"
    hf.save_pretrained(out)
    (out / "model.safetensors").unlink()
    sd = dict(hf.state_dict())
    n = hf.config.n_positions
    for i in range(hf.config.n_layer):
        sd[f"transformer.h.{i}.attn.bias"] = torch.tril(torch.ones(n, n, dtype=torch.bool)).view(1, 1, n, n)
        sd[f"transformer.h.{i}.attn.masked_bias"] = torch.tensor(-1e4)
    torch.save(sd, out / "pytorch_model.bin")
    model = GPT.from_pretrained(out)
    assert model.is_tied()
    torch.testing.assert_close(gpt_logits(model, tokens), hf_logits(hf, tokens), **PARITY)


# ----------------------------------------------------------------------------------------------------------
# the tie through export and reload


def test_export_then_from_pretrained_keeps_the_tie_and_the_logits(tiny_gpt, exported_dir, tokens) -> None:
    reloaded = GPT.from_pretrained(exported_dir)
    assert reloaded.lm_head.weight is reloaded.transformer.wte.weight
    torch.testing.assert_close(gpt_logits(reloaded, tokens), gpt_logits(tiny_gpt, tokens), rtol=0, atol=0)


def test_export_then_transformers_load_keeps_the_tie_and_the_logits(tiny_gpt, exported_dir, tokens) -> None:
    hf = GPT2LMHeadModel.from_pretrained(exported_dir, dtype=torch.float64).eval()
    assert hf.lm_head.weight.data_ptr() == hf.transformer.wte.weight.data_ptr()
    torch.testing.assert_close(hf_logits(hf, tokens), gpt_logits(tiny_gpt, tokens), **PARITY)


def test_padded_model_exports_only_the_real_vocabulary(make_gpt, tmp_path, tokens) -> None:
    model = make_gpt(vocab_size=128, logical_vocab_size=97)
    out = export_hf_checkpoint(model, tmp_path / "padded")
    hf = GPT2LMHeadModel.from_pretrained(out, dtype=torch.float64).eval()
    assert hf.config.vocab_size == 97
    torch.testing.assert_close(hf_logits(hf, tokens), gpt_logits(model, tokens), **PARITY)


def test_in_place_change_after_reload_is_visible_through_both_names(exported_dir) -> None:
    reloaded = GPT.from_pretrained(exported_dir)
    with torch.no_grad():
        reloaded.transformer.wte.weight[0, 0] = 7.0
    assert reloaded.lm_head.weight[0, 0].item() == 7.0


# ----------------------------------------------------------------------------------------------------------
# untied checkpoints


@pytest.fixture
def untied_hf(make_hf_gpt2) -> GPT2LMHeadModel:
    hf = make_hf_gpt2(tie_word_embeddings=False)
    assert not torch.equal(hf.lm_head.weight, hf.transformer.wte.weight)  # random init draws both
    return hf


def test_untied_checkpoint_is_refused_by_default(untied_hf, tmp_path) -> None:
    untied_hf.save_pretrained(tmp_path / "untied")
    with pytest.raises(CheckpointError, match="untied.*allow_untied=True"):
        GPT.from_pretrained(tmp_path / "untied")


def test_untied_checkpoint_loads_untied_with_allow_untied(untied_hf, tmp_path, tokens) -> None:
    untied_hf.save_pretrained(tmp_path / "untied")
    model = GPT.from_pretrained(tmp_path / "untied", allow_untied=True)
    assert not model.is_tied()
    torch.testing.assert_close(gpt_logits(model, tokens), hf_logits(untied_hf, tokens), **PARITY)


# ----------------------------------------------------------------------------------------------------------
# refusals of bad input: CheckpointError with a message that names the problem


def test_unknown_model_name_is_refused() -> None:
    with pytest.raises(CheckpointError, match="'gpt3' is neither a GPT-2 size"):
        GPT.from_pretrained("gpt3")


def test_directory_without_config_json_is_refused(tmp_path) -> None:
    with pytest.raises(CheckpointError, match="no config.json"):
        GPT.from_pretrained(tmp_path)


def test_another_architecture_is_refused(hf_dir) -> None:
    edit_config(hf_dir, model_type="llama")
    with pytest.raises(CheckpointError, match="model_type is 'llama', not 'gpt2'"):
        GPT.from_pretrained(hf_dir)


@pytest.mark.parametrize(
    "field, value", [("activation_function", "relu"), ("layer_norm_epsilon", 1e-6)], ids=["relu", "eps"]
)
def test_gpt2_with_another_setting_is_refused(hf_dir, field, value) -> None:
    edit_config(hf_dir, **{field: value})
    with pytest.raises(CheckpointError, match=f"not the GPT-2 architecture: {field}="):
        GPT.from_pretrained(hf_dir)


def test_missing_weights_file_is_refused(hf_dir) -> None:
    (hf_dir / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="no weights found"):
        GPT.from_pretrained(hf_dir)


def test_config_that_does_not_match_the_weights_is_refused(hf_dir) -> None:
    edit_config(hf_dir, n_embd=32)
    with pytest.raises(CheckpointError, match="shape mismatch"):
        GPT.from_pretrained(hf_dir)


def test_truncated_safetensors_is_refused(hf_dir) -> None:
    weights = hf_dir / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated"):
        GPT.from_pretrained(hf_dir)


def test_safetensors_with_a_corrupt_header_is_refused(hf_dir) -> None:
    weights = hf_dir / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[8:16] = b"{garbage"  # the JSON header starts after its 8-byte length
    weights.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="corrupt"):
        GPT.from_pretrained(hf_dir)


def test_size_name_missing_from_the_local_cache_is_refused(tmp_path, monkeypatch) -> None:
    empty = tmp_path / "empty-hf-home"
    empty.mkdir()
    monkeypatch.setenv("HF_HOME", str(empty))
    monkeypatch.setenv("HF_HUB_CACHE", str(empty / "hub"))
    with pytest.raises(CheckpointError, match="not in the local Hugging Face cache"):
        GPT.from_pretrained("gpt2")
