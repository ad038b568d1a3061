"""The `nanogpt-parity` command: the parity suite of the installed package, from any directory.

`nanogpt-parity --model gpt2-large` is `pytest parity/ --model gpt2-large` run on the installed `parity`
package: the same options, pytest's own passed through, the exit status pytest's. The plugins are loaded
here with `-p`, never through a pytest11 entry point, so installing the package changes nothing in a
user's own pytest runs (a conftest of theirs that defines `--model` keeps working). The suite's own ini
file replaces whatever pytest.ini or pyproject.toml the current directory has, so a user's addopts or
collection settings cannot leak into our run; paths on the command line stay relative to where the
command is run. Nothing is written where the command runs: pytest's cache lives in the harness's cache
directory ($NANOGPT_PARITY_CACHE), and the tested code is imported only in the sandbox's child process,
which writes no bytecode. `--help` lists the harness's options first, under the command's own usage line,
then pytest's (its usage line naming this command, the harness's group left out of it).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import sys
from collections.abc import Sequence
from pathlib import Path

import pytest

# The plugins of `pytest parity/` (a checkout's root conftest.py loads this list, and the benchmarks' own
# plugin). progress first: the other imports it, and pytest can rewrite a plugin's asserts only if it
# imports it first.
PLUGINS = ["parity.subject.progress", "parity.frontends.pytest_frontend.plugin"]
SUITE_INI = Path(__file__).with_name("suite.ini")
# Options whose value is a path the user typed relative to their directory.
PATH_OPTIONS = ("--impl", "--parity-report")
PROG = "nanogpt-parity"
HELP_FLAGS = ("-h", "--help")


def absolute_path_options(args: Sequence[str], cwd: Path) -> list[str]:
    """Make the values of PATH_OPTIONS absolute against cwd (both `--impl X` and `--impl=X`)."""
    out: list[str] = []
    pending: str | None = None
    for arg in args:
        if pending is not None:
            out.append(str(cwd / Path(arg).expanduser()))
            pending = None
            continue
        name, eq, value = arg.partition("=")
        if name in PATH_OPTIONS and eq:
            out.append(f"{name}={cwd / Path(value).expanduser()}")
        else:
            out.append(arg)
            pending = arg if arg in PATH_OPTIONS else None
    return out


def cache_options(args: Sequence[str]) -> list[str]:
    """pytest's cache in the harness's cache directory, never the user's; none when they turn it off."""
    if "no:cacheprovider" in [a.removeprefix("-p").lstrip("=") for a in args]:
        return []  # `-o cache_dir` would only warn that the option is unknown
    from nanogpt.paths import OutputPathError
    from parity.subject.synthetic import cache_root

    try:
        return ["-o", f"cache_dir={cache_root() / 'pytest-cache'}"]
    except OutputPathError:  # pytest parity/ reports the unusable cache directory itself
        return ["-p", "no:cacheprovider"]


def pytest_args(args: Sequence[str], cwd: Path | None = None) -> list[str]:
    """The pytest command line that runs the installed suite with the user's arguments."""
    cwd = Path.cwd() if cwd is None else cwd
    package_parent = Path(__file__).resolve().parents[2]
    plugins = [a for p in PLUGINS for a in ("-p", p)]
    return [
        *plugins,
        # pytest-benchmark would leave a .benchmarks folder in the user's directory; the suite times nothing.
        # pytest only blocks the name: without pytest-benchmark installed, the option changes nothing.
        "-p",
        "no:benchmark",
        "-c",
        str(SUITE_INI),
        # Node ids read parity/suite/test_checks.py::..., as in a checkout.
        "--rootdir",
        str(package_parent),
        # The ini file sits in parity/frontends/, which would stop conftest lookup below parity/conftest.py;
        # parity/ itself, not its parent: a checkout's root conftest.py must not load.
        "--confcutdir",
        str(package_parent / "parity"),
        *cache_options(args),
        "--pyargs",
        "parity",
        *absolute_path_options(args, cwd),
    ]


def own_help() -> str:
    """The harness's options under this command's usage line, as argparse formats them."""
    from parity.core.errors import UsageError
    from parity.frontends.options import PYTEST, add_options

    parser = argparse.ArgumentParser(
        prog=PROG,
        usage=f"{PROG} [options] [pytest options] [file_or_dir ...]",
        description="Check a GPT-2 implementation against Hugging Face's: the parity suite of the installed "
        "package, run by pytest.",
        add_help=False,
    )
    add_options(parser.add_argument, PYTEST, UsageError)
    return parser.format_help().replace("\noptions:\n", "\nnanogpt-parity options:\n", 1)


def pytest_help(text: str) -> str:
    """pytest's help as pytest.main prints it, its usage line naming this command, the harness's group cut."""
    from parity.frontends.options import GROUP_TITLE

    lines = text.replace("usage: pytest.main()", f"usage: {PROG}", 1).splitlines()
    if f"{GROUP_TITLE}:" in lines:
        start = lines.index(f"{GROUP_TITLE}:")
        end = lines.index("", start) if "" in lines[start:] else len(lines)
        del lines[start : end + 1]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    """Run the parity suite on the installed package; return pytest's exit status."""
    args = list(sys.argv[1:] if argv is None else argv)
    options = args[: args.index("--")] if "--" in args else args
    if not any(a in HELP_FLAGS for a in options):
        return int(pytest.main(pytest_args(args)))
    captured = io.StringIO()
    with contextlib.redirect_stdout(captured):
        code = int(pytest.main(pytest_args(args)))
    print(own_help())
    print(f"pytest's own options, passed through to pytest:\n\n{pytest_help(captured.getvalue())}", end="")
    return code


if __name__ == "__main__":
    sys.exit(main())
