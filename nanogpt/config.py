"""Typed configuration for the command-line tools: dataclasses filled from config files and `--key=value`.

Upstream nanoGPT configures its trainer by `exec`-ing Python files into globals. Here a configuration is
a plain dataclass whose field types are the schema: values come from JSON or TOML files (applied in
order) and then from `--key=value` overrides, and every value is type-checked on the way in. An unknown
key or a wrongly typed value is an error that names the key (and the closest valid key for a typo), and
ranges are validated before any heavy work starts. `run_cli` turns these user errors into one line on
stderr and exit status 2, so a mistyped flag never produces a traceback wall.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import os
import sys
import types
import typing
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

# torch seeds are unsigned 64-bit; the trainer adds the rank and the iteration to the seed.
MAX_SEED = 2**63 - 1
MAX_CONFIG_FILE_BYTES = 1 << 20
MAX_LEARNING_RATE = 1.0
MAX_EVAL_ITERS = 1_000_000
MAX_WEIGHT_DECAY = 10.0
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
# the trainer's configuration


@dataclass
class TrainConfig:
    """Everything `python -m nanogpt.train` can be told; defaults follow upstream nanoGPT's GPT-2 recipe."""

    # I/O
    out_dir: str = option("out", "directory for ckpt.pt (created if missing)")
    data_dir: str = option(
        "data", "directory made by `python -m nanogpt.data` (train.bin, val.bin, meta.json)"
    )
    init_from: str = option(
        "scratch", "scratch, resume (from out_dir/ckpt.pt), gpt2..gpt2-xl, or a Hugging Face GPT-2 directory"
    )
    eval_interval: int = option(250, "evaluate (and maybe checkpoint) every this many iterations")
    eval_iters: int = option(20, "batches per split for each loss estimate")
    log_interval: int = option(10, "print a log line every this many iterations")
    eval_only: bool = option(False, "evaluate once and exit")
    always_save_checkpoint: bool = option(
        False, "checkpoint at every evaluation, not only on a new best val loss"
    )
    progress: bool | None = option(None, "progress display on stderr; none means: when stderr is a terminal")
    # data
    batch_size: int = option(12, "micro-batch size per process")
    block_size: int = option(1024, "context length of the training windows")
    gradient_accumulation_steps: int = option(1, "micro-batches per optimizer step (per process)")
    # model (ignored for resume and pretrained inits, which bring their own architecture)
    n_layer: int = option(12, "transformer blocks")
    n_head: int = option(12, "attention heads")
    n_embd: int = option(768, "embedding width")
    dropout: float = option(0.0, "dropout probability (0 for pre-training, 0.1+ for fine-tuning)")
    bias: bool = option(True, "biases in Linears and LayerNorms, like GPT-2")
    vocab_size: int | None = option(None, "embedding rows; none: the dataset's vocabulary rounded up to 64")
    # AdamW
    learning_rate: float = option(6e-4, "peak learning rate")
    max_iters: int = option(5000, "optimizer steps in total")
    weight_decay: float = option(0.1, "AdamW weight decay of the >= 2-D parameters")
    beta1: float = option(0.9, "AdamW beta1")
    beta2: float = option(0.95, "AdamW beta2")
    grad_clip: float = option(1.0, "clip the global gradient norm to this; 0 disables")
    # learning-rate schedule
    decay_lr: bool = option(True, "linear warmup then cosine decay; false: constant learning_rate")
    warmup_iters: int = option(100, "linear warmup steps")
    lr_decay_iters: int | None = option(None, "step where the cosine reaches min_lr; none: max_iters")
    min_lr: float | None = option(None, "final learning rate; none: learning_rate / 10")
    # system
    device: str = option("auto", DEVICES_HELP)
    dtype: str = option(
        "auto", "auto (bfloat16/float16 autocast on CUDA, float32 on CPU) or " + ", ".join(DTYPES[1:])
    )
    compile: bool = option(False, "torch.compile the model (the first step then takes a while)")
    seed: int = option(1337, "seed of the init, the data sampler and dropout")
    parallel: str = option("ddp", "under torchrun: ddp (replicated) or fsdp (FSDP2 fully_shard)")
    backend: str = option("auto", "torch.distributed backend: auto (nccl on CUDA, gloo on CPU), nccl or gloo")

    # The architecture keys: they must agree with a checkpoint or pretrained model when given explicitly.
    MODEL_KEYS: typing.ClassVar[tuple[str, ...]] = (
        "n_layer",
        "n_head",
        "n_embd",
        "bias",
        "vocab_size",
        "block_size",
    )

    @property
    def decay_iters(self) -> int:
        """The step where the cosine schedule reaches min_lr."""
        return self.max_iters if self.lr_decay_iters is None else self.lr_decay_iters

    @property
    def final_lr(self) -> float:
        """The learning rate at the end of the cosine schedule."""
        return self.learning_rate / 10 if self.min_lr is None else self.min_lr

    def validate(self, only: Sequence[str] | None = None) -> None:
        """Check every range and choice (or only those of the keys in only); ConfigError names each bad key."""
        p = Problems()
        for key in ("batch_size", "block_size", "gradient_accumulation_steps", "n_layer", "n_head", "n_embd"):
            p.at_least(self, key, 1)
        for key in ("eval_interval", "eval_iters", "log_interval"):
            p.at_least(self, key, 1)
        for key in ("max_iters", "warmup_iters", "seed"):
            p.at_least(self, key, 0)
        for key in ("learning_rate", "weight_decay", "grad_clip"):
            p.at_least(self, key, 0.0)
        # AdamW moves each parameter by about learning_rate per step: above 1 a run can only diverge.
        p.at_most(self, "learning_rate", MAX_LEARNING_RATE, "AdamW diverges there; GPT-2 used 6e-4")
        p.at_most(self, "weight_decay", MAX_WEIGHT_DECAY)
        p.at_most(self, "seed", MAX_SEED)
        p.at_most(self, "eval_iters", MAX_EVAL_ITERS, "each evaluation draws this many batches per split")
        if self.vocab_size is not None:
            p.at_least(self, "vocab_size", 1)
        if self.lr_decay_iters is not None:
            p.at_least(self, "lr_decay_iters", 0)
        if self.min_lr is not None:
            p.at_least(self, "min_lr", 0.0)
            p.at_most(self, "min_lr", MAX_LEARNING_RATE)
            p.check(
                self.min_lr <= self.learning_rate,
                "min_lr",
                f"{self.min_lr} exceeds learning_rate ({self.learning_rate})",
            )
        p.check(
            self.n_embd % max(self.n_head, 1) == 0,
            "n_embd",
            f"{self.n_embd} is not divisible by n_head ({self.n_head})",
        )
        p.check(0.0 <= self.dropout < 1.0, "dropout", f"{self.dropout} is not in [0, 1)")
        for key in ("beta1", "beta2"):
            p.check(0.0 <= getattr(self, key) < 1.0, key, f"{getattr(self, key)} is not in [0, 1)")
        if self.decay_lr:
            p.check(
                self.warmup_iters <= self.decay_iters,
                "warmup_iters",
                f"{self.warmup_iters} exceeds lr_decay_iters ({self.decay_iters}); lower --warmup_iters",
            )
        p.choice(self, "dtype", DTYPES)
        p.choice(self, "parallel", ("ddp", "fsdp"))
        p.choice(self, "backend", ("auto", "nccl", "gloo"))
        p.device(self, "device")
        p.check(
            bool(self.init_from), "init_from", "is empty; use scratch, resume, a GPT-2 size or a directory"
        )
        p.raise_if_any(only)


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
# parsing: files, then --key=value


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


