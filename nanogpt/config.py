"""Typed configuration for the command-line tools: dataclasses filled from config files and `--key=value`.

Upstream nanoGPT configures its trainer by `exec`-ing Python files into globals. Here a configuration is
a plain dataclass whose fields are the schema: `parse_config` builds an argparse parser from them (one
`--key` per field, its type converter from the field's annotation, its help from the field's `option`),
applies JSON or TOML files in order, then the `--key=value` overrides, and type-checks every value on the
way in. An unknown key or a wrongly typed value is an error that names the key (and the closest valid key
for a typo), and ranges are validated before any heavy work starts. `run_cli` turns these user errors
into one line on stderr and exit status 2, so a mistyped flag never produces a traceback wall.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import math
import os
import re
import sys
import types
import typing
from collections.abc import Callable, Sequence
from dataclasses import field
from pathlib import Path
from typing import Any, TypeVar

from nanogpt.json_files import JsonFileError, one_line, read_json_object

T = TypeVar("T")

# torch seeds are unsigned 64-bit; the trainer adds the rank and the iteration to the seed.
MAX_SEED = 2**63 - 1
MAX_CONFIG_FILE_BYTES = 1 << 20
DEVICES_HELP = "auto (cuda if available, else cpu), cpu, cuda or cuda:N"
DTYPES = ("auto", "float32", "float64", "bfloat16", "float16")


class UserError(ValueError):
    """An error caused by the user's input (a flag, a file, a path); the CLIs print it as one line."""


class ConfigError(UserError):
    """An invalid configuration: unknown key, wrong type or out-of-range value; the message names the key."""


class RunStopped(Exception):
    """A run stopped by a problem found while running (a diverged loss); the CLIs print one line, exit 3."""

    exit_status = 3


