"""Loading any nanoGPT-style implementation in isolation, adapting it, and the verdicts it then gets.

The implementations are variants of an upstream-style model.py (tests/bisect_fixtures/), loaded with the
small synthetic checkpoint of the bisect command (2 layers, width 64, vocabulary 512) in float64 on CPU.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType, SimpleNamespace

import pytest
import torch
from bisect_fixtures.variants import model_source, write_model

from nanogpt.model import GPT
from parity.checks.registry import run_checks
from parity.core.errors import ImplementationError
from parity.core.tolerances import logits_tolerance
from parity.core.verdicts import Status
from parity.foreign.adapters import call_configure_optimizers
from parity.foreign.impl import MODULE_PREFIX, import_implementation
from parity.foreign.load import load_implementation
from parity.frontends.bisect import SMALL_CONFIG
from parity.numerics.tie import same_storage
from parity.subject.subject import Subject
from parity.subject.synthetic import ensure_synthetic_checkpoint
from parity.subject.targets import ParityTarget

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def small_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The bisect command's default synthetic checkpoint, written under a temporary directory."""
    path, _ = ensure_synthetic_checkpoint(SMALL_CONFIG, "small", root=tmp_path_factory.mktemp("checkpoints"))
    return path


def verdicts(path: Path, checkpoint: Path, checks: list[str], tied_decay: bool = True) -> dict[str, object]:
    """{check: Verdict} of an implementation file on the small checkpoint, float64 on CPU."""
    target = ParityTarget(
        "small", SMALL_CONFIG, "synthetic", "test", "cpu", torch.float64, checkpoint=checkpoint
    )
    subject = Subject(import_implementation(path), target, tied_decay=tied_decay)
    return {v.check: v for v in run_checks(checks, subject)}


def test_upstream_model_is_built_by_its_own_init_and_loaded_by_our_converter(
    tmp_path: Path, small_checkpoint: Path
) -> None:
    impl = import_implementation(write_model(tmp_path))
    model, report = load_implementation(impl, small_checkpoint, torch.float64, "cpu")
    assert isinstance(model, impl.gpt_cls) and type(model).__name__ == "GPT"
    assert "number of parameters" in report.output  # its __init__ ran (and its print did not reach stdout)
    reference = GPT.from_pretrained(small_checkpoint, dtype=torch.float64)
    theirs = dict(reference.named_parameters(remove_duplicate=False))
    for name, p in model.named_parameters(remove_duplicate=False):
        assert torch.equal(p, theirs[name]), name
    idx = torch.randint(0, SMALL_CONFIG.vocab_size, (2, 9), generator=torch.Generator().manual_seed(0))
    raw_logits, _ = impl.gpt_cls.forward(model, idx)
    assert raw_logits.shape == (2, 1, SMALL_CONFIG.vocab_size)  # upstream: last position only without targets
    logits, loss = model(idx)
    assert logits.shape == (2, 9, SMALL_CONFIG.vocab_size) and loss is None
    # The head's matmul over T rows instead of one rounds differently: float64 forward tolerance.
    tol = logits_tolerance(torch.float64)
    torch.testing.assert_close(logits[:, -1:], raw_logits, rtol=tol.rtol, atol=tol.atol)
    assert type(model)._parity_logits_mode == "dummy-targets"


@pytest.mark.parametrize(
    "edits, checks, expected",
    [
        ((), ["logits", "tied-storage", "param-count", "decay-groups"], "PPPP"),
        (("reverse-tie",), ["logits", "tied-storage", "decay-groups"], "PPP"),
        (("logits-only",), ["logits", "train-steps"], "PP"),
        (("no-targets",), ["logits"], "P"),
        (("config-without-bias-and-dropout",), ["logits"], "P"),
        (("config-with-extra-field",), ["logits"], "P"),
        (("configure-without-device-type",), ["decay-groups"], "P"),
        (("no-configure-optimizers",), ["decay-groups", "train-steps"], "CP"),
        # One cause, one failure: train-steps mirrors the implementation's groups onto HF.
        (("tied-not-decayed",), ["decay-groups", "train-steps"], "FP"),
        (("tied-in-two-groups",), ["decay-groups", "optimizer-once", "train-steps"], "FFC"),
        (("exact-gelu",), ["logits", "tied-storage"], "FP"),
        (("config-with-required-field",), ["logits", "tied-storage"], "CC"),
    ],
    ids=lambda v: "-".join(v) if isinstance(v, tuple) else None,
)
def test_verdicts_of_variants(
    tmp_path: Path, small_checkpoint: Path, edits: tuple[str, ...], checks: list[str], expected: str
) -> None:
    got = verdicts(write_model(tmp_path, *edits), small_checkpoint, checks)
    status = {"P": Status.PASS, "F": Status.FAIL, "C": Status.CANNOT_TEST}
    for check, want in zip(checks, expected, strict=True):
        v = got[check]
        assert v.status == status[want], f"{check}: {v.status.value}: {v.reason}\n{v.details}"


