"""The structure is judged before anything is loaded, and a crash of the tested code says where it happened.

The tie is made by the implementation's own __init__, so tied-storage judges the built model when the
checkpoint's weights cannot be loaded: an untied model FAILs, a tied one is CANNOT-TEST with the load's
reason. init never blames a tie's direction on a model without a tie. An exception while importing,
building or loading names its type, its message ("(no message)" for a bare assert) and the user's
file:line. The implementations are variants of tests/bisect_fixtures/upstream_model.py on the bisect
command's small synthetic checkpoint, float64 on CPU.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from bisect_fixtures.variants import write_model

from parity.checks.registry import run_checks
from parity.core.errors import ImplementationError
from parity.core.verdicts import Status, Verdict
from parity.foreign.impl import import_implementation
from parity.foreign.raised import describe_exception
from parity.frontends.bisect import SMALL_CONFIG
from parity.subject.subject import Subject
from parity.subject.synthetic import ensure_synthetic_checkpoint
from parity.subject.targets import ParityTarget


@pytest.fixture(scope="module")
def small_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The bisect command's default synthetic checkpoint, written under a temporary directory."""
    path, _ = ensure_synthetic_checkpoint(SMALL_CONFIG, "small", root=tmp_path_factory.mktemp("checkpoints"))
    return path


def subject_of(path: Path, checkpoint: Path) -> Subject:
    """A Subject of an implementation file on the small checkpoint, float64 on CPU."""
    target = ParityTarget(
        "small", SMALL_CONFIG, "synthetic", "test", "cpu", torch.float64, checkpoint=checkpoint
    )
    return Subject(import_implementation(path), target)


def verdicts(subject: Subject, checks: list[str]) -> dict[str, Verdict]:
    """{check: Verdict} of the named checks."""
    return {v.check: v for v in run_checks(checks, subject)}


def line_of(path: Path, text: str) -> int:
    """The 1-based number of the line of path that contains text."""
    return next(i for i, line in enumerate(path.read_text().splitlines(), 1) if text in line)


def test_untied_model_whose_weights_cannot_load_fails_tied_storage(
    tmp_path: Path, small_checkpoint: Path
) -> None:
    subject = subject_of(write_model(tmp_path, "untied", "extra-parameter"), small_checkpoint)
    got = verdicts(subject, ["logits", "tied-storage", "init"])
    assert got["logits"].status == Status.CANNOT_TEST and "logit_scale" in got["logits"].reason
    tie = got["tied-storage"]
    assert tie.status == Status.FAIL, tie.reason
    assert "its weights could not be loaded" in tie.reason and "is not tied to" in tie.reason
    # init defers to tied-storage: no "wrong direction" for a model that has no tie at all.
    init = got["init"]
    assert init.status == Status.CANNOT_TEST and "tied-storage FAILs it" in init.reason, init.reason
    assert "wrong direction" not in init.reason + init.details


def test_loadable_untied_model_gets_no_wrong_direction_from_init(
    tmp_path: Path, small_checkpoint: Path
) -> None:
    got = verdicts(subject_of(write_model(tmp_path, "untied"), small_checkpoint), ["tied-storage", "init"])
    assert got["tied-storage"].status == Status.FAIL and "a copy, not a tie" in got["tied-storage"].reason
    assert got["init"].status == Status.CANNOT_TEST and "wrong direction" not in got["init"].reason


def test_tied_model_whose_weights_cannot_load_is_cannot_test_with_the_load_reason(
    tmp_path: Path, small_checkpoint: Path
) -> None:
    subject = subject_of(write_model(tmp_path, "head-bias"), small_checkpoint)
    tie = verdicts(subject, ["tied-storage"])["tied-storage"]
    assert tie.status == Status.CANNOT_TEST, tie.reason
    assert "whether loading keeps the tie cannot be checked" in tie.reason
    assert "no value from the checkpoint: lm_head.bias" in tie.reason
    assert isinstance(subject.load_error, ImplementationError)


def test_built_model_is_the_own_init_unloaded_cached_and_released(
    tmp_path: Path, small_checkpoint: Path
) -> None:
    subject = subject_of(write_model(tmp_path), small_checkpoint)
    built = subject.built_model()
    assert built is subject.built_model() and subject.loaded_model is None  # cached; nothing loaded
    assert built.transformer.wte.weight.dtype == torch.float64 and not built.training
    loaded = subject.model()
    assert not torch.equal(built.transformer.wte.weight, loaded.transformer.wte.weight)  # init, not weights
    subject.release()
    assert subject.built_model() is not built


def test_bare_assert_in_init_names_the_users_line(tmp_path: Path, small_checkpoint: Path) -> None:
    path = write_model(tmp_path, "bare-assert-in-init")
    subject = subject_of(path, small_checkpoint)
    line = line_of(path, "assert not config.bias")
    raised = f"GPT(config) raised AssertionError: (no message), at model.py:{line} (`assert not config.bias`)"
    for check, v in verdicts(subject, ["logits", "tied-storage", "init"]).items():
        assert v.status == Status.CANNOT_TEST, (check, v.reason)
        assert v.reason == raised, v.reason
    assert str(subject.load_error) == raised


def test_exception_at_import_names_the_users_line(tmp_path: Path) -> None:
    path = tmp_path / "model.py"
    source = write_model(tmp_path).read_text()
    path.write_text(source.replace("class GPTConfig:\n", 'class GPTConfig:\n    assert False, "no GPT-2"\n'))
    with pytest.raises(ImplementationError) as raised:
        import_implementation(path)
    line = line_of(path, "assert False")
    assert f'AssertionError: no GPT-2, at model.py:{line} (`assert False, "no GPT-2"`)' in str(raised.value)


def test_an_error_inside_torch_points_at_the_users_call(tmp_path: Path) -> None:
    """Frames of torch are skipped: the innermost frame in the user's folder is the line that called it."""
    user = tmp_path / "layers.py"
    user.write_text("import torch\n\n\ndef build():\n    return torch.nn.Linear(4, -1)\n")
    namespace: dict[str, object] = {}
    exec(compile(user.read_text(), str(user), "exec"), namespace)
    with pytest.raises(RuntimeError) as raised:
        namespace["build"]()  # type: ignore[operator]
    text = describe_exception(raised.value, tmp_path)
    assert text.startswith("RuntimeError: ") and "\n" not in text
    assert text.endswith(", at layers.py:5 (`return torch.nn.Linear(4, -1)`)"), text
    assert describe_exception(ValueError(""), tmp_path) == "ValueError: (no message)"  # no frame: no place