class HelpRequested(Exception):
    """Raised by parse_config for -h/--help; carries the help text."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = text


def option(default: Any, help: str) -> Any:
    """A dataclass field with a default and a help line (shown by --help)."""
    return field(default=default, metadata={"help": help})


# ----------------------------------------------------------------------------------------------------------
# validation helpers


class Problems:
    """Collects "key: problem" messages and raises them together as one ConfigError."""

    def __init__(self) -> None:
        self.problems: list[tuple[str, str]] = []

    def check(self, ok: bool, key: str, problem: str) -> None:
        """Record `key: problem` unless ok."""
        if not ok:
            self.problems.append((key, problem))

    def at_least(self, cfg: Any, key: str, lowest: float) -> None:
        """Record a problem if cfg.key < lowest."""
        value = getattr(cfg, key)
        ok = value >= lowest and (not isinstance(value, float) or math.isfinite(value))
        self.check(ok, key, f"must be >= {lowest}, got {value}")

    def at_most(self, cfg: Any, key: str, highest: float, fix: str = "") -> None:
        """Record a problem if cfg.key > highest (or is not finite)."""
        value = getattr(cfg, key)
        ok = value <= highest and (not isinstance(value, float) or math.isfinite(value))
        self.check(ok, key, f"must be <= {highest:g}, got {value}" + (f"; {fix}" if fix else ""))

    def choice(self, cfg: Any, key: str, choices: Sequence[str]) -> None:
        """Record a problem if cfg.key is not one of choices."""
        value = getattr(cfg, key)
        self.check(value in choices, key, f"{value!r} is not one of {', '.join(choices)}")

    def device(self, cfg: Any, key: str) -> None:
        """Record a problem unless cfg.key names a device we know how to use."""
        value = getattr(cfg, key)
        ok = value in ("auto", "cpu", "cuda") or (value.startswith("cuda:") and value[5:].isdigit())
        self.check(ok, key, f"{value!r} is not a device; use {DEVICES_HELP}")

    def raise_if_any(self, only: Sequence[str] | None = None) -> None:
        """Raise one ConfigError listing every recorded problem (of the keys in only, if given)."""
        messages = [f"{key}: {problem}" for key, problem in self.problems if only is None or key in only]
        if messages:
            raise ConfigError("invalid configuration: " + "; ".join(messages))


# ----------------------------------------------------------------------------------------------------------
# field types: what a key accepts


def field_types(cls: type) -> dict[str, Any]:
    """The resolved type of every init field of a config dataclass."""
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls) if f.init}


def _base_type(tp: Any) -> tuple[type, bool]:
    """(the scalar type, whether None is allowed) of `int`, `float | None`, ..."""
    if isinstance(tp, types.UnionType) or typing.get_origin(tp) is typing.Union:
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return args[0], True
    return tp, False


def _type_name(tp: Any) -> str:
    base, optional = _base_type(tp)
    return f"{base.__name__} or none" if optional else base.__name__


def suggest(key: str, valid: Sequence[str]) -> str:
    """A ' (did you mean X?)' hint for a mistyped key, or ''."""
    close = difflib.get_close_matches(key, valid, n=1, cutoff=0.6)
    return f" (did you mean {close[0]}?)" if close else ""


def check_key(cls: type, key: str, where: str) -> None:
    """Raise ConfigError if key is not a field of cls, suggesting the closest valid key."""
    valid = list(field_types(cls))
    if key not in valid:
        raise ConfigError(f"{where}: unknown key {key!r}{suggest(key, valid)}")


def text_converter(key: str, tp: Any) -> Callable[[str], Any]:
    """argparse's `type=` for field `key`: a command-line string to the field's type, or ArgumentTypeError."""
    base, optional = _base_type(tp)

    def convert(text: str) -> Any:
        lowered = text.strip().lower()
        if optional and lowered in ("none", "null", ""):
            return None
        if base is bool and lowered in ("1", "true", "yes", "on", "0", "false", "no", "off"):
            return lowered in ("1", "true", "yes", "on")
        try:
            value = base(text) if base in (int, float) else text if base is str else None
        except ValueError:
            value = None
        if value is None:
            raise argparse.ArgumentTypeError(f"{key} expects {_type_name(tp)}, got {text!r}")
        if base is float and not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"{key} must be a finite number, got {value}")
        return value

    return convert


def check_value(cls: type, key: str, value: Any, where: str) -> Any:
    """Type-check a value read from a JSON/TOML file for field `key`; ints are accepted for floats."""
    tp = field_types(cls)[key]
    base, optional = _base_type(tp)
    if value is None and optional:
        return None
    ok = isinstance(value, base) and not (base is int and isinstance(value, bool))
    if base is float and isinstance(value, int) and not isinstance(value, bool):
        try:
            return float(value)
        except OverflowError:
            raise ConfigError(f"{where}: {key} is too large ({value})") from None
    if not ok:
        shown = repr(value) if len(repr(value)) <= 60 else repr(value)[:57] + "..."
        raise ConfigError(f"{where}: {key} expects {_type_name(tp)}, got {shown} ({type(value).__name__})")
    if base is float and not math.isfinite(value):
        raise ConfigError(f"{where}: {key} must be a finite number, got {value}")
    return value


def read_config_file(path: str | Path) -> dict[str, Any]:
    """The key/value table of a JSON or TOML config file (never executed)."""
    path = Path(path).expanduser()
    if not path.exists():
        raise ConfigError(f"{path}: config file not found")
    if not path.is_file():  # a FIFO or device would block
        raise ConfigError(f"{path}: not a regular file; pass a .json or .toml config file")
    suffix = path.suffix.lower()
    if suffix == ".json":
        try:
            return read_json_object(path, "a config file", MAX_CONFIG_FILE_BYTES)
        except JsonFileError as e:
            raise ConfigError(str(e)) from None
    if suffix != ".toml":
        raise ConfigError(f"{path}: config files must be .json or .toml (Python files are not executed)")
    if path.stat().st_size > MAX_CONFIG_FILE_BYTES:
        raise ConfigError(f"{path}: {path.stat().st_size:,} bytes, too large for a config file")
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        raise ConfigError(f"{path}: TOML config files need Python >= 3.11; use JSON") from None
    try:
        return tomllib.loads(path.read_text())
    except RecursionError:
        raise ConfigError(f"{path}: nested too deeply to be a config file") from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot read it ({e.strerror or e})") from None
    except (ValueError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: cannot parse ({one_line(e)})") from None


# ----------------------------------------------------------------------------------------------------------
# the command line: argparse built from the dataclass fields

_NO_VALUE = object()  # what a non-boolean `--key` given without a value parses to


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are ConfigErrors (one line via run_cli), not usage text and exit."""

    def error(self, message: str) -> typing.NoReturn:
        """Raise the problem as a ConfigError."""
        raise ConfigError(f"command line: {message}")


class _KeyValueFormatter(argparse.HelpFormatter):
    """Shows an option as `--key=TYPE`, the form the tools document, under its first name only."""

    def _format_action_invocation(self, action: argparse.Action) -> str:
        if not action.option_strings or action.nargs == 0:
            return super()._format_action_invocation(action)
        return f"{action.option_strings[0]}={action.metavar}"


class _HelpAction(argparse.Action):
    """-h/--help: raise HelpRequested with the help text (run_cli prints it)."""

    def __call__(self, parser: argparse.ArgumentParser, *_: Any) -> None:
        raise HelpRequested(parser.format_help())