def test_untied_implementation_matches_logits_but_fails_tie_and_count(
    tmp_path: Path, small_checkpoint: Path
) -> None:
    impl = import_implementation(write_model(tmp_path, "untied"))
    model, _ = load_implementation(impl, small_checkpoint, torch.float64, "cpu")
    head, emb = model.lm_head.weight, model.transformer.wte.weight
    assert torch.equal(head, emb) and not same_storage(head, emb)  # the checkpoint's one matrix, in both
    got = verdicts(impl.source, small_checkpoint, ["logits", "grads", "tied-storage", "param-count"])
    assert got["logits"].status == Status.PASS, got["logits"].reason
    assert got["tied-storage"].status == Status.FAIL and "a copy, not a tie" in got["tied-storage"].reason
    assert got["param-count"].status == Status.FAIL and "the head is untied" in got["param-count"].reason
    # An untied model's gradients really differ from a tied one's: each matrix gets one of the two paths.
    assert got["grads"].status == Status.FAIL and "their sum equals" in got["grads"].reason


def test_decay_verdict_follows_the_expected_policy(tmp_path: Path, small_checkpoint: Path) -> None:
    path = write_model(tmp_path, "tied-not-decayed")
    # Expected "no decay": the grouping passes, and the Hugging Face side of train-steps follows the policy.
    expected_no = verdicts(path, small_checkpoint, ["decay-groups", "train-steps"], tied_decay=False)
    assert all(v.status == Status.PASS for v in expected_no.values()), expected_no
    failed = verdicts(path, small_checkpoint, ["decay-groups"], tied_decay=True)["decay-groups"]
    assert "weight_decay [0.0], expected weight-decayed" in failed.reason
    twice = verdicts(
        write_model(tmp_path / "twice", "tied-in-two-groups"), small_checkpoint, ["optimizer-once"]
    )
    assert "not in exactly one optimizer group" in twice["optimizer-once"].reason


def test_mask_buffers_are_left_as_the_implementation_built_them(
    tmp_path: Path, small_checkpoint: Path
) -> None:
    impl = import_implementation(write_model(tmp_path, "mask-buffers"))
    model, report = load_implementation(impl, small_checkpoint, torch.float64, "cpu")
    T = SMALL_CONFIG.block_size
    for i in range(SMALL_CONFIG.n_layer):
        attn = model.transformer.h[i].attn
        assert f"transformer.h.{i}.attn.bias" in report.kept_buffers
        assert torch.equal(attn.bias, torch.tril(torch.ones(T, T, dtype=torch.float64)).view(1, 1, T, T))
        assert attn.masked_bias.item() == -1e4
    assert verdicts(impl.source, small_checkpoint, ["logits"])["logits"].status == Status.PASS


def test_parameter_without_a_checkpoint_value_is_reported(tmp_path: Path, small_checkpoint: Path) -> None:
    impl = import_implementation(write_model(tmp_path, "head-bias"))
    with pytest.raises(ImplementationError, match=r"get no value from the checkpoint: lm_head\.bias"):
        load_implementation(impl, small_checkpoint, torch.float64, "cpu")


