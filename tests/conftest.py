"""Fixtures for the unit tests: a tiny nanoGPT config and model, a tiny Hugging Face GPT-2 factory, and the
trainer tests' one tiny training run (its TrainConfig, its command line, a dataset, a trained checkpoint).

Everything is small enough to run in milliseconds on a CPU (2 layers, 2 heads, 16 channels, a 97-token
vocabulary, a 32-token context) and in float64, so comparisons between implementations are limited by
float64 rounding rather than by float32 noise. Models are seeded, so every test sees the same weights
whatever the order the tests run in.
"""

from __future__ import annotations

import os
import random
import shutil
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import settings
from tiny_train import TINY_TRAIN, tiny_train_flags
from transformers import GPT2Config, GPT2LMHeadModel

from nanogpt.data import prepare_dataset
from nanogpt.model import GPT, GPTConfig
from nanogpt.train_config import TrainConfig

TINY = dict(block_size=32, vocab_size=97, n_layer=2, n_head=2, n_embd=16)


@pytest.fixture
def shared_dir(tmp_path: Path) -> Iterator[Path]:
    """A directory the tested code may write in from the sandbox's read-only view of the disk (one under
    /dev/shm, removed afterwards), for the files a test reads back from it; tmp_path where there is no
    /dev/shm."""
    if not os.path.isdir("/dev/shm"):
        yield tmp_path
        return
    directory = Path(tempfile.mkdtemp(prefix="nanogpt-parity-test-", dir="/dev/shm"))
    try:
        yield directory
    finally:
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def tiny_config() -> GPTConfig:
    """A fresh tiny GPTConfig (tests may mutate it)."""
    return GPTConfig(**TINY)


@pytest.fixture
def make_gpt() -> Callable[..., GPT]:
    """Factory: a seeded float64 nanoGPT in eval mode, TINY with keyword overrides."""

    def make(seed: int = 0, **overrides: object) -> GPT:
        torch.manual_seed(seed)
        return GPT(GPTConfig(**{**TINY, **overrides})).double().eval()

    return make


@pytest.fixture
def tiny_gpt(make_gpt: Callable[..., GPT]) -> GPT:
    """A seeded tiny float64 nanoGPT in eval mode."""
    return make_gpt()


@pytest.fixture
def make_hf_gpt2() -> Callable[..., GPT2LMHeadModel]:
    """Factory: a seeded, randomly initialised float64 GPT2LMHeadModel without dropout, in eval mode."""

    def make(seed: int = 0, tie_word_embeddings: bool = True, **overrides: object) -> GPT2LMHeadModel:
        args = dict(
            vocab_size=TINY["vocab_size"],
            n_positions=TINY["block_size"],
            n_embd=TINY["n_embd"],
            n_layer=TINY["n_layer"],
            n_head=TINY["n_head"],
            resid_pdrop=0.0,
            embd_pdrop=0.0,
            attn_pdrop=0.0,
            # GPT-2's defaults (50256) lie outside a 97-token vocabulary; transformers warns about them.
            bos_token_id=None,
            eos_token_id=None,
            tie_word_embeddings=tie_word_embeddings,
        )
        args.update(overrides)
        torch.manual_seed(seed)
        return GPT2LMHeadModel(GPT2Config(**args)).double().eval()

    return make


@pytest.fixture
def tokens() -> torch.Tensor:
    """A (2, 32) batch of token ids over the tiny vocabulary, filling the whole context."""
    g = torch.Generator().manual_seed(1234)
    return torch.randint(0, TINY["vocab_size"], (2, TINY["block_size"]), generator=g)


@pytest.fixture
def one_thread() -> None:
    """Run the test on one intra-op thread (the root conftest restores the count afterwards).

    Tiny models gain nothing from more threads, and on a busy machine OpenMP threads spin-waiting for each
    other make them several times slower.
    """
    torch.set_num_threads(1)


# ----------------------------------------------------------------------------------------------------------
# the trainer tests' tiny run (tests/tiny_train.py), as factory fixtures

TINY_WORDS = "a tiny corpus of words that repeat so the model has something to learn from".split()


@pytest.fixture
def extras_on_twin(monkeypatch: pytest.MonkeyPatch) -> Any:
    """The bisect command's small model (a ParityTarget), with the memory plan keeping long extra passes to
    the narrow twin (as at every GPT-2 size)."""
    from parity.frontends.bisect import resolve_model
    from parity.subject import memory

    monkeypatch.setattr(memory, "FULL_SIZE_TRAINING_MAX_BYTES", 0)
    target = resolve_model("small", "cpu", None)
    target.ensure_checkpoint()
    assert not target.memory.train_full_size
    return target