def build_parser(cls: type, prog: str) -> argparse.ArgumentParser:
    """The argparse parser of a config dataclass: positional config files, then one `--key` per field.

    Each option's type converter, metavar and help line come from its field (the help from the field's
    `option(..., help)`); `--key-with-dashes` is accepted as well. Options default to SUPPRESS, so the
    parsed namespace holds exactly the keys given.
    """
    parser = _Parser(
        prog=f"python -m {prog}",
        usage=f"python -m {prog} [CONFIG.json|CONFIG.toml ...] [--key=value ...]",
        description="Config files are applied in order, then --key=value overrides.",
        formatter_class=_KeyValueFormatter,
        add_help=False,
        allow_abbrev=False,  # --batch must not mean --batch_size
        exit_on_error=False,  # a bad value raises ArgumentError, turned into ConfigError by parse_config
    )
    # `--learning_rate -1e-3` is a value, not an option (Python >= 3.12.7 reads it so; 3.11 does not)
    parser._negative_number_matcher = re.compile(r"-\.?\d")
    parser.add_argument(
        "-h", "--help", nargs=0, action=_HelpAction, default=argparse.SUPPRESS, help="show this help"
    )
    parser.add_argument(
        "files", nargs="*", default=[], metavar="CONFIG", help="JSON or TOML files (never executed)"
    )
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        tp = field_types(cls)[f.name]
        base = _base_type(tp)[0]
        names = [f"--{f.name}"] + ([f"--{f.name.replace('_', '-')}"] if "_" in f.name else [])
        default = f.default if f.default is not dataclasses.MISSING else "(required)"
        parser.add_argument(
            *names,
            dest=f.name,
            type=text_converter(f.name, tp),
            nargs="?",  # `--key value`, `--key=value`, or a bare boolean `--flag`
            const=True if base is bool else _NO_VALUE,
            default=argparse.SUPPRESS,
            metavar=_type_name(tp).replace("str", "text").replace(" or ", "|").upper(),
            help=f"{f.metadata.get('help', '')} (default: {default!s})".replace("%", "%%"),
        )
    return parser


def parse_config(
    cls: type[T], argv: Sequence[str], prog: str = "nanogpt", validate: bool = True
) -> tuple[T, set[str]]:
    """Build a cls from config files and --key=value overrides; return it with the keys given explicitly.

    Positional arguments are JSON/TOML files applied in order; then `--key=value` (or `--key value`, or a
    bare `--flag` for a boolean) overrides them. Dashes in keys may be written as underscores or dashes.
    With validate=True the result is checked with its `validate()` method when it has one.
    """
    parser = build_parser(cls, prog)
    try:
        namespace, unknown = parser.parse_known_intermixed_args(list(argv))
    except argparse.ArgumentError as e:
        raise ConfigError(f"command line: {e.message}") from None
    for arg in unknown:
        key = arg.lstrip("-").partition("=")[0].replace("-", "_")
        check_key(cls, key, "command line")  # an unknown --key (an unknown -k also lands here)
    flags = vars(namespace)
    values: dict[str, Any] = {}
    for path in flags.pop("files"):
        for key, value in read_config_file(path).items():
            check_key(cls, key, path)
            values[key] = check_value(cls, key, value, path)
    for key, value in flags.items():
        if value is _NO_VALUE:
            raise ConfigError(f"command line: --{key} needs a value (--{key}=VALUE)")
        values[key] = value
    try:
        cfg = cls(**values)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    if validate and hasattr(cfg, "validate"):
        cfg.validate()
    return cfg, set(values)


def run_cli(main: Callable[[list[str]], object], argv: Sequence[str] | None, prog: str) -> None:
    """Run a CLI entry point: user errors become `prog: error: ...` on stderr and exit status 2.

    A run stopped while running (RunStopped, e.g. a diverged loss) is one line too, with exit status 3.
    """
    from nanogpt.hf import CheckpointError
    from nanogpt.paths import OutputPathError
    from nanogpt.tokenizer import TokenizerFileError

    args = list(sys.argv[1:] if argv is None else argv)
    try:
        main(args)
    except HelpRequested as h:
        print(h.text)
    except (UserError, CheckpointError, OutputPathError, TokenizerFileError, RunStopped) as e:
        # Under torchrun every rank hits the same validation error: one copy of the line is enough.
        if os.environ.get("RANK", "0") == "0":
            text = one_line(e)  # one line, whatever the message's own line breaks
            print(f"{prog}: error: {text}", file=sys.stderr)
        raise SystemExit(e.exit_status if isinstance(e, RunStopped) else 2) from None
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        raise SystemExit(130) from None
