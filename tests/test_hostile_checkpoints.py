"""Checkpoints whose config.json or shard index transformers refuses, or that would allocate without bound.

Each bad checkpoint is a problem with the user's input, not a verdict on the code under test: the bisect
command must abort with 129 (never 125 on every commit), `pytest parity/` must stop with a usage error,
and the trainer and the sampler must print one line, all before anything is allocated. Every case is
driven through each command line, asserting the exit status, one error line naming the field, no
traceback, and that the checkpoint's files are unchanged.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from front_ends import run_batch

from nanogpt.config import run_cli
from nanogpt.hf import CheckpointError, read_hf_config, write_hf_checkpoint
from nanogpt.model import GPT, GPTConfig
from parity.subject.synthetic import CACHE_ENV_VAR, ensure_synthetic_checkpoint, synthetic_hf_weights

REPO = Path(__file__).resolve().parents[1]
TINY = GPTConfig(block_size=32, vocab_size=97, n_layer=2, n_head=2, n_embd=16)
SHARD = "model-00001-of-00001.safetensors"

pytestmark = pytest.mark.usefixtures("one_thread")


def _config(**changes: object) -> Callable[[Path], None]:
    def edit(d: Path) -> None:
        cfg = json.loads((d / "config.json").read_text())
        for k, v in changes.items():
            if v is DROP:
                cfg.pop(k, None)
            else:
                cfg[k] = v
        (d / "config.json").write_text(json.dumps(cfg))

    return edit


DROP = object()


def _raw_config(data: bytes) -> Callable[[Path], None]:
    def edit(d: Path) -> None:
        (d / "config.json").write_bytes(data)

    return edit


def _sharded(index: object, keep_shard: bool = True) -> Callable[[Path], None]:
    """The weights moved to one shard, with the given index JSON (a str is written as is)."""

    def edit(d: Path) -> None:
        if keep_shard:
            (d / "model.safetensors").rename(d / SHARD)
        else:
            (d / "model.safetensors").unlink()
        text = index if isinstance(index, str) else json.dumps(index)
        (d / "model.safetensors.index.json").write_text(text)

    return edit


def _deep_json(depth: int) -> bytes:
    return b'{"model_type": "gpt2", "n_layer": ' + b"[" * depth + b"]" * depth + b"}"


# name: (edit of a copy of the good checkpoint, regex the one error line must match)
CASES: dict[str, tuple[Callable[[Path], None], str]] = {
    "n-layer-string": (_config(n_layer="2"), r"n_layer is '2', not an integer"),
    "n-layer-float": (_config(n_layer=2.7), r"n_layer is 2\.7, not an integer"),
    "n-layer-null": (_config(n_layer=None), r"n_layer is None, not an integer"),
    "n-layer-list": (_config(n_layer=[2]), r"n_layer is \[2\], not an integer"),
    "n-layer-bool": (_config(n_layer=True), r"n_layer is True, not an integer"),
    "n-layer-zero": (_config(n_layer=0), r"n_layer is 0, outside \[1, 4096\]"),
    "n-layer-huge": (_config(n_layer=1_000_000_000), r"n_layer is 1000000000, outside"),
    "n-layer-disagrees": (_config(n_layer=4000), r"n_layer is 4000, but the weights hold 2 layer"),
    "vocab-string": (_config(vocab_size="abc"), r"vocab_size is 'abc', not an integer"),
    "vocab-null": (_config(vocab_size=None), r"vocab_size is None, not an integer"),
    "vocab-list": (_config(vocab_size=[97]), r"vocab_size is \[97\], not an integer"),
    "vocab-disagrees": (
        _config(vocab_size=50257),
        r"vocab_size is 50257, but transformer\.wte\.weight is \(97, 16\)",
    ),
    "n-embd-disagrees": (
        _config(n_embd=1024, n_head=2),
        r"n_embd is 1024, but transformer\.wte\.weight is \(97, 16\)",
    ),
    "n-positions-disagrees": (
        _config(n_positions=4096, n_ctx=4096),
        r"n_positions is 4096, but transformer\.wpe\.weight",
    ),
    "n-head-not-dividing": (_config(n_head=3), r"n_embd \(16\) is not divisible by n_head \(3\)"),
    "n-ctx-without-n-positions": (
        _config(n_positions=DROP),
        r"n_positions is missing \(transformers ignores n_ctx",
    ),
    "resid-pdrop-5": (_config(resid_pdrop=5), r"resid_pdrop is 5, not a probability in \[0, 1\)"),
    "attn-pdrop-negative": (_config(attn_pdrop=-0.1), r"attn_pdrop is -0\.1, not a probability"),
    "embd-pdrop-string": (_config(embd_pdrop="0.1"), r"embd_pdrop is '0\.1', not a probability"),
    "eps-string": (_config(layer_norm_epsilon="1e-5"), r"layer_norm_epsilon is '1e-5', not a finite number"),
    "activation-number": (_config(activation_function=3), r"activation_function is 3, not a string"),
    "scale-attn-string": (
        _config(scale_attn_weights="yes"),
        r"scale_attn_weights is 'yes', not true or false",
    ),
    "n-inner-string": (_config(n_inner="64"), r"n_inner is '64', not an integer or null"),
    "eos-string": (_config(eos_token_id="eot"), r"eos_token_id is 'eot', not a token id"),
    "model-type-missing": (_config(model_type=DROP), r"model_type is None, not 'gpt2'"),
    "config-a-list": (_raw_config(b"[1, 2]"), r"expected a JSON object, got list"),
    "config-not-utf8": (_raw_config(b'{"n_layer": "\xff\xfe"}'), r"config\.json: not valid JSON"),
    "config-deeply-nested": (_raw_config(_deep_json(100_000)), r"config\.json: JSON nested too deeply"),
    "config-huge": (
        _raw_config(b" " * (2 << 20) + b"{}"),
        r"config\.json: 2,097,154 bytes, not a GPT-2 config",
    ),
    "index-weight-map-list": (
        _sharded({"weight_map": [SHARD]}),
        r"index\.json: weight_map is missing or not",
    ),
    "index-weight-map-missing": (_sharded({"metadata": {}}), r"index\.json: weight_map is missing"),
    "index-not-json": (_sharded("{"), r"index\.json: not valid JSON"),
    "index-path-traversal": (
        _sharded({"weight_map": {"transformer.wte.weight": "../model.safetensors"}}),
        r"not a shard file name",
    ),
    "index-shard-missing": (
        _sharded({"weight_map": {"transformer.wte.weight": SHARD}}, keep_shard=False),
        r"shard\(s\) .* listed in the index are missing",
    ),
}


def digest(directory: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(directory.iterdir())}


@pytest.fixture(scope="module")
def variants(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[Path, dict[str, Path], dict[str, dict[str, str]]]:
    """(root, a copy of the good checkpoint per case with its edit applied, the digests of each copy)."""
    root = tmp_path_factory.mktemp("hostile")
    good = ensure_synthetic_checkpoint(TINY, "tiny", root=root / "cache")[0]
    dirs, digests = {}, {}
    for name, (edit, _) in CASES.items():
        d = root / name
        shutil.copytree(good, d)
        edit(d)
        dirs[name], digests[name] = d, digest(d)
    return root, dirs, digests


def _env(root: Path) -> dict[str, str]:
    env = {**os.environ, CACHE_ENV_VAR: str(root / "parity-cache"), "OMP_NUM_THREADS": "1"}
    env.update(HF_HOME=str(root / "hf-home"), HF_HUB_CACHE=str(root / "hf-home" / "hub"))
    env.pop("PYTEST_ADDOPTS", None)
    return env


# One child process per command runs every case (the imports of torch and transformers are paid once).
@pytest.fixture(scope="module")
def bisect_results(variants: tuple[Path, dict[str, Path], dict]) -> dict[str, dict[str, object]]:
    root, dirs, _ = variants
    cases = {name: ["--model", str(path), "--checks", "param-count"] for name, path in dirs.items()}
    return run_batch("bisect", cases, _env(root), root / "bisect.json")


@pytest.fixture(scope="module")
def pytest_results(variants: tuple[Path, dict[str, Path], dict]) -> dict[str, dict[str, object]]:
    root, dirs, _ = variants
    cases = {name: ["--co", "-q", "--model", str(path)] for name, path in dirs.items()}
    return run_batch("pytest", cases, _env(root), root / "pytest.json")


def _one_matching_line(text: str, pattern: str) -> None:
    assert "Traceback" not in text and "INTERNALERROR" not in text, text[-3000:]
    lines = [line for line in text.splitlines() if re.search(pattern, line)]
    assert len(lines) == 1, f"expected one line matching /{pattern}/:\n{text[-3000:]}"


@pytest.mark.parametrize("case", CASES)
def test_bisect_aborts_with_129_before_judging_a_commit(
    case: str, bisect_results: dict, variants: tuple[Path, dict[str, Path], dict]
) -> None:
    result = bisect_results[case]
    assert result["rc"] == 129, result
    err = str(result["stderr"]).strip().splitlines()
    assert len(err) == 1 and err[0].startswith("nanogpt-parity-bisect: error: "), err
    _one_matching_line(err[0], CASES[case][1])
    assert "PASS" not in str(result["stdout"]) and "FAIL" not in str(result["stdout"])
    _, dirs, digests = variants
    assert digest(dirs[case]) == digests[case]


@pytest.mark.parametrize("case", CASES)
def test_parity_suite_stops_with_a_usage_error(case: str, pytest_results: dict) -> None:
    result = pytest_results[case]
    assert result["rc"] == pytest.ExitCode.USAGE_ERROR, str(result["output"])[-3000:]
    _one_matching_line(str(result["output"]), CASES[case][1])


@pytest.mark.parametrize("prog", ["nanogpt.sample", "nanogpt.train"])
@pytest.mark.parametrize("case", CASES)
def test_sample_and_train_print_one_line(
    case: str,
    prog: str,
    variants: tuple[Path, dict[str, Path], dict],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    import importlib

    _, dirs, digests = variants
    main = importlib.import_module(prog).main
    argv = [f"--init_from={dirs[case]}", "--device=cpu"]
    if prog == "nanogpt.train":
        argv += [f"--out_dir={tmp_path / 'out'}", f"--data_dir={tmp_path / 'data'}", "--block_size=16"]
        _tiny_dataset(tmp_path / "data")
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        run_cli(main, argv, prog)
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"{prog}: error: "), err
    _one_matching_line(err[0], CASES[case][1])
    assert digest(dirs[case]) == digests[case]
    assert not (tmp_path / "out").exists()


def _tiny_dataset(where: Path) -> None:
    from nanogpt.data import prepare_dataset

    (where.parent / "t.txt").write_text("a few words of text to train on, repeated. " * 20)
    prepare_dataset(where.parent / "t.txt", where)


def test_real_bisect_entry_point_aborts_with_129(variants: tuple[Path, dict[str, Path], dict]) -> None:
    root, dirs, _ = variants
    proc = subprocess.run(
        [sys.executable, "-m", "parity.frontends.bisect", "--model", str(dirs["resid-pdrop-5"])],
        cwd=REPO,
        env=_env(root),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 129, proc.stdout + proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "resid_pdrop is 5" in proc.stderr


# ----------------------------------------------------------------------------------------------------------
# valid checkpoints that used to be refused


def _hf_dir_with_bin(tmp_path: Path, legacy: bool) -> Path:
    """What `torch.save(hf.state_dict(), "pytorch_model.bin")` writes: lm_head stored, equal to wte."""
    from transformers import GPT2LMHeadModel

    src = ensure_synthetic_checkpoint(TINY, "tiny", root=tmp_path / "cache")[0]
    hf = GPT2LMHeadModel.from_pretrained(src)
    d = tmp_path / ("legacy" if legacy else "zip")
    d.mkdir()
    shutil.copyfile(src / "config.json", d / "config.json")
    torch.save(hf.state_dict(), d / "pytorch_model.bin", _use_new_zipfile_serialization=not legacy)
    return d


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy-pickle"])
def test_tied_pytorch_model_bin_with_lm_head_loads_tied(tmp_path: Path, legacy: bool) -> None:
    d = _hf_dir_with_bin(tmp_path, legacy)
    assert "lm_head.weight" in torch.load(d / "pytorch_model.bin", weights_only=True)
    model = GPT.from_pretrained(d, dtype=torch.float64)
    expected = synthetic_hf_weights(TINY)["transformer.wte.weight"].double()
    assert model.is_tied() and torch.equal(model.transformer.wte.weight, expected)


def test_untied_pytorch_model_bin_is_refused_without_suggesting_a_flag(tmp_path: Path) -> None:
    d = _hf_dir_with_bin(tmp_path, legacy=False)
    sd = torch.load(d / "pytorch_model.bin", weights_only=True)
    sd["lm_head.weight"] = sd["lm_head.weight"].clone()
    sd["lm_head.weight"][0, 0] += 1.0  # one element differs: untied
    torch.save(sd, d / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match=r"untied checkpoint.*tie_word_embeddings=True.*from Python"):
        GPT.from_pretrained(d)


def test_shape_mismatch_message_names_the_stored_layout(tmp_path: Path) -> None:
    weights = synthetic_hf_weights(TINY)
    w = weights["transformer.h.0.mlp.c_fc.weight"]  # HF Conv1D layout (16, 64)
    weights["transformer.h.0.mlp.c_fc.weight"] = w.t().contiguous()  # saved as nn.Linear (64, 16)
    from nanogpt.hf import hf_config_from_gpt

    d = write_hf_checkpoint(tmp_path / "ckpt", hf_config_from_gpt(TINY), weights)
    read_hf_config(d)  # the config agrees with the weights' headers
    with pytest.raises(CheckpointError, match=r"c_fc\.weight: stored \(64, 16\), expected \(16, 64\)"):
        GPT.from_pretrained(d)


def test_parity_suite_passes_on_a_tied_pytorch_model_bin(tmp_path: Path) -> None:
    """The whole suite, the untied control included, on a checkpoint that stores lm_head equal to wte."""
    d = _hf_dir_with_bin(tmp_path, legacy=False)
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "parity/",
            "-q",
            "-p",
            "no:cacheprovider",
            "--model",
            str(d),
            "-k",
            "untied or hugging or logits or tied-storage",
        ],
        cwd=Path(__file__).resolve().parent.parent,
        capture_output=True,
        text=True,
        check=False,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]
    assert "4 passed" in out.stdout, out.stdout[-2000:]
