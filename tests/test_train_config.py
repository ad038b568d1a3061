"""Tests for nanogpt.config: typed parsing of config files and --key=value overrides, and validation."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from nanogpt.config import ConfigError, HelpRequested, parse_config
from nanogpt.train_config import TrainConfig


def parse(*argv: str) -> tuple[TrainConfig, set[str]]:
    """parse_config(TrainConfig, argv)."""
    return parse_config(TrainConfig, list(argv))


def test_overrides_are_typed() -> None:
    cfg, explicit = parse(
        "--n_layer=4", "--batch_size", "8", "--learning_rate=3e-4", "--bias=false", "--compile"
    )
    assert (cfg.n_layer, cfg.batch_size, cfg.learning_rate, cfg.bias, cfg.compile) == (
        4,
        8,
        3e-4,
        False,
        True,
    )
    assert isinstance(cfg.learning_rate, float) and isinstance(cfg.n_layer, int)
    assert explicit == {"n_layer", "batch_size", "learning_rate", "bias", "compile"}
    cfg, _ = parse("--vocab-size=50304", "--min_lr=none", "--progress=none")
    assert cfg.vocab_size == 50304 and cfg.min_lr is None and cfg.progress is None
    assert parse()[0] == TrainConfig()


def test_unknown_key_suggests_the_closest() -> None:
    with pytest.raises(ConfigError, match=r"unknown key 'batchsize' \(did you mean batch_size\?\)"):
        parse("--batchsize=3")
    with pytest.raises(ConfigError, match=r"unknown key 'zzz'$"):
        parse("--zzz=1")


@pytest.mark.parametrize(
    "arg, message",
    [
        ("--n_layer=two", "n_layer expects int, got 'two'"),
        ("--n_layer=2.5", "n_layer expects int, got '2.5'"),
        ("--bias=maybe", "bias expects bool, got 'maybe'"),
        ("--learning_rate=fast", "learning_rate expects float, got 'fast'"),
        ("--vocab_size=big", "vocab_size expects int or none, got 'big'"),
    ],
)
def test_wrong_types_name_the_key(arg: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse(arg)


@pytest.mark.parametrize(
    "arg, message",
    [
        ("--batch_size=0", "batch_size: must be >= 1, got 0"),
        ("--learning_rate=-1e-3", "learning_rate: must be >= 0.0"),
        ("--dropout=1.0", r"dropout: 1.0 is not in \[0, 1\)"),
        ("--n_head=5", r"n_embd: 768 is not divisible by n_head \(5\)"),
        ("--beta2=1.5", r"beta2: 1.5 is not in \[0, 1\)"),
        ("--dtype=float8", "dtype: 'float8' is not one of"),
        ("--device=tpu", "device: 'tpu' is not a device"),
        ("--parallel=zero3", "parallel: 'zero3' is not one of ddp, fsdp"),
        ("--min_lr=1.0", r"min_lr: 1.0 exceeds learning_rate"),
        ("--max_iters=10", r"warmup_iters: 100 exceeds lr_decay_iters \(10\)"),
        ("--grad_clip=-1", "grad_clip: must be >= 0.0"),
    ],
)
def test_out_of_range_values_name_the_key(arg: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse(arg)


def test_all_problems_are_reported_together() -> None:
    with pytest.raises(ConfigError, match="batch_size: .*; .*eval_iters: "):
        parse("--batch_size=0", "--eval_iters=0")


def test_json_and_toml_files_then_overrides(tmp_path: Path) -> None:
    (tmp_path / "a.json").write_text(json.dumps({"n_layer": 6, "learning_rate": 1, "dropout": 0.1}))
    (tmp_path / "b.toml").write_text('n_layer = 8\nout_dir = "runs/x"\nbias = false\nmin_lr = 1e-5\n')
    cfg, explicit = parse(str(tmp_path / "a.json"), str(tmp_path / "b.toml"), "--n_layer=3")
    assert (cfg.n_layer, cfg.learning_rate, cfg.dropout, cfg.out_dir, cfg.bias) == (
        3,
        1.0,
        0.1,
        "runs/x",
        False,
    )
    assert isinstance(cfg.learning_rate, float)  # a JSON int is accepted where a float is expected
    assert explicit == {"n_layer", "learning_rate", "dropout", "out_dir", "bias", "min_lr"}


def test_file_errors_name_the_file_and_key(tmp_path: Path) -> None:
    (tmp_path / "typo.json").write_text(json.dumps({"n_layers": 6}))
    with pytest.raises(ConfigError, match=r"typo.json: unknown key 'n_layers' \(did you mean n_layer\?\)"):
        parse(str(tmp_path / "typo.json"))
    (tmp_path / "type.toml").write_text('batch_size = "8"\n')
    with pytest.raises(ConfigError, match=r"type.toml: batch_size expects int, got '8' \(str\)"):
        parse(str(tmp_path / "type.toml"))
    (tmp_path / "bool.json").write_text(json.dumps({"n_layer": True}))
    with pytest.raises(ConfigError, match="n_layer expects int, got True"):
        parse(str(tmp_path / "bool.json"))
    (tmp_path / "bad.toml").write_text("n_layer = = 3\n")
    with pytest.raises(ConfigError, match="bad.toml: cannot parse"):
        parse(str(tmp_path / "bad.toml"))
    (tmp_path / "bad.json").write_text('{"n_layer": ')
    with pytest.raises(ConfigError, match=r"bad.json: not valid JSON \(Expecting value"):
        parse(str(tmp_path / "bad.json"))
    (tmp_path / "list.json").write_text("[1, 2]")
    with pytest.raises(ConfigError, match=r"list.json: expected a JSON object, got list"):
        parse(str(tmp_path / "list.json"))
    with pytest.raises(ConfigError, match="config file not found"):
        parse(str(tmp_path / "absent.json"))


def test_python_config_files_are_never_executed(tmp_path: Path) -> None:
    marker = tmp_path / "executed"
    (tmp_path / "evil.py").write_text(f"open({str(marker)!r}, 'w').write('x')\nn_layer = 1\n")
    with pytest.raises(ConfigError, match=r"must be \.json or \.toml \(Python files are not executed\)"):
        parse(str(tmp_path / "evil.py"))
    assert not marker.exists()


def test_help_lists_every_key() -> None:
    with pytest.raises(HelpRequested) as info:
        parse("--help")
    for key in ("batch_size", "init_from", "gradient_accumulation_steps", "parallel"):
        assert f"--{key}=" in info.value.text
    assert "micro-batch size per process (default: 12)" in " ".join(info.value.text.split())
    with pytest.raises(ConfigError, match="--out_dir needs a value"):
        parse("--out_dir")


def test_flags_override_files_wherever_they_stand(tmp_path: Path) -> None:
    (tmp_path / "a.json").write_text(json.dumps({"n_layer": 6, "n_head": 6}))
    cfg, _ = parse("--n_layer=3", str(tmp_path / "a.json"), "--n_embd", "96")
    assert (cfg.n_layer, cfg.n_head, cfg.n_embd) == (3, 6, 96)


def test_a_negative_number_is_a_value_and_abbreviations_are_refused() -> None:
    with pytest.raises(ConfigError, match=r"learning_rate: must be >= 0.0, got -0.001"):
        parse("--learning_rate", "-1e-3")
    with pytest.raises(ConfigError, match=r"unknown key 'batch' \(did you mean batch_size\?\)"):
        parse("--batch=3")
    with pytest.raises(ConfigError, match=r"--out_dir needs a value"):
        parse("--out_dir", "--n_layer=3")