def test_two_implementations_named_model_live_side_by_side(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Each model.py imports a sibling `helpers`; an unrelated `helpers` is already imported.
    outsider = ModuleType("helpers")
    monkeypatch.setitem(sys.modules, "helpers", outsider)
    paths = []
    for tag in ("first", "second"):
        source = model_source().replace("import inspect\n", "import inspect\n\nfrom helpers import TAG\n", 1)
        (tmp_path / tag).mkdir()
        (tmp_path / tag / "helpers.py").write_text(f"TAG = {tag!r}\n")
        (tmp_path / tag / "model.py").write_text(source)
        paths.append(tmp_path / tag / "model.py")
    path_before, modules_before = list(sys.path), set(sys.modules)
    model_before = sys.modules.get("model")  # another test's module of that name, if one was left behind
    first, second = (import_implementation(p) for p in paths)
    assert first.gpt_cls is not second.gpt_cls and first.config_cls is not second.config_cls
    assert (first.module.TAG, second.module.TAG) == ("first", "second")
    assert sys.path == path_before
    added = set(sys.modules) - modules_before
    assert added and all(name.startswith(MODULE_PREFIX) for name in added), added
    assert sys.modules["helpers"] is outsider and sys.modules.get("model") is model_before
    assert import_implementation(paths[0]).gpt_cls is first.gpt_cls  # same sources: the same module
    paths[0].write_text(paths[0].read_text() + "\n# edited\n")
    assert import_implementation(paths[0]).gpt_cls is not first.gpt_cls  # changed sources: imported anew


def test_package_directories(tmp_path: Path, small_checkpoint: Path) -> None:
    exporting = tmp_path / "exporting"
    write_model(exporting)
    (exporting / "__init__.py").write_text("from .model import GPT, GPTConfig\n")
    plain = tmp_path / "plain"
    write_model(plain)
    (plain / "__init__.py").write_text("")
    for package in (exporting, plain):
        impl = import_implementation(package)
        assert impl.gpt_cls.__module__.startswith(MODULE_PREFIX)
        model, _ = load_implementation(impl, small_checkpoint, torch.float64, "cpu")
        assert model.lm_head.weight is model.transformer.wte.weight


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("missing.py", None, "no such file or directory"),
        ("model.py", "def broken(:\n", "SyntaxError"),
        (
            "model.py",
            model_source("import-error"),
            "ModuleNotFoundError: No module named 'a_module_that_does_not_exist'",
        ),
        ("model.py", "class GPTConfig:\n    pass\n", "defines no GPT class"),
        ("model.txt", "GPT = 1\n", "not a .py file"),
    ],
    ids=["missing", "syntax-error", "import-error", "no-GPT", "not-python"],
)
def test_untestable_implementations(tmp_path: Path, name: str, content: str | None, message: str) -> None:
    if content is not None:
        (tmp_path / name).write_text(content)
    modules_before = set(sys.modules)
    with pytest.raises(ImplementationError, match=message):
        import_implementation(tmp_path / name)
    assert set(sys.modules) == modules_before


def test_configure_optimizers_signatures_across_history() -> None:
    values = dict(weight_decay=0.1, learning_rate=1e-3, betas=(0.9, 0.95), device_type="cpu")
    seen = []

    def current(
        self: object, weight_decay: float, learning_rate: float, betas: tuple, device_type: str
    ) -> None:
        seen.append((weight_decay, learning_rate, betas, device_type))

    def older(self: object, weight_decay: float, learning_rate: float, betas: tuple) -> None:
        seen.append((weight_decay, learning_rate, betas))

    def mingpt(self: object, train_config: SimpleNamespace) -> None:
        seen.append((train_config.weight_decay, train_config.learning_rate))

    def renamed(self: object, wd: float, lr: float, b: tuple) -> None:
        seen.append((wd, lr, b))

    def zero(
        self: object,
        weight_decay: float,
        learning_rate: float,
        betas: tuple,
        device_type: str,
        zero_stage: int,
    ) -> None:
        seen.append((weight_decay, device_type, zero_stage))

    def defaulted(self: object, weight_decay: float, lr: float, betas: tuple, fused: bool = True) -> None:
        seen.append((weight_decay, lr, fused))

    def renamed_with_zero(self: object, wd_: float, lr_: float, b_: tuple, zero_stage: int) -> None:
        seen.append((wd_, lr_, b_, zero_stage))

    def unknown(self: object, a: float, b: float) -> None:
        seen.append("called")

    def one_unknown(
        self: object, weight_decay: float, learning_rate: float, betas: tuple, grad_accum_steps: int
    ) -> None:
        seen.append("called")

    for method in (current, older, mingpt, renamed, zero, defaulted, renamed_with_zero):
        call_configure_optimizers(method, object(), values)
    assert seen == [
        (0.1, 1e-3, (0.9, 0.95), "cpu"),
        (0.1, 1e-3, (0.9, 0.95)),
        (0.1, 1e-3),
        (0.1, 1e-3, (0.9, 0.95)),
        (0.1, "cpu", 0),  # a ZeRO stage is filled by name: one process, stage 0
        (0.1, 1e-3, True),  # an extra parameter with a default keeps it; lr is learning_rate's alias
        (0.1, 1e-3, (0.9, 0.95), 0),
    ]
    with pytest.raises(ImplementationError, match=r"cannot fill a, b \("):
        call_configure_optimizers(unknown, object(), values)
    # The message names only the parameter it cannot fill.
    with pytest.raises(ImplementationError, match=r"cannot fill grad_accum_steps \(") as e:
        call_configure_optimizers(one_unknown, object(), values)
    assert "give grad_accum_steps a default" in str(e.value) and "cannot fill weight_decay" not in str(
        e.value
    )
    assert seen[-1] != "called"


