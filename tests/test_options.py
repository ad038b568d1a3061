"""One option spec for both front ends (parity/frontends/options.py), the gpu marker, the command's plugins.

Both parsers are built from the spec and convert each value while parsing; the options page lists every
option of each front end; a test marked gpu is skipped without CUDA and fails under --require-gpu; and
the installed command runs with neither pytest-benchmark nor the benchmarks package importable.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from parity.core.exit_codes import EXIT_ABORT
from parity.frontends import options
from parity.frontends.bisect import build_parser, run
from parity.frontends.cli import PLUGINS
from parity.frontends.options import BISECT, OPTIONS, PYTEST, OptionError, add_options, options_of

REPO = Path(__file__).resolve().parents[1]
TIMEOUT = 300  # seconds, for a pytest run in a child process on a busy machine


def _parser(front_end: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=front_end, exit_on_error=False)
    add_options(parser.add_argument, front_end, OptionError)
    return parser


@pytest.mark.parametrize("front_end", [PYTEST, BISECT])
def test_each_front_end_declares_each_flag_once_with_its_default_in_the_help(front_end: str) -> None:
    flags = [f for o in options_of(front_end) for f in o.flags]
    assert len(flags) == len(set(flags)), sorted(flags)
    for option in options_of(front_end):
        assert f"(default: {option.shown_default})" in option.help and "%" not in option.help, option.flags
    defaults = vars(_parser(front_end).parse_args([]))
    assert defaults["model"] == ("gpt2" if front_end == PYTEST else options.SMALL)
    assert defaults["tied_decay"] == "yes" and defaults["device"] is None and defaults["run_module"] is False


def test_the_bisect_command_takes_exactly_its_options_from_the_spec() -> None:
    declared = {f for a in build_parser()._actions for f in a.option_strings} - {"-h", "--help"}
    assert declared == {f for o in options_of(BISECT) for f in o.flags}


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--device", "tpu"], "--device 'tpu': choose one of cpu, cuda"),
        (["--dtype", "half"], "--dtype 'half': choose one of float64, float32, bfloat16, float16"),
        (["--tied-decay", "sometimes"], "--tied-decay 'sometimes': choose one of yes, no"),
    ],
)
def test_a_shared_option_is_refused_by_one_converter_in_both_parsers(argv: list[str], message: str) -> None:
    for front_end in (PYTEST, BISECT):
        with pytest.raises(OptionError) as e:
            _parser(front_end).parse_args(argv)
        assert str(e.value) == message, front_end
    (shared,) = [o for o in OPTIONS if argv[0] in o.flags]
    assert set(shared.front_ends) == {PYTEST, BISECT}  # one declaration, so one converter for both


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--timeout", "0"], "--timeout '0': give a positive number of seconds"),
        (["--timeout", "soon"], "--timeout 'soon': give a positive number of seconds"),
        (["--checks", "logits,nope"], "--checks 'logits,nope': unknown check(s) ['nope']"),
        (["--expect", "logits=maybe"], "--expect 'logits=maybe': write CHECK=pass or CHECK=fail"),
    ],
)
def test_the_bisect_command_refuses_a_bad_value_while_parsing_and_aborts(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run([*argv, "--model", "/no/such/checkpoint"]) == EXIT_ABORT  # refused before --model is read
    err = capsys.readouterr().err
    assert err.startswith(f"nanogpt-parity-bisect: error: {message}") and err.count("\n") == 1, err


def test_parsed_values_are_converted() -> None:
    args = _parser(BISECT).parse_args(
        ["--timeout", "2.5", "--expect", "logits=fail", "--expect", "grads=pass"]
    )
    assert args.timeout == 2.5 and dict(args.expect) == {"logits": False, "grads": True}
    assert _parser(PYTEST).parse_args(["--impl-timeout", "7"]).impl_timeout == 7.0


def test_the_options_page_has_a_table_of_every_option_per_front_end() -> None:
    page = options.render_options_page()
    pytest_part, bisect_part = page.split(f"## {options.FRONT_END_TITLES[BISECT]}")
    for front_end, part in ((PYTEST, pytest_part), (BISECT, bisect_part)):
        rows = [line for line in part.splitlines() if line.startswith("| `-")]
        assert len(rows) == len(options_of(front_end)), rows
        for row, option in zip(rows, options_of(front_end), strict=True):
            assert row.startswith(f"| `{', '.join(option.flags)}") and row.count(" | ") == 2, row
    assert "| `--expect CHECK=pass\\|fail` |" in bisect_part and "--in-process" not in bisect_part


GPU_TEST = textwrap.dedent(
    """
    import pytest

    @pytest.mark.gpu
    def test_on_the_gpu():
        pass
    """
)


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here: a gpu test runs")
def test_a_gpu_test_is_skipped_without_cuda_and_fails_under_require_gpu(tmp_path: Path) -> None:
    (tmp_path / "test_gpu.py").write_text(GPU_TEST)
    (tmp_path / "pytest.ini").write_text("[pytest]\nmarkers =\n    gpu: needs a CUDA device\n")
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    env.pop("PYTEST_ADDOPTS", None)
    command = [
        sys.executable,
        "-m",
        "pytest",
        *(arg for plugin in PLUGINS for arg in ("-p", plugin)),
        "-p",
        "no:cacheprovider",
        "-rs",
        "--strict-markers",
    ]
    skipped = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=TIMEOUT)
    assert skipped.returncode == 0 and "1 skipped" in skipped.stdout, skipped.stdout + skipped.stderr
    assert "needs a CUDA device; none is available" in skipped.stdout
    failed = subprocess.run(
        [*command, "--require-gpu"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=TIMEOUT
    )
    assert failed.returncode == pytest.ExitCode.TESTS_FAILED, failed.stdout + failed.stderr
    assert "--require-gpu: needs a CUDA device; none is available" in failed.stdout


# Runs the `nanogpt-parity` command where neither pytest-benchmark nor the benchmarks package can be
# imported, and no entry-point plugin is loaded: what an install without pytest-benchmark sees.
WITHOUT_BENCHMARKS = textwrap.dedent(
    """
    import importlib.abc, sys

    class Absent(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.partition(".")[0] in ("pytest_benchmark", "benchmarks"):
                raise ModuleNotFoundError(f"No module named {name!r}", name=name)
            return None

    sys.meta_path.insert(0, Absent())
    from parity.frontends.cli import main
    sys.exit(main(sys.argv[1:]))
    """
)


def test_the_command_runs_without_pytest_benchmark_and_imports_no_benchmarks(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1",
        "OMP_NUM_THREADS": "1",
    }
    env.pop("PYTEST_ADDOPTS", None)
    done = subprocess.run(
        [sys.executable, "-c", WITHOUT_BENCHMARKS, "--co", "-q", "--weights", "synthetic"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "test_check[gpt2-logits]" in done.stdout
    assert not (tmp_path / ".benchmarks").exists()
