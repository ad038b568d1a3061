"""Bad input everywhere a user can reach it: clear errors that name the problem, never a wall of traceback.

The command line of `pytest parity/` (every option, and checkpoints that are corrupt, truncated, untied or
not GPT-2) must stop with one usage-error line that names the valid choices or the fix, and the bisect
command refuses a value of an option it shares with the same message. The library must
refuse token ids outside the vocabulary and sequences longer than the block with a ValueError naming the
range, the harness must report NaN and Inf as such (never as "close"), a wrong tokenizer file is refused,
and a synthetic checkpoint write killed half-way leaves nothing half-written under the final name.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from front_ends import run_batch

from nanogpt.hf import (
    CheckpointError,
    LazyWeights,
    hf_config_from_gpt,
    weight_files,
    write_hf_checkpoint,
)
from nanogpt.model import GPT, GPTConfig
from nanogpt.tokenizer import TokenizerFileError, bpe_files, gpt2_tiktoken
from parity.core.compare import ParityFailure, compare_tensors
from parity.core.exit_codes import EXIT_ABORT
from parity.core.tolerances import logits_tolerance
from parity.frontends.bisect import run as bisect_run
from parity.numerics.forward import compare_logits
from parity.subject.batches import token_batch
from parity.subject.loading import load_hf
from parity.subject.synthetic import (
    CACHE_ENV_VAR,
    checkpoint_name,
    ensure_synthetic_checkpoint,
    synthetic_hf_weights,
)

pytestmark = pytest.mark.usefixtures("one_thread")

REPO = Path(__file__).resolve().parents[1]
TINY = GPTConfig(block_size=32, vocab_size=97, n_layer=2, n_head=2, n_embd=16)
SUBPROCESS_TIMEOUT = 300  # seconds

# ----------------------------------------------------------------------------------------------------------
# the command line of `pytest parity/`


def _edit_config(directory: Path, **changes: object) -> None:
    path = directory / "config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


def _variant(good: Path, where: Path) -> Path:
    shutil.copytree(good, where)
    return where


@pytest.fixture(scope="module")
def cli_results(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, object]]:
    """Every bad command line of CLI_CASES, run through `pytest parity/` in one child process."""
    tmp = tmp_path_factory.mktemp("bad-cli")
    good = ensure_synthetic_checkpoint(TINY, "tiny", root=tmp / "checkpoints")[0]
    (tmp / "empty").mkdir()
    llama = _variant(good, tmp / "llama")
    _edit_config(llama, model_type="llama")
    eps = _variant(good, tmp / "eps")
    _edit_config(eps, layer_norm_epsilon=1e-6)
    corrupt = _variant(good, tmp / "corrupt")
    data = bytearray((corrupt / "model.safetensors").read_bytes())
    data[8:16] = b"{garbage"  # the JSON header starts after its 8-byte length
    (corrupt / "model.safetensors").write_bytes(bytes(data))
    truncated = _variant(good, tmp / "truncated")
    data = (truncated / "model.safetensors").read_bytes()
    (truncated / "model.safetensors").write_bytes(data[: len(data) - 1000])  # header intact, data cut
    weights = synthetic_hf_weights(TINY)
    weights["lm_head.weight"] = torch.randn_like(weights["transformer.wte.weight"]) * 0.02
    write_hf_checkpoint(tmp / "untied", {**hf_config_from_gpt(TINY), "tie_word_embeddings": False}, weights)
    (tmp / "notmodel.py").write_text("x = 1  # a Python file without a GPT class\n")
    (tmp / "notes.txt").write_text("class GPT: ...\n")
    paths = dict(
        tmp=tmp,
        good=good,
        notmodel=tmp / "notmodel.py",
        notes=tmp / "notes.txt",
        empty=tmp / "empty",
        llama=llama,
        eps=eps,
        corrupt=corrupt,
        truncated=truncated,
        untied=tmp / "untied",
        missing=tmp / "nowhere",
    )
    # `pytest parity/ -q ARGS` per case, every case in one child process
    # (torch is imported once, not per case).
    cases = {name: ["-q", *(a.format(**paths) for a in args)] for name, (args, _) in CLI_CASES.items()}
    env = {**os.environ, CACHE_ENV_VAR: str(tmp / "parity-cache"), "HF_HOME": str(tmp / "empty-hf-home")}
    env.update(HF_HUB_CACHE=str(tmp / "empty-hf-home" / "hub"), OMP_NUM_THREADS="1")
    env.pop("PYTEST_ADDOPTS", None)
    return run_batch("pytest", cases, env, tmp / "results.json", timeout=SUBPROCESS_TIMEOUT)


# name: (arguments after `pytest parity/`, regex the one error line must match)
CLI_CASES: dict[str, tuple[list[str], str]] = {
    "unknown-model": (
        ["--model", "gpt3"],
        r"--model 'gpt3'.*choose one of small, gpt2, gpt2-medium, gpt2-large, gpt2-xl, all",
    ),
    "missing-model-path": (
        ["--model", "{missing}"],
        r"not a model name and not a checkpoint directory; choose one of",
    ),
    "bad-weights": (["--weights", "bogus"], r"--weights 'bogus': choose one of auto, pretrained, synthetic"),
    "bad-device": (["--device", "tpu"], r"--device 'tpu': choose one of cpu, cuda"),
    "cuda-without-cuda": (
        ["--device", "cuda"],
        r"--device cuda: no CUDA device is available.*use --device cpu",
    ),
    "float16-on-cpu": (
        ["--device", "cpu", "--dtype", "float16"],
        r"float16 is not supported on CPU.*float64 or float32",
    ),
    "bad-dtype": (
        ["--dtype", "bogus"],
        r"--dtype 'bogus': choose one of float64, float32, bfloat16, float16",
    ),
    "bad-tied-decay": (["--tied-decay", "sometimes"], r"--tied-decay 'sometimes': choose one of yes, no"),
    "pretrained-not-cached": (
        ["--weights", "pretrained"],
        r"not in the local Hugging Face cache.*--weights synthetic",
    ),
    "synthetic-for-a-path": (["--model", "{good}", "--weights", "synthetic"], r"applies to named sizes"),
    "path-without-config": (["--model", "{empty}"], r"no config\.json"),
    "another-architecture": (["--model", "{llama}"], r"model_type is 'llama', not 'gpt2'"),
    "gpt2-with-other-eps": (["--model", "{eps}"], r"not the GPT-2 architecture: layer_norm_epsilon=1e-06"),
    "corrupt-safetensors": (
        ["--model", "{corrupt}"],
        r"corrupt or truncated safetensors file.*re-create or re-download",
    ),
    "truncated-safetensors": (
        ["--model", "{truncated}"],
        r"truncated safetensors file.*re-create or re-download",
    ),
    "untied-checkpoint": (["--model", "{untied}"], r"untied checkpoint.*tie_word_embeddings=True"),
    "impl-missing": (
        ["--impl", "{missing}/model.py"],
        r"--impl: .*no such file or directory.*exposing GPT and GPTConfig",
    ),
    "impl-not-python": (["--impl", "{notes}"], r"--impl: .*notes\.txt: not a \.py file"),
    # Only an import finds that GPT is missing: in a child process that is CANNOT-TEST,
    # in this one a usage error.
    "impl-without-gpt": (["--impl", "{notmodel}", "--in-process"], r"--impl: .*defines no GPT class"),
    "impl-timeout-zero": (
        ["--impl", "{notmodel}", "--impl-timeout", "0"],
        r"--impl-timeout '0': give a positive number of seconds",
    ),
    "impl-timeout-text": (
        ["--impl-timeout", "soon"],
        r"--impl-timeout 'soon': give a positive number of seconds",
    ),
    "impl-timeout-nan": (
        ["--impl", "{notmodel}", "--impl-timeout", "nan"],
        r"--impl-timeout 'nan': give a positive number",
    ),
    "impl-timeout-in-process": (
        ["--impl", "{notmodel}", "--in-process", "--impl-timeout", "5"],
        r"--impl-timeout limits the child process.*--in-process runs the code in pytest's own",
    ),
    "report-path-is-a-directory": (
        ["--model", "{good}", "--parity-report", "{tmp}"],
        r"--parity-report .*is a directory",
    ),
}


@pytest.mark.parametrize("case", CLI_CASES)
def test_bad_command_line_is_one_usage_error_line(
    case: str, cli_results: dict[str, dict[str, object]]
) -> None:
    if case == "cuda-without-cuda" and torch.cuda.is_available():
        pytest.skip("CUDA is available here, so --device cuda is valid")
    result = cli_results[case]
    output = str(result["output"])
    assert result["rc"] == pytest.ExitCode.USAGE_ERROR, f"exit code {result['rc']}:\n{output[-3000:]}"
    assert "Traceback" not in output and not re.search(r"^E\s", output, re.M), f"traceback wall:\n{output}"
    matching = [line for line in output.splitlines() if re.search(CLI_CASES[case][1], line)]
    assert len(matching) == 1, f"expected one error line matching /{CLI_CASES[case][1]}/:\n{output[-3000:]}"


# The options the bisect command shares with `pytest parity/` (parity/frontends/options.py): one converter
# or one validator, so the same bad value gets the same message from both.
SHARED_WITH_BISECT = ("bad-device", "cuda-without-cuda", "float16-on-cpu", "bad-dtype", "bad-tied-decay")


@pytest.mark.parametrize("case", SHARED_WITH_BISECT)
def test_the_bisect_command_refuses_a_shared_option_with_the_same_message(
    case: str, cli_results: dict[str, dict[str, object]], capsys: pytest.CaptureFixture[str]
) -> None:
    if case == "cuda-without-cuda" and torch.cuda.is_available():
        pytest.skip("CUDA is available here, so --device cuda is valid")
    args, pattern = CLI_CASES[case]
    (line,) = [line for line in str(cli_results[case]["output"]).splitlines() if re.search(pattern, line)]
    message = line.removeprefix("ERROR: ")
    assert bisect_run(args) == EXIT_ABORT
    assert capsys.readouterr().err == f"nanogpt-parity-bisect: error: {message}\n"


# ----------------------------------------------------------------------------------------------------------
# the library: token ids, sequence length, tokenizer files


@pytest.fixture
def tiny_model() -> GPT:
    torch.manual_seed(0)
    return GPT(TINY).double().eval()


@pytest.mark.parametrize(
    "bad_id", [TINY.vocab_size, TINY.vocab_size + 1000, -1], ids=["vocab", "far", "negative"]
)
def test_token_id_outside_the_vocabulary_is_a_value_error_naming_the_range(
    tiny_model: GPT, bad_id: int
) -> None:
    idx = torch.tensor([[1, 2, bad_id, 3]])
    with pytest.raises(ValueError, match=rf"token ids must be in \[0, {TINY.vocab_size}\).*{bad_id}"):
        tiny_model(idx)


def test_token_id_in_the_padding_rows_is_refused() -> None:
    model = GPT(GPTConfig(**{**TINY.__dict__, "vocab_size": 128, "logical_vocab_size": TINY.vocab_size}))
    with pytest.raises(ValueError, match=rf"\[0, {TINY.vocab_size}\)"):
        model(torch.tensor([[TINY.vocab_size + 5]]))
    assert model(torch.tensor([[0, TINY.vocab_size - 1]]))[0].shape == (1, 2, TINY.vocab_size)


def test_sequence_longer_than_the_block_is_a_value_error_naming_block_size(tiny_model: GPT) -> None:
    with pytest.raises(ValueError, match=rf"length {TINY.block_size + 1}: block_size is {TINY.block_size}"):
        tiny_model(torch.zeros(1, TINY.block_size + 1, dtype=torch.long))


def test_tokenizer_files_swapped_are_refused_naming_the_file(tmp_path: Path) -> None:
    encoder_json, vocab_bpe = bpe_files()
    wrong = tmp_path / "encoder.json"
    shutil.copyfile(vocab_bpe, wrong)  # another file under the expected name
    with pytest.raises(TokenizerFileError, match="sha256") as info:
        gpt2_tiktoken(wrong, vocab_bpe)
    assert str(wrong.resolve()) in str(info.value)


# ----------------------------------------------------------------------------------------------------------
# NaN and Inf in the harness


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")], ids=["nan", "inf", "-inf"])
def test_non_finite_values_never_pass_as_close(bad: float) -> None:
    tol = logits_tolerance(torch.float64)
    a = torch.zeros(4, dtype=torch.float64)
    a[2] = bad
    both = compare_tensors("logits", "x", a, a.clone(), tol)  # identical, and still not "close"
    one = compare_tensors("logits", "x", a, torch.zeros(4, dtype=torch.float64), tol)
    for rec in (both, one):
        assert not rec.passed
        assert rec.nonfinite and ("1 NaN" in rec.nonfinite if bad != bad else "1 Inf" in rec.nonfinite)


def test_nan_weight_is_reported_as_nan_by_the_logits_check(tmp_path: Path) -> None:
    checkpoint = ensure_synthetic_checkpoint(TINY, "tiny", root=tmp_path)[0]
    ours = GPT.from_pretrained(checkpoint, dtype=torch.float64).eval()
    theirs = load_hf(checkpoint, torch.float64, "cpu")
    with torch.no_grad():
        ours.transformer.h[0].mlp.c_fc.weight[0, 0] = float("nan")
    with pytest.raises(ParityFailure, match=r"the implementation contains \d+ NaN"):
        compare_logits(ours, theirs, token_batch("several_sequences", TINY), TINY.n_layer, "nan")


# ----------------------------------------------------------------------------------------------------------
# an interrupted write of a synthetic checkpoint

# ~90 MB of weights: writing and fsyncing them takes long enough to be killed in the middle.
MEDIUM = dict(block_size=256, vocab_size=8192, n_layer=6, n_head=8, n_embd=512)
WRITE = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from nanogpt.model import GPTConfig
    from parity.subject.synthetic import ensure_synthetic_checkpoint
    ensure_synthetic_checkpoint(GPTConfig(**{config}), "interrupted", root=Path(sys.argv[1]))
    """
).format(config=MEDIUM)