def _run_parity_suite(
    impl: Path, checkpoint: Path, tmp_path: Path, *extra: str
) -> subprocess.CompletedProcess:
    env = dict(os.environ, NANOGPT_PARITY_CACHE=str(tmp_path / "cache"), PYTHONDONTWRITEBYTECODE="1")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))
    # In-process saves a child start-up per run; tests/test_sandboxed_pytest.py shows that a run in the
    # child reports the same verdicts.
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "parity/",
            "--impl",
            str(impl),
            "--in-process",
            "--model",
            str(checkpoint),
            "-p",
            "no:cacheprovider",
            *extra,
        ],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_parity_suite_runs_on_an_implementation(tmp_path: Path, small_checkpoint: Path) -> None:
    """`pytest parity/ --impl model.py` passes for a correct implementation, and names the untied head."""
    good = _run_parity_suite(write_model(tmp_path / "good"), small_checkpoint, tmp_path)
    assert good.returncode == 0, good.stdout[-3000:] + good.stderr[-3000:]
    assert "parity implementation:" in good.stdout
    bad = _run_parity_suite(
        write_model(tmp_path / "untied", "untied"), small_checkpoint, tmp_path, "-k", "tie"
    )
    assert bad.returncode == 1, bad.stdout[-3000:] + bad.stderr[-3000:]
    assert "lm_head.weight equals transformer.wte.weight by value but is a separate tensor" in bad.stdout


def test_parity_suite_fails_on_a_parity_bug_and_names_it(tmp_path: Path, small_checkpoint: Path) -> None:
    """An exact-GELU implementation fails the loss, gradient and multi-sequence logits checks, which all
    read one forward + backward; the logits failure is diagnosed down to the first diverging module."""
    bad = _run_parity_suite(
        write_model(tmp_path / "gelu", "exact-gelu"),
        small_checkpoint,
        tmp_path,
        "-k",
        "logits or grads or loss",
        "-q",
    )
    assert bad.returncode == 1, bad.stdout[-3000:] + bad.stderr[-3000:]
    assert "3 failed" in bad.stdout, bad.stdout[-3000:]
    for check, reason in [
        ("logits", "first divergence at transformer.h.0.mlp"),
        ("grads", "the forward pass differs already"),
        ("loss", "the logits differ too: first divergence at transformer.h.0.mlp"),
    ]:
        line = rf"^FAIL +{check} +{re.escape(reason)}"
        assert re.search(line, bad.stdout, re.MULTILINE), bad.stdout[-3000:]


# ----------------------------------------------------------------------------------------------------------
# adapters for the shapes of real code (each also has a corpus variant run through the bisect command)

CORPUS_DIR = Path(__file__).parent / "bisect_fixtures" / "corpus"