def convert_string(cls: type, key: str, text: str, where: str) -> Any:
    """Convert a command-line string to the type of field `key`."""
    tp = field_types(cls)[key]
    base, optional = _base_type(tp)
    if optional and text.strip().lower() in ("none", "null", ""):
        return None
    try:
        if base is bool:
            lowered = text.strip().lower()
            if lowered in ("1", "true", "yes", "on"):
                return True
            if lowered in ("0", "false", "no", "off"):
                return False
            raise ValueError
        if base is int:
            return int(text)
        if base is float:
            return _finite(float(text), key, where)
        return text
    except ConfigError:
        raise
    except ValueError:
        raise ConfigError(f"{where}: {key} expects {_type_name(tp)}, got {text!r}") from None


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
    if base is float:
        return _finite(value, key, where)
    return value


def _finite(value: float, key: str, where: str) -> float:
    """value, unless it is NaN or infinite (no setting of ours means anything there)."""
    if not math.isfinite(value):
        raise ConfigError(f"{where}: {key} must be a finite number, got {value}")
    return value


def read_config_file(path: str | Path) -> dict[str, Any]:
    """The key/value table of a JSON or TOML config file (never executed)."""
    path = Path(path).expanduser()
    if not path.exists():
        raise ConfigError(f"{path}: config file not found")
    if not path.is_file():  # a FIFO or device would block
        raise ConfigError(f"{path}: not a regular file; pass a .json or .toml config file")
    if path.stat().st_size > MAX_CONFIG_FILE_BYTES:
        raise ConfigError(f"{path}: {path.stat().st_size:,} bytes, too large for a config file")
    suffix = path.suffix.lower()
    try:
        if suffix == ".json":
            data = json.loads(path.read_text())
        elif suffix == ".toml":
            try:
                import tomllib
            except ModuleNotFoundError:  # Python 3.10
                raise ConfigError(f"{path}: TOML config files need Python >= 3.11; use JSON") from None
            data = tomllib.loads(path.read_text())
        else:
            raise ConfigError(f"{path}: config files must be .json or .toml (Python files are not executed)")
    except RecursionError:
        raise ConfigError(f"{path}: nested too deeply to be a config file") from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot read it ({e.strerror or e})") from None
    except (ValueError, UnicodeDecodeError) as e:
        if isinstance(e, ConfigError):
            raise
        raise ConfigError(f"{path}: cannot parse ({' '.join(str(e).split())})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a table of key = value pairs at the top level")
    return data


