"""Token datasets: GPT-2-tokenize text into uint16 memmaps, and sample training windows from them.

`prepare_dataset` reads one text file or every matching file under a directory, tokenizes each document
with the offline GPT-2 tokenizer (`nanogpt.tokenizer`), separates documents with <|endoftext|>, and writes
`train.bin` and `val.bin` (the last `val_fraction` of the token stream) plus `meta.json` describing them.
All three are written to temporary names and renamed into place, `meta.json` last, so an interrupted run
never leaves a half-written dataset behind. `TokenDataset.open` validates a dataset directory before any
training starts, and `BatchSampler` draws random contiguous windows (x, and y shifted by one token) with
its own torch.Generator, whose state the trainer checkpoints. Nothing is ever downloaded.

Usage: python -m nanogpt.data --source=PATH [--out_dir=data/NAME] [--glob='*.txt'] [--val_fraction=0.1]
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from nanogpt.atomic import atomic_file
from nanogpt.config import Problems, UserError, option, parse_config, run_cli
from nanogpt.json_files import JsonFileError, read_json_object
from nanogpt.paths import OutputPathError, resolve_output_dir, resolve_output_file

META_FILE = "meta.json"
SPLITS = ("train", "val")
FORMAT = "nanogpt-parity/tokens-v1"
TOKEN_DTYPE = np.uint16  # GPT-2's 50257 ids fit; half the size of int32
MAX_TOKEN_ID = int(np.iinfo(TOKEN_DTYPE).max)
MAX_META_BYTES = 1 << 24  # meta.json lists the source files: 16 MB is ~100k paths


class DataError(UserError):
    """A missing, empty, too short or damaged dataset; the message names the file and the fix."""


# ----------------------------------------------------------------------------------------------------------
# preparing a dataset


@dataclass
class PrepareConfig:
    """Options of `python -m nanogpt.data`."""

    source: str = option("", "a text file, or a directory searched recursively for --glob files")
    out_dir: str = option("data/corpus", "where train.bin, val.bin and meta.json are written")
    glob: str = option("*.txt", "file pattern inside a source directory, e.g. '*.py'")
    val_fraction: float = option(0.1, "fraction of the token stream (its end) held out for validation")

    def validate(self) -> None:
        """Check the options before reading anything."""
        p = Problems()
        p.check(bool(self.source), "source", "is required: --source=FILE_OR_DIRECTORY")
        p.check(0.0 < self.val_fraction < 1.0, "val_fraction", f"{self.val_fraction} is not in (0, 1)")
        p.check(bool(self.glob), "glob", "is empty")
        problem = glob_problem(self.glob)
        p.check(problem is None, "glob", problem or "")
        p.raise_if_any()


def glob_problem(pattern: str) -> str | None:
    """Why a --glob pattern would reach outside --source (absolute, or with a .. part), or None."""
    if Path(pattern).is_absolute() or pattern.startswith("~"):
        return f"{pattern!r} is absolute; give a pattern relative to --source, e.g. '*.txt' (or --source=DIR)"
    if ".." in Path(pattern).parts:
        return (
            f"{pattern!r} climbs out of --source with '..'; point --source at the directory to read instead"
        )
    return None


def find_source_files(source: str | Path, glob: str = "*.txt") -> list[Path]:
    """The text files of a source: the file itself, or the sorted glob matches under a directory."""
    path = Path(source).expanduser()
    if path.is_file():
        return [path]
    if not path.exists():
        raise DataError(f"{path}: no such file or directory; pass a text file or a directory of text files")
    if not path.is_dir():
        raise DataError(f"{path}: not a regular file or a directory (a device or FIFO?); pass a text file")
    problem = glob_problem(glob)
    if problem:
        raise DataError(f"glob: {problem}")
    files = sorted(p for p in path.rglob(glob) if p.is_file())
    if not files:
        raise DataError(f"{path}: no files match {glob!r}; pass --glob with the pattern of your text files")
    return files


def tokenize_documents(texts: Sequence[str]) -> np.ndarray:
    """GPT-2 token ids of the documents, each followed by <|endoftext|>, as one uint16 array."""
    from nanogpt.tokenizer import ENDOFTEXT_ID, gpt2_tiktoken

    enc = gpt2_tiktoken()
    # encode_ordinary: a literal "<|endoftext|>" inside a file is text, not a document boundary.
    docs = enc.encode_ordinary_batch(list(texts))
    total = sum(len(d) + 1 for d in docs)
    out = np.empty(total, dtype=TOKEN_DTYPE)
    pos = 0
    for doc in docs:
        out[pos : pos + len(doc)] = doc
        out[pos + len(doc)] = ENDOFTEXT_ID
        pos += len(doc) + 1
    return out


def _write_atomically(path: Path, write: Any) -> None:
    """Write path through a temporary sibling: write(fh), fsync, rename over path."""
    with atomic_file(path, "wb") as fh:
        write(fh)


def output_files(out_dir: str | Path) -> dict[str, Path]:
    """The validated paths of train.bin, val.bin and meta.json under out_dir (OutputPathError if unusable)."""
    out = resolve_output_dir(out_dir, "out_dir")
    names = [f"{split}.bin" for split in SPLITS] + [META_FILE]
    return {name: resolve_output_file(out / name, f"out_dir ({name})") for name in names}


def prepare_dataset(
    source: str | Path, out_dir: str | Path, glob: str = "*.txt", val_fraction: float = 0.1
) -> dict[str, Any]:
    """Tokenize a text file or directory into out_dir/{train,val}.bin + meta.json; return the metadata."""
    from nanogpt.tokenizer import ENDOFTEXT_ID, GPT2_VOCAB_SIZE

    if not 0.0 < val_fraction < 1.0:
        raise DataError(f"val_fraction must be in (0, 1), got {val_fraction}")
    try:
        outputs = output_files(out_dir)  # before reading a byte: a bad place fails now, not after tokenizing
    except OutputPathError as e:
        raise DataError(str(e)) from None
    files = find_source_files(source, glob)
    texts, undecodable = [], []
    for f in files:
        raw = f.read_bytes()
        try:
            texts.append(raw.decode("utf-8"))
        except UnicodeDecodeError:
            # A few files of real corpora (the Python test suite, for one) are not UTF-8 on purpose;
            # keep their text with replacement characters rather than failing the whole corpus.
            texts.append(raw.decode("utf-8", errors="replace"))
            undecodable.append(str(f))
    if not any(t.strip() for t in texts):
        raise DataError(f"{source}: the text is empty ({len(files)} file(s)); nothing to train on")
    tokens = tokenize_documents(texts)
    n_val = max(1, int(round(len(tokens) * val_fraction)))
    n_train = len(tokens) - n_val
    if n_train < 1:
        raise DataError(f"{source}: only {len(tokens)} tokens; too little text to split into train and val")
    root = Path(source).expanduser()
    meta = {
        "format": FORMAT,
        "tokenizer": "gpt2",
        "vocab_size": GPT2_VOCAB_SIZE,
        "eot_token": ENDOFTEXT_ID,
        "dtype": np.dtype(TOKEN_DTYPE).name,
        "train_tokens": int(n_train),
        "val_tokens": int(n_val),
        "val_fraction": val_fraction,
        "source": str(root.resolve()),
        "files": [str(f.relative_to(root)) if root.is_dir() else f.name for f in files],
        "undecodable_files": undecodable,
    }
    _write_atomically(outputs["train.bin"], lambda fh: fh.write(tokens[:n_train].tobytes()))
    _write_atomically(outputs["val.bin"], lambda fh: fh.write(tokens[n_train:].tobytes()))
    # meta.json last: its presence (with matching counts) marks a complete dataset.
    _write_atomically(outputs[META_FILE], lambda fh: fh.write((json.dumps(meta, indent=2) + "\n").encode()))
    return meta


# ----------------------------------------------------------------------------------------------------------
# reading a dataset


@dataclass
class TokenDataset:
    """A validated dataset directory: its metadata and a read-only memmap per split."""

    directory: Path
    meta: dict[str, Any]
    train: np.ndarray
    val: np.ndarray

    @property
    def vocab_size(self) -> int:
        """Number of distinct token ids the tokenizer can produce."""
        return int(self.meta["vocab_size"])

    def split(self, name: str) -> np.ndarray:
        """The tokens of split 'train' or 'val'."""
        return self.train if name == "train" else self.val

    @classmethod
    def open(cls, directory: str | Path, block_size: int | None = None) -> TokenDataset:
        """Open and validate a dataset; with block_size, require a full window (+1 target) per split."""
        d = Path(directory).expanduser()
        hint = f"create it with `python -m nanogpt.data --source=YOUR_TEXT --out_dir={d}`"
        if not (d / META_FILE).is_file():
            what = "no such directory" if not d.exists() else f"no {META_FILE}"
            raise DataError(f"{d}: {what}; {hint}")
        meta = read_meta(d / META_FILE, hint)
        if meta["dtype"] != np.dtype(TOKEN_DTYPE).name:
            raise DataError(f"{d / META_FILE}: dtype {meta['dtype']!r}, expected uint16; {hint}")
        arrays = {}
        for split in SPLITS:
            path = d / f"{split}.bin"
            expected = int(meta[f"{split}_tokens"])
            if not path.is_file():
                raise DataError(f"{path}: missing; {hint}")
            size = path.stat().st_size
            if size != expected * np.dtype(TOKEN_DTYPE).itemsize:
                raise DataError(
                    f"{path}: {size} bytes, but {META_FILE} promises {expected} uint16 tokens (truncated or "
                    f"replaced?); {hint}"
                )
            if expected == 0:
                raise DataError(f"{path}: empty; {hint} from a longer text")
            arrays[split] = np.memmap(path, dtype=TOKEN_DTYPE, mode="r")
            check_token_range(arrays[split], int(meta["vocab_size"]), path, hint)
        dataset = cls(d, meta, arrays["train"], arrays["val"])
        if block_size is not None:
            dataset.check_block_size(block_size)
        return dataset

    def check_block_size(self, block_size: int) -> None:
        """Raise DataError unless each split holds at least one window of block_size + 1 tokens."""
        for split in SPLITS:
            n = len(self.split(split))
            if n < block_size + 1:
                raise DataError(
                    f"{self.directory / (split + '.bin')}: {n} tokens, fewer than block_size + 1 = "
                    f"{block_size + 1}; use a smaller --block_size or more text"
                )


def read_meta(path: Path, hint: str) -> dict[str, Any]:
    """meta.json of a dataset, with the type and range of every field the trainer reads checked."""
    try:
        meta = read_json_object(path, "a dataset description", MAX_META_BYTES)
    except JsonFileError as e:
        raise DataError(f"{e}; {hint}") from None
    missing = [k for k in ("vocab_size", "dtype", "train_tokens", "val_tokens") if k not in meta]
    if missing:
        raise DataError(f"{path}: missing {', '.join(missing)}; {hint}")
    limits = {"vocab_size": (1, MAX_TOKEN_ID + 1), "train_tokens": (0, None), "val_tokens": (0, None)}
    for key, (low, high) in limits.items():
        v = meta[key]
        if not isinstance(v, int) or isinstance(v, bool) or v < low or (high is not None and v > high):
            bound = f"[{low}, {high}]" if high is not None else f">= {low}"
            raise DataError(f"{path}: {key} is {v!r}, not an integer {bound}; {hint}")
    return meta


def check_token_range(tokens: np.ndarray, vocab_size: int, path: Path, hint: str) -> None:
    """DataError naming the first token id >= vocab_size (found before training, not at iteration 35)."""
    chunk = 1 << 24  # 32 MB of uint16 at a time: bounded memory, ~10 ms per chunk
    for start in range(0, len(tokens), chunk):
        part = np.asarray(tokens[start : start + chunk])
        if part.size and int(part.max()) >= vocab_size:
            at = start + int(np.argmax(part >= vocab_size))
            raise DataError(
                f"{path}: token id {int(tokens[at])} at position {at} is outside the vocabulary of "
                f"{vocab_size} (damaged or from another tokenizer); {hint}"
            )


def get_batch(
    tokens: np.ndarray,
    batch_size: int,
    block_size: int,
    generator: torch.Generator,
    rank: int = 0,
    world_size: int = 1,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Random windows x (batch_size, block_size) and y = x shifted by one, as int64 CPU tensors.

    The offsets of the *global* batch (batch_size * world_size windows) are drawn, and this rank takes its
    slice: every rank, seeded alike, agrees on the global batch, so N processes see exactly the windows
    one process with an N times larger batch would.
    """
    n_windows = len(tokens) - block_size
    if n_windows < 1:
        raise DataError(f"{len(tokens)} tokens cannot hold a window of block_size + 1 = {block_size + 1}")
    offsets = torch.randint(n_windows, (batch_size * world_size,), generator=generator)
    offsets = offsets[rank * batch_size : (rank + 1) * batch_size].tolist()
    x = np.stack([tokens[i : i + block_size] for i in offsets]).astype(np.int64)
    y = np.stack([tokens[i + 1 : i + 1 + block_size] for i in offsets]).astype(np.int64)
    return torch.from_numpy(x), torch.from_numpy(y)