def test_config_is_found_under_another_name_from_a_factory_or_by_its_fields(
    tmp_path: Path, small_checkpoint: Path
) -> None:
    renamed = import_implementation(write_model(tmp_path / "renamed", "config-renamed"))
    assert (
        renamed.config_maker.how.startswith("ModelArgs (the annotation")
        and "config: ModelArgs" in renamed.notes[-1]
    )
    by_fields = tmp_path / "fields" / "model.py"
    by_fields.parent.mkdir()
    by_fields.write_text(model_source().replace("class GPTConfig:", "class Hyper:"))
    assert (
        import_implementation(by_fields).config_maker.how
        == "Hyper (the class declaring n_layer, n_head, n_embd)"
    )
    factory = import_implementation(CORPUS_DIR / "mingpt_style.py")
    config = factory.config_maker.make(SMALL_CONFIG)
    assert config.model_type is None and (config.n_layer, config.n_embd, config.vocab_size) == (2, 64, 512)
    assert config.embd_pdrop == config.resid_pdrop == config.attn_pdrop == SMALL_CONFIG.dropout
    for impl in (renamed, factory):
        model, _ = load_implementation(impl, small_checkpoint, torch.float64, "cpu")
        assert same_storage(model.lm_head.weight, model.transformer.wte.weight)
    no_config = tmp_path / "none" / "model.py"
    no_config.parent.mkdir()
    no_config.write_text("import torch.nn as nn\n\nclass GPT(nn.Module):\n    pass\n")
    with pytest.raises(
        ImplementationError, match="defines no GPTConfig class, and no other config was found"
    ):
        import_implementation(no_config)


def test_forward_returning_a_dict(tmp_path: Path, small_checkpoint: Path) -> None:
    got = verdicts(write_model(tmp_path, "forward-dict"), small_checkpoint, ["logits", "grads"])
    assert [v.status for v in got.values()] == [Status.PASS, Status.PASS], got


def test_a_script_is_loaded_definitions_only_unless_run_module(tmp_path: Path) -> None:
    impl = import_implementation(write_model(tmp_path, "unused-import-error"))
    assert any("import of a_module_that_does_not_exist left out" in n for n in impl.notes), impl.notes
    with pytest.raises(ImplementationError, match="No module named 'a_module_that_does_not_exist'"):
        import_implementation(tmp_path / "model.py", run_module=True)
    script = import_implementation(CORPUS_DIR / "script_style.py")
    assert script.notes[0].startswith("definitions only: 10 module-level statement(s) not run")
    assert not hasattr(script.module, "model") and not hasattr(script.module, "optimizer")


def test_relative_imports_are_resolved_through_the_package(tmp_path: Path, small_checkpoint: Path) -> None:
    shutil.copytree(CORPUS_DIR / "relative_package", tmp_path / "pkg")
    modules_before = set(sys.modules)
    impl = import_implementation(tmp_path / "pkg" / "model.py")
    assert impl.gpt_cls.__module__.startswith(MODULE_PREFIX) and impl.gpt_cls.__module__.endswith(".model")
    assert "through its package folder" in impl.notes[0] and "__init__.py not run" in impl.notes[0]
    assert not any(name.endswith(".trainer") for name in sys.modules)  # the __init__ that imports wandb
    assert all(name.startswith(MODULE_PREFIX) for name in set(sys.modules) - modules_before)
    model, _ = load_implementation(impl, small_checkpoint, torch.float64, "cpu")
    assert same_storage(model.lm_head.weight, model.transformer.wte.weight)
    # A relative import that cannot be resolved names the module as the package sees it.
    (tmp_path / "pkg" / "model.py").write_text(
        "from .nowhere import Block\n\n\nclass GPT(Block):\n    pass\n"
    )
    with pytest.raises(ImplementationError, match="ModuleNotFoundError: No module named 'nowhere'"):
        import_implementation(tmp_path / "pkg" / "model.py")


def test_gpt_made_by_module_level_code_is_imported_as_it_is(tmp_path: Path) -> None:
    """`GPT, GPTConfig = make()` binds GPT only by running the module: it is imported as is, with a note."""
    path = tmp_path / "made.py"
    path.write_text(
        'import nanogpt.model as m\n\nGPT, GPTConfig = getattr(m, "GPT"), getattr(m, "GPTConfig")\n'
    )
    impl = import_implementation(path)
    assert impl.gpt_cls is GPT and impl.notes == [
        "GPT is set by module-level code of made.py, so the file was imported as it is"
    ]
