"""Definitions-only loading (parity/foreign/definitions.py): what is kept or left out, that it never runs."""

from __future__ import annotations

import textwrap
from pathlib import Path
from types import ModuleType

import pytest

from parity.foreign.definitions import exec_definitions, plan_definitions, summary

SCRIPT = textwrap.dedent(
    '''\
    """A training script."""
    from __future__ import annotations
    import math
    import a_module_that_does_not_exist as tracker
    try:
        import another_missing_module as fast
    except ImportError:
        fast = None
    WIDTH = 4 * 16
    SCALE = 1 / WIDTH**0.5
    PI = math.pi
    device = "cuda" if fast else "cpu"

    def scaled(x: Width) -> float:
        return x * SCALE * PI

    class Model:
        size: int = WIDTH
        def where(self) -> str:
            return device

    open("training_started.txt", "w").write("oops")
    for step in range(10):
        tracker.log(step)
    if __name__ == "__main__":
        raise SystemExit(3)
    '''
)


def _load(tmp_path: Path, source: str) -> tuple[ModuleType, list[str], list[str]]:
    path = tmp_path / "script.py"
    path.write_text(source)
    plan = plan_definitions(source, str(path))
    module = ModuleType("script_under_test")
    notes = exec_definitions(plan, module, str(path))
    return module, notes, summary(plan)


def test_training_code_is_left_out_and_never_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    module, notes, lines = _load(tmp_path, SCRIPT)
    assert not (tmp_path / "training_started.txt").exists()
    assert module.scaled(2) == pytest.approx(2 / 8 * 3.141592653589793)
    assert module.Model.size == 64 and not hasattr(module, "fast") and module.__doc__ == "A training script."
    # Imports only the left-out code reads are not run, each with a note.
    assert notes == [
        "line 4: import of tracker left out (the definitions do not use it)",
        "line 5: import of fast left out (the definitions do not use it)",
    ]
    assert lines[0].startswith("definitions only: 3 module-level statement(s) not run (line 12: device = ")
    assert 'line 22: open("training_started.txt", "w").write("oops")' in lines[0]
    assert "lines 23-24: for step in range(10): ..." in lines[0]
    # Model.where reads `device`, which only the left-out code sets: the summary says so.
    assert lines[1].startswith("the definitions read device, which only the left-out code sets")
    # The file's `from __future__ import annotations` applies: the undefined annotation `Width` is a string.
    assert module.scaled.__annotations__["x"] == "Width"


def test_a_missing_import_the_definitions_use_fails_the_load(tmp_path: Path) -> None:
    source = "import a_module_that_does_not_exist as helper\n\ndef f():\n    return helper.x\n"
    with pytest.raises(ModuleNotFoundError, match="a_module_that_does_not_exist"):
        _load(tmp_path, source)


def test_a_clean_model_file_has_nothing_left_out(tmp_path: Path) -> None:
    source = (Path(__file__).parent / "bisect_fixtures" / "upstream_model.py").read_text()
    plan = plan_definitions(source, "model.py")
    assert plan.left_out == [] and summary(plan) == [] and plan.relative_imports == []
