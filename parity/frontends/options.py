"""The command-line options of both front ends, declared once: `pytest parity/` and the bisect command.

Each `Option` says its flags, what its value means, its default, the converter that turns the typed text
into the value, and which front ends take it. The pytest plugin registers its options into pytest's
parser and the bisect command its own into argparse, both through `add_options`, so a bad value is
refused by the same converter in both, while the command line is parsed (as pytest-benchmark's
`type=parse_*` options are), before any work, with the same message. Where the front ends differ (the
bisect command's small default model, its --checks and --expect; pytest's --weights and --in-process),
the option is declared per front end. Checks that need two options (float16 on CPU, --impl-timeout with
--in-process, --weights synthetic with a checkpoint directory) stay after parsing, in one function each
(`parity.subject.targets`, `child_run.parse_timeout`). `render_options_page` writes docs/options.md.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from nanogpt.paths import OutputPathError, resolve_output_file
from parity.checks.registry import CHECK_NAMES, CHECKS
from parity.core.errors import ImplementationError, UsageError
from parity.foreign.impl import check_implementation_path
from parity.foreign.mapping_file import mapping_option
from parity.sandbox.parent import SMALL_TIMEOUT_S
from parity.subject.loading import GPT2_ACTIVATION, HF_ACTIVATIONS
from parity.subject.targets import (
    DEVICE_CHOICES,
    DTYPES,
    MODEL_CHOICES,
    SMALL,
    WEIGHTS_CHOICES,
    resolve_device,
)

PYTEST = "pytest"  # `pytest parity/` in a checkout, `nanogpt-parity` installed
BISECT = "bisect"  # `nanogpt-parity-bisect`, `python -m parity.frontends.bisect`
GROUP_TITLE = "GPT-2 parity harness"  # the options' group in pytest's help
FRONT_END_TITLES = {
    PYTEST: "`pytest parity/` and `nanogpt-parity`",
    BISECT: "`nanogpt-parity-bisect` (`python -m parity.frontends.bisect`)",
}


class OptionError(Exception):
    """A bad option value met while argparse parses; not a ValueError, so argparse keeps its message."""


def choice(flag: str, choices: Iterable[str]) -> Callable[[str], str]:
    """A converter that takes one of choices and refuses anything else, naming them."""
    allowed = tuple(choices)

    def convert(text: str) -> str:
        if text not in allowed:
            raise UsageError(f"{flag} {text!r}: choose one of {', '.join(allowed)}")
        return text

    return convert


def parse_seconds(flag: str, text: str | float) -> float:
    """text as a positive, finite number of seconds; UsageError naming flag otherwise."""
    try:
        seconds = float(text)
    except ValueError:
        seconds = math.nan
    if not (seconds > 0 and math.isfinite(seconds)):
        raise UsageError(f"{flag} {text!r}: give a positive number of seconds")
    return seconds


def parse_checks(text: str | None) -> list[str]:
    """The checks named by --checks (comma-separated, or all)."""
    if text is None or text.strip() == "all":
        return list(CHECK_NAMES)
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in CHECKS]
    if unknown or not names:
        raise UsageError(
            f"--checks {text!r}: unknown check(s) {unknown}; choose from {', '.join(CHECK_NAMES)} or all"
        )
    return names


def checks_value(text: str) -> str:
    """--checks as typed, once every name in it is a check (the bisect command tells all from a list)."""
    parse_checks(text)
    return text


def parse_expectation(item: str) -> tuple[str, bool]:
    """One --expect CHECK=pass|fail, as (check, should pass)."""
    check, _, want = item.partition("=")
    if check not in CHECKS or want not in ("pass", "fail"):
        raise UsageError(
            f"--expect {item!r}: write CHECK=pass or CHECK=fail, CHECK one of {', '.join(CHECK_NAMES)}"
        )
    return check, want == "pass"


def implementation_path(text: str) -> str:
    """--impl as typed, once it names a file or package that can be imported (nothing is imported here)."""
    try:
        check_implementation_path(text)
    except ImplementationError as e:
        raise UsageError(f"--impl: {e}") from None
    return text


def loader_spec(text: str) -> str:
    """--loader as typed, once it reads MODULE:FUNCTION (dotted names; the function may be Class.method)."""
    module, sep, function = text.partition(":")
    dotted = (module, function)
    if not sep or not all(d and all(p.isidentifier() for p in d.split(".")) for d in dotted):
        raise UsageError(f"--loader {text!r}: write MODULE:FUNCTION, e.g. model:GPT.from_pretrained")
    return text


def report_path(text: str) -> str:
    """--parity-report as typed, once a file can be written there.

    Checked now, not when the report is written after the whole run; written again through the same
    validator (ParityReport.write), so a symlink is written through, never replaced.
    """
    try:
        resolve_output_file(text, "--parity-report")
    except OutputPathError as e:
        raise UsageError(str(e)) from None
    return text


@dataclass(frozen=True)
class Option:
    """One command-line option: flags, meaning, default, the converter of its value, and who takes it."""

    flags: tuple[str, ...]
    meaning: str
    front_ends: tuple[str, ...] = (PYTEST, BISECT)
    default: Any = None
    default_text: str = ""  # the default in words where the value alone would not say it
    convert: Callable[[str], Any] | None = None  # raises UsageError with the message both front ends show
    metavar: str | None = None
    action: str | None = None  # "store_true" (a switch) or "append" (repeatable)
    listing: str = ""  # appended to the command line's help only (too long for the options page)

    @property
    def shown_default(self) -> str:
        """The default as the help and the options page say it."""
        if self.default_text:
            return self.default_text
        return "off" if self.action == "store_true" else str(self.default)

    @property
    def help(self) -> str:
        """The help text of the option on the command line."""
        text = f"{self.meaning} (default: {self.shown_default})"
        return f"{text}. {self.listing}" if self.listing else text

    def parser_arguments(self, error: type[Exception]) -> dict[str, Any]:
        """Keyword arguments of argparse's add_argument and pytest's addoption; a bad value raises error."""
        arguments: dict[str, Any] = {"help": self.help}
        if self.action == "store_true":
            return {**arguments, "action": "store_true", "default": False}
        if self.action == "append":
            arguments.update(action="append", default=list(self.default or ()))
        else:
            arguments["default"] = self.default
        if self.metavar is not None:
            arguments["metavar"] = self.metavar
        if self.convert is not None:
            arguments["type"] = _raising(self.convert, error)
        return arguments


def _raising(convert: Callable[[str], Any], error: type[Exception]) -> Callable[[str], Any]:
    """convert, with its UsageError raised as error (argparse would replace a ValueError's message)."""

    @functools.wraps(convert)
    def converted(text: str) -> Any:
        try:
            return convert(text)
        except UsageError as e:
            raise error(str(e)) from None

    return converted


IMPL_MEANING = (
    "implementation under test: a model.py file or a package directory, FILE:CLASS to name the model class "
    "(else GPT, or the class found returning logits)"
)
TIMEOUT_DEFAULT = f"{SMALL_TIMEOUT_S:g} s for small models, more by parameter count"

OPTIONS: tuple[Option, ...] = (
    Option(
        ("--impl",),
        f"{IMPL_MEANING}, run in a child process",
        front_ends=(PYTEST,),
        metavar="PATH",
        default_text="the reference nanogpt, in this process",
        convert=implementation_path,
    ),
    Option(
        ("--impl",),
        f"{IMPL_MEANING}; absent at a commit, that commit cannot be tested (125)",
        front_ends=(BISECT,),
        metavar="PATH",
        default_text="the reference nanogpt",
    ),
    Option(
        ("--model",),
        f"model to check: {' | '.join(MODEL_CHOICES)} | PATH to a local Hugging Face GPT-2 "
        f"checkpoint directory ({SMALL}: a synthetic 2-layer model, seconds per run)",
        front_ends=(PYTEST,),
        default="gpt2",
    ),
    Option(
        ("--model",),
        f"model to check: {' | '.join(m for m in MODEL_CHOICES if m != 'all')} | PATH to a local "
        f"Hugging Face GPT-2 checkpoint directory ({SMALL}: a synthetic 2-layer model, seconds per run)",
        front_ends=(BISECT,),
        default=SMALL,
    ),
    Option(
        ("--weights",),
        "auto (pretrained when in the local Hugging Face cache, else synthetic) | pretrained | synthetic",
        front_ends=(PYTEST,),
        default="auto",
        convert=choice("--weights", WEIGHTS_CHOICES),
    ),
    Option(
        ("--revision",),
        "pin the cached hub snapshot of a named size: branch, tag or commit",
        front_ends=(PYTEST,),
        default_text="refs/main",
    ),
    Option(
        ("--checks",),
        "comma-separated check names (docs/checks.md), or all",
        front_ends=(BISECT,),
        default_text="all",
        convert=checks_value,
        listing="; ".join(f"{c.name}: {c.meaning}" for c in CHECKS.values()),
    ),
    Option(
        ("--expect",),
        "what counts as good for CHECK (repeatable; selects CHECK)",
        front_ends=(BISECT,),
        default_text="every selected check passes",
        convert=parse_expectation,
        metavar="CHECK=pass|fail",
        action="append",
    ),
    Option(
        ("--device",), " | ".join(DEVICE_CHOICES), default_text="cuda when available", convert=resolve_device
    ),
    Option(
        ("--dtype",),
        " | ".join(DTYPES),
        default_text="float64 on CPU up to gpt2-medium's size, float32 above and on CUDA",
        convert=choice("--dtype", DTYPES),
    ),
    Option(
        ("--tied-decay",),
        "should the tied matrix be weight-decayed (the decay-groups check)? yes | no",
        default="yes",
        default_text="yes, the reference's policy",
        convert=choice("--tied-decay", ("yes", "no")),
    ),
    Option(
        ("--hf-activation",),
        "Hugging Face's activation_function: gelu builds its GPT-2 with the exact GELU, upstream nanoGPT's "
        "nn.GELU(), to check everything else past that known departure",
        default=GPT2_ACTIVATION,
        default_text=f"{GPT2_ACTIVATION}, GPT-2's tanh approximation",
        convert=choice("--hf-activation", HF_ACTIVATIONS),
    ),
    Option(
        ("--loader",),
        "the implementation's own weight loader that the own-loader check runs, called with the model's name "
        "(gpt2, ...): MODULE:FUNCTION, MODULE beside --impl (its own file's name for --impl itself)",
        metavar="MODULE:FUNCTION",
        default_text="GPT.from_pretrained when the implementation has one",
        convert=loader_spec,
    ),
    Option(
        ("--mapping",),
        "a JSON file saying where GPT-2's tensors live in --impl (checkpoint name -> parameter, rows, "
        "layout), over the roles the harness discovers; format: the README's What --impl accepts",
        metavar="FILE",
        default_text="the discovered mapping",
        convert=mapping_option,
    ),
    Option(
        ("--impl-timeout",),
        "wall-clock limit of the child process that runs --impl; past it, every check is CANNOT-TEST",
        front_ends=(PYTEST,),
        default_text=TIMEOUT_DEFAULT,
        metavar="SECONDS",
        convert=functools.partial(parse_seconds, "--impl-timeout"),
    ),
    Option(
        ("--timeout",),
        "wall-clock limit of the child process that runs the tested code; past it: 125",
        front_ends=(BISECT,),
        default_text=TIMEOUT_DEFAULT,
        metavar="SECONDS",
        convert=functools.partial(parse_seconds, "--timeout"),
    ),
    Option(
        ("--run-module",),
        "import the --impl file as it is",
        action="store_true",
        default_text="only its imports, definitions and constants, so module-level training code never runs",
    ),
    Option(
        ("--in-process",),
        "import --impl into this pytest process (for pdb): no protection against its "
        "exits, hangs or patches of transformers",
        front_ends=(PYTEST,),
        action="store_true",
        default_text="a child process",
    ),
    Option(
        ("--parity-report",),
        "write a JSON report of every verdict and its comparisons",
        metavar="PATH",
        default_text="none",
        convert=report_path,
    ),
    Option(
        ("--require-gpu",),
        "fail, instead of skip, tests marked gpu when CUDA is not available: for GPU CI runners",
        front_ends=(PYTEST,),
        action="store_true",
    ),
    Option(
        ("-v", "--details"),
        "print each check's details and the tested code's output",
        front_ends=(BISECT,),
        action="store_true",
    ),
)


def options_of(front_end: str) -> list[Option]:
    """The options front_end takes, in the order of OPTIONS."""
    return [o for o in OPTIONS if front_end in o.front_ends]


def add_options(add_option: Callable[..., Any], front_end: str, error: type[Exception]) -> None:
    """Declare front_end's options with add_option: pytest's `group.addoption` or argparse's `add_argument`.

    error is what a bad value raises out of the parser: pytest.UsageError (pytest prints its message as
    one line and exits 4) or OptionError (the bisect command prints it and exits 129).
    """
    for option in options_of(front_end):
        add_option(*option.flags, **option.parser_arguments(error))


def render_options_page() -> str:
    """docs/options.md: a table per front end (option, default, meaning), from OPTIONS."""
    lines = [
        "<!-- Generated from parity/frontends/options.py by `python -m parity.frontends.docs_pages`; "
        "do not edit by hand. -->",
        "",
        "# Command-line options",
        "",
        "Both front ends declare their options once, in `parity/frontends/options.py`. Each value is",
        "converted while the command line is parsed, by the same function in both, so a bad value stops",
        "either command before any work with the same message: `pytest parity/` and `nanogpt-parity` exit",
        "4 (pytest's usage error), the bisect command 129 (which aborts `git bisect run`).",
    ]
    for front_end, title in FRONT_END_TITLES.items():
        lines += ["", f"## {title}", "", "| option | default | meaning |", "| --- | --- | --- |"]
        for o in options_of(front_end):
            flag = ", ".join(o.flags) + (f" {o.metavar}" if o.metavar else "")
            cells = (f"`{flag}`", o.shown_default, o.meaning)
            lines.append("| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |")
    return "\n".join([*lines, ""])