@pytest.fixture
def twin_cannot_be_built(monkeypatch: pytest.MonkeyPatch) -> None:
    """Subject.twin raises ImplementationError, as for an implementation whose config cannot be narrowed."""
    from parity.core.errors import ImplementationError
    from parity.subject.subject import Subject

    def no_twin(self: Subject, why: str) -> None:
        raise ImplementationError("its config cannot be narrowed")

    monkeypatch.setattr(Subject, "twin", no_twin)


@pytest.fixture(scope="session")
def tiny_train_config() -> Callable[..., TrainConfig]:
    """Factory: the tiny run's TrainConfig with keyword overrides (Path values become strings)."""

    def make(**overrides: object) -> TrainConfig:
        values = {**TINY_TRAIN, **overrides}
        return TrainConfig(**{k: str(v) if isinstance(v, Path) else v for k, v in values.items()})

    return make


@pytest.fixture(scope="session")
def tiny_train_args() -> Callable[..., list[str]]:
    """Factory: the tiny run as `python -m nanogpt.train` flags (`--key=value`) with keyword overrides."""

    def make(**overrides: object) -> list[str]:
        return tiny_train_flags(**overrides)

    return make


@pytest.fixture(scope="session")
def make_token_dataset() -> Callable[..., Path]:
    """Factory: root/data, a GPT-2-token dataset of n_words words drawn (seeded) from words."""

    def make(
        root: Path, n_words: int, words: Sequence[str] = TINY_WORDS, seed: int = 1, **prepare: Any
    ) -> Path:
        rng = random.Random(seed)
        (root / "text.txt").write_text(" ".join(rng.choice(words) for _ in range(n_words)))
        prepare_dataset(root / "text.txt", root / "data", **prepare)
        return root / "data"

    return make


@pytest.fixture(scope="session")
def tiny_trained_run(
    tmp_path_factory: pytest.TempPathFactory,
    tiny_train_args: Callable[..., list[str]],
    make_token_dataset: Callable[..., Path],
) -> Path:
    """A project root with data/ and out/ckpt.pt after 2 iterations (out_dir saved as an absolute path).

    Shared by the trainer's command-line tests, which only read or copy it (they assert it is unchanged).
    """
    from nanogpt.train import main

    root = tmp_path_factory.mktemp("project")
    make_token_dataset(root, 600)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # session fixtures run before the per-test one_thread fixture
    try:
        main(tiny_train_args(data_dir=root / "data", out_dir=root / "out", max_iters=2))
    finally:
        torch.set_num_threads(threads)
    assert (root / "out" / "ckpt.pt").is_file()
    return root


# ----------------------------------------------------------------------------------------------------------
# hypothesis profiles for the property-based tests (tests/test_property_parity.py)
#
#   ci  (default): derandomized (the same examples every run, on every machine), a bounded number of
#                  examples, no deadline (a slow CI machine must not turn timing into failures), and the
#                  reproduction blob of any failure printed. No example database is written.
#   dev:           1000 examples (ci: 60), random each run, with the local example database (.hypothesis/):
#                  a longer local search for new counterexamples.
#
# Select one with HYPOTHESIS_PROFILE=dev pytest tests/test_property_parity.py.

settings.register_profile(
    "ci", derandomize=True, max_examples=60, deadline=None, print_blob=True, database=None
)
settings.register_profile("dev", max_examples=1000, deadline=None, print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


# ----------------------------------------------------------------------------------------------------------
# mutant kill rate (tests/test_mutants.py records each mutant and the checks that killed it)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """Print 'mutant kill rate: N/N (P%)' (and the harness mutants' rate) and any survivors when they ran."""
    killed_by: dict[str, str] = {}
    harness: dict[str, bool] = {}
    for reports in terminalreporter.stats.values():
        for report in reports:
            props = dict(getattr(report, "user_properties", ()) or ())
            if getattr(report, "when", None) == "call" and "mutant" in props:
                killed_by[props["mutant"]] = props.get("mutant_killed_by", "")
            if getattr(report, "when", None) == "call" and "harness_mutant" in props:
                harness[props["harness_mutant"]] = bool(props.get("harness_mutant_caught"))
    if harness:
        caught = sum(harness.values())
        terminalreporter.write_sep("-", "harness mutants")
        terminalreporter.write_line(
            f"harness mutant kill rate: {caught}/{len(harness)} ({100 * caught // len(harness)}%)"
        )
        missed = sorted(n for n, c in harness.items() if not c)
        if missed:
            terminalreporter.write_line(f"unnoticed harness mutants: {', '.join(missed)}")
    if not killed_by:
        return
    survivors = sorted(name for name, checks in killed_by.items() if not checks)
    n, k = len(killed_by), len(killed_by) - len(survivors)
    terminalreporter.write_sep("-", "mutants")
    terminalreporter.write_line(f"mutant kill rate: {k}/{n} ({100 * k // n}%)")
    if survivors:
        terminalreporter.write_line(f"surviving mutants: {', '.join(survivors)}")