class BatchSampler:
    """Endless random training batches from one split, reproducible from (seed, generator state)."""

    def __init__(
        self,
        tokens: np.ndarray,
        batch_size: int,
        block_size: int,
        seed: int,
        device: str | torch.device = "cpu",
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        self.tokens = tokens
        self.batch_size = batch_size
        self.block_size = block_size
        self.device = torch.device(device)
        self.rank = rank
        self.world_size = world_size
        self.generator = torch.Generator().manual_seed(seed)

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The next (x, y) on the sampler's device."""
        x, y = get_batch(
            self.tokens, self.batch_size, self.block_size, self.generator, self.rank, self.world_size
        )
        if self.device.type == "cuda":
            # pinned host memory lets the copy overlap with compute
            return x.pin_memory().to(self.device, non_blocking=True), y.pin_memory().to(
                self.device, non_blocking=True
            )
        return x.to(self.device), y.to(self.device)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The generator state, for checkpoints."""
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Continue exactly where a checkpointed sampler stopped."""
        self.generator.set_state(state["generator"])


# ----------------------------------------------------------------------------------------------------------
# command line


def main(argv: list[str]) -> None:
    """`python -m nanogpt.data`: prepare a dataset and print a one-line summary."""
    cfg, _ = parse_config(PrepareConfig, argv, prog="nanogpt.data")
    try:
        meta = prepare_dataset(cfg.source, cfg.out_dir, cfg.glob, cfg.val_fraction)
    except OSError as e:
        raise DataError(f"{e.filename or cfg.source}: {e.strerror or e}") from None
    print(
        f"wrote {cfg.out_dir}: {meta['train_tokens']:,} train + {meta['val_tokens']:,} val tokens "
        f"from {len(meta['files'])} file(s)"
        + (
            f" ({len(meta['undecodable_files'])} not UTF-8, decoded with replacement)"
            if meta["undecodable_files"]
            else ""
        )
    )


__all__ = [
    "BatchSampler",
    "DataError",
    "PrepareConfig",
    "TokenDataset",
    "find_source_files",
    "get_batch",
    "prepare_dataset",
    "tokenize_documents",
]

if __name__ == "__main__":
    run_cli(main, None, "nanogpt.data")