def test_killed_write_leaves_no_partial_checkpoint_and_the_next_run_regenerates(tmp_path: Path) -> None:
    root = tmp_path / "cache"
    final = root / checkpoint_name("interrupted", 1337)
    env = {**os.environ, CACHE_ENV_VAR: str(root), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-c", WRITE, str(root)], cwd=REPO, env=env)
    deadline = time.monotonic() + SUBPROCESS_TIMEOUT
    temporaries: list[Path] = []
    while not temporaries and proc.poll() is None and time.monotonic() < deadline:
        temporaries = list(root.glob(f".{final.name}.tmp-*")) if root.is_dir() else []
        time.sleep(0.001)
    proc.send_signal(signal.SIGKILL)  # no cleanup handler runs: the worst case of an interrupted run
    proc.wait(timeout=60)
    assert temporaries, "the writer finished (or never started) before it could be killed mid-write"
    # Under the final name: nothing, or (had the rename won the race) a complete checkpoint.
    if final.exists():
        assert weight_files(final) and LazyWeights(weight_files(final))
    path, seconds = ensure_synthetic_checkpoint(GPTConfig(**MEDIUM), "interrupted", root=root)
    assert path == final
    assert not list(root.glob(f".{final.name}.tmp-*")), "the stale temporary directory was not cleaned up"
    if seconds is None:
        pytest.fail("the killed write left a checkpoint that was reused instead of regenerated")
    model = GPT.from_pretrained(path)
    assert model.is_tied() and model.config.vocab_size == MEDIUM["vocab_size"]


def test_load_refuses_a_half_written_checkpoint_directory(tmp_path: Path) -> None:
    """What a non-atomic writer would leave: config.json and a truncated weights file under the final name."""
    good = ensure_synthetic_checkpoint(TINY, "tiny", root=tmp_path / "good")[0]
    half = _variant(good, tmp_path / "half")
    data = (half / "model.safetensors").read_bytes()
    (half / "model.safetensors").write_bytes(data[: len(data) // 3])
    with pytest.raises(CheckpointError, match="truncated"):
        GPT.from_pretrained(half)
