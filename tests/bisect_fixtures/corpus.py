"""The corpus: GPT-2 code in the shapes real projects have, and hostile code, each with its expected verdicts.

Correct variants must PASS every check in float64 on the small default model (some with an option, e.g.
`--tied-decay no` for a library whose policy does not decay the tied matrix). Hostile variants must end
as CANNOT-TEST (exit 125) within their timeout, never as good. The larger shapes are files under corpus/
(written for this project, after the shapes of public implementations); the rest are text edits of the
upstream-style template (variants.py). `CORPUS` is the one table tests/test_corpus.py runs through each
front end.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from bisect_fixtures.variants import write_model

from parity.core.exit_codes import decide
from parity.core.verdicts import Status, Verdict

CORPUS_DIR = Path(__file__).with_name("corpus")
# The checks every corpus variant is judged on: the registry's, named here so that a new check gets its
# expected verdicts in this table (test_corpus.py fails until it has them).
TABLED_CHECKS = (
    "architecture",
    "logits",
    "loss",
    "inference",
    "dropout-sites",
    "grads",
    "tied-gradient",
    "tied-storage",
    "param-count",
    "own-count",
    "optimizer-once",
    "checkpoint-once",
    "decay-groups",
    "train-steps",
    "init",
    "init-scheme",
    "own-loader",
)
PASS, CANNOT, FAIL = Status.PASS, Status.CANNOT_TEST, Status.FAIL
# Hostile variants run with a short timeout; the command must end within it plus this much (start-up,
# the fingerprint, killing the process group) on a loaded machine.
HOSTILE_TIMEOUT_S = 30
END_MARGIN_S = 60


def _all(status: Status, **others: Status) -> dict[str, Status]:
    """Every tabled check with status, except the named ones (own_count= for own-count)."""
    return {**dict.fromkeys(TABLED_CHECKS, status), **{k.replace("_", "-"): v for k, v in others.items()}}


# A model without get_num_params reports no count of its own; one without dropout modules has no sites. Both
# are parts a correct model may not have (parity.core.verdicts.NotApplicable): the bisect command, checking
# every check by default, does not skip a commit for them.
NO_OWN_COUNT = {"own_count": CANNOT}
NO_DROPOUT = {"dropout_sites": CANNOT, "own_count": CANNOT}
# The checks that never call forward: they judge a model whose forward raises.
FORWARD_FREE_PASS = dict.fromkeys(
    (
        "architecture",
        "tied_storage",
        "param_count",
        "own_count",
        "optimizer_once",
        "checkpoint_once",
        "decay_groups",
        "init_scheme",
    ),
    PASS,
)
# A model without a from_pretrained of its own has no loader for own-loader to run.
NO_LOADER = {"own_loader": CANNOT}
ABSENT_PARTS = ("own-count", "dropout-sites", "own-loader")


def _copy(name: str) -> Callable[[Path], Path]:
    """Write a corpus file (or package folder) into a directory; return the --impl path."""

    def write(directory: Path) -> Path:
        source = CORPUS_DIR / name
        if source.is_dir():
            shutil.copytree(source, directory / name)
            return directory / name
        directory.mkdir(parents=True, exist_ok=True)
        shutil.copy(source, directory / name)
        return directory / name

    return write


def _template(*edits: str) -> Callable[[Path], Path]:
    return lambda directory: write_model(directory, *edits)


def _package_model(directory: Path) -> Path:
    return _copy("relative_package")(directory) / "model.py"


@dataclass(frozen=True)
class Variant:
    """One corpus entry: how to write it, the bisect options it needs, and what it must get."""

    name: str
    write: Callable[[Path], Path]  # writes the implementation under a directory, returns the --impl path
    expected: dict[str, Status]
    options: tuple[str, ...] = ()  # extra arguments of the bisect command
    says: tuple[str, ...] = ()  # texts the bisect command's output must contain
    hostile: bool = False
    pytest_options: tuple[str, ...] = field(default=())  # the same choices for `pytest parity/ --impl`
    float32: bool = False  # run in float32 too although a check FAILs (its verdicts do not depend on dtype)

    @property
    def correct(self) -> bool:
        """A correct implementation: no tabled check fails (some may be untestable on its shape)."""
        return self.expected != _all(CANNOT) and Status.FAIL not in self.expected.values()

    @property
    def exit_code(self) -> int:
        """What the bisect command exits with for these verdicts (its own decision rule, every check run)."""
        absent = ABSENT_PARTS if self.correct else ()
        return decide([Verdict(c, s, "", applicable=c not in absent) for c, s in self.expected.items()], {})[
            0
        ]

    @property
    def pytest_exit_code(self) -> int:
        """`pytest parity/ --impl` decides by the bisect command's rule: 1 when a check fails, else 125 when
        a check that applies could not run, else 0."""
        return self.exit_code


def _hostile(name: str, *edits: str, says: tuple[str, ...], options: tuple[str, ...] = ()) -> Variant:
    return Variant(
        name,
        _template(*edits),
        _all(CANNOT),
        ("--timeout", str(HOSTILE_TIMEOUT_S), *options),
        says,
        hostile=True,
        pytest_options=("--impl-timeout", str(HOSTILE_TIMEOUT_S), *options),
    )


CORPUS = [
    Variant("upstream-style", _template(), _all(PASS)),
    Variant(
        "script-style",
        _copy("script_style.py"),
        _all(PASS, **NO_DROPOUT, **NO_LOADER),
        says=(
            "definitions only: 10 module-level statement(s) not run (line 18: torch.manual_seed(1337)",
            'lines 120-121: with open("input.txt") as f: ...',
            "line 15: import of wandb left out (the definitions do not use it)",
        ),
    ),
    Variant(
        "script-style-run-module",
        _copy("script_style.py"),
        _all(CANNOT),
        ("--run-module",),
        says=("ModuleNotFoundError: No module named 'wandb'",),
        pytest_options=("--run-module",),
    ),
    Variant(
        "mingpt-style-factory-config",
        _copy("mingpt_style.py"),
        _all(PASS, **NO_OWN_COUNT, **NO_LOADER),
        ("--tied-decay", "no"),
        says=("config: GPT.get_default_config() (a factory; model_type cleared)",),
        pytest_options=("--tied-decay", "no"),
    ),
    Variant(
        "llmc-style-zero-stage-no-dropout-sdpa", _copy("llmc_style.py"), _all(PASS, **NO_DROPOUT, **NO_LOADER)
    ),
    Variant(
        "package-with-relative-imports",
        _package_model,
        _all(PASS, **NO_OWN_COUNT, **NO_LOADER),
        says=("through its package folder", "the package's __init__.py not run"),
    ),
    Variant(
        "package-folder",
        _copy("relative_package"),
        _all(PASS, **NO_OWN_COUNT, **NO_LOADER),
        says=("line 4: import of Trainer left out (No module named 'wandb'",),
    ),
    Variant(
        "renamed-config-dict-output",
        _template("config-renamed", "forward-dict"),
        _all(PASS),
        says=("config: ModelArgs (the annotation of GPT.__init__'s config)",),
    ),
    Variant(
        "discovered-class-hf-config-lm-labels",
        _copy("renamed_transformer.py"),
        _all(PASS, **NO_DROPOUT, **NO_LOADER),
        says=(
            "model: Transformer (discovered: the only nn.Module returning (2, 8, 512) logits)",
            "fields mapped: layer_norm_epsilon<-1e-05 (GPT-2's), n_ctx<-block_size, n_positions<-block_size",
            "loss: forward(idx, lm_labels=...) with labels it shifts itself: found on a probe batch",
        ),
    ),
    Variant(
        "discovered-class-dict-config-no-loss",
        _copy("dict_config.py"),
        _all(PASS, **NO_DROPOUT, **NO_LOADER),
        says=(
            "model: GPTModel (discovered: the only nn.Module returning (2, 8, 512) logits)",
            "config: a dict, keys mapped: context_length<-block_size, drop_rate<-dropout, emb_dim<-n_embd",
            "loss: forward takes no targets: the harness computes the loss from its logits",
        ),
    ),
    Variant("manual-attention-mask-buffers", _template("mask-buffers"), _all(PASS)),
    Variant(
        "own-loader-counts-mask-buffers",
        _template("mask-buffers", "loader-counts-mask-buffers"),
        _all(PASS, own_loader=FAIL),
        says=("GPT.from_pretrained('gpt2') raised AssertionError: mismatched keys: 29 != 33",),
    ),
    Variant(
        "own-loader-unties-head",
        _template("loader-unties-head"),
        _all(PASS, own_loader=FAIL),
        says=("lm_head.weight equals transformer.wte.weight by value but is a separate tensor",),
    ),
    Variant(
        "optimizer-with-unknown-extra",
        _template("configure-unknown-extra"),
        _all(PASS, decay_groups=CANNOT, train_steps=CANNOT, optimizer_once=CANNOT),
        says=("cannot fill grad_accum_steps (", "give grad_accum_steps a default"),
    ),
    Variant("print-spam", _template("print-spam"), _all(PASS), says=("-v shows them",)),
    Variant(
        "writes-files",
        _template("writes-files"),
        _all(PASS),
        says=("wrote 1 file(s) into its working directory", "scratch.log (6 bytes)"),
    ),
    # Weights that cannot load do not hide a missing tie: tied-storage judges the model __init__ builds.
    Variant(
        "untied-with-extra-parameter",
        _template("untied", "extra-parameter"),
        _all(
            CANNOT,
            architecture=FAIL,
            dropout_sites=PASS,
            tied_storage=FAIL,
            init_scheme=FAIL,
            own_loader=FAIL,
        ),
        says=(
            "load: failed: ",
            "(as its own __init__ builds it; its weights could not be loaded): lm_head.weight is not tied",
        ),
    ),
    Variant(
        "bare-assert-in-init",
        _template("bare-assert-in-init"),
        _all(CANNOT, own_loader=FAIL),
        says=("GPT(config) raised AssertionError: (no message), at model.py:110 (`assert not config.bias`)",),
    ),
    # A crash is never a pass: the checks that need forward could not run, the rest pass; exit 125.
    Variant(
        "forward-raises",
        _template("forward-raises"),
        _all(CANNOT, **FORWARD_FREE_PASS),
        says=("crashed: NotImplementedError: forward is not written yet",),
    ),
    Variant(
        "forward-raises-not-applicable",
        _template("forward-raises-not-applicable"),
        _all(CANNOT, **FORWARD_FREE_PASS),
        says=("crashed: NotApplicable: this forward is not applicable",),
    ),
    _hostile("exit-0-in-init", "exit-in-init", says=("exited with status 0 during build",)),
    _hostile("exit-0-in-forward", "exit-in-forward", says=("exited with status 0 during check logits",)),
    _hostile("os-exit-0-at-import", "os-exit-0-at-import", says=("exited with status 0 during import",)),
    _hostile(
        "os-exit-1-at-import",
        "os-exit-1-at-import",
        options=("--run-module",),
        says=("exited with status 1 during import",),
    ),
    _hostile(
        "hang-at-import", "hang-at-import", says=(f"timed out after {HOSTILE_TIMEOUT_S} s during import",)
    ),
    _hostile(
        "hang-in-forward",
        "hang-in-forward",
        says=(f"timed out after {HOSTILE_TIMEOUT_S} s during check logits",),
    ),
    # The patches are imports the model does not use, which definitions-only loading leaves out (an exact-GELU
    # model then FAILs on its merits): --run-module imports the file as it is, patches included.
    _hostile(
        "patches-transformers",
        "patches-transformers",
        says=("the tested code changed transformers",),
        options=("--run-module",),
    ),
    _hostile(
        "patches-the-harness",
        "patches-the-harness",
        says=(
            "the tested code changed the harness or torch in its process",
            "parity.numerics.forward.compare_chunked",
        ),
        options=("--run-module",),
    ),
    _hostile(
        "patches-transformers-for-its-width",
        "patches-transformers-for-its-width",
        says=("the tested code changed Hugging Face's GPT-2 in its process",),
        options=("--run-module",),
    ),
]


def _same_as(name: str) -> dict[str, Status]:
    """The expected verdicts of another variant, for one written from it."""
    return next(v.expected for v in CORPUS if v.name == name)


def script_importing(*imports: str, config_edit: tuple[str, str] = ("", "")) -> Callable[[Path], Path]:
    """script_style.py with more imports, beside the sibling modules that download when imported."""

    def write(directory: Path) -> Path:
        directory.mkdir(parents=True, exist_ok=True)
        for sibling in (CORPUS_DIR / "downloading_siblings").glob("*.py"):
            shutil.copy(sibling, directory / sibling.name)
        text = (CORPUS_DIR / "script_style.py").read_text()
        last = "from torch.nn import functional as F\n"
        text = text.replace(last, last + "".join(line + "\n" for line in imports), 1)
        (directory / "train_gpt2.py").write_text(text.replace(*config_edit, 1))
        return directory / "train_gpt2.py"

    return write


def write_absolute_package(directory: Path) -> Path:
    """relative_package importing itself by its own name, minigpt (`from minigpt.config import ...`)."""
    package = directory / "minigpt"
    shutil.copytree(CORPUS_DIR / "relative_package", package)
    for name in ("model.py", "layers.py"):
        (package / name).write_text((package / name).read_text().replace("from .", "from minigpt."))
    (package / "__init__.py").write_text(
        '"""minigpt: imports its own modules by absolute name."""\n\n'
        "from minigpt.config import ModelConfig\nfrom minigpt.model import GPT\n"
    )
    return package / "model.py"


# Imports with side effects (docs/impl.md): written from script-style and the relative package, so they
# expect what those do. The evaluation module gets tiktoken's gpt2 encoding at import, the data module
# downloads at import; the model needs neither, except where its config reads the tokenizer's size.
CORPUS += [
    Variant(
        "script-importing-downloading-modules",
        script_importing(
            "from fineweb import shard_paths", "from hellaswag import iterate_examples, render_example"
        ),
        _same_as("script-style"),
        says=(
            "import of shard_paths left out (the definitions do not use it)",
            "import of iterate_examples, render_example left out (the definitions do not use it)",
        ),
    ),
    Variant(
        "script-needing-tiktoken-at-import",
        script_importing(
            "from hellaswag import VOCAB_SIZE",
            config_edit=("vocab_size: int = 50257", "vocab_size: int = VOCAB_SIZE"),
        ),
        _same_as("script-style"),
    ),
    Variant(
        "package-importing-itself-by-absolute-name",
        write_absolute_package,
        _same_as("package-with-relative-imports"),
        says=("on the path while importing (the file imports its own package by name)",),
    ),
]


def write_book_style(tie: bool) -> Callable[[Path], Path]:
    """book_style.py with its head tied to the token embedding (`cfg["tie"]`) or not (the book's own)."""

    def write(directory: Path) -> Path:
        path = _copy("book_style.py")(directory)
        if tie:
            text = path.read_text().replace('"tie": False,', '"tie": True,')
            path.write_text(text.replace("n_embd, tie=False)", "n_embd, tie=True)"))
        return path

    return write


# Ports in other names and layouts, loaded by role (the mapping printed in the load summary), and models
# that are not GPT-2 (architecture FAILs naming the departures; checks that need the weights cannot run).
NO_OPTIMIZER = {"optimizer_once": CANNOT, "decay_groups": CANNOT}  # no configure_optimizers
# The book's model keeps PyTorch's default init (N(0, 1) embeddings, Kaiming-uniform Linear layers).
DEFAULT_INIT = {"init": FAIL, "init_scheme": FAIL}
UNTIED = {
    "grads": FAIL,
    "tied_gradient": FAIL,
    "tied_storage": FAIL,
    "param_count": FAIL,
    "checkpoint_once": FAIL,
    "train_steps": FAIL,
    "init": CANNOT,
}
NOT_LOADABLE = _all(CANNOT, architecture=FAIL, init_scheme=FAIL)
CORPUS += [
    Variant(
        "hf-lineage-conv1d-lm-head-decoder",
        _copy("hf_lineage.py"),
        _all(PASS, **NO_DROPOUT, **NO_LOADER, **NO_OPTIMIZER),
        says=(
            "checkpoint tensors placed by role (Hugging Face's name -> the implementation's):",
            "h.{i}.attn.c_proj.weight -> transformer.h.{i}.attn.c_proj.weight (transposed)",
            "lm_head.weight: the token embedding (tied) (lm_head.decoder.weight: the same Parameter)",
        ),
    ),
    Variant(
        "book-style-tied-separate-qkv",
        write_book_style(tie=True),
        _all(PASS, **NO_DROPOUT, **NO_LOADER, **NO_OPTIMIZER, **DEFAULT_INIT),
        says=(
            "wte.weight -> tok_emb.weight",
            "h.{i}.attn.c_attn.weight -> trf_blocks.{i}.att.W_query.weight[rows 0:64], "
            "trf_blocks.{i}.att.W_key.weight[rows 64:128], trf_blocks.{i}.att.W_value.weight[rows 128:192]",
            "lm_head.weight: the token embedding (tied) (out_head.weight: the same Parameter)",
        ),
        float32=True,
    ),
    Variant(
        "book-style-untied",
        write_book_style(tie=False),
        _all(PASS, **{**NO_DROPOUT, **NO_LOADER, **NO_OPTIMIZER, **DEFAULT_INIT, **UNTIED}),
        says=(
            "wte.weight -> out_head.weight (untied head: a copy of the values)",
            "out_head.weight (GPT-2's lm_head.weight) equals tok_emb.weight (GPT-2's "
            "transformer.wte.weight) by value but is a separate tensor",
        ),
        float32=True,
    ),
    Variant(
        "rmsnorm-no-bias",
        _copy("rmsnorm_no_bias.py"),
        {**NOT_LOADABLE, "init": PASS},
        says=(
            "departs from GPT-2's architecture: block {i} ln_1: no LayerNorm parameters",
            "no biases: transformer.h.{i}.attn.c_attn.weight has none",
            "another activation",
            "departs from GPT-2's architecture (block {i} ln_1: no LayerNorm parameters",
        ),
        float32=True,
    ),
    Variant(
        "rotary-untied",
        _copy("rotary_untied.py"),
        {**NOT_LOADABLE, "tied-storage": FAIL},
        says=(
            "departs from GPT-2's architecture: no position embedding (64 x 64 learned positions; rotary",
            "(as its own __init__ builds it; its weights could not be loaded): lm_head.weight is not tied",
        ),
        float32=True,
    ),
]