def help_text(cls: type, prog: str) -> str:
    """The --help text: usage, then every key with its type, default and help line."""
    lines = [
        f"usage: python -m {prog} [CONFIG.json|CONFIG.toml ...] [--key=value ...]",
        "",
        "Config files are applied in order, then --key=value overrides. Keys:",
    ]
    types_ = field_types(cls)
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        default = f.default if f.default is not dataclasses.MISSING else "(required)"
        lines.append(
            f"  --{f.name}={default!s:<10} [{_type_name(types_[f.name])}] {f.metadata.get('help', '')}"
        )
    return "\n".join(lines)


def parse_config(
    cls: type[T], argv: Sequence[str], prog: str = "nanogpt", validate: bool = True
) -> tuple[T, set[str]]:
    """Build a cls from config files and --key=value overrides; return it with the keys given explicitly.

    Positional arguments are JSON/TOML files applied in order; `--key=value` (or `--key value`, or a bare
    `--flag` for a boolean) overrides them. Dashes in keys may be written as underscores or dashes. With
    validate=True the result is checked with its `validate()` method when it has one.
    """
    values: dict[str, Any] = {}
    types_ = field_types(cls)
    args = list(argv)
    i = 0
    while i < len(args):
        arg = args[i]
        i += 1
        if arg in ("-h", "--help"):
            raise HelpRequested(help_text(cls, prog))
        if not arg.startswith("--"):
            for key, value in read_config_file(arg).items():
                check_key(cls, key, arg)
                values[key] = check_value(cls, key, value, arg)
            continue
        key, eq, text = arg[2:].partition("=")
        key = key.replace("-", "_")
        check_key(cls, key, "command line")
        if not eq:
            is_bool = _base_type(types_[key])[0] is bool
            if is_bool and (i >= len(args) or args[i].startswith("--")):
                text = "true"  # a bare --flag
            elif i < len(args):
                text = args[i]
                i += 1
            else:
                raise ConfigError(f"command line: --{key} needs a value (--{key}=VALUE)")
        values[key] = convert_string(cls, key, text, "command line")
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
            text = " ".join(str(e).split())  # one line, whatever the message's own line breaks
            print(f"{prog}: error: {text}", file=sys.stderr)
        raise SystemExit(e.exit_status if isinstance(e, RunStopped) else 2) from None
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        raise SystemExit(130) from None
